#!/usr/bin/env bash
# Tests the device for aarch64 under qemu-user, linking with Debian's cross
# gcc (the Docker-free twin of `cross test --target aarch64-unknown-linux-gnu`):
#   1. the core's unit tests, built for aarch64;
#   2. the release binary for aarch64 (the one the arm64 package ships);
#   3. the device's integration tests (tests/cli.rs, tests/gate.rs), built
#      for the host, driving that aarch64 binary under qemu.
# So the shipped artifact itself is tested on its architecture, and tract is
# compiled for aarch64 once (release), not a second time in the test profile.
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

cargo test -p normgate-core --target "$target"
cargo build --release --locked -p normgate --target "$target"
# --workspace, as `make test`: the same feature set, so the host test
# binaries `make test` built are reused rather than built again.
NORMGATE_TEST_BIN=$PWD/target/$target/release/normgate NORMGATE_TEST_RUNNER="$runner" \
  cargo test --workspace --test cli --test gate "$@"
