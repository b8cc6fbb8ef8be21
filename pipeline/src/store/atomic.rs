//! Atomic file writes: temp file in the same directory tree, fsync, rename,
//! fsync of the directory. A reader sees the old file or the new one, never
//! a prefix, even if the writer is killed.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh name under `tmp_dir`, unique across processes, threads and
/// hosts: `<pid>-<host tag>-<ns>-<n>.<tag>`. The host tag tells whose pid
/// it is when several machines share a store (Slurm jobs on NFS), so
/// [`super::LocalStore::clean_stale_tmp`] never judges another node's
/// process by a local pid.
pub fn temp_name(tmp_dir: &Path, tag: &str) -> std::path::PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_dir.join(format!(
        "{}-{}-{}-{n}.{tag}",
        std::process::id(),
        host_tag(),
        nanos()
    ))
}

/// This host's tag in temp names: 8 hex digits of its name's sha256.
pub(crate) fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let host = crate::host::hostname();
        crate::digest::Digest::of_bytes(host.as_bytes()).to_hex()[..8].to_string()
    })
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub(crate) fn write_atomic(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_name(tmp_dir, "part");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
