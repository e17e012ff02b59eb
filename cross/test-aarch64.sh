#!/usr/bin/env bash
# Builds the whole workspace for aarch64 and runs every test under qemu-user,
# linking with Debian's cross gcc. This is the Docker-free twin of
# `cross test --target aarch64-unknown-linux-gnu` (see Cross.toml).
# Needs: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user, and
# `rustup target add aarch64-unknown-linux-gnu`.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=("gcc-aarch64-linux-gnu (apt)")
command -v qemu-aarch64 >/dev/null || missing+=("qemu-user (apt)")
[ -d "$sysroot/lib" ] || missing+=("libc6-dev-arm64-cross (apt)")
rustup target list --installed 2>/dev/null | grep -qx "$target" || missing+=("rustup target add $target")
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross/test-aarch64.sh: missing: ${missing[*]}" >&2
  exit 1
fi

runner="qemu-aarch64 -L $sysroot -E LD_LIBRARY_PATH=$sysroot/lib"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$runner"
# Integration tests start the device binary themselves; without binfmt_misc
# they must go through qemu too.
export NORMGATE_TEST_RUNNER="$runner"
# normgate-train is a host tool that never runs on the device.
exec cargo test --workspace --exclude normgate-train --target "$target" "$@"
