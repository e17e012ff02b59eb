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

pub mod activation;
pub mod anchors;
pub mod backbone;
pub mod bench;
pub mod classmap;
pub mod clean;
pub mod composite;
pub mod conv;
pub mod cpu;
pub mod datasets;
pub mod dedup;
pub mod dedup_eval;
pub mod degrade;
pub mod detection_loss;
pub mod detector_data;
pub mod detector_eval;
pub mod detector_train;
pub mod device_starts;
pub mod eval;
pub mod export;
pub mod facenet;
pub mod features;
pub mod frozen_heads;
pub mod gemm;
pub mod heads;
pub mod heldout;
pub mod heldout_eval;
pub mod im2col;
pub mod label_noise;
pub mod landmark_train;
pub mod mine;
pub mod norms;
pub mod optim;
pub mod prepare;
pub mod pseudo;
pub mod quality;
pub mod quantize;
#[cfg(test)]
mod testing;
pub mod train;
pub mod vars;
pub mod verify;
pub mod views;

#[cfg(test)]
mod allocator_tests {
    #[test]
    fn the_purge_delay_option_is_the_one_with_mimallocs_one_second_default() {
        // SAFETY: reading an option is thread-safe.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "the option number no longer names mi_option_purge_delay");
    }
}
