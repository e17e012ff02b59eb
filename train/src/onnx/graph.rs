//! The ONNX protobuf as this crate reads and writes it: files and their
//! cards, attributes, float initializers, and the weights of an exported
//! network read back into a training run. The low part of `onnx`: any
//! recipe may use it (a warm start from a shipped file).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_nn::VarMap;
use normgate::card::ModelCard;
use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{AttributeProto, ModelProto, TensorProto};

/// Reads an ONNX file.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ModelProto::decode(bytes.as_slice()).with_context(|| format!("{} is not an ONNX model", path.display()))
}

/// A float initializer's values, from `raw_data` or `float_data`.
pub fn floats_of(t: &TensorProto) -> Result<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        bail!("initializer {} is not float", t.name);
    }
    Ok(if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    })
}

/// An integer attribute.
pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// Writes `model` and its card beside it (`.toml`).
pub fn write(model: &ModelProto, card: &ModelCard, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, model.encode_to_vec()).with_context(|| format!("cannot write {}", path.display()))?;
    write_card(card, &ModelCard::path_for(path))
}

/// Sets every variable of `map` under `prefix.` from the initializer of the
/// same name in the ONNX file `path` that [`write`] made of such a network:
/// the reverse of the export, so a shipped model file can be trained on
/// when its run folder is gone. The network must be the same: a missing
/// weight or another shape (unit dimensions aside, as PReLU slopes are
/// stored `[C, 1, 1]`) is refused.
pub fn import_weights(map: &VarMap, prefix: &str, path: &Path) -> Result<()> {
    let model = read_model(path)?;
    let initializers: HashMap<&str, &TensorProto> = model
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .map(|t| (t.name.as_str(), t))
        .collect();
    let squeezed = |dims: &[usize]| dims.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    for (name, var) in map.data().lock().expect("var map").iter() {
        let short = name.strip_prefix(&format!("{prefix}.")).unwrap_or(name);
        let tensor = initializers
            .get(short)
            .with_context(|| format!("{} lacks the weight {short}: not this network", path.display()))?;
        let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        if squeezed(&dims) != squeezed(var.dims()) {
            bail!(
                "{}: the weight {short} is {:?}, this network's {:?}: not this network (same --input and --units?)",
                path.display(),
                dims,
                var.dims()
            );
        }
        let values = floats_of(tensor).with_context(|| path.display().to_string())?;
        var.set(&candle_core::Tensor::from_vec(
            values,
            var.dims(),
            &candle_core::Device::Cpu,
        )?)?;
    }
    Ok(())
}

/// Writes a model card as TOML. Its numbers are f32s, which TOML stores as
/// f64s; each is written as the shortest decimal that reads back as the
/// same f32 (`expand = 0.8`, not `0.800000011920929`), so cards stay
/// readable and diffs small.
pub fn write_card(card: &ModelCard, path: &Path) -> Result<()> {
    let mut value = toml::Value::try_from(card)?;
    shorten_floats(&mut value);
    std::fs::write(path, toml::to_string(&value)?).with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces every float in `value` by the f64 nearest to its f32's shortest decimal.
fn shorten_floats(value: &mut toml::Value) {
    match value {
        toml::Value::Float(x) => {
            *x = (*x as f32)
                .to_string()
                .parse()
                .expect("an f32's decimal is a valid f64")
        }
        toml::Value::Array(items) => items.iter_mut().for_each(shorten_floats),
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, item)| shorten_floats(item)),
        _ => {}
    }
}
