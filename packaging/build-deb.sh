#!/usr/bin/env bash
# Builds the normgate Debian package for one target from a release build of
# the device binary (the shipped models embedded):
#
#   packaging/build-deb.sh [TARGET]      TARGET: x86_64-unknown-linux-gnu (default)
#                                         or aarch64-unknown-linux-gnu
#
# With NO_BUILD=1 it packages the binary already built, e.g. after
# `cross build --release --target aarch64-unknown-linux-gnu`.
# Writes target/debian/normgate_VERSION_ARCH.deb and prints its path.
# Needs dpkg-deb (Debian's dpkg) and, for aarch64, the cross linker of
# .cargo/config.toml; nothing of debhelper.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-x86_64-unknown-linux-gnu}
case $target in
  x86_64-unknown-linux-gnu) arch=amd64 objdump=objdump ;;
  aarch64-unknown-linux-gnu) arch=arm64 objdump=aarch64-linux-gnu-objdump ;;
  *) echo "build-deb.sh: no Debian architecture is known for $target" >&2; exit 1 ;;
esac
command -v dpkg-deb >/dev/null || { echo "build-deb.sh: needs dpkg-deb (apt install dpkg)" >&2; exit 1; }

# The host's own target builds where `cargo build --release` puts it, so the
# README's main command and the package share one build.
if [ "$target" = "$(rustc -vV | sed -n 's/^host: //p')" ]; then
  target_flag=() binary=target/release/normgate
else
  target_flag=(--target "$target") binary=target/$target/release/normgate
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --locked -p normgate "${target_flag[@]}" >&2
fi
[ -x "$binary" ] || { echo "build-deb.sh: $binary is missing; build it first" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
out=target/debian
root=$out/normgate_${version}_$arch
rm -rf "$root"
install -D -m 0755 "$binary" "$root/usr/bin/normgate"
install -D -m 0644 packaging/normgate.service "$root/lib/systemd/system/normgate.service"
install -D -m 0644 packaging/normgate.toml "$root/etc/normgate/normgate.toml"
install -D -m 0644 README.md "$root/usr/share/doc/normgate/README.md"
install -D -m 0644 packaging/copyright "$root/usr/share/doc/normgate/copyright"
install -d -m 0755 "$root/DEBIAN"
install -m 0755 packaging/postinst packaging/prerm packaging/postrm "$root/DEBIAN/"
echo /etc/normgate/normgate.toml > "$root/DEBIAN/conffiles"

# The newest glibc symbol version the binary needs is the package's libc6 floor.
glibc=2.17
if command -v "$objdump" >/dev/null; then
  glibc=$("$objdump" -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
fi
cat > "$root/DEBIAN/control" <<EOF
Package: normgate
Version: $version
Architecture: $arch
Maintainer: normgate developers <normgate@users.noreply.github.com>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: libc6 (>= $glibc)
Recommends: systemd
Section: video
Priority: optional
Homepage: https://github.com/normgate/normgate
Description: edge face-quality gate for camera devices
 normgate captures frames from a V4L2 camera, finds and aligns faces, and
 uploads only the crops whose face-feature norm says they are worth it:
 blurred, dark, tiny, half or non-faces are dropped on the device. One
 binary with its models built in, run as a sandboxed systemd service.
EOF
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/" >&2
echo "$out/normgate_${version}_$arch.deb"
