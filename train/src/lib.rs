//! Host tools of normgate: training the project's own models on a CPU,
//! exporting and quantizing them, and curating face data sets. Never a
//! dependency of the device binary.

/// Training allocates tensors of many megabytes every step; mimalloc keeps
/// their pages mapped between steps, where the system allocator hands them
/// back and pays page faults to get them again (about 55,000 per step of the
/// shipped backbone at batch 64).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in the option enum of the
/// mimalloc 3 that `libmimalloc-sys` 0.1.49 builds; the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells the allocator never to hand freed memory back to the OS. By
/// default mimalloc purges it a second after a free, about one training
/// step of the backbone on one thread, so the next steps
/// fault their tensors' pages in again and the kernel zeroes them (a fifth
/// of the samples of a `perf` profile of `bench step` on one thread); kept,
/// they are reused as they are. Resident memory then stays at its peak between steps instead of
/// dropping; the peak itself is the same.
pub fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe and takes effect on later frees.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

// The layers, lowest first; a module uses only its own layer and those
// below it (docs/ARCHITECTURE.md): `nn` and `onnx::graph`; `data`; the
// recipes `backbone`, `detector`, `landmarks`; `onnx` (export, quantize);
// `eval`; `curation`. The command line (`main.rs`, `cli/`) uses them all.
pub mod backbone;
pub mod curation;
pub mod data;
pub mod detector;
pub mod eval;
pub mod landmarks;
pub mod nn;
pub mod onnx;
#[cfg(test)]
mod testing;

#[cfg(test)]
mod allocator_tests {
    #[test]
    fn the_purge_delay_option_is_the_one_with_mimallocs_one_second_default() {
        // SAFETY: reading an option is thread-safe.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "the option number no longer names mi_option_purge_delay");
    }
}
