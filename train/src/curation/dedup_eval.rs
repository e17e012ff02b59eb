//! `normgate-train eval dedup`: how well a `dedup` result finds known
//! duplicate identities. Precision and recall of the pairs above each
//! threshold against a ground-truth list of name pairs, restricted to the
//! truth pairs whose classes are in the heads (a duplicate the heads cannot
//! see is no miss of `dedup`), and the curve as a PNG.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::data::datasets::{read_columns, read_table};

/// Precision and recall of the pairs whose cosine is above `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrPoint {
    /// Cosine threshold (pairs strictly above count).
    pub threshold: f32,
    /// True pairs above the threshold.
    pub true_pairs: usize,
    /// Other pairs above the threshold.
    pub false_pairs: usize,
    /// true / (true + false); 1 with no pair.
    pub precision: f64,
    /// true / truth pairs in the heads.
    pub recall: f64,
}

/// The evaluation of one dedup result.
#[derive(Debug, Clone, Serialize)]
pub struct DedupEval {
    /// Truth pairs whose two classes are in the heads.
    pub truth_pairs: usize,
    /// Truth pairs with a class the heads lack (not counted).
    pub truth_pairs_absent: usize,
    /// Pairs of the dedup result (above its own scan threshold).
    pub scored_pairs: usize,
    /// At each asked threshold.
    pub at: Vec<PrPoint>,
    /// Area under the precision-recall steps (average precision).
    pub average_precision: f64,
    /// One point after each scored pair, highest cosine first.
    #[serde(skip)]
    pub curve: Vec<PrPoint>,
}

/// An unordered pair of class names.
fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}

/// Class names, one per line.
pub fn read_names(path: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let names: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("{} lists no class name", path.display());
    }
    Ok(names)
}

/// Scores `pairs_tsv` (dedup's `pairs.tsv`) against `truth` (a CSV or TSV
/// whose first two columns name a duplicate pair), counting only truth
/// pairs with one class in `names_a` and the other in `names_b`.
pub fn evaluate(
    pairs_tsv: &Path,
    truth: &Path,
    names_a: &BTreeSet<String>,
    names_b: &BTreeSet<String>,
    thresholds: &[f32],
) -> Result<DedupEval> {
    let (header, rows) = read_table(truth)?;
    if header.len() < 2 {
        bail!("{}: the first two columns must name a duplicate pair", truth.display());
    }
    let present =
        |a: &str, b: &str| (names_a.contains(a) && names_b.contains(b)) || (names_a.contains(b) && names_b.contains(a));
    let mut wanted = BTreeSet::new();
    let mut absent = 0;
    for (n, row) in rows.iter().enumerate() {
        let [a, b] = [row.first(), row.get(1)].map(|f| f.map(String::as_str).unwrap_or_default());
        if a.is_empty() || b.is_empty() {
            bail!("{} row {} needs two names", truth.display(), n + 1);
        }
        if present(a, b) {
            wanted.insert(key(a, b));
        } else {
            absent += 1;
        }
    }
    if wanted.is_empty() {
        bail!(
            "no truth pair of {} has both classes in the heads; check the names files",
            truth.display()
        );
    }
    let mut scored = read_columns(pairs_tsv, &["name_a", "name_b", "cosine"])
        .context("is it a dedup pairs.tsv?")?
        .into_iter()
        .enumerate()
        .map(|(n, row)| {
            let cosine: f32 = row[2]
                .parse()
                .with_context(|| format!("{} row {}: cosine {:?}", pairs_tsv.display(), n + 1, row[2]))?;
            Ok((key(&row[0], &row[1]), cosine))
        })
        .collect::<Result<Vec<_>>>()?;
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = wanted.len() as f64;
    let point = |threshold: f32, tp: usize, fp: usize| PrPoint {
        threshold,
        true_pairs: tp,
        false_pairs: fp,
        precision: if tp + fp == 0 {
            1.0
        } else {
            tp as f64 / (tp + fp) as f64
        },
        recall: tp as f64 / total,
    };
    let (mut tp, mut fp, mut curve, mut average_precision) = (0, 0, Vec::new(), 0.0);
    let mut found = BTreeSet::new();
    for (pair, cosine) in &scored {
        if wanted.contains(pair) && found.insert(pair.clone()) {
            tp += 1;
            average_precision += tp as f64 / (tp + fp) as f64 / total;
        } else {
            fp += 1;
        }
        curve.push(point(*cosine, tp, fp));
    }
    let at = thresholds
        .iter()
        .map(|&t| {
            let above = curve.iter().take_while(|p| p.threshold > t).last();
            above.map_or(point(t, 0, 0), |p| PrPoint { threshold: t, ..*p })
        })
        .collect();
    Ok(DedupEval {
        truth_pairs: wanted.len(),
        truth_pairs_absent: absent,
        scored_pairs: scored.len(),
        at,
        average_precision,
        curve,
    })
}

/// Draws precision over recall, one step per scored pair. Axis labels need
/// a TrueType font; without `font` the chart has none.
pub fn pr_png(eval: &DedupEval, font: Option<&Path>, out: &Path) -> Result<()> {
    use plotters::prelude::*;
    if let Some(font) = font {
        crate::curation::norms::register_font(font)?;
    }
    let root = BitMapBackend::new(out, (640, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if font.is_some() {
        builder.x_label_area_size(40).y_label_area_size(50);
    }
    let mut chart = builder.build_cartesian_2d(0.0..1.02f64, 0.0..1.02f64)?;
    if font.is_some() {
        chart.configure_mesh().x_desc("recall").y_desc("precision").draw()?;
    }
    let steps: Vec<(f64, f64)> = std::iter::once((0.0, 1.0))
        .chain(eval.curve.iter().map(|p| (p.recall, p.precision)))
        .collect();
    chart.draw_series(std::iter::once(PathElement::new(steps, BLUE.stroke_width(2))))?;
    for p in &eval.at {
        chart.draw_series(std::iter::once(Circle::new((p.recall, p.precision), 5, RED.filled())))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn precision_and_recall_follow_the_ranked_pairs() {
        let dir = std::env::temp_dir().join(format!("normgate-dedup-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pairs = dir.join("pairs.tsv");
        std::fs::write(
            &pairs,
            "a\tb\tname_a\tname_b\tcosine\n0\t0\tann\tann\t0.9\n1\t2\tbob\tcyd\t0.7\n1\t1\tbob\tbob\t0.6\n2\t0\tcyd\tann\t0.3\n",
        )
        .unwrap();
        // Truth: ann and bob are in both sets; dan is in no head.
        let truth = dir.join("truth.csv");
        std::fs::write(&truth, "left,right\nann,ann\nbob,bob\ndan,dan\n").unwrap();
        let e = evaluate(
            &pairs,
            &truth,
            &names(&["ann", "bob", "cyd"]),
            &names(&["ann", "bob", "cyd"]),
            &[0.5, 0.8],
        )
        .unwrap();
        assert_eq!((e.truth_pairs, e.truth_pairs_absent, e.scored_pairs), (2, 1, 4));
        assert_eq!((e.at[0].true_pairs, e.at[0].false_pairs), (2, 1));
        assert!((e.at[0].precision - 2.0 / 3.0).abs() < 1e-12 && e.at[0].recall == 1.0);
        assert_eq!((e.at[1].true_pairs, e.at[1].false_pairs, e.at[1].recall), (1, 0, 0.5));
        // AP: hits at ranks 1 and 3 → (1/1 + 2/3) / 2.
        assert!((e.average_precision - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        pr_png(&e, None, &dir.join("pr.png")).unwrap();
        assert!(image::open(dir.join("pr.png")).is_ok());
        // A truth list none of whose classes are in the heads is an error.
        assert!(evaluate(&pairs, &truth, &names(&["zed"]), &names(&["zed"]), &[0.5]).is_err());
        std::fs::write(&truth, "only\nann\n").unwrap();
        assert!(evaluate(&pairs, &truth, &names(&["ann"]), &names(&["ann"]), &[0.5]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
