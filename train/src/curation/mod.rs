//! Curating labelled face data (seed NOTES): concat-training label maps,
//! duplicate identities from classifier weights, heads on frozen features,
//! wrong-example removal, hard example mining, norm reports, and the
//! corrupted sets that measure them. Uses `data`, `nn` and `eval`.

pub mod classmap;
pub mod clean;
pub mod dedup;
pub mod dedup_eval;
pub mod features;
pub mod frozen_heads;
pub mod label_noise;
pub mod mine;
pub mod norms;
