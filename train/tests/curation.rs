//! The curation commands as users call them, on a small synthetic labelled
//! set measured with the shipped backbone (no shared data needed): a label
//! flipped on purpose is found by `clean`, the classes two heads share are
//! found by `heads` + `dedup` + `eval dedup`, `mine` ranks the images, and
//! bad input is refused with a message that says what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_normgate-train"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary starts")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/backbone.onnx")
        .display()
        .to_string()
}

/// `command DATA --aligned --model <shipped backbone> EXTRA...`.
fn on_aligned(command: &str, data: &Path, extra: &[&str]) -> Output {
    let (data, model) = (data.display().to_string(), model());
    let mut args = vec![command, &data, "--aligned", "--model", &model];
    args.extend(extra);
    bin(&args)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("normgate-curation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `classes` folders of 8 aligned-size (112x112) images each: one stripe
/// pattern per class (its own direction, period and colours, so that the
/// embedder tells the classes apart), a little seeded noise per image.
fn synthetic_set(dir: &Path, classes: usize) -> PathBuf {
    let root = dir.join("set");
    let mut state = 12345u32;
    let mut noise = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 28) as u8
    };
    for c in 0..classes {
        let folder = root.join(format!("class{c}"));
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..8 {
            let image = image::RgbImage::from_fn(112, 112, |x, y| {
                let period = 6 + 5 * c as u32;
                let along = match c % 3 {
                    0 => x,
                    1 => y,
                    _ => x + y,
                };
                let palette = [[220u8, 60, 40], [40, 200, 70], [60, 80, 230], [200, 200, 40]][c % 4];
                let base = if (along / period) % 2 == 0 {
                    palette
                } else {
                    palette.map(|v| 255 - v)
                };
                image::Rgb(base.map(|v| v.saturating_add(noise())))
            });
            image.save(folder.join(format!("{i}.png"))).unwrap();
        }
    }
    root
}

#[test]
fn a_flipped_label_is_found_and_relabelled() {
    let dir = scratch("clean");
    let set = synthetic_set(&dir, 3);
    let noisy = dir.join("noisy");
    let c = json(&bin(&[
        "corrupt-labels",
        &set.display().to_string(),
        "--flip",
        "0.05",
        "--seed",
        "3",
        "--out",
        &noisy.display().to_string(),
        "--json",
    ]));
    assert_eq!(c["flipped"], 1);
    let out = dir.join("clean").display().to_string();
    let r = json(&on_aligned(
        "clean",
        &noisy.join("list.tsv"),
        &["--out", &out, "--json"],
    ));
    assert_eq!(r["images"], 24);
    let truth = &r["truth"];
    assert_eq!(
        (truth["wrong"].as_u64(), truth["caught"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(truth["relabelled_right"], 1, "{r}");
    let report = std::fs::read_to_string(dir.join("clean/report.tsv")).unwrap();
    assert_eq!(report.lines().count(), 1 + 24);
    assert!(report.lines().nth(1).unwrap().ends_with("\trelabel"));
}

#[test]
fn classes_shared_by_two_heads_are_found_and_mine_ranks_the_images() {
    let dir = scratch("split");
    let set = synthetic_set(&dir, 4);
    let s = |p: &Path| p.display().to_string();
    // Head b sees the same images with two classes split in two ids each.
    let split = dir.join("split");
    let c = json(&bin(&[
        "corrupt-labels",
        &s(&set),
        "--split",
        "2",
        "--seed",
        "1",
        "--out",
        &s(&split),
        "--json",
    ]));
    let heads = dir.join("heads");
    let h = json(&bin(&[
        "heads",
        "--set",
        &format!("a={}", s(&set)),
        "--set",
        &format!("b={}", s(&split.join("list.tsv"))),
        "--aligned",
        "a,b",
        "--model",
        &model(),
        "--steps",
        "300",
        "--out",
        &s(&heads),
        "--json",
    ]));
    assert_eq!(
        (h["sets"][0]["classes"].as_u64(), h["sets"][1]["classes"].as_u64()),
        (Some(4), Some(6))
    );
    let mut truth = String::from("a,b\n");
    for class in (0..4).map(|c| format!("class{c}")) {
        if c["split"].as_array().unwrap().iter().any(|v| v == class.as_str()) {
            truth += &format!("{class},{class}#1\n{class},{class}#2\n");
        } else {
            truth += &format!("{class},{class}\n");
        }
    }
    std::fs::write(dir.join("truth.csv"), truth).unwrap();
    let (names_a, names_b) = (s(&heads.join("a.names")), s(&heads.join("b.names")));
    let file = s(&heads.join("heads.safetensors"));
    let pairs = dir.join("dedup");
    json(&bin(&[
        "dedup",
        &file,
        &file,
        "--tensor-a",
        "a",
        "--tensor-b",
        "b",
        "--names-a",
        &names_a,
        "--names-b",
        &names_b,
        "--threshold=-1",
        "--out",
        &s(&pairs),
        "--json",
    ]));
    let e = json(&bin(&[
        "eval",
        "dedup",
        &s(&pairs.join("pairs.tsv")),
        "--truth",
        &s(&dir.join("truth.csv")),
        "--names-a",
        &names_a,
        "--names-b",
        &names_b,
        "--png",
        &s(&dir.join("pr.png")),
        "--json",
    ]));
    assert_eq!(
        (e["truth_pairs"].as_u64(), e["scored_pairs"].as_u64()),
        (Some(6), Some(24))
    );
    // Every class's row in b is closer to its own row in a than any other pair.
    assert_eq!(e["average_precision"], 1.0, "{e}");
    assert!(dir.join("pr.png").is_file());
    let mine_out = s(&dir.join("mine"));
    let m = json(&on_aligned(
        "mine",
        &set,
        &[
            "--head", &file, "--tensor", "a", "--top", "5", "--out", &mine_out, "--json",
        ],
    ));
    assert_eq!((m["images"].as_u64(), m["hard"].as_u64()), (Some(32), Some(5)));
    let hard = std::fs::read_to_string(dir.join("mine/hard.tsv")).unwrap();
    let losses: Vec<f64> = hard
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(3).unwrap().parse().unwrap())
        .collect();
    assert!(losses.windows(2).all(|w| w[0] >= w[1]), "hardest first: {losses:?}");
}

#[test]
fn bad_input_is_refused_with_what_to_fix() {
    let dir = scratch("bad");
    let s = |p: &Path| p.display().to_string();
    let list = dir.join("list.tsv");
    std::fs::write(&list, "a.png\n").unwrap();
    let out = s(&dir.join("out"));
    refused(&on_aligned("clean", &list, &["--out", &out]), "line 1");
    refused(
        &bin(&["train-landmarks", "--out", &out, "--units", "2,2"]),
        "three counts",
    );
    let detector = model().replace("backbone.onnx", "detector.onnx");
    refused(
        &bin(&[
            "eval",
            "detector",
            "--model",
            &detector,
            "--backbone",
            "none",
            "--update-card",
        ]),
        "--update-card writes the backbone's card",
    );
    refused(
        &bin(&["clean", &s(&dir.join("none")), "--aligned", "--out", &out]),
        "cannot read",
    );
    let set = synthetic_set(&dir, 2);
    refused(
        &bin(&[
            "heads",
            "--set",
            &format!("a={}", s(&set)),
            "--aligned",
            "b",
            "--model",
            &model(),
            "--out",
            &out,
        ]),
        "not a --set",
    );
    refused(&bin(&["corrupt-labels", &s(&set), "--out", &out]), "--flip");
    // A head whose classes are not the set's.
    let names = dir.join("other.names");
    std::fs::write(&names, "x\ny\n").unwrap();
    let npy = dir.join("head.npy");
    std::fs::write(&npy, npy_f32(&[2, 128], &[0.5; 256])).unwrap();
    refused(
        &on_aligned(
            "mine",
            &set,
            &["--head", &s(&npy), "--names", &s(&names), "--out", &out],
        ),
        "\"class0\" of the set is not a class of the head",
    );
    let pairs = dir.join("pairs.tsv");
    std::fs::write(&pairs, "a\tb\tname_a\tname_b\tcosine\n0\t1\tx\ty\tnot-a-number\n").unwrap();
    let truth = dir.join("truth.csv");
    std::fs::write(&truth, "a,b\nx,y\n").unwrap();
    refused(
        &bin(&[
            "eval",
            "dedup",
            &s(&pairs),
            "--truth",
            &s(&truth),
            "--names-a",
            &s(&names),
        ]),
        "cosine \"not-a-number\"",
    );
}

/// A little-endian f32 `.npy` file.
fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    bytes
}
