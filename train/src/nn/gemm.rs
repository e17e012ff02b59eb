//! A safe, row-major single-precision matrix multiply over the `gemm` crate
//! (the same kernels candle's CPU matmul uses), with optional transposes so
//! that convolution gradients need no transposed copies.

use gemm::Parallelism;

/// A matrix operand of `rows x cols` (its logical shape), stored row-major
/// as given, or stored as its transpose (`cols x rows`) when `transposed`.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> Operand<'a> {
    /// `data` holds the `rows x cols` matrix row by row.
    pub fn plain(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// `data` holds the transpose of the `rows x cols` matrix, i.e. it column by column.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: true,
        }
    }

    /// Column and row strides.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.rows as isize, 1)
        } else {
            (1, self.cols as isize)
        }
    }
}

/// `c = a · b`, or `c += a · b` when `accumulate`; `c` is row-major
/// `a.rows x b.cols`. `threads > 1` lets the kernel split the work.
///
/// # Panics
/// When the inner dimensions differ or a slice is shorter than its shape
/// needs (checked before any unsafe access).
pub fn matmul(a: Operand, b: Operand, c: &mut [f32], accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(
        a.data.len() >= m * k,
        "lhs holds {} values, needs {}",
        a.data.len(),
        m * k
    );
    assert!(
        b.data.len() >= k * n,
        "rhs holds {} values, needs {}",
        b.data.len(),
        k * n
    );
    assert!(c.len() >= m * n, "dst holds {} values, needs {}", c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above guarantee that every index the strides reach,
    // (rows - 1) * rs + (cols - 1) * cs < rows * cols, lies inside its slice;
    // `c` is borrowed mutably and does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], at: bool, b: &[f32], bt: bool) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        let x = if at { a[p * m + i] } else { a[i * k + p] };
                        let y = if bt { b[j * k + p] } else { b[p * n + j] };
                        x * y
                    })
                    .sum();
            }
        }
        c
    }

    #[test]
    fn every_transpose_combination_matches_the_naive_product() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
            let op = |d, r, c, t| {
                if t {
                    Operand::transposed(d, r, c)
                } else {
                    Operand::plain(d, r, c)
                }
            };
            let mut c = vec![1.0; m * n];
            matmul(op(&a, m, k, at), op(&b, k, n, bt), &mut c, false, 1);
            let expected = naive(m, n, k, &a, at, &b, bt);
            assert!(c.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-5), "{at} {bt}");
            matmul(op(&a, m, k, at), op(&b, k, n, bt), &mut c, true, 2);
            assert!(
                c.iter().zip(&expected).all(|(x, y)| (x - 2.0 * y).abs() < 1e-5),
                "{at} {bt}"
            );
        }
    }
}
