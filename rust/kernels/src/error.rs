//! The one error type of the kernels; the bindings map each variant to one
//! Python exception (`Shape` → ValueError, `Index` → IndexError).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Sizes that do not fit together. The message names the op and shapes.
    Shape(String),
    /// An id or target outside its valid range.
    Index(String),
    /// An argument value outside its domain (a negative eps, say).
    Value(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m) | Error::Index(m) | Error::Value(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// The element count of `dims`, or `None` where it overflows `usize`.
pub fn elements(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Checks that a slice holds exactly the elements its dims promise.
pub fn check_len(op: &str, name: &str, len: usize, dims: &[usize]) -> Result<()> {
    // Checked: in a release build a wrapped product could match a short slice.
    let Some(want) = elements(dims) else {
        return Err(Error::Shape(format!(
            "{op}: {name}'s shape {dims:?} has more elements than memory can hold"
        )));
    };
    if len != want {
        return Err(Error::Shape(format!(
            "{op}: {name} has {len} elements but its shape {dims:?} needs {want}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_len_refuses_an_overflowing_shape() {
        // 2^32 * 2^32 wraps to 0 in a release build: a 0-length slice must not pass.
        let e = check_len("op", "x", 0, &[1 << 32, 1 << 32]).unwrap_err();
        assert!(matches!(e, Error::Shape(ref m) if m.contains("more elements than memory")));
        assert_eq!(elements(&[0, usize::MAX, 2]), Some(0));
        assert_eq!(elements(&[usize::MAX, 2]), None);
        assert!(check_len("op", "x", 6, &[2, 3]).is_ok());
    }
}
