//! The numeric building blocks every recipe trains with, on candle's CPU
//! backend: convolution (im2col + gemm, custom ops with their backward),
//! bias + PReLU, A-Softmax heads, seeded variables, SGD with its schedule
//! and checkpoints. Uses nothing else of this crate.

pub mod activation;
pub mod conv;
pub mod cpu;
pub mod gemm;
pub mod heads;
pub mod im2col;
pub mod optim;
pub mod vars;
