//! Remote caches: the same two maps as the local store, action records by
//! key (`ac/<key>`) and blobs by sha256 (`cas/<sha256>`), the layout of
//! Bazel's HTTP cache, so nginx with WebDAV, bazel-remote, a shared
//! directory or an S3 bucket serve as-is.
//!
//! | module   | URL                        | transport                          |
//! |----------|----------------------------|------------------------------------|
//! | [`dir`]  | `file:///path`             | files, written by rename (NFS-safe) |
//! | [`http`] | `http(s)://host/prefix`    | GET/PUT/HEAD, streamed (ureq)       |
//! | [`s3`]   | `s3://bucket/prefix`       | object_store's S3 client            |
//!
//! Backends only move bytes. Everything a remote returns is untrusted; the
//! layer above ([`super::layered`]) parses and checks records and verifies
//! every blob against its digest before it reaches the local store.

pub mod dir;
pub mod http;
pub mod s3;

use std::path::Path;

use crate::digest::Digest;

/// Why a remote call failed. `Unavailable` (refused, timed out, 5xx) and
/// `Denied` (the remote refuses this machine: HTTP 401/403, an S3
/// credential it does not accept, a read-only or forbidden folder, a login
/// page in place of the cache) make the layer stop asking for the rest of
/// the run, with one warning; `Rejected` (another 4xx, a record or blob
/// that fails its checks) is reported and treated as a miss.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Rejected(String),
}

pub(crate) type RemoteResult<T> = Result<T, RemoteError>;

/// Action records larger than this are refused (a real one is a few KiB).
pub(crate) const MAX_RECORD_BYTES: u64 = 16 << 20;

pub trait RemoteCache: Send + Sync {
    /// The remote as messages and provenance show it: never credentials.
    fn describe(&self) -> String;
    /// The raw bytes of `ac/<key>`, at most [`MAX_RECORD_BYTES`]; `None` on
    /// a miss.
    fn get_action(&self, key: &Digest) -> RemoteResult<Option<Vec<u8>>>;
    fn put_action(&self, key: &Digest, bytes: &[u8]) -> RemoteResult<()>;
    /// The size of `cas/<digest>`, `None` on a miss (`Some(None)`: present,
    /// size not told). Push compares it with the local blob's, so a blob
    /// truncated on the server is uploaded again.
    fn blob_size(&self, digest: &Digest) -> RemoteResult<Option<Option<u64>>>;
    /// Streams `cas/<digest>` into `dest` (created); `false` on a miss. At
    /// most `max_bytes` are written: a longer body is an error.
    fn get_blob(&self, digest: &Digest, dest: &Path, max_bytes: u64) -> RemoteResult<bool>;
    /// Streams the file `src` to `cas/<digest>`.
    fn put_blob(&self, digest: &Digest, src: &Path) -> RemoteResult<()>;
}

/// A remote from its URL: `file://`, `http://`, `https://` or `s3://`.
pub fn open(url: &str) -> Result<Box<dyn RemoteCache>, String> {
    check_url(url)?;
    match url.split_once("://").map(|(s, _)| s).unwrap_or("") {
        "file" => Ok(Box::new(dir::DirRemote::new(url)?)),
        "http" | "https" => Ok(Box::new(http::HttpRemote::new(url)?)),
        _ => Ok(Box::new(s3::S3Remote::new(url)?)),
    }
}

pub(crate) use crate::remote_url::check_url;

/// Copies at most `max` bytes of `from` into `dest`; an error past it.
pub(crate) fn copy_limited(
    from: &mut dyn std::io::Read,
    dest: &Path,
    max: u64,
    what: &str,
) -> RemoteResult<u64> {
    use std::io::{Read, Write};
    let mut file = std::fs::File::create(dest)
        .map_err(|e| RemoteError::Rejected(format!("{}: {e}", dest.display())))?;
    let mut limited = from.take(max + 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = limited
            .read(&mut buf)
            .map_err(|e| RemoteError::Unavailable(format!("{what}: reading the body: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            return Err(RemoteError::Rejected(format!(
                "{what}: the body is longer than the {max} bytes its record declares"
            )));
        }
        file.write_all(&buf[..n])
            .map_err(|e| RemoteError::Rejected(format!("{}: {e}", dest.display())))?;
    }
    file.sync_all()
        .map_err(|e| RemoteError::Rejected(format!("{}: {e}", dest.display())))?;
    Ok(total)
}
