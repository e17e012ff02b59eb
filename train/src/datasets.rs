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
    fn pairs_parse_into_folds() {
        let text = "2\t1\nA\t1\t2\nB\t1\tC\t3\nD\t2\t4\nE\t1\tF\t1\n";
        let p = lfw_pairs(text).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].images, ["A/A_0001.jpg".to_string(), "A/A_0002.jpg".to_string()]);
        assert!(p[0].same && !p[1].same && p[2].same && !p[3].same);
        assert_eq!(p.iter().map(|x| x.fold).collect::<Vec<_>>(), [0, 0, 1, 1]);
        assert_eq!(p[1].images[1], "C/C_0003.jpg");
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
