//! The landmark refiner recipe: the network reading five points from the
//! detector's crop, trained on where the device's chain places them.
//! Uses `nn`, `data`, `backbone`, `detector` and `onnx::graph`.

pub mod device_starts;
pub mod recipe;
pub mod train;
