//! `normgate-train`: host tools of normgate.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use normgate_train::backbone::BackboneConfig;
use normgate_train::bench;

/// Host tools of normgate: training, export, quantization, curation, evaluation.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmarks (results on stdout, progress on stderr).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Training steps of the shipped backbone: this crate's convolution ops
    /// against candle's built-in ones, interleaved, per thread count.
    Step {
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

fn bench_step(batch: usize, rounds: usize, threads: &[usize], json: bool, worker: bool) -> Result<()> {
    if worker {
        println!("{}", serde_json::to_string(&bench::worker(batch, rounds)?)?);
        return Ok(());
    }
    let results = bench::run(threads, batch, rounds)?;
    let config = BackboneConfig::SHIPPED;
    let first = &results[0];
    if json {
        let out = serde_json::json!({
            "img_per_s": first.fast.img_per_s,
            "baseline_img_per_s": first.builtin.img_per_s,
            "forward_gflops": first.forward_gflops,
            "threads": first.threads,
            "batch": batch,
            "architecture": config,
            "parameters": config.parameters(),
            "forward_flops_per_image": config.forward_flops(),
            "runs": results,
        });
        println!("{out}");
    } else {
        println!(
            "backbone: {} parameters, {:.3} GFLOP per image; batch {batch}",
            config.parameters(),
            config.forward_flops() as f64 / 1e9
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Bench {
            what:
                BenchCommand::Step {
                    batch,
                    rounds,
                    threads,
                    json,
                    worker,
                },
        } => bench_step(batch, rounds, &threads, json, worker),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
