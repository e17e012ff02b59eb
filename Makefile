# `make check` is the whole test run that CI performs (README.md, .ci/run).
.PHONY: check fmt clippy test core-bare-metal aarch64 package

check: fmt clippy test core-bare-metal aarch64 package

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

# Host tests; tests/fuzz_corpora.rs replays the kept fuzzing corpora.
test:
	cargo test --workspace

# The core must build without std for a bare-metal Cortex-M, with and without a heap.
core-bare-metal:
	cargo build -p normgate-core --no-default-features --target thumbv7em-none-eabihf
	cargo build -p normgate-core --no-default-features --features alloc --target thumbv7em-none-eabihf

# The core's tests and the aarch64 release binary under qemu (cross/test-aarch64.sh).
aarch64:
	cross/test-aarch64.sh

# The Debian packages of both architectures from the release builds, checked
# (after `aarch64`, the arm64 package ships the binary it tested).
package:
	packaging/check-deb.sh "$$(packaging/build-deb.sh x86_64-unknown-linux-gnu)"
	packaging/check-deb.sh "$$(packaging/build-deb.sh aarch64-unknown-linux-gnu)"
