# `make check` is the whole test run that CI performs (README.md, .ci/run).
.PHONY: check fmt clippy test core-bare-metal aarch64

check: fmt clippy test core-bare-metal aarch64

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

test:
	cargo test --workspace

# The core must build without std for a bare-metal Cortex-M, with and without a heap.
core-bare-metal:
	cargo build -p normgate-core --no-default-features --target thumbv7em-none-eabihf
	cargo build -p normgate-core --no-default-features --features alloc --target thumbv7em-none-eabihf

aarch64:
	cross/test-aarch64.sh
