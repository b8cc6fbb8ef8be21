//! Advisory locks between `bsce-pipe` processes sharing a store (flock, so
//! a killed process releases its locks with its file descriptors).

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// A shared lock, or `Ok(None)` if someone holds it exclusively.
    pub fn try_shared(path: &Path) -> std::io::Result<Option<FileLock>> {
        Self::try_flock(path, libc::LOCK_SH)
    }

    /// The exclusive lock, or `Ok(None)` if anyone holds it (shared or not).
    pub fn try_exclusive(path: &Path) -> std::io::Result<Option<FileLock>> {
        Self::try_flock(path, libc::LOCK_EX)
    }

    fn try_flock(path: &Path, op: libc::c_int) -> std::io::Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(FileLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err)
        }
    }
}
