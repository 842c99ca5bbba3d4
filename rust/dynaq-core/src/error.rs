//! Errors of the core crate. The bindings map each variant to one Python exception type.

use std::fmt;

/// Everything that can go wrong in a dynaq operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A shape or size argument is inconsistent (maps to `ValueError`).
    Shape(String),
    /// An input contains NaN or +-infinity where finite values are required (`ValueError`);
    /// `row` is the first such row when the input is quantized per row.
    NonFinite {
        /// The first row holding one, when known.
        row: Option<usize>,
    },
    /// A value is outside the range an operation allows (`ValueError`).
    Value(String),
    /// An exact integer result does not fit the output type (`OverflowError`).
    Overflow(String),
    /// Serialized bytes are truncated, corrupt or of an unknown version (`ValueError`).
    Corrupt(String),
    /// A requested allocation is too large (`MemoryError`).
    Memory(String),
    /// An unknown ISA name or a path this CPU cannot run (`ValueError`).
    Isa(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NonFinite { row: None } => f.write_str("input contains NaN or infinity"),
            Error::NonFinite { row: Some(r) } => {
                write!(f, "input contains NaN or infinity (row {r})")
            }
            Error::Shape(m)
            | Error::Value(m)
            | Error::Overflow(m)
            | Error::Corrupt(m)
            | Error::Memory(m)
            | Error::Isa(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Allocates a zero-filled vector, turning an impossible size into [`Error::Memory`] instead of
/// aborting the process.
pub fn try_zeroed<T: Clone + Default>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::Memory(format!(
            "cannot allocate {len} elements of {} bytes for {what}",
            std::mem::size_of::<T>()
        ))
    })?;
    v.resize(len, T::default());
    Ok(v)
}
