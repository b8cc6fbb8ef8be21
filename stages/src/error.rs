//! The one error type of the stages crate. Every message names the file,
//! key or value at fault and what was expected, because it is shown to a
//! researcher who is about to spend GPU hours.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The input is readable but not what the stage expects (truncated archive,
    /// label out of range, folder with no images ...).
    #[error("{path}: {message}")]
    InvalidInput { path: PathBuf, message: String },
    #[error("{path}: sha256 is {actual}, but the config expects {expected}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A parameter value is not acceptable (order not a permutation, too many
    /// base classes ...). `key` is the parameter's name as the user wrote it.
    #[error("{key}: {message}")]
    InvalidParam { key: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl StageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        StageError::InvalidInput {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn param(key: impl Into<String>, message: impl Into<String>) -> Self {
        StageError::InvalidParam {
            key: key.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = StageError> = std::result::Result<T, E>;
