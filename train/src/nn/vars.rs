//! Trainable variables initialised from a seeded generator, so that a
//! training run with a fixed seed starts from the same weights every time
//! (candle's CPU generator cannot be seeded). Variables are created in the
//! order the network asks for them, which is fixed by its code.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

/// A [`VarMap`] whose new variables come from a seeded generator.
pub struct SeededVars {
    map: VarMap,
    rng: Mutex<StdRng>,
}

impl SeededVars {
    /// A builder for a network whose variables land in `map`.
    pub fn builder(map: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
        let backend = Self {
            map: map.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        };
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
    }

    fn sample(&self, shape: &Shape, init: Init) -> Result<Vec<f32>> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().expect("no panics while holding the generator");
        let err = |e: String| candle_core::Error::Msg(e);
        let normal = |mean: f64, std: f64, rng: &mut StdRng| -> Result<Vec<f32>> {
            let d = Normal::new(mean, std).map_err(|e| err(e.to_string()))?;
            Ok((0..n).map(|_| d.sample(rng) as f32).collect())
        };
        let uniform = |lo: f64, hi: f64, rng: &mut StdRng| -> Result<Vec<f32>> {
            let d = Uniform::new(lo, hi).map_err(|e| err(e.to_string()))?;
            Ok((0..n).map(|_| d.sample(rng) as f32).collect())
        };
        match init {
            Init::Const(v) => Ok(vec![v as f32; n]),
            Init::Randn { mean, stdev } => normal(mean, stdev, &mut rng),
            Init::Uniform { lo, up } => uniform(lo, up, &mut rng),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => normal(0.0, std, &mut rng),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(-bound, bound, &mut rng)
                    }
                }
            }
        }
    }
}

impl SimpleBackend for SeededVars {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some(existing) = self.map.data().lock().expect("var map lock").get(name) {
            if existing.shape() != &shape {
                candle_core::bail!("variable {name}: shape {:?}, expected {shape:?}", existing.shape());
            }
            return Ok(existing.as_tensor().clone());
        }
        let values = self.sample(&shape, init)?;
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        self.map
            .data()
            .lock()
            .expect("var map lock")
            .insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> Result<Tensor> {
        match self.map.data().lock().expect("var map lock").get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("variable {name} does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.data().lock().expect("var map lock").contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::network::{Backbone, ConvImpl};
    use crate::testing::tiny_backbone;

    fn weights(seed: u64) -> Vec<(String, Vec<f32>)> {
        let map = VarMap::new();
        let config = tiny_backbone([2, 2, 2], [1, 0, 0], 3);
        Backbone::new(config, ConvImpl::Fast, SeededVars::builder(&map, seed, &Device::Cpu)).unwrap();
        let data = map.data().lock().unwrap();
        let mut out: Vec<_> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        assert_eq!(weights(3), weights(3));
        assert_ne!(weights(3), weights(4));
    }
}
