//! `bench`: training steps, dedup and the device's embedding time.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use normgate_train::backbone::network::BackboneConfig;
use normgate_train::eval::bench;

use normgate_train::data::prepare::progress;

use super::onnx::training_crops;
use super::threads;

/// Runs a `bench` command.
pub(crate) fn run(what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Dedup {
            rows_a,
            rows_b,
            dim,
            threads,
            json,
        } => dedup(rows_a, rows_b, dim, threads, json),
        BenchCommand::Step {
            network,
            batch,
            rounds,
            threads,
            json,
            worker,
        } => step(StepArgs {
            network,
            batch,
            rounds,
            threads: &threads,
            json,
            worker,
        }),
        BenchCommand::Embed {
            models,
            crops,
            batch,
            rounds,
            cache,
            json,
        } => embed(&models, crops, batch, rounds, &cache, json),
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Wall time and peak memory of dedup on random unit rows (e.g. the
    /// seed's sizes: 8631 x 78892, or 78892 within one head; 512-d).
    Dedup {
        /// Rows of the first matrix.
        #[arg(long)]
        rows_a: usize,
        /// Rows of the second matrix; without it, within the first.
        #[arg(long)]
        rows_b: Option<usize>,
        /// Values per row.
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Per-crop embedding time of model files with tract, side by side.
    Embed {
        /// The .onnx files (cards beside them); times are relative to the first.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<PathBuf>,
        /// Crops per round, from the Glint24 cache.
        #[arg(long, default_value_t = 64)]
        crops: usize,
        /// Crops per run of the model.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Folder of the caches `prepare` wrote.
        #[arg(long, default_value = "cache")]
        cache: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Training steps of the shipped backbone (or detector): this crate's
    /// convolution ops against candle's built-in ones, interleaved, per thread count.
    Step {
        /// The architecture trained.
        #[arg(long, value_enum, default_value = "backbone")]
        network: bench::Network,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed steps per path and thread count (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Thread counts to measure, each in its own process.
        #[arg(long, value_delimiter = ',', default_value = "2,1")]
        threads: Vec<usize>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Internal: measure in this process and print its JSON.
        #[arg(long, hide = true)]
        worker: bool,
    },
}

/// What `bench step` measures.
struct StepArgs<'a> {
    network: bench::Network,
    batch: usize,
    rounds: usize,
    threads: &'a [usize],
    json: bool,
    worker: bool,
}

fn step(a: StepArgs) -> Result<()> {
    let (network, batch, rounds) = (a.network, a.batch, a.rounds);
    if a.worker {
        println!("{}", serde_json::to_string(&bench::worker(network, batch, rounds)?)?);
        return Ok(());
    }
    let results = bench::run(network, a.threads, batch, rounds)?;
    let (architecture, parameters) = match network {
        bench::Network::Backbone => {
            let c = BackboneConfig::SHIPPED;
            (serde_json::to_value(c)?, c.parameters())
        }
        bench::Network::Detector => {
            let c = normgate_train::detector::network::DetectorConfig::SHIPPED;
            (serde_json::to_value(c)?, c.parameters())
        }
    };
    let first = &results[0];
    if a.json {
        let out = serde_json::json!({
            "img_per_s": first.fast.img_per_s,
            "baseline_img_per_s": first.builtin.img_per_s,
            "forward_gflops": first.forward_gflops,
            "threads": first.threads,
            "batch": batch,
            "network": network,
            "architecture": architecture,
            "parameters": parameters,
            "forward_flops_per_image": network.forward_flops(),
            "runs": results,
        });
        println!("{out}");
    } else {
        println!(
            "{network:?}: {parameters} parameters, {:.3} GFLOP per training image; batch {batch}",
            network.forward_flops() as f64 / 1e9
        );
        for r in &results {
            println!(
                "{} thread(s): fast {:.1} img/s (backward {:.2}x forward), built-in {:.1} img/s (backward {:.2}x forward): {:.2}x; forward {:.1} GFLOP/s",
                r.threads,
                r.fast.img_per_s,
                r.fast.backward_over_forward,
                r.builtin.img_per_s,
                r.builtin.backward_over_forward,
                r.speedup,
                r.forward_gflops
            );
        }
    }
    Ok(())
}

fn dedup(rows_a: usize, rows_b: Option<usize>, dim: usize, threads_wanted: Option<usize>, json: bool) -> Result<()> {
    use normgate_core::dedup::{Rows, ScanConfig};
    use normgate_train::curation::dedup::{find_pairs, peak_memory, random_rows};
    let a = random_rows(rows_a, dim, 1);
    let b = rows_b.map(|n| random_rows(n, dim, 2));
    let ra = Rows::new(&a, dim)?;
    let rb = match &b {
        Some(b) => Some(Rows::new(b, dim)?),
        None => None,
    };
    let threads = threads(threads_wanted);
    let bar = progress(rows_a, "rows");
    let start = std::time::Instant::now();
    let pairs = find_pairs(&ra, rb.as_ref(), &ScanConfig::default(), threads, &|n| {
        bar.inc(n as u64)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let products = match rows_b {
        Some(n) => rows_a as f64 * n as f64,
        None => rows_a as f64 * (rows_a as f64 - 1.0) / 2.0,
    };
    let report = serde_json::json!({
        "rows_a": rows_a, "rows_b": rows_b, "dim": dim, "threads": threads, "seconds": seconds,
        "gflop_per_s": 2.0 * products * dim as f64 / seconds / 1e9,
        "peak_memory_bytes": peak_memory(), "pairs_above_0.5": pairs.len(),
    });
    if json {
        println!("{report}");
    } else {
        println!("{report:#}");
    }
    Ok(())
}

fn embed(
    models: &[PathBuf],
    crops: usize,
    batch: usize,
    rounds: usize,
    cache: &std::path::Path,
    json: bool,
) -> Result<()> {
    let crops = training_crops(cache, crops)?;
    let timings = bench::embed(models, &crops, batch, rounds)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "batch": batch, "crops": crops.len(), "models": timings })
        );
    } else {
        for t in &timings {
            println!(
                "{:>8.3} ms/crop  x{:.2}  {:>9} bytes  {}",
                t.ms_per_crop, t.relative, t.bytes, t.model
            );
        }
    }
    Ok(())
}
