//! The content-addressed store.
//!
//! Which store a command uses is one rule for all of them ([`locate`]).
//!
//! Layout under the store root (`.bsce/` at the project root by default):
//!
//! | path                 | content                                                       |
//! |----------------------|---------------------------------------------------------------|
//! | `cas/ab/cdef...`     | blobs, named by the sha256 of their content, read-only         |
//! | `ac/ab/cdef....json` | action records: stage key -> output manifest + provenance      |
//! | `labels/<sha>.json`  | the last key record of each logical stage (for explanations)  |
//! | `failed/<key>.json`  | the last failure of a key: error and log; never used as a hit  |
//! | `locks/<key>.lock`   | flock files: one process runs a given key at a time            |
//! | `locks/store.lock`   | shared by every `run`, exclusive for `cache gc`                |
//! | `state/`             | source-file digest cache (path, size, mtime, inode -> digest)  |
//! | `tmp/`               | work and temp files of running processes, named by pid         |
//! | `resume/<key>/`      | a stage key's partial work, kept across failed and killed attempts; removed once the key is stored and by `cache gc` |
//! | `quarantine/`        | blobs that failed `cache verify`                               |
//! | `calibration.json`   | images/s per device class and network (`bsce-pipe calibrate`), for `status --cost`; no key reads it |
//!
//! `cas` + `ac` mirror Bazel's remote cache split, so a remote backend (a
//! shared directory, an HTTP cache, S3) is the same two maps behind
//! [`remote::RemoteCache`], layered under the local store by [`Layered`].
//! Everything outside the store module reaches a store through [`Store`].

pub mod atomic;
pub mod calibration;
pub mod layered;
pub mod local;
pub mod locate;
pub mod lock;
pub mod records;
pub mod remote;

pub use layered::{Layered, RemoteMode, Store, TransferStats};
pub use local::{CachedAction, LocalStore};
pub use records::{ActionRecord, FailureRecord, LabelRecord, OutputEntry, Provenance};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store record {path} is unreadable: {message}")]
    BadRecord { path: PathBuf, message: String },
    #[error("blob {digest} read from {from} has digest {actual}; refused")]
    DigestMismatch {
        digest: String,
        actual: String,
        from: String,
    },
    #[error(
        "{what} (blob {digest}) {}; run `bsce-pipe run` on the config to recompute it",
        match .quarantined {
            Some(q) => format!("changed on disk after it was stored and was moved to {}", q.display()),
            None => "is no longer in the store".to_string(),
        }
    )]
    BlobChanged {
        what: String,
        digest: String,
        quarantined: Option<PathBuf>,
    },
    #[error("remote cache {url}: {message}")]
    Remote { url: String, message: String },
}

impl StoreError {
    /// The machine failed the store (a full disk or quota, the network),
    /// not the data: see [`crate::host::io_is_environment`].
    pub fn is_environment(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => crate::host::io_is_environment(source.kind()),
            _ => false,
        }
    }
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn a_store_write_on_a_full_disk_is_the_environment() {
        let full = StoreError::io(
            "/s/blobs/x",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(full.is_environment());
        let gone = StoreError::io("/s/blobs/x", std::io::ErrorKind::NotFound.into());
        assert!(!gone.is_environment());
        let bad = StoreError::BadRecord {
            path: "/s/ac/x.json".into(),
            message: "truncated".into(),
        };
        assert!(!bad.is_environment());
    }
}
