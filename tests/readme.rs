//! The README's commands stay true: every `normgate` command it shows (in
//! its shell blocks and inline) names a subcommand and flags the binary
//! has, and every script or make target it runs exists. The main command
//! and `make check` themselves run in tests/cli.rs and CI.

mod common;

use std::collections::BTreeSet;

use common::{command, root};

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// Lines of the README's ```sh blocks.
fn shell_lines(text: &str) -> Vec<String> {
    text.split("```sh\n")
        .skip(1)
        .flat_map(|block| block.split("```").next().unwrap().lines())
        .map(|l| l.split(" # ").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Every `normgate ...` command: from the shell blocks (after `cargo run
/// --release --`) and from inline code spans.
fn normgate_commands(text: &str) -> BTreeSet<String> {
    let mut commands = BTreeSet::new();
    for line in shell_lines(text) {
        for part in line.split("&&").chain(line.split('|')) {
            let part = part.trim();
            if let Some(rest) = part.strip_prefix("cargo run --release -- ") {
                commands.insert(format!("normgate {rest}"));
            } else if part.starts_with("normgate ") {
                commands.insert(part.to_string());
            }
        }
    }
    for span in text.split('`').skip(1).step_by(2) {
        let span = span.split('|').next_back().unwrap().trim();
        if span.starts_with("normgate ") && span.split_whitespace().count() > 1 && !span.contains('{') {
            commands.insert(span.to_string());
        }
    }
    commands
}

#[test]
fn every_normgate_command_in_the_readme_names_flags_the_binary_has() {
    let text = readme();
    let commands = normgate_commands(&text);
    assert!(commands.len() >= 5, "{commands:?}");
    let mut help_of = std::collections::HashMap::new();
    for c in &commands {
        let words: Vec<&str> = c.split_whitespace().collect();
        let sub = words[1];
        let help = help_of.entry(sub.to_string()).or_insert_with(|| {
            let out = command().args([sub, "--help"]).output().unwrap();
            assert!(out.status.success(), "`{c}`: no subcommand {sub}");
            String::from_utf8_lossy(&out.stdout).to_string()
        });
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(help.contains(flag), "`{c}`: normgate {sub} has no {flag}");
        }
    }
}

#[test]
fn the_scripts_and_make_targets_the_readme_runs_exist() {
    let text = readme();
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    for line in shell_lines(&text) {
        for word in line.split_whitespace() {
            if word.contains('/') && word.ends_with(".sh") {
                assert!(root().join(word).is_file(), "README runs {word}, which is missing");
            }
        }
        if let Some(target) = line.strip_prefix("make ") {
            assert!(
                makefile.lines().any(|l| l.starts_with(&format!("{target}:"))),
                "README runs `make {target}`, which the Makefile lacks"
            );
        }
    }
    // The files the README points readers to.
    for link in text.split("](").skip(1).map(|s| s.split(')').next().unwrap()) {
        if !link.starts_with("http") {
            assert!(root().join(link).exists(), "README links to {link}, which is missing");
        }
    }
}
