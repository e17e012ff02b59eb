//! The face detector recipe: the network, its anchors and loss, and its
//! distillation from the teacher's pseudo-labels. Uses `nn`, `data`,
//! `backbone` (shared layers) and `onnx::graph`.

pub mod anchors;
pub mod loss;
pub mod matching;
pub mod network;
pub mod train;
