//! The backbone recipe: the SphereFace-family network and its training
//! (distillation, A-Softmax heads per data set, views). Uses `nn`, `data`
//! and `onnx::graph`.

pub mod network;
pub mod recipe;
pub mod train;
