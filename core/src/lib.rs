//! The algorithms of normgate, shared by the camera device and the host tools.
//!
//! Everything here is `no_std`: pure functions and small state machines over
//! slices that the caller owns, so that the same code gates crops on a
//! Cortex-A53 and curates data sets on a workstation. Modules that must return
//! results of data-dependent size (`dedup`, `concat`, `clean`, `track`) need the `alloc`
//! feature (on by default).
//!
//! | module | concept |
//! |---|---|
//! | [`norm`] | L2 norm, cosine, the seed's NormSelect layer |
//! | [`quantile`] | streaming quantile in fixed memory (P²) |
//! | [`gate`] | threshold policies that turn a norm into pass/drop |
//! | [`align`] | five-point templates, Umeyama similarity, bilinear warp |
//! | [`margin`] | SphereFace A-Softmax forward/backward, lambda schedule |
//! | [`dedup`] | duplicate identities from classifier weight rows |
//! | [`concat`] | label spaces of several data sets, merged by duplicates |
//! | [`hem`] | hard example mining |
//! | [`clean`] | wrong-label detection from class centres |
//! | [`quant`] | int8 quantization as ONNX QuantizeLinear defines it |
//! | [`track`] | face tracks across frames: Kalman-predicted boxes, overlap matching, re-association by embedding |
//! | [`shot`] | a track's best crop, its release windows and its embedding schedule |
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod align;
#[cfg(feature = "alloc")]
pub mod clean;
#[cfg(feature = "alloc")]
pub mod concat;
#[cfg(feature = "alloc")]
pub mod dedup;
mod error;
pub mod gate;
pub mod hem;
pub mod margin;
pub mod norm;
pub mod quant;
pub mod quantile;
pub mod shot;
#[cfg(feature = "alloc")]
pub mod track;

pub use error::{Error, Result};
