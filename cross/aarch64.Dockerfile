# Build image for `cross` (Cross.toml): the cross-rs aarch64 image plus what
# normgate's device build needs. libclang runs bindgen for the v4l crate's
# V4L2 bindings; the arm64 kernel headers (videodev2.h) come with the image's
# aarch64 sysroot, so no arm64 multiarch library is installed (those pull in
# libc6:arm64 and break qemu test runs).
FROM ghcr.io/cross-rs/aarch64-unknown-linux-gnu:0.2.5
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
ENV BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
