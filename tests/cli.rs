//! The device binary as users and scripts call it: the README's main command,
//! bad input, and the JSON contract.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary, behind `NORMGATE_TEST_RUNNER` when set: under qemu-user without
/// binfmt_misc a test cannot exec a foreign binary directly (cross/test-aarch64.sh).
fn command() -> Command {
    let exe = env!("CARGO_BIN_EXE_normgate");
    match std::env::var("NORMGATE_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap());
            cmd.args(words).arg(exe).env_remove("LD_LIBRARY_PATH");
            cmd
        }
        _ => Command::new(exe),
    }
}

fn normgate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = command()
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NORMGATE_CONFIG")
        .env_remove("NORMGATE_SOURCE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("normgate-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample_jpeg(name: &str) -> Vec<u8> {
    let img = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join(name)).unwrap();
    let mut out = Vec::new();
    img.to_rgb8()
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
    out
}

#[test]
fn the_readme_main_command_runs_on_the_embedded_default() {
    let v = json(&normgate(&["run", "--json"], None));
    let bundled = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples"))
        .unwrap()
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg"))
        })
        .count();
    assert_eq!(v["frames"], bundled as u64);
    assert_eq!(v["decode_errors"], 0);
}

#[test]
fn corrupt_stream_frames_are_counted_and_skipped() {
    let good = sample_jpeg("astronaut.png");
    let other = sample_jpeg("coffee.png");
    let truncated = &good[..good.len() / 2];
    let stream = [good.clone(), truncated.to_vec(), other, b"garbage".to_vec(), good].concat();
    let v = json(&normgate(&["run", "--source", "-", "--json"], Some(&stream)));
    assert_eq!(v["frames"], 3, "{v}");
    assert_eq!(v["decode_errors"], 2, "{v}");
}

#[test]
fn truncated_files_in_a_directory_are_counted() {
    let dir = scratch("trunc");
    let good = sample_jpeg("rocket.jpg");
    std::fs::write(dir.join("a.jpg"), &good).unwrap();
    std::fs::write(dir.join("b.jpg"), &good[..100]).unwrap();
    std::fs::write(dir.join("c.png"), b"").unwrap();
    let v = json(&normgate(&["run", "--source", dir.to_str().unwrap(), "--json"], None));
    assert_eq!((v["frames"].as_u64(), v["decode_errors"].as_u64()), (Some(1), Some(2)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unusable_input_exits_with_a_message_and_no_panic() {
    let dir = scratch("bad");
    let bad_config = dir.join("bad.toml");
    std::fs::write(&bad_config, "[gate.policy]\nkind = \"drop_rate\"\nrate = 2.0\n").unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "[gate]\nmin_face = 3\n").unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["check-config", bad_config.to_str().unwrap()], "rate"),
        (&["check-config", typo.to_str().unwrap()], "min_face"),
        (&["run", "--config", "does-not-exist.toml"], "cannot read config file"),
        (&["run", "--source", "no/such/dir"], "no such file"),
        (&["run", "--source", empty.to_str().unwrap()], "holds no images"),
    ];
    for (args, needle) in cases {
        let out = normgate(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_config_reports_the_cameras_as_json() {
    let dir = scratch("ok");
    let file = dir.join("ok.toml");
    std::fs::write(
        &file,
        "[gate.policy]\nkind = \"fixed\"\nthreshold = 8.0\n[[camera]]\nid = \"door\"\nsource = \"samples\"\n",
    )
    .unwrap();
    let v = json(&normgate(&["check-config", file.to_str().unwrap(), "--json"], None));
    assert_eq!(v["valid"], true);
    assert_eq!(v["cameras"][0]["id"], "door");
    assert_eq!(v["gate"]["policy"]["threshold"], 8.0);
    std::fs::remove_dir_all(dir).unwrap();
}
