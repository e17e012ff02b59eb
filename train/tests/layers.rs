//! The host tools' layout holds (docs/ARCHITECTURE.md): the library's
//! folders are layers, and code (tests aside) uses only its own layer and
//! those below it; no two modules use each other, even through others; no
//! source file grows past the size a reader takes in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. `onnx::graph` (the ONNX file format) sits with
/// `nn` at the bottom: any recipe may read an exported file.
const LAYERS: [&[&str]; 8] = [
    &["nn", "onnx::graph"],
    &["data"],
    &["backbone"],
    &["detector"],
    &["landmarks"],
    &["onnx"],
    &["eval"],
    &["curation"],
];

/// Longest source file, in lines.
const MAX_LINES: usize = 800;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a library file (`data/prepare.rs` -> `data::prepare`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    parts.into_iter().filter(|p| p != "mod").collect::<Vec<_>>().join("::")
}

/// The layer a module path falls in (the longest matching prefix).
fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (i, *n)))
        .filter(|(_, n)| module == *n || module.starts_with(&format!("{n}::")))
        .max_by_key(|(_, n)| n.len())
        .map(|(i, _)| i)
}

/// The code of a file without its unit tests (they sit at the end, after
/// `#[cfg(test)]` and `mod tests`) and without other `#[cfg(test)]` items.
fn code_without_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start() == "#[cfg(test)]" {
            let next = lines.get(i + 1).map_or("", |l| l.trim_start());
            if next.starts_with("mod tests") || next.starts_with("pub(crate) mod tests") {
                break;
            }
            // Skip the attribute and the item it guards (to its closing brace at the same indent).
            let indent = lines[i].len() - lines[i].trim_start().len();
            i += 1;
            while i < lines.len()
                && !(lines[i].len() - lines[i].trim_start().len() == indent && lines[i].trim_start().starts_with('}'))
            {
                if lines[i].trim_end().ends_with(';') && lines[i].len() - lines[i].trim_start().len() == indent {
                    break;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push(lines[i]);
        i += 1;
    }
    out.join("\n")
}

/// The modules a file's code names as `crate::a::b...`, as far as they are
/// files of the crate.
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with("normgate_") {
            continue;
        }
        let path: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        // The longest prefix that is a module file.
        if let Some(module) = (1..=segments.len())
            .rev()
            .map(|k| segments[..k].join("::"))
            .find(|m| modules.contains(m))
        {
            found.insert(module);
        }
    }
    found
}

struct Crate {
    /// Each library module's uses (test code aside).
    graph: BTreeMap<String, BTreeSet<String>>,
    /// Lines per file.
    lines: Vec<(PathBuf, usize)>,
}

fn read_crate() -> Crate {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let library: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            let m = module_of(f);
            m != "lib" && m != "main" && m != "testing" && !m.starts_with("cli")
        })
        .collect();
    let modules: BTreeSet<String> = library.iter().map(|f| module_of(f)).collect();
    let graph = library
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let mut used = uses(&code_without_tests(&text), &modules);
            used.remove(&module_of(f));
            (module_of(f), used)
        })
        .collect();
    let lines = files
        .iter()
        .map(|f| (f.clone(), std::fs::read_to_string(f).unwrap().lines().count()))
        .collect();
    Crate { graph, lines }
}

#[test]
fn every_library_module_sits_in_a_layer_and_uses_none_above_its_own() {
    let krate = read_crate();
    let mut wrong = Vec::new();
    for (module, used) in &krate.graph {
        let Some(own) = layer_of(module) else {
            wrong.push(format!(
                "{module} is in no layer: add its folder to LAYERS and the docs"
            ));
            continue;
        };
        for u in used {
            if layer_of(u).is_none_or(|l| l > own) {
                wrong.push(format!("{module} uses {u}, a layer above it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_two_modules_use_each_other_even_through_others() {
    let graph = read_crate().graph;
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for u in graph.get(m).into_iter().flatten() {
            match state.get(u.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(cycle) = visit(u, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                1 => {
                    let from = stack.iter().position(|s| s == u).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(u.clone());
                    return Some(cycle);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(m, &graph, &mut state, &mut Vec::new()) {
                panic!("import cycle: {}", cycle.join(" -> "));
            }
        }
    }
}

#[test]
fn no_source_file_is_longer_than_a_reader_takes_in() {
    let long: Vec<String> = read_crate()
        .lines
        .into_iter()
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{} has {n} lines", f.display()))
        .collect();
    assert!(
        long.is_empty(),
        "split these by concern (at most {MAX_LINES} lines):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checks_see_uses_and_skip_test_code() {
    let modules: BTreeSet<String> = ["data::prepare", "eval::embedder", "nn::optim"]
        .map(String::from)
        .into();
    let code = "use crate::data::prepare::{Cache, CROP};\nfn f() { crate::nn::optim::read_config(x); normgate_crate::eval::x(); }\n\
                #[cfg(test)]\npub(crate) fn helper() {\n    crate::eval::embedder::Model::Teacher;\n}\n\
                fn g() {}\n#[cfg(test)]\nmod tests {\n    use crate::eval::embedder::Model;\n}\n";
    let seen = uses(&code_without_tests(code), &modules);
    assert_eq!(seen, ["data::prepare", "nn::optim"].map(String::from).into());
    assert_eq!(layer_of("onnx::graph"), Some(0));
    assert_eq!(layer_of("onnx::export"), Some(5));
    assert_eq!(layer_of("curation::dedup"), Some(7));
    assert_eq!(layer_of("cli"), None);
}
