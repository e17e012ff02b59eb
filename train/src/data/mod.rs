//! The training and evaluation data: readers of the shared data sets, the
//! held-out split, the prepared caches of aligned crops with the teacher's
//! features, degradations, augmented views, the detector's pseudo-labels,
//! samples and composites, and the synthetic walk-by. Uses no other layer of this crate: it is the
//! data every recipe and evaluation reads.

pub mod composite;
pub mod datasets;
pub mod degrade;
pub mod detector_samples;
pub mod heldout;
pub mod prepare;
pub mod pseudo;
pub mod views;
pub mod walkby;
