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
    /// A server could not be reached or broke off (DNS, refused, timed
    /// out): the network failed, not the stage's inputs.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

impl StageError {
    /// The stage's environment failed, not the stage on its inputs: a full
    /// disk or quota, the network. A rerun may succeed, so the failure does
    /// not mark the inputs as failing.
    pub fn is_environment(&self) -> bool {
        match self {
            StageError::Unreachable(_) => true,
            StageError::Io { source, .. } => bsce_pipeline::host::io_is_environment(source.kind()),
            _ => false,
        }
    }

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
