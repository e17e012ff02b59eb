//! Readers for the face data sets under the shared data folder (its README
//! describes them): file lists with labels, and LFW's `pairs.txt`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// An image with its class index within its data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// Path of the image.
    pub path: PathBuf,
    /// Class index (classes numbered in sorted name order).
    pub label: u32,
}

/// The image files under `root` (by extension), sorted.
pub fn images_under(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.is_dir() {
        bail!("{} is not a folder", root.display());
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
        let is_image = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"));
        if entry.file_type().is_file() && is_image {
            files.push(entry.into_path());
        }
    }
    files.sort();
    Ok(files)
}

/// An image file as RGB, with an error that names the file.
pub fn read_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .to_rgb8())
}

/// The images of a `<root>/<class>/<image>` tree and the sorted class names.
pub fn folder_tree(root: &Path) -> Result<(Vec<Labelled>, Vec<String>)> {
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    let mut images = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(class))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "jpeg" | "png")))
            .collect();
        files.sort();
        images.extend(files.into_iter().map(|path| Labelled {
            path,
            label: label as u32,
        }));
    }
    if images.is_empty() {
        bail!("{} holds no <class>/<image> files", root.display());
    }
    Ok((images, classes))
}

/// A labelled image set for the curation commands, with each image's true
/// class when the labels were corrupted on purpose (see `label_noise`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledSet {
    /// Images with their class indices.
    pub images: Vec<Labelled>,
    /// Class names in label order (sorted).
    pub classes: Vec<String>,
    /// Per image, its true class name (a list's third column).
    pub truth: Option<Vec<String>>,
}

impl LabelledSet {
    /// Reads a `<root>/<class>/<image>` tree, or a list file of
    /// `path<TAB>class[<TAB>true class]` lines (relative paths are relative
    /// to the list's folder); keeps the classes with at least `min_images`.
    pub fn load(spec: &Path, min_images: usize) -> Result<Self> {
        let set = if spec.is_dir() {
            let (images, classes) = folder_tree(spec)?;
            Self {
                images,
                classes,
                truth: None,
            }
        } else {
            Self::read_list(spec)?
        };
        set.with_min_images(min_images, spec)
    }

    fn read_list(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (give a <class>/<image> folder or a list file)",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            if !(2..=3).contains(&fields.len()) || fields.iter().any(|f| f.is_empty()) {
                bail!(
                    "{} line {}: expected path<TAB>class[<TAB>true class]",
                    path.display(),
                    n + 1
                );
            }
            rows.push((base.join(fields[0]), fields[1], fields.get(2).copied()));
        }
        if rows.is_empty() {
            bail!("{} lists no image", path.display());
        }
        let with_truth = rows.iter().filter(|r| r.2.is_some()).count();
        if with_truth != 0 && with_truth != rows.len() {
            bail!(
                "{}: {with_truth} of {} lines have a true class; give it on every line or on none",
                path.display(),
                rows.len()
            );
        }
        let classes: Vec<String> = rows
            .iter()
            .map(|r| r.1.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index: BTreeMap<&str, u32> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u32))
            .collect();
        let images = rows
            .iter()
            .map(|(path, class, _)| Labelled {
                path: path.clone(),
                label: index[class],
            })
            .collect();
        let truth = (with_truth != 0).then(|| rows.iter().filter_map(|r| r.2.map(String::from)).collect());
        Ok(Self { images, classes, truth })
    }

    /// Drops the classes with fewer than `min` images and renumbers the rest.
    fn with_min_images(self, min: usize, spec: &Path) -> Result<Self> {
        let mut counts = vec![0usize; self.classes.len()];
        for i in &self.images {
            counts[i.label as usize] += 1;
        }
        let mut renumber = vec![None; self.classes.len()];
        let mut classes = Vec::new();
        for (old, name) in self.classes.into_iter().enumerate() {
            if counts[old] >= min {
                renumber[old] = Some(classes.len() as u32);
                classes.push(name);
            }
        }
        if classes.is_empty() {
            bail!("{}: no class has {min} or more images", spec.display());
        }
        let (mut images, mut truth) = (Vec::new(), self.truth.as_ref().map(|_| Vec::new()));
        for (n, image) in self.images.into_iter().enumerate() {
            if let Some(label) = renumber[image.label as usize] {
                images.push(Labelled {
                    path: image.path,
                    label,
                });
                if let (Some(t), Some(all)) = (truth.as_mut(), self.truth.as_ref()) {
                    t.push(all[n].clone());
                }
            }
        }
        Ok(Self { images, classes, truth })
    }
}

/// A table file with a header line, fields separated by tabs (or by commas
/// when the header has no tab): the header and the rows.
pub fn read_table(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        bail!("{} is empty (a header line is needed)", path.display());
    };
    let sep = if header.contains('\t') { '\t' } else { ',' };
    let split = |line: &str| line.split(sep).map(|f| f.trim().to_string()).collect::<Vec<_>>();
    Ok((split(header), lines.map(split).collect()))
}

/// The named columns of a [`read_table`] file, row by row.
pub fn read_columns(path: &Path, names: &[&str]) -> Result<Vec<Vec<String>>> {
    let (header, rows) = read_table(path)?;
    let at: Vec<usize> = names
        .iter()
        .map(|name| {
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("{} has no {name} column", path.display()))
        })
        .collect::<Result<_>>()?;
    rows.into_iter()
        .enumerate()
        .map(|(n, row)| {
            at.iter()
                .map(|&i| {
                    row.get(i)
                        .cloned()
                        .with_context(|| format!("{} row {} has too few columns", path.display(), n + 1))
                })
                .collect()
        })
        .collect()
}

/// CelebA in the wild: `identity.csv` (`image,identity`), labels numbered in
/// sorted identity order. Returns the images and the identity numbers.
pub fn celeba(root: &Path) -> Result<(Vec<Labelled>, Vec<u32>)> {
    let csv = root.join("identity.csv");
    let text = std::fs::read_to_string(&csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let Some((image, identity)) = line.split_once(',') else {
            bail!("{} line {}: expected image,identity", csv.display(), n + 1);
        };
        let identity: u32 = identity
            .trim()
            .parse()
            .with_context(|| format!("{} line {}: identity is not a number", csv.display(), n + 1))?;
        rows.push((root.join(image.trim()), identity));
    }
    let ids: Vec<u32> = rows.iter().map(|r| r.1).collect::<BTreeSet<_>>().into_iter().collect();
    let index: BTreeMap<u32, u32> = ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
    let images = rows
        .into_iter()
        .map(|(path, id)| Labelled {
            path,
            label: index[&id],
        })
        .collect();
    Ok((images, ids))
}

/// One LFW verification pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Fold (0-based).
    pub fold: usize,
    /// Same person?
    pub same: bool,
    /// The two images, relative to the LFW folder.
    pub images: [String; 2],
}

fn lfw_image(name: &str, index: &str) -> Result<String> {
    let i: u32 = index
        .trim()
        .parse()
        .with_context(|| format!("image index {index:?} is not a number"))?;
    Ok(format!("{name}/{name}_{i:04}.jpg"))
}

/// Parses LFW's `pairs.txt`: a `folds per_fold` header, then per fold
/// `per_fold` matched lines (`name i j`) and `per_fold` mismatched ones (`a i b j`).
pub fn lfw_pairs(text: &str) -> Result<Vec<Pair>> {
    let mut lines = text.lines();
    let header: Vec<usize> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("pairs.txt header must be two numbers: folds and pairs per fold")?;
    let [folds, per_fold] = header[..] else {
        bail!("pairs.txt header must be two numbers: folds and pairs per fold");
    };
    let mut pairs = Vec::with_capacity(folds * per_fold * 2);
    for (n, line) in lines.enumerate().take(folds * per_fold * 2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let images = match f[..] {
            [name, i, j] => [lfw_image(name, i)?, lfw_image(name, j)?],
            [a, i, b, j] => [lfw_image(a, i)?, lfw_image(b, j)?],
            _ => bail!("pairs.txt line {}: expected 3 or 4 fields", n + 2),
        };
        pairs.push(Pair {
            fold: n / (2 * per_fold),
            same: f.len() == 3,
            images,
        });
        if pairs.last().is_some_and(|p| p.same != (n % (2 * per_fold) < per_fold)) {
            bail!("pairs.txt line {}: matched and mismatched pairs out of order", n + 2);
        }
    }
    if pairs.len() != folds * per_fold * 2 {
        bail!(
            "pairs.txt has {} pairs, its header promises {}",
            pairs.len(),
            folds * per_fold * 2
        );
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_image_files_are_found_and_a_missing_folder_is_an_error() {
        let dir = std::env::temp_dir().join(format!("normgate-norms-tree-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b/c")).unwrap();
        for f in ["b/c/2.PNG", "a.jpg", "notes.txt", "b/1.jpeg"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let found: Vec<PathBuf> = images_under(&dir)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().to_path_buf())
            .collect();
        assert_eq!(found, ["a.jpg", "b/1.jpeg", "b/c/2.PNG"].map(PathBuf::from));
        let err = images_under(&dir.join("a.jpg")).unwrap_err().to_string();
        assert!(err.contains("is not a folder"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pairs_parse_into_folds() {
        let text = "2\t1\nA\t1\t2\nB\t1\tC\t3\nD\t2\t4\nE\t1\tF\t1\n";
        let p = lfw_pairs(text).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].images, ["A/A_0001.jpg".to_string(), "A/A_0002.jpg".to_string()]);
        assert!(p[0].same && !p[1].same && p[2].same && !p[3].same);
        assert_eq!(p.iter().map(|x| x.fold).collect::<Vec<_>>(), [0, 0, 1, 1]);
        assert_eq!(p[1].images[1], "C/C_0003.jpg");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("normgate-datasets-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_list_gives_sorted_classes_relative_paths_and_truth() {
        let dir = scratch("list");
        let list = dir.join("list.tsv");
        std::fs::write(
            &list,
            "# corrupted\na/1.jpg\tzed\tzed\na/2.jpg\talf\tzed\n/abs/3.jpg\talf\talf\n",
        )
        .unwrap();
        let set = LabelledSet::load(&list, 1).unwrap();
        assert_eq!(set.classes, ["alf", "zed"]);
        assert_eq!(set.images[0].path, dir.join("a/1.jpg"));
        assert_eq!(set.images[2].path, PathBuf::from("/abs/3.jpg"));
        assert_eq!(set.images.iter().map(|i| i.label).collect::<Vec<_>>(), [1, 0, 0]);
        assert_eq!(set.truth.unwrap(), ["zed", "zed", "alf"]);
        // min_images drops the one-image class and renumbers, truth follows.
        let set = LabelledSet::load(&list, 2).unwrap();
        assert_eq!(set.classes, ["alf"]);
        assert_eq!(set.images.len(), 2);
        assert_eq!(set.truth.unwrap(), ["zed", "alf"]);
    }

    #[test]
    fn bad_lists_are_rejected_with_the_line() {
        let dir = scratch("bad");
        let check = |text: &str, needle: &str| {
            let list = dir.join("l.tsv");
            std::fs::write(&list, text).unwrap();
            let e = format!("{:#}", LabelledSet::load(&list, 1).unwrap_err());
            assert!(e.contains(needle), "{e}");
        };
        check("", "lists no image");
        check("a.jpg\n", "line 1");
        check("a.jpg\tx\ty\tz\n", "line 1");
        check("a.jpg\tx\ty\nb.jpg\tx\n", "on every line or on none");
        let e = LabelledSet::load(&dir.join("missing.tsv"), 1).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read"));
        std::fs::write(dir.join("l.tsv"), "a.jpg\tx\n").unwrap();
        let e = LabelledSet::load(&dir.join("l.tsv"), 2).unwrap_err();
        assert!(format!("{e:#}").contains("no class has 2"));
    }

    #[test]
    fn broken_pairs_files_are_rejected() {
        assert!(lfw_pairs("").is_err());
        assert!(lfw_pairs("1 1\nA 1 2\n").is_err(), "too few lines");
        assert!(lfw_pairs("1 1\nA 1\nB 1 C 2\n").is_err(), "two fields");
        assert!(lfw_pairs("1 1\nB 1 C 2\nA 1 2\n").is_err(), "order");
        assert!(lfw_pairs("1 1\nA x 2\nB 1 C 2\n").is_err(), "index");
    }
}
