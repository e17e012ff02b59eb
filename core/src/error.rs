use thiserror::Error;

/// Everything the core can reject. Each variant names what was wrong so that
/// the binaries can pass the message straight to the user.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// A buffer's length does not fit the shape the other arguments imply.
    #[error("{what}: expected length {expected}, got {got}")]
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// A parameter is outside its valid range.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// What the valid range is.
        reason: &'static str,
    },
    /// Landmarks from which no similarity transform can be estimated.
    #[error("degenerate landmarks: {0}")]
    DegenerateLandmarks(&'static str),
    /// A NaN or infinite value where a finite one is required.
    #[error("non-finite value in {0}")]
    NonFinite(&'static str),
    /// A class index beyond the number of classes.
    #[error("{what}: index {index} out of range (count {count})")]
    OutOfRange {
        /// Which index.
        what: &'static str,
        /// The index that was passed.
        index: usize,
        /// The number of valid indices.
        count: usize,
    },
}

/// The core's result type.
pub type Result<T> = core::result::Result<T, Error>;

/// Checks that `got == expected`, naming the buffer otherwise.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { what, expected, got })
    }
}

/// Checks that a row-major buffer holds whole rows of `dim` values and returns the row count.
pub(crate) fn rows_of(what: &'static str, len: usize, dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::InvalidParameter {
            name: "dim",
            reason: "must be at least 1",
        });
    }
    if len % dim != 0 {
        return Err(Error::ShapeMismatch {
            what,
            expected: (len / dim + 1) * dim,
            got: len,
        });
    }
    Ok(len / dim)
}
