//! Host tools of normgate: training the project's own models on a CPU,
//! exporting and quantizing them, and curating face data sets. Never a
//! dependency of the device binary.

/// Training allocates tensors of many megabytes every step; mimalloc keeps
/// their pages mapped between steps, where the system allocator hands them
/// back and pays page faults to get them again (about 55,000 per step of the
/// shipped backbone at batch 64).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
pub mod eval;
pub mod export;
pub mod facenet;
pub mod features;
pub mod frozen_heads;
pub mod gemm;
pub mod heads;
pub mod im2col;
pub mod label_noise;
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
