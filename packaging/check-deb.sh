#!/usr/bin/env bash
# Checks a package written by build-deb.sh: its control fields, that every
# file is in place with the right owner and mode, that the binary is for the
# package's architecture, that systemd accepts the unit, and that the
# packaged binary, alone in an empty directory, lists its embedded models,
# accepts the packaged config and runs the gate on the samples.
#
#   packaging/check-deb.sh target/debian/normgate_VERSION_ARCH.deb
#
# An arm64 package's binary runs under qemu-aarch64 (as in cross/test-aarch64.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$1
fail() { echo "check-deb.sh: $deb: $*" >&2; exit 1; }

arch=$(dpkg-deb --field "$deb" Architecture)
[ "$(dpkg-deb --field "$deb" Package)" = normgate ] || fail "the package is not called normgate"
dpkg-deb --field "$deb" Depends | grep -q '^libc6 (>= 2\.[0-9]*)$' || fail "Depends names no libc6 floor"
case $arch in
  amd64) machine=3e00 run=() ;;
  arm64) machine=b700 run=(qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib) ;;
  *) fail "unexpected architecture $arch" ;;
esac

contents=$(dpkg-deb --contents "$deb")
expect() { # MODE PATH: one entry, owned by root
  grep -Eq "^$1 root/root +[0-9]+ [0-9-]+ [0-9:]+ \./$2\$" <<<"$contents" || fail "no $1 root/root ./$2"
}
expect -rwxr-xr-x usr/bin/normgate
expect -rw-r--r-- lib/systemd/system/normgate.service
expect -rw-r--r-- etc/normgate/normgate.toml
expect -rw-r--r-- usr/share/doc/normgate/copyright
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = /etc/normgate/normgate.toml ] ||
  fail "conffiles must list /etc/normgate/normgate.toml"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --extract "$deb" "$work/root"
binary=$work/root/usr/bin/normgate
# ELF e_machine at byte 18, little-endian: 0x3e x86-64, 0xb7 AArch64.
[ "$(od -An -tx1 -j18 -N2 "$binary" | tr -d ' \n')" = "$machine" ] || fail "usr/bin/normgate is not an $arch binary"

unit=$work/root/lib/systemd/system/normgate.service
grep -q '^User=normgate$' "$unit" && grep -q '^ProtectSystem=strict$' "$unit" &&
  grep -q '^DeviceAllow=char-video4linux rw$' "$unit" && grep -q '^StateDirectory=normgate$' "$unit" ||
  fail "the unit lost its user, read-only system, camera access or state directory"
if command -v systemd-analyze >/dev/null; then
  # verify wants ExecStart's binary to exist: point it at the extracted one.
  mkdir -p "$work/unit"
  sed "s|/usr/bin/normgate|$binary|g" "$unit" > "$work/unit/normgate.service"
  # verify reports a key it cannot parse but still exits 0: any output fails.
  complaints=$(systemd-analyze verify --man=no "$work/unit/normgate.service" 2>&1) && [ -z "$complaints" ] ||
    fail "systemd-analyze verify rejects the unit: $complaints"
  # The sandbox's exposure score (0 best, 10 worst); the unit scores 1.8.
  systemd-analyze security --offline=yes --threshold=25 "$work/unit/normgate.service" >/dev/null ||
    fail "the unit's sandbox is weaker than systemd-analyze security's 2.5 (see its report)"
fi

# Alone in an empty directory: the models come from inside the binary.
mkdir "$work/empty"
cp "$binary" "$work/empty/normgate"
samples=$PWD/samples
(
  cd "$work/empty"
  models=$("${run[@]}" ./normgate models) || fail "normgate models failed"
  grep -q '^embedded:backbone.onnx' <<<"$models" || fail "normgate models lists no embedded backbone: $models"
  "${run[@]}" ./normgate check-config "$work/root/etc/normgate/normgate.toml" >/dev/null ||
    fail "the packaged config is not valid"
  # The samples are unrelated photos: gated one by one, as README says.
  printf '[tracking]\npolicy = "per_frame"\n' >photos.toml
  summary=$("${run[@]}" ./normgate run --config photos.toml --source "$samples" --metrics off --json 2>/dev/null)
  grep -q '"passed":[1-9]' <<<"$summary" || fail "the packaged binary passed no face on the samples: $summary"
)
echo "check-deb.sh: $deb: $arch package checked"
