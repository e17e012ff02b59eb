//! `prepare` and `pseudo-label`: the caches of aligned crops and the
//! detector's pseudo-labels (`normgate_train::data`).

use anyhow::Result;
use normgate_train::data::{prepare, pseudo};

use super::{print_report, threads, TeacherArgs};

#[derive(clap::Args, Debug)]
pub(crate) struct PrepareArgs {
    #[command(flatten)]
    teacher: TeacherArgs,
    /// Rebuild caches that exist.
    #[arg(long)]
    force: bool,
    /// Seed of the training degradations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use at most this many images per data set (a quick check; write to another --out).
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn prepare(args: PrepareArgs) -> Result<()> {
    let PrepareArgs {
        teacher,
        force,
        seed,
        limit,
        json,
    } = args;
    let inputs = prepare::Inputs {
        detector: teacher.detector(),
        embedder: (
            teacher.models.join("mobilefacenet_foamliu_fp32.onnx"),
            teacher.cards.join("mobilefacenet.toml"),
        ),
        data: teacher.data,
        limit,
    };
    let out = teacher.out;
    let start = std::time::Instant::now();
    let caches = prepare::run(&inputs, &out, force, seed)?;
    let seconds = start.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::json!({ "caches": caches, "seconds": seconds }));
    } else {
        for c in &caches {
            let how = if c.reused { "kept" } else { "built" };
            println!(
                "{:<10} {how}: {} crops, {} without a detected face, {} unreadable",
                c.name, c.crops, c.no_face, c.unreadable
            );
        }
        println!("{seconds:.0} s");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub(crate) struct PseudoLabelArgs {
    #[command(flatten)]
    pub(crate) teacher: TeacherArgs,
    /// Threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Label only the first N images (a quick check; write to another --out).
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn pseudo_label(args: PseudoLabelArgs) -> Result<()> {
    let PseudoLabelArgs {
        teacher,
        threads: wanted,
        limit,
        json,
    } = args;
    let (model, card) = teacher.detector();
    let detector = normgate::detector::Detector::load(&model, &card)?;
    let (data, out) = (&teacher.data, &teacher.out);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{pos} images {elapsed} {per_sec}").expect("a valid template"),
    );
    let r = pseudo::run(data, &detector, out, threads(wanted), limit, &|| bar.inc(1))?;
    bar.finish_and_clear();
    print_report(json, &r, |r| {
        format!(
            "{} images ({} validation), {} faces, {} without a face, {} unreadable, {:.0} s: {}/{}",
            r.images,
            r.validation_images,
            r.faces,
            r.without_face,
            r.unreadable,
            r.seconds,
            out.display(),
            pseudo::FILE
        )
    })
}
