//! What every training run shares: SGD with momentum, the warm-up + cosine
//! learning-rate schedule, and checkpoints (weights, velocities, step and the
//! run's configuration) written atomically and refused on resume when the
//! configuration changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The settings in which a run's saved configuration and the one asked for
/// differ, as `name: saved -> asked`, so that a refused resume says which
/// option to give (a setting left out of the saved file is `unset`).
fn config_differences<C: Serialize>(saved: &C, asked: &C) -> Result<String> {
    let (saved, asked) = (serde_json::to_value(saved)?, serde_json::to_value(asked)?);
    let (Some(saved), Some(asked)) = (saved.as_object(), asked.as_object()) else {
        return Ok(format!("{saved} -> {asked}"));
    };
    let names: std::collections::BTreeSet<&String> = saved.keys().chain(asked.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
    Ok(names
        .into_iter()
        .filter(|name| saved.get(*name) != asked.get(*name))
        .map(|name| format!("{name}: {} -> {}", show(saved.get(name)), show(asked.get(name))))
        .collect::<Vec<_>>()
        .join(", "))
}

/// SGD with momentum and classic L2 weight decay, with its velocity kept for checkpoints.
pub struct Sgd {
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) velocity: Vec<Tensor>,
}

impl Sgd {
    /// An optimiser of every variable of `map`, in name order.
    pub fn new(map: &VarMap) -> Result<Self> {
        let mut vars: Vec<(String, Var)> = map
            .data()
            .lock()
            .expect("var map")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let velocity = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { vars, velocity })
    }

    /// One update from `grads` at `step` of `schedule`; returns the learning rate it used.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, schedule: &Schedule, step: u64) -> Result<f64> {
        let lr = schedule.learning_rate(step);
        for ((_, var), vel) in self.vars.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = (g + (var.as_tensor() * schedule.weight_decay)?)?;
            // Detached: computed from the variables, the velocity would
            // otherwise carry this step's graph into the next and keep every
            // earlier step alive (memory grows by the model's size per step).
            *vel = ((&*vel * schedule.momentum)? + g)?.detach();
            var.set(&(var.as_tensor() - (&*vel * lr)?)?)?;
        }
        Ok(lr)
    }

    /// Writes weights, velocities, `step` and `config` to `dir` atomically.
    pub fn save(&self, dir: &Path, step: u64, config: &impl Serialize) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for ((name, var), vel) in self.vars.iter().zip(&self.velocity) {
            tensors.insert(name.clone(), var.as_tensor().clone());
            tensors.insert(format!("velocity.{name}"), vel.clone());
        }
        tensors.insert("step".into(), Tensor::new(&[step as u32], &Device::Cpu)?);
        let tmp = dir.join("checkpoint.safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(tmp, checkpoint_path(dir))?;
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config)?)?;
        Ok(())
    }

    /// Restores `dir`'s checkpoint if it has one and returns its step (0
    /// without one); a checkpoint of another configuration is refused.
    pub fn resume<C: Serialize + DeserializeOwned + PartialEq>(&mut self, dir: &Path, config: &C) -> Result<u64> {
        let path = checkpoint_path(dir);
        if !path.is_file() {
            return Ok(0);
        }
        let saved: C = read_config(dir)?;
        if saved != *config {
            bail!(
                "{} was trained with another configuration ({}); use a new --out or the same options",
                dir.display(),
                config_differences(&saved, config)?
            );
        }
        let t = candle_core::safetensors::load(&path, &Device::Cpu)?;
        for ((name, var), vel) in self.vars.iter().zip(self.velocity.iter_mut()) {
            let get = |k: &str| t.get(k).with_context(|| format!("checkpoint lacks {k}"));
            var.set(get(name)?)?;
            *vel = get(&format!("velocity.{name}"))?.clone();
        }
        let step = u64::from(t.get("step").context("checkpoint lacks step")?.to_vec1::<u32>()?[0]);
        log::info!("resumed {} at step {step}", dir.display());
        Ok(step)
    }
}

/// The checkpoint file of a run folder.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// The configuration a run folder was trained with.
pub fn read_config<C: DeserializeOwned>(dir: &Path) -> Result<C> {
    let text = std::fs::read_to_string(dir.join("config.json"))
        .with_context(|| format!("{} holds no training run (config.json)", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}/config.json is unreadable", dir.display()))
}

/// Sets every variable of `map` from `dir`'s checkpoint (for evaluation and export).
pub fn load_weights(map: &VarMap, dir: &Path) -> Result<()> {
    let saved = candle_core::safetensors::load(checkpoint_path(dir), &Device::Cpu)?;
    for (name, var) in map.data().lock().expect("var map").iter() {
        var.set(saved.get(name).with_context(|| format!("checkpoint lacks {name}"))?)?;
    }
    Ok(())
}

/// The optimisation schedule, the same fields in every recipe. Each
/// recipe's config flattens it, so config.json keeps the layout runs were
/// saved with and they still resume.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Optimisation steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Warm-up steps (linear) before the cosine decay.
    pub warmup: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
}

impl Schedule {
    /// A recipe's length, peak learning rate and warm-up, with the momentum
    /// (0.9), weight decay (5e-4) and checkpoint interval (200) all share.
    pub const fn new(steps: u64, lr: f64, warmup: u64) -> Self {
        Self {
            steps,
            lr,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup,
            checkpoint_every: 200,
        }
    }

    /// Learning rate at a step: linear warm-up to the peak, then cosine decay to zero at the end.
    pub fn learning_rate(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let t = (step - self.warmup) as f64 / self.steps.saturating_sub(self.warmup).max(1) as f64;
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
    }

    /// Where a run at `position` stands.
    pub fn progress(&self, position: u64, images_per_step: usize) -> Progress {
        Progress {
            position,
            steps: self.steps,
            checkpoint_every: self.checkpoint_every,
            images_per_step,
        }
    }
}

/// Where a run stands and how it is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The next step to run.
    pub position: u64,
    /// Steps of the whole run.
    pub steps: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Images in one step.
    pub images_per_step: usize,
}

/// A training run that [`drive`] steps to its end.
pub trait Training {
    /// One step's log line.
    type Log: Serialize;
    /// Where the run stands.
    fn progress(&self) -> Progress;
    /// Runs one step.
    fn train_step(&mut self) -> Result<Self::Log>;
    /// The total loss of a step.
    fn loss(log: &Self::Log) -> f32;
    /// A short progress-bar message.
    fn describe(log: &Self::Log) -> String;
    /// Writes the checkpoint.
    fn save(&self, dir: &Path) -> Result<()>;
}

/// Trains to the end, appending every 20th step's log (with `img_per_s`)
/// to `dir/log.jsonl` and checkpointing on the way; a non-finite loss stops
/// the run at once, before it reaches a checkpoint.
pub fn drive<T: Training>(run: &mut T, dir: &Path) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let start = run.progress();
    let bar = indicatif::ProgressBar::new(start.steps);
    bar.set_position(start.position);
    let log_path = dir.join("log.jsonl");
    drop_log_after(&log_path, start.position)?;
    let mut log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut since = (std::time::Instant::now(), start.position);
    while run.progress().position < start.steps {
        let step = run.progress().position;
        let log = run.train_step()?;
        let loss = T::loss(&log);
        if !loss.is_finite() {
            bail!("the loss became {loss} at step {step}; lower --lr");
        }
        bar.inc(1);
        let done = step + 1;
        if done % 20 == 0 || done == start.steps {
            let images = (done - since.1) as usize * start.images_per_step;
            let mut line = serde_json::to_value(&log)?;
            line["img_per_s"] = (images as f64 / since.0.elapsed().as_secs_f64()).into();
            since = (std::time::Instant::now(), done);
            writeln!(log_file, "{line}")?;
            bar.set_message(T::describe(&log));
        }
        if done % start.checkpoint_every == 0 || done == start.steps {
            run.save(dir)?;
        }
    }
    bar.finish();
    Ok(())
}

/// Drops the log lines of steps at or after `position`: a run stopped
/// between checkpoints trains those steps again on resume, and each step
/// should be logged once; a line torn by the stop goes too.
fn drop_log_after(path: &Path, position: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let before = |line: &&str| {
        serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| v["step"].as_u64().is_none_or(|step| step < position))
    };
    let kept: Vec<&str> = text.lines().filter(before).collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_run_logs_each_step_once() {
        let dir = std::env::temp_dir().join(format!("normgate-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.jsonl");
        let lines = [
            "{\"step\":19,\"loss\":1.0}",
            "{\"step\":39,\"loss\":0.9}",
            "{\"step\":59,\"loss\":0.8}",
        ];
        // The run stopped while writing the line after step 59's.
        std::fs::write(&log, lines.map(|l| format!("{l}\n")).concat() + "{\"step\":7").unwrap();
        // The checkpoint holds 40 steps: the line of step 59 is trained (and logged) again.
        drop_log_after(&log, 40).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("{}\n{}\n", lines[0], lines[1])
        );
        // A torn line goes even when every whole line is kept.
        std::fs::write(&log, lines.map(|l| format!("{l}\n")).concat() + "{\"st").unwrap();
        drop_log_after(&log, 60).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            lines.map(|l| format!("{l}\n")).concat()
        );
        drop_log_after(&log, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let lr = |step| Schedule::new(1000, 0.1, 100).learning_rate(step);
        assert!((lr(0) - 0.001).abs() < 1e-12);
        assert!((lr(99) - 0.1).abs() < 1e-12);
        assert!((lr(100) - 0.1).abs() < 1e-12);
        assert!((lr(550) - 0.05).abs() < 1e-9);
        assert!(lr(1000).abs() < 1e-12);
    }
}
