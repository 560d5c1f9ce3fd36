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

/// Checks that a slice holds exactly the elements its dims promise.
pub fn check_len(op: &str, name: &str, len: usize, dims: &[usize]) -> Result<()> {
    let want: usize = dims.iter().product();
    if len != want {
        return Err(Error::Shape(format!(
            "{op}: {name} has {len} elements but its shape {dims:?} needs {want}"
        )));
    }
    Ok(())
}
