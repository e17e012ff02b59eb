//! Duplicate identities from classifier weights (seed §2).
//!
//! After training with one A-Softmax head per data set, each class is a
//! normalised weight row with no bias, so two rows of one person point the
//! same way. Rows are compared block by block (between two heads, or within
//! one head without self pairs), so a 100k x 100k problem never holds more
//! than one `block x block` tile of similarities; pairs above a threshold,
//! optionally only the `top_k` per row, are streamed to the caller, and
//! union-find turns pairs into groups.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use crate::norm::l2_norm;
use crate::{Error, Result};

/// A row-major matrix of class weight rows with their precomputed inverse norms.
#[derive(Debug, Clone)]
pub struct Rows<'a> {
    data: &'a [f32],
    dim: usize,
    inverse_norms: Vec<f32>,
}

impl<'a> Rows<'a> {
    /// Wraps `data` as rows of `dim` values; every row must be finite and non-zero.
    pub fn new(data: &'a [f32], dim: usize) -> Result<Self> {
        let count = crate::error::rows_of("weights", data.len(), dim)?;
        let mut inverse_norms = Vec::with_capacity(count);
        for row in data.chunks_exact(dim) {
            let n = l2_norm(row);
            if !n.is_finite() || row.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite("weights"));
            }
            if n == 0.0 {
                return Err(Error::InvalidParameter {
                    name: "weights",
                    reason: "a row has zero norm and no direction to compare",
                });
            }
            inverse_norms.push(1.0 / n);
        }
        Ok(Self {
            data,
            dim,
            inverse_norms,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.inverse_norms.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.inverse_norms.is_empty()
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// Two similar rows: `a` from the first matrix, `b` from the second (or the same one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// Row in the first matrix.
    pub a: u32,
    /// Row in the second matrix (in the first, for within-head scans).
    pub b: u32,
    /// Cosine similarity of the two rows.
    pub cosine: f32,
}

/// What counts as similar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScanConfig {
    /// Pairs need a cosine strictly above this (the seed used 0.5).
    pub threshold: f32,
    /// Keep at most this many pairs per row of the first matrix, the most similar first.
    pub top_k: Option<usize>,
    /// Tile edge; memory is `block * block` floats.
    pub block: usize,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            top_k: None,
            block: 256,
        }
    }
}

/// Dot product with eight independent accumulators, so the compiler can vectorise it.
fn fast_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The portable tile product: `tile[i * nb + j] = a_i · b_j` for the
/// row-major blocks `a` (`na x dim`) and `b` (`nb x dim`).
pub fn dot_tile(a: &[f32], b: &[f32], dim: usize, tile: &mut [f32]) {
    let nb = b.len() / dim;
    for (i, ai) in a.chunks_exact(dim).enumerate() {
        for (j, bj) in b.chunks_exact(dim).enumerate() {
            tile[i * nb + j] = fast_dot(ai, bj);
        }
    }
}

/// Scans the rows `rows` of `a` against every row of `b` (or, with `b = None`,
/// against the other rows of `a`) and calls `emit` for each similar pair.
///
/// Within one head and without `top_k`, only pairs `a < b` are visited (the
/// upper triangle). With `top_k`, each row's `k` best neighbours are emitted
/// (most similar first), so a pair may appear from both of its rows. Disjoint
/// `rows` ranges can run on separate threads.
pub fn scan(
    a: &Rows,
    b: Option<&Rows>,
    rows: Range<usize>,
    config: &ScanConfig,
    emit: &mut impl FnMut(Pair),
) -> Result<()> {
    scan_with(a, b, rows, config, &mut dot_tile, emit)
}

/// `scan` with the tile products computed by `tile` (same contract as
/// `dot_tile`), so a host can plug in an optimised matrix multiply.
pub fn scan_with(
    a: &Rows,
    b: Option<&Rows>,
    rows: Range<usize>,
    config: &ScanConfig,
    tile_product: &mut impl FnMut(&[f32], &[f32], usize, &mut [f32]),
    emit: &mut impl FnMut(Pair),
) -> Result<()> {
    let within = b.is_none();
    let b = b.unwrap_or(a);
    if a.dim != b.dim {
        return Err(Error::ShapeMismatch {
            what: "second weight matrix's row length",
            expected: a.dim,
            got: b.dim,
        });
    }
    if rows.end > a.len() {
        return Err(Error::OutOfRange {
            what: "rows",
            index: rows.end,
            count: a.len(),
        });
    }
    if config.block == 0 || config.top_k == Some(0) {
        return Err(Error::InvalidParameter {
            name: "block and top_k",
            reason: "must be at least 1",
        });
    }
    let block = config.block;
    let mut tile = vec![0.0f32; block * block];
    let k = config.top_k.unwrap_or(0);
    let mut best: Vec<Vec<Pair>> = (0..block).map(|_| Vec::with_capacity(k + 1)).collect();
    let mut i0 = rows.start;
    while i0 < rows.end {
        let i1 = (i0 + block).min(rows.end);
        let upper_only = within && config.top_k.is_none();
        let mut j0 = if upper_only { i0 } else { 0 };
        while j0 < b.len() {
            let j1 = (j0 + block).min(b.len());
            let width = j1 - j0;
            tile_product(
                &a.data[i0 * a.dim..i1 * a.dim],
                &b.data[j0 * b.dim..j1 * b.dim],
                a.dim,
                &mut tile[..(i1 - i0) * width],
            );
            for i in i0..i1 {
                for j in j0..j1 {
                    if within && (j == i || (upper_only && j < i)) {
                        continue;
                    }
                    let cosine = tile[(i - i0) * width + (j - j0)] * a.inverse_norms[i] * b.inverse_norms[j];
                    if cosine <= config.threshold {
                        continue;
                    }
                    let pair = Pair {
                        a: i as u32,
                        b: j as u32,
                        cosine,
                    };
                    if k == 0 {
                        emit(pair);
                    } else {
                        keep_best(&mut best[i - i0], pair, k);
                    }
                }
            }
            j0 = j1;
        }
        for list in best.iter_mut().take(i1 - i0) {
            list.drain(..).for_each(&mut *emit);
        }
        i0 = i1;
    }
    Ok(())
}

/// Inserts `pair` into `list` (sorted by cosine, descending) if it is among the best `k`.
fn keep_best(list: &mut Vec<Pair>, pair: Pair, k: usize) {
    let at = list.partition_point(|p| p.cosine >= pair.cosine);
    if at < k {
        list.insert(at, pair);
        list.truncate(k);
    }
}

/// All similar pairs, sorted by `(a, b)`. Within one head, each unordered
/// pair appears once as `a < b`.
pub fn find_pairs(a: &Rows, b: Option<&Rows>, config: &ScanConfig) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    scan(a, b, 0..a.len(), config, &mut |p| pairs.push(p))?;
    canonical_order(&mut pairs, b.is_none());
    Ok(pairs)
}

/// Sorts scanned pairs by `(a, b)` and drops repeats; `within` one head,
/// each unordered pair is first written as `a < b` (with `top_k` a pair can
/// come from both of its rows).
pub fn canonical_order(pairs: &mut Vec<Pair>, within: bool) {
    if within {
        for p in pairs.iter_mut() {
            if p.a > p.b {
                core::mem::swap(&mut p.a, &mut p.b);
            }
        }
    }
    pairs.sort_by_key(|p| (p.a, p.b));
    pairs.dedup_by_key(|p| (p.a, p.b));
}

/// Disjoint sets over `0..n`, with path halving and union by size.
#[derive(Debug, Clone)]
pub struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    /// `n` singleton sets.
    pub fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    /// The representative of `x`'s set.
    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grandparent = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grandparent;
            x = grandparent;
        }
        x
    }

    /// Merges the sets of `x` and `y`.
    pub fn union(&mut self, x: u32, y: u32) {
        let (mut rx, mut ry) = (self.find(x), self.find(y));
        if rx == ry {
            return;
        }
        if self.size[rx as usize] < self.size[ry as usize] {
            core::mem::swap(&mut rx, &mut ry);
        }
        self.parent[ry as usize] = rx;
        self.size[rx as usize] += self.size[ry as usize];
    }

    /// Every set with at least two members, each sorted, ordered by smallest member.
    pub fn groups(&mut self) -> Vec<Vec<u32>> {
        let n = self.parent.len();
        let mut slot = vec![u32::MAX; n];
        let mut groups: Vec<Vec<u32>> = Vec::new();
        for x in 0..n as u32 {
            let root = self.find(x);
            if self.size[root as usize] < 2 {
                continue;
            }
            if slot[root as usize] == u32::MAX {
                slot[root as usize] = groups.len() as u32;
                groups.push(Vec::new());
            }
            groups[slot[root as usize] as usize].push(x);
        }
        groups
    }
}

/// Groups of rows that pairs connect. Between two heads, rows of the second
/// head are numbered after the first: `b + a_len`.
pub fn groups(pairs: &[Pair], a_len: usize, b_len: Option<usize>) -> Vec<Vec<u32>> {
    let offset = if b_len.is_some() { a_len as u32 } else { 0 };
    let mut sets = UnionFind::new(a_len + b_len.unwrap_or(0));
    for p in pairs {
        sets.union(p.a, p.b + offset);
    }
    sets.groups()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Dense reference: every pair above the threshold, by a plain double loop.
    fn dense(a: &[f32], b: &[f32], dim: usize, threshold: f32, within: bool) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (i, ra) in a.chunks(dim).enumerate() {
            for (j, rb) in b.chunks(dim).enumerate() {
                if within && j <= i {
                    continue;
                }
                if crate::norm::cosine(ra, rb) > threshold {
                    out.push((i as u32, j as u32));
                }
            }
        }
        out
    }

    fn ids(pairs: &[Pair]) -> Vec<(u32, u32)> {
        pairs.iter().map(|p| (p.a, p.b)).collect()
    }

    #[test]
    fn finds_the_planted_pairs_between_heads() {
        // Head A: x, y, z axes; head B: -x, 2y (same as A1), z + small x (close to A2).
        let a = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let b = [-1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.1, 0.0, 1.0];
        let (ra, rb) = (Rows::new(&a, 3).unwrap(), Rows::new(&b, 3).unwrap());
        let pairs = find_pairs(&ra, Some(&rb), &ScanConfig::default()).unwrap();
        assert_eq!(ids(&pairs), [(1, 1), (2, 2)]);
        assert!((pairs[0].cosine - 1.0).abs() < 1e-6);
        assert!((pairs[1].cosine - 1.0 / libm::sqrtf(1.01)).abs() < 1e-6);
        assert_eq!(groups(&pairs, 3, Some(3)), [vec![1, 4], vec![2, 5]]);
    }

    #[test]
    fn within_one_head_skips_self_pairs_and_groups_chains() {
        // Rows 0, 2, 3 point nearly the same way; row 1 is orthogonal.
        let a = [1.0, 0.0, 0.0, 1.0, 1.0, 0.1, 1.0, 0.2];
        let ra = Rows::new(&a, 2).unwrap();
        let cfg = ScanConfig {
            threshold: 0.9,
            block: 1,
            top_k: None,
        };
        let pairs = find_pairs(&ra, None, &cfg).unwrap();
        assert_eq!(ids(&pairs), [(0, 2), (0, 3), (2, 3)]);
        assert_eq!(groups(&pairs, 4, None), [vec![0, 2, 3]]);
    }

    #[test]
    fn top_k_keeps_the_best_neighbours() {
        let a = [1.0, 0.0];
        let b = [1.0, 0.3, 1.0, 0.1, 1.0, 0.2, 0.0, 1.0];
        let cfg = ScanConfig {
            threshold: 0.0,
            top_k: Some(2),
            block: 2,
        };
        let mut got = Vec::new();
        scan(
            &Rows::new(&a, 2).unwrap(),
            Some(&Rows::new(&b, 2).unwrap()),
            0..1,
            &cfg,
            &mut |p| got.push(p),
        )
        .unwrap();
        assert_eq!(ids(&got), [(0, 1), (0, 2)]);
    }

    #[test]
    fn bad_matrices_are_rejected() {
        assert!(matches!(Rows::new(&[1.0, f32::NAN], 2), Err(Error::NonFinite(_))));
        assert!(matches!(Rows::new(&[0.0, 0.0], 2), Err(Error::InvalidParameter { .. })));
        assert!(matches!(Rows::new(&[1.0; 5], 2), Err(Error::ShapeMismatch { .. })));
        let (a, b) = ([1.0; 4], [1.0; 3]);
        let (ra, rb) = (Rows::new(&a, 2).unwrap(), Rows::new(&b, 3).unwrap());
        assert!(find_pairs(&ra, Some(&rb), &ScanConfig::default()).is_err());
        assert!(scan(&ra, None, 0..3, &ScanConfig::default(), &mut |_| {}).is_err());
    }

    proptest! {
        #[test]
        fn blocked_scan_equals_the_dense_double_loop(
            a in prop::collection::vec(-1.0f32..1.0, 3 * 17),
            b in prop::collection::vec(-1.0f32..1.0, 3 * 11),
            block in 1usize..9,
            threshold in -0.5f32..0.9,
        ) {
            prop_assume!(a.chunks(3).chain(b.chunks(3)).all(|r| l2_norm(r) > 1e-3));
            let (ra, rb) = (Rows::new(&a, 3).unwrap(), Rows::new(&b, 3).unwrap());
            let cfg = ScanConfig { threshold, top_k: None, block };
            let between = find_pairs(&ra, Some(&rb), &cfg).unwrap();
            let expected = dense(&a, &b, 3, threshold, false);
            // Cosines within 1e-5 of the threshold may fall either way.
            let borderline = |i: u32, j: u32| (crate::norm::cosine(&a[i as usize * 3..][..3], &b[j as usize * 3..][..3]) - threshold).abs() < 1e-5;
            let got = ids(&between);
            for p in got.iter().filter(|p| !expected.contains(p)) { prop_assert!(borderline(p.0, p.1)); }
            for p in expected.iter().filter(|p| !got.contains(p)) { prop_assert!(borderline(p.0, p.1)); }
            let within = ids(&find_pairs(&ra, None, &cfg).unwrap());
            let expected = dense(&a, &a, 3, threshold, true);
            let borderline = |i: u32, j: u32| (crate::norm::cosine(&a[i as usize * 3..][..3], &a[j as usize * 3..][..3]) - threshold).abs() < 1e-5;
            for p in within.iter().filter(|p| !expected.contains(p)) { prop_assert!(borderline(p.0, p.1)); }
            for p in expected.iter().filter(|p| !within.contains(p)) { prop_assert!(borderline(p.0, p.1)); }
        }

        #[test]
        fn union_find_groups_partition_the_connected_members(edges in prop::collection::vec((0u32..30, 0u32..30), 0..40)) {
            let mut uf = UnionFind::new(30);
            for &(x, y) in &edges { uf.union(x, y); }
            let gs = uf.groups();
            let mut seen = [false; 30];
            for g in &gs {
                prop_assert!(g.len() >= 2);
                for &m in g { prop_assert!(!seen[m as usize]); seen[m as usize] = true; }
            }
            for &(x, y) in &edges {
                if x != y {
                    prop_assert!(gs.iter().any(|g| g.contains(&x) && g.contains(&y)));
                }
            }
        }
    }
}
