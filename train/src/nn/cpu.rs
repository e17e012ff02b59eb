//! Access to the contiguous `f32` data of candle CPU tensors, for this
//! crate's custom ops.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

/// The values a contiguous layout covers; `what` names the operand in the error.
pub fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} must be contiguous"),
    }
}

/// Runs `f` on the values of a contiguous CPU tensor.
pub fn with_slice<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(contiguous(s, layout, what)?),
        _ => bail!("{what}: only CPU tensors are supported"),
    }
}
