//! `normgate-train classmap`: the label maps of concat training (seed §1)
//! for several `<root>/<class>/<image>` data sets — each set's classes in
//! sorted name order, one head each, and their place in the concatenated
//! space — with identities merged across or within sets from a `dedup`
//! result (seed §2), for training one head on the union.

use std::path::Path;

use anyhow::{Context, Result};
use normgate_core::concat::{ClassRef, ConcatLabels, MergedLabels};
use serde::Serialize;

use crate::data::datasets::{folder_tree, read_columns};

/// One data set's classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataSet {
    /// The set's name (e.g. `glint24`).
    pub name: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Images per class.
    pub images: Vec<usize>,
}

/// Reads a `<root>/<class>/<image>` tree.
pub fn load_set(name: &str, root: &Path) -> Result<DataSet> {
    let (images, classes) = folder_tree(root)?;
    let mut counts = vec![0; classes.len()];
    for i in &images {
        counts[i.label as usize] += 1;
    }
    Ok(DataSet {
        name: name.into(),
        classes,
        images: counts,
    })
}

/// The class-name pairs of a `dedup` `pairs.tsv` (columns `name_a`, `name_b`).
pub fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    Ok(read_columns(path, &["name_a", "name_b"])
        .context("is it a dedup pairs.tsv?")?
        .into_iter()
        .map(|mut row| (std::mem::take(&mut row[0]), std::mem::take(&mut row[1])))
        .collect())
}

/// The concatenated and merged label spaces of `sets`, with `pairs` naming
/// a class of set `between.0` and one of set `between.1`.
pub fn build(sets: &[DataSet], pairs: &[(String, String)], between: (usize, usize)) -> Result<MergedLabels> {
    let counts: Vec<u32> = sets.iter().map(|s| s.classes.len() as u32).collect();
    let concat = ConcatLabels::new(&counts)?;
    let index = |set: usize, name: &str| -> Result<ClassRef> {
        let s = sets
            .get(set)
            .with_context(|| format!("there is no data set number {set}"))?;
        let class = s
            .classes
            .iter()
            .position(|c| c == name)
            .with_context(|| format!("the duplicates name {name:?}, which data set {} lacks", s.name))?;
        Ok(ClassRef {
            set: set as u16,
            class: class as u32,
        })
    };
    let refs = pairs
        .iter()
        .map(|(x, y)| Ok((index(between.0, x)?, index(between.1, y)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(MergedLabels::new(concat, &refs)?)
}

/// What `classmap` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ClassMapSummary {
    /// The sets with their class counts.
    pub sets: Vec<SetSummary>,
    /// Classes over all sets (the concatenated space).
    pub classes: usize,
    /// Identities after merging.
    pub merged_classes: usize,
    /// Duplicate pairs applied.
    pub pairs: usize,
}

/// One set in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct SetSummary {
    /// Name.
    pub name: String,
    /// Classes.
    pub classes: usize,
    /// Images.
    pub images: usize,
}

/// Writes `classmap.tsv`: set, class name, label within the set (its head),
/// label in the concatenated space, merged label.
pub fn write(sets: &[DataSet], merged: &MergedLabels, pairs: usize, out: &Path) -> Result<ClassMapSummary> {
    let mut tsv = String::from("set\tclass\tlocal\tglobal\tmerged\n");
    let mut global = 0u32;
    for (s, set) in sets.iter().enumerate() {
        for (class, name) in set.classes.iter().enumerate() {
            let label = merged.label(ClassRef {
                set: s as u16,
                class: class as u32,
            })?;
            tsv += &format!("{}\t{name}\t{class}\t{global}\t{label}\n", set.name);
            global += 1;
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, tsv).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(ClassMapSummary {
        sets: sets
            .iter()
            .map(|s| SetSummary {
                name: s.name.clone(),
                classes: s.classes.len(),
                images: s.images.iter().sum(),
            })
            .collect(),
        classes: global as usize,
        merged_classes: merged.count() as usize,
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, classes: &[&str]) -> DataSet {
        DataSet {
            name: name.into(),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            images: vec![2; classes.len()],
        }
    }

    #[test]
    fn duplicates_across_sets_share_a_label_and_the_rest_keep_their_own() {
        let sets = [set("a", &["ann", "bob", "cy"]), set("b", &["bob_2", "dee"])];
        let pairs = vec![("bob".to_string(), "bob_2".to_string())];
        let merged = build(&sets, &pairs, (0, 1)).unwrap();
        assert_eq!(merged.count(), 4);
        let label = |s: u16, c: u32| merged.label(ClassRef { set: s, class: c }).unwrap();
        assert_eq!(label(0, 1), label(1, 0));
        assert_ne!(label(0, 0), label(1, 1));
        let dir = std::env::temp_dir().join(format!("normgate-classmap-{}", std::process::id()));
        let s = write(&sets, &merged, pairs.len(), &dir.join("map.tsv")).unwrap();
        assert_eq!((s.classes, s.merged_classes, s.pairs, s.sets[0].images), (5, 4, 1, 6));
        let tsv = std::fs::read_to_string(dir.join("map.tsv")).unwrap();
        assert_eq!(tsv.lines().nth(4).unwrap(), "b\tbob_2\t0\t3\t1");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_pair_naming_an_unknown_class_or_a_bad_file_is_refused() {
        let sets = [set("a", &["ann"]), set("b", &["bob"])];
        let err = build(&sets, &[("ann".into(), "zed".into())], (0, 1)).unwrap_err();
        assert!(err.to_string().contains("\"zed\", which data set b lacks"), "{err}");
        assert!(build(&sets, &[], (0, 5)).is_ok(), "no pairs, nothing to check");
        assert!(build(&sets, &[("ann".into(), "bob".into())], (0, 5)).is_err());
        let dir = std::env::temp_dir().join(format!("normgate-classmap-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.tsv"), "a\tb\tcosine\n0\t1\t0.9\n").unwrap();
        let err = format!("{:#}", read_pairs(&dir.join("p.tsv")).unwrap_err());
        assert!(
            err.contains("no name_a column") && err.contains("dedup pairs.tsv"),
            "{err}"
        );
        std::fs::write(dir.join("q.tsv"), "a\tb\tname_a\tname_b\tcosine\n0\t1\tann\tbob\t0.9\n").unwrap();
        assert_eq!(read_pairs(&dir.join("q.tsv")).unwrap(), [("ann".into(), "bob".into())]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
