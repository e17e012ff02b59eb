//! Label spaces for concat training (seed §1).
//!
//! Several data sets train one shared backbone with one classification head
//! each, so identities shared between sets never need to be known up front. A
//! batch holds a fixed number of samples from each set, in set order, and the
//! features are sliced back per set. Once duplicate identities are known (from
//! [`crate::dedup`]), the sets' classes can be merged into one label space for
//! single-head training.

use alloc::vec::Vec;
use core::ops::Range;

use crate::dedup::UnionFind;
use crate::{Error, Result};

/// One class of one data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassRef {
    /// Index of the data set.
    pub set: u16,
    /// Class within that set.
    pub class: u32,
}

/// The concatenated label space: set `s`'s class `c` is global index `offset[s] + c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcatLabels {
    offsets: Vec<u32>,
}

impl ConcatLabels {
    /// Label space for sets with these class counts (at least one set).
    pub fn new(class_counts: &[u32]) -> Result<Self> {
        if class_counts.is_empty() || class_counts.len() > usize::from(u16::MAX) {
            return Err(Error::InvalidParameter {
                name: "data sets",
                reason: "need between 1 and 65535 sets",
            });
        }
        let mut offsets = Vec::with_capacity(class_counts.len() + 1);
        let mut total = 0u32;
        offsets.push(0);
        for &c in class_counts {
            total = total.checked_add(c).ok_or(Error::InvalidParameter {
                name: "class counts",
                reason: "the total must fit in 32 bits",
            })?;
            offsets.push(total);
        }
        Ok(Self { offsets })
    }

    /// Number of data sets.
    pub fn sets(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of classes of one set.
    pub fn classes(&self, set: u16) -> Result<u32> {
        let s = usize::from(set);
        if s >= self.sets() {
            return Err(Error::OutOfRange {
                what: "data set",
                index: s,
                count: self.sets(),
            });
        }
        Ok(self.offsets[s + 1] - self.offsets[s])
    }

    /// Classes over all sets.
    pub fn total(&self) -> u32 {
        self.offsets[self.sets()]
    }

    /// The global index of a set's class.
    pub fn global(&self, r: ClassRef) -> Result<u32> {
        let count = self.classes(r.set)?;
        if r.class >= count {
            return Err(Error::OutOfRange {
                what: "class",
                index: r.class as usize,
                count: count as usize,
            });
        }
        Ok(self.offsets[usize::from(r.set)] + r.class)
    }

    /// The set and class of a global index.
    pub fn local(&self, global: u32) -> Result<ClassRef> {
        if global >= self.total() {
            return Err(Error::OutOfRange {
                what: "global class",
                index: global as usize,
                count: self.total() as usize,
            });
        }
        let set = self.offsets.partition_point(|&o| o <= global) - 1;
        Ok(ClassRef {
            set: set as u16,
            class: global - self.offsets[set],
        })
    }
}

/// Rows of a concat batch that belong to each set, when the batch holds
/// `per_set[s]` samples of set `s`, in set order.
pub fn batch_slices(per_set: &[usize]) -> Vec<Range<usize>> {
    let mut start = 0;
    per_set
        .iter()
        .map(|&n| {
            start += n;
            start - n..start
        })
        .collect()
}

/// One label space in which duplicate identities share a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedLabels {
    concat: ConcatLabels,
    label_of: Vec<u32>,
    count: u32,
}

impl MergedLabels {
    /// Merges classes joined by `duplicates` (directly or through chains).
    /// Labels are numbered in order of first appearance in the concatenated
    /// space, so the result does not depend on the order of the pairs.
    pub fn new(concat: ConcatLabels, duplicates: &[(ClassRef, ClassRef)]) -> Result<Self> {
        let mut sets = UnionFind::new(concat.total() as usize);
        for &(x, y) in duplicates {
            sets.union(concat.global(x)?, concat.global(y)?);
        }
        let mut label_of_root = alloc::vec![u32::MAX; concat.total() as usize];
        let mut count = 0;
        let label_of = (0..concat.total())
            .map(|g| {
                let root = sets.find(g) as usize;
                if label_of_root[root] == u32::MAX {
                    label_of_root[root] = count;
                    count += 1;
                }
                label_of_root[root]
            })
            .collect();
        Ok(Self {
            concat,
            label_of,
            count,
        })
    }

    /// Number of merged labels (identities).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The merged label of a set's class.
    pub fn label(&self, r: ClassRef) -> Result<u32> {
        Ok(self.label_of[self.concat.global(r)? as usize])
    }

    /// Every set class that carries `label`, in concatenated order.
    pub fn members(&self, label: u32) -> Vec<ClassRef> {
        self.label_of
            .iter()
            .enumerate()
            .filter(|(_, &l)| l == label)
            .filter_map(|(g, _)| self.concat.local(g as u32).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    fn r(set: u16, class: u32) -> ClassRef {
        ClassRef { set, class }
    }

    #[test]
    fn global_and_local_indices_round_trip() {
        let c = ConcatLabels::new(&[3, 0, 2]).unwrap();
        assert_eq!((c.sets(), c.total()), (3, 5));
        assert_eq!(c.global(r(2, 1)).unwrap(), 4);
        assert_eq!(c.local(3).unwrap(), r(2, 0));
        assert!(c.global(r(1, 0)).is_err());
        assert!(c.global(r(3, 0)).is_err());
        assert!(c.local(5).is_err());
        assert!(ConcatLabels::new(&[]).is_err());
    }

    #[test]
    fn batch_slices_follow_set_order() {
        assert_eq!(batch_slices(&[100, 100]), [0..100, 100..200]);
        assert_eq!(batch_slices(&[2, 0, 3]), [0..2, 2..2, 2..5]);
    }

    #[test]
    fn duplicates_merge_across_and_within_sets() {
        // Set 0 has 3 classes, set 1 has 2. 0:1 = 1:0 (across), 1:0 = 1:1 (within).
        let c = ConcatLabels::new(&[3, 2]).unwrap();
        let m = MergedLabels::new(c, &[(r(0, 1), r(1, 0)), (r(1, 1), r(1, 0))]).unwrap();
        assert_eq!(m.count(), 3);
        let labels: Vec<u32> = [r(0, 0), r(0, 1), r(0, 2), r(1, 0), r(1, 1)]
            .iter()
            .map(|&x| m.label(x).unwrap())
            .collect();
        assert_eq!(labels, [0, 1, 2, 1, 1]);
        assert_eq!(m.members(1), [r(0, 1), r(1, 0), r(1, 1)]);
        let c = ConcatLabels::new(&[3, 2]).unwrap();
        assert!(MergedLabels::new(c, &[(r(0, 3), r(1, 0))]).is_err());
    }

    proptest! {
        #[test]
        fn merging_is_independent_of_pair_order(
            counts in prop::collection::vec(1u32..6, 1..4),
            raw in prop::collection::vec((0u16..4, 0u32..6, 0u16..4, 0u32..6), 0..8),
        ) {
            let c = ConcatLabels::new(&counts).unwrap();
            let valid = |s: u16, k: u32| (s as usize) < counts.len() && k < counts[s as usize];
            let pairs: Vec<_> = raw.iter().filter(|(s1, k1, s2, k2)| valid(*s1, *k1) && valid(*s2, *k2))
                .map(|&(s1, k1, s2, k2)| (r(s1, k1), r(s2, k2))).collect();
            let forward = MergedLabels::new(c.clone(), &pairs).unwrap();
            let mut reversed = pairs.clone();
            reversed.reverse();
            let backward = MergedLabels::new(c.clone(), &reversed).unwrap();
            prop_assert_eq!(&forward, &backward);
            for (x, y) in pairs { prop_assert_eq!(forward.label(x).unwrap(), forward.label(y).unwrap()); }
            let mut seen = vec![false; forward.count() as usize];
            for g in 0..c.total() { seen[forward.label(c.local(g).unwrap()).unwrap() as usize] = true; }
            prop_assert!(seen.iter().all(|&s| s));
        }
    }
}
