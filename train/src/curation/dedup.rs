//! `normgate-train dedup`: duplicate identities between two classifier heads
//! (or within one) from their weight rows (seed §2). The core's blocked scan
//! does the work, its row blocks spread over threads, so memory stays at the
//! two matrices plus one tile per thread; the pairs become groups and a
//! merged class map for single-head training.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use normgate_core::concat::{ClassRef, ConcatLabels, MergedLabels};
use normgate_core::dedup::{canonical_order, groups, scan_with, Pair, Rows, ScanConfig};

use crate::nn::gemm::{matmul, Operand};

/// The core's tile product `a · bᵀ` with the optimised matrix multiply
/// (one thread: the scan already runs a block per thread).
fn gemm_tile(a: &[f32], b: &[f32], dim: usize, tile: &mut [f32]) {
    let (na, nb) = (a.len() / dim, b.len() / dim);
    matmul(
        Operand::plain(a, na, dim),
        Operand::transposed(b, dim, nb),
        tile,
        false,
        1,
    );
}
use serde::Serialize;

/// A weight matrix: rows are classes.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Row-major values.
    pub data: Vec<f32>,
    /// Values per row.
    pub dim: usize,
    /// One name per row.
    pub names: Vec<String>,
}

impl Matrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.names.len()
    }
}

fn matrix_of(tensor: &Tensor, what: &str) -> Result<(Vec<f32>, usize, usize)> {
    let &[rows, dim] = tensor.dims() else {
        bail!(
            "{what} has shape {:?}; a weight matrix is 2-D (classes x features)",
            tensor.dims()
        );
    };
    if rows == 0 || dim == 0 {
        bail!("{what} is empty ({rows} x {dim})");
    }
    let data = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((data, rows, dim))
}

/// Reads a weight matrix from `.npy`, `.safetensors` (the tensor named
/// `tensor`, or its only 2-D tensor) or a training run folder (its checkpoint),
/// with row names from `names` (one per line) or `{prefix}{row}`.
pub fn load_matrix(path: &Path, tensor: Option<&str>, names: Option<&Path>, prefix: &str) -> Result<Matrix> {
    let what = path.display().to_string();
    let (data, rows, dim) = if path.extension().is_some_and(|e| e == "npy") {
        let t = Tensor::read_npy(path).with_context(|| format!("cannot read {what} as .npy"))?;
        matrix_of(&t, &what)?
    } else {
        let file = if path.is_dir() {
            path.join("checkpoint.safetensors")
        } else {
            path.to_path_buf()
        };
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
            .with_context(|| format!("cannot read {} as .safetensors", file.display()))?;
        let chosen = match tensor {
            Some(name) => tensors.get(name).with_context(|| {
                let mut have: Vec<&String> = tensors.keys().collect();
                have.sort();
                format!("{what} has no tensor {name:?}; it has {have:?}")
            })?,
            None => {
                let matrices: Vec<(&String, &Tensor)> = tensors.iter().filter(|(_, t)| t.rank() == 2).collect();
                match matrices.as_slice() {
                    [(_, t)] => *t,
                    _ => {
                        let mut have: Vec<&&String> = matrices.iter().map(|(n, _)| n).collect();
                        have.sort();
                        bail!("{what} holds several matrices; choose one with --tensor: {have:?}")
                    }
                }
            }
        };
        matrix_of(chosen, &what)?
    };
    let names = match names {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read names {}", file.display()))?;
            let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
            if names.len() != rows {
                bail!(
                    "{} has {} names but {what} has {rows} rows",
                    file.display(),
                    names.len()
                );
            }
            names
        }
        None => (0..rows).map(|i| format!("{prefix}{i}")).collect(),
    };
    Ok(Matrix { data, dim, names })
}

/// All pairs above the threshold, scanning blocks of rows of `a` on `threads`
/// threads; `progress` gets the number of rows finished after each block.
/// Within one head each pair appears once with `a < b`; sorted by `(a, b)`.
pub fn find_pairs(
    a: &Rows,
    b: Option<&Rows>,
    config: &ScanConfig,
    threads: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<Pair>> {
    let blocks = a.len().div_ceil(config.block);
    let next = AtomicUsize::new(0);
    let found = Mutex::new(Vec::new());
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let block = next.fetch_add(1, Ordering::Relaxed);
                    if block >= blocks {
                        break;
                    }
                    let rows = block * config.block..((block + 1) * config.block).min(a.len());
                    let done = rows.len();
                    if let Err(e) = scan_with(a, b, rows, config, &mut gemm_tile, &mut |p| mine.push(p)) {
                        *failed.lock().unwrap() = Some(e);
                        break;
                    }
                    progress(done);
                }
                found.lock().unwrap().extend(mine);
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e.into());
    }
    let mut pairs = found.into_inner().unwrap();
    canonical_order(&mut pairs, b.is_none());
    Ok(pairs)
}

/// What `dedup` found.
#[derive(Debug, Serialize)]
pub struct DedupReport {
    /// Rows of the first matrix.
    pub rows_a: usize,
    /// Rows of the second matrix (none: within the first).
    pub rows_b: Option<usize>,
    /// Values per row.
    pub dim: usize,
    /// Cosine above which two rows are one identity.
    pub threshold: f32,
    /// Similar pairs.
    pub pairs: usize,
    /// Groups of rows that are one identity (two or more rows each).
    pub groups: usize,
    /// Classes after merging (the merged class map's labels).
    pub merged_classes: usize,
    /// Seconds of the scan.
    pub seconds: f64,
}

/// Finds the duplicates and writes `pairs.tsv`, `groups.tsv` and `classmap.tsv` into `out`.
pub fn dedup(
    a: &Matrix,
    b: Option<&Matrix>,
    config: &ScanConfig,
    threads: usize,
    out: &Path,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<DedupReport> {
    let rows_a = Rows::new(&a.data, a.dim).context("first matrix")?;
    let rows_b = match b {
        Some(m) => Some(Rows::new(&m.data, m.dim).context("second matrix")?),
        None => None,
    };
    let start = std::time::Instant::now();
    let pairs = find_pairs(&rows_a, rows_b.as_ref(), config, threads, progress)?;
    let seconds = start.elapsed().as_secs_f64();
    let all_names: Vec<(&str, &str)> = a
        .names
        .iter()
        .map(|n| ("a", n.as_str()))
        .chain(b.iter().flat_map(|m| m.names.iter().map(|n| ("b", n.as_str()))))
        .collect();
    let grouped = groups(&pairs, a.rows(), b.map(Matrix::rows));
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let second = b.unwrap_or(a);
    let mut tsv = String::from("a\tb\tname_a\tname_b\tcosine\n");
    for p in &pairs {
        tsv += &format!(
            "{}\t{}\t{}\t{}\t{:.6}\n",
            p.a, p.b, a.names[p.a as usize], second.names[p.b as usize], p.cosine
        );
    }
    write(out, "pairs.tsv", &tsv)?;
    let mut tsv = String::from("group\tmembers\n");
    for (i, members) in grouped.iter().enumerate() {
        let names: Vec<String> = members
            .iter()
            .map(|&m| format!("{}:{}", all_names[m as usize].0, all_names[m as usize].1))
            .collect();
        tsv += &format!("{i}\t{}\n", names.join(","));
    }
    write(out, "groups.tsv", &tsv)?;
    // The merged label space of concat training (core `concat`): set 0 is
    // the first matrix, set 1 the second; within one head, one set.
    let counts: Vec<u32> = std::iter::once(a.rows())
        .chain(b.map(Matrix::rows))
        .map(|n| n as u32)
        .collect();
    let second_set = u16::from(b.is_some());
    let refs: Vec<(ClassRef, ClassRef)> = pairs
        .iter()
        .map(|p| {
            (
                ClassRef { set: 0, class: p.a },
                ClassRef {
                    set: second_set,
                    class: p.b,
                },
            )
        })
        .collect();
    let merged = MergedLabels::new(ConcatLabels::new(&counts)?, &refs)?;
    let mut tsv = String::from("set\tindex\tname\tmerged_label\n");
    for (set, names) in std::iter::once(&a.names).chain(b.map(|m| &m.names)).enumerate() {
        for (class, name) in names.iter().enumerate() {
            let label = merged.label(ClassRef {
                set: set as u16,
                class: class as u32,
            })?;
            tsv += &format!("{}\t{class}\t{name}\t{label}\n", ["a", "b"][set]);
        }
    }
    write(out, "classmap.tsv", &tsv)?;
    Ok(DedupReport {
        rows_a: a.rows(),
        rows_b: b.map(Matrix::rows),
        dim: a.dim,
        threshold: config.threshold,
        pairs: pairs.len(),
        groups: grouped.len(),
        merged_classes: merged.count() as usize,
        seconds,
    })
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Peak resident memory of this process, bytes (Linux `VmHWM`).
pub fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `rows` random unit rows of `dim` values (a seeded Gaussian), for benchmarks and tests.
pub fn random_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data: Vec<f32> = (0..rows * dim).map(|_| StandardNormal.sample(&mut rng)).collect();
    for row in data.chunks_exact_mut(dim) {
        let n = normgate_core::norm::l2_norm(row);
        row.iter_mut().for_each(|v| *v /= n);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("normgate-dedup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// B's rows 3 and 7 copy A's rows 5 and 11 with a little noise.
    fn planted() -> (Matrix, Matrix) {
        let dim = 32;
        let a = random_rows(40, dim, 1);
        let mut b = random_rows(20, dim, 2);
        let noise = random_rows(2, dim, 3);
        for (k, (bi, ai)) in [(3usize, 5usize), (7, 11)].into_iter().enumerate() {
            for d in 0..dim {
                b[bi * dim + d] = a[ai * dim + d] + 0.1 * noise[k * dim + d];
            }
        }
        let named = |data: Vec<f32>, p: &str| Matrix {
            names: (0..data.len() / dim).map(|i| format!("{p}{i}")).collect(),
            data,
            dim,
        };
        (named(a, "a"), named(b, "b"))
    }

    #[test]
    fn planted_duplicates_are_found_on_any_thread_count_and_mapped_to_one_label() {
        let (a, b) = planted();
        let config = ScanConfig {
            threshold: 0.8,
            top_k: None,
            block: 7,
        };
        let dir = scratch("planted");
        let r = dedup(&a, Some(&b), &config, 3, &dir, &|_| {}).unwrap();
        assert_eq!((r.pairs, r.groups, r.merged_classes), (2, 2, 58));
        let pairs = std::fs::read_to_string(dir.join("pairs.tsv")).unwrap();
        assert!(
            pairs.contains("5\t3\ta5\tb3\t") && pairs.contains("11\t7\ta11\tb7\t"),
            "{pairs}"
        );
        let map = std::fs::read_to_string(dir.join("classmap.tsv")).unwrap();
        let label = |set: &str, i: usize| {
            map.lines()
                .find(|l| l.starts_with(&format!("{set}\t{i}\t")))
                .unwrap()
                .rsplit('\t')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(label("a", 5), label("b", 3));
        assert_ne!(label("a", 5), label("a", 6));
        let rows = Rows::new(&a.data, 32).unwrap();
        let one = find_pairs(&rows, None, &config, 1, &|_| {}).unwrap();
        let four = find_pairs(&rows, None, &config, 4, &|_| {}).unwrap();
        assert_eq!(one, four);
        // The optimised tiles find what the core's portable scan finds.
        let loose = ScanConfig {
            threshold: 0.3,
            ..config
        };
        let core: Vec<(u32, u32)> = normgate_core::dedup::find_pairs(&rows, None, &loose)
            .unwrap()
            .iter()
            .map(|p| (p.a, p.b))
            .collect();
        let here: Vec<(u32, u32)> = find_pairs(&rows, None, &loose, 2, &|_| {})
            .unwrap()
            .iter()
            .map(|p| (p.a, p.b))
            .collect();
        assert!(!core.is_empty());
        assert_eq!(core, here);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn within_one_head_a_pair_is_reported_once() {
        let (a, _) = planted();
        let mut data = a.data.clone();
        data.extend_from_slice(&a.data[5 * 32..6 * 32]);
        let m = Matrix {
            names: (0..41).map(|i| format!("c{i}")).collect(),
            data,
            dim: 32,
        };
        let config = ScanConfig {
            threshold: 0.99,
            top_k: None,
            block: 8,
        };
        let dir = scratch("within");
        let r = dedup(&m, None, &config, 2, &dir, &|_| {}).unwrap();
        assert_eq!((r.pairs, r.groups, r.merged_classes), (1, 1, 40));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = scratch("bad");
        let err =
            |path: &Path, tensor: Option<&str>| format!("{:#}", load_matrix(path, tensor, None, "c").unwrap_err());
        let vector = dir.join("v.npy");
        Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)
            .unwrap()
            .write_npy(&vector)
            .unwrap();
        assert!(err(&vector, None).contains("2-D"));
        let two = dir.join("two.safetensors");
        let m = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("x", m.clone()), ("y", m.clone())]),
            &two,
        )
        .unwrap();
        assert!(err(&two, None).contains("--tensor"));
        assert!(err(&two, Some("z")).contains("no tensor"));
        let ok = dir.join("m.npy");
        m.write_npy(&ok).unwrap();
        let names = dir.join("names.txt");
        std::fs::write(&names, "only-one\n").unwrap();
        let e = format!("{:#}", load_matrix(&ok, None, Some(&names), "c").unwrap_err());
        assert!(e.contains("1 names") && e.contains("2 rows"), "{e}");
        let nan = Matrix {
            data: vec![f32::NAN, 1.0],
            dim: 2,
            names: vec!["n".into()],
        };
        let e = format!(
            "{:#}",
            dedup(&nan, None, &ScanConfig::default(), 1, &dir, &|_| {}).unwrap_err()
        );
        assert!(e.contains("first matrix"), "{e}");
        let short = Matrix {
            data: vec![1.0, 0.0, 0.0],
            dim: 3,
            names: vec!["s".into()],
        };
        let long = Matrix {
            data: vec![1.0, 0.0],
            dim: 2,
            names: vec!["l".into()],
        };
        assert!(dedup(&short, Some(&long), &ScanConfig::default(), 1, &dir, &|_| {}).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
