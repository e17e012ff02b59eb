# `make check` is the whole test run that CI performs (README.md, .ci/run).
.PHONY: check fmt clippy test core-bare-metal aarch64 package package-amd64

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

# The boards' Debian package from the release build, checked (after
# `aarch64`, it ships the binary that was tested). The amd64 package is the
# same script on another target; it is left out of `check`, as its LTO
# release build of the whole device for a second architecture added minutes
# to every CI run (2,227 s in all at the last landing) and tested no new code.
package:
	packaging/check-deb.sh "$$(packaging/build-deb.sh aarch64-unknown-linux-gnu)"

package-amd64:
	packaging/check-deb.sh "$$(packaging/build-deb.sh x86_64-unknown-linux-gnu)"
