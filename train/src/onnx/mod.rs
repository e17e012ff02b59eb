//! ONNX files: `graph` reads and writes the protobuf (any layer may use it,
//! e.g. to warm-start from an exported file); `export` writes a recipe's
//! checkpoint as a graph with its card, `quantize` makes its int8 form,
//! `dequantize` the float form of an int8 QOperator file.

pub mod dequantize;
pub mod export;
pub mod graph;
pub mod quantize;
