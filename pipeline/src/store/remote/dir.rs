//! `file:///path`: a directory, local or shared (NFS), holding `ac/<key>`
//! and `cas/<sha256>`. Writes go to a temporary name in the same folder
//! and are renamed into place, so a reader never sees half a file. A
//! writer killed mid-copy leaves its temporary file behind: the first write
//! of each process removes those untouched for an hour ([`STALE_TMP`]), on
//! any machine (an upload in progress touches its file as it copies).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{copy_limited, RemoteCache, RemoteError, RemoteResult, MAX_RECORD_BYTES};
use crate::digest::Digest;

pub(crate) struct DirRemote {
    root: PathBuf,
    swept: std::sync::Once,
}

/// A temporary file not written to for this long belongs to a dead writer.
pub(crate) const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

impl DirRemote {
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let path = url.strip_prefix("file://").unwrap_or(url);
        if !path.starts_with('/') {
            return Err(format!(
                "{url:?}: a file remote needs an absolute path (file:///shared/cache)"
            ));
        }
        Ok(DirRemote {
            root: PathBuf::from(path),
            swept: std::sync::Once::new(),
        })
    }

    /// Removes the temporary files of dead writers (untouched for
    /// [`STALE_TMP`]) from `ac/` and `cas/`. Best effort: a file another
    /// process removes first, or cannot be removed, is left.
    fn sweep_stale_tmp(&self) {
        for map in ["ac", "cas"] {
            let Ok(entries) = fs::read_dir(self.root.join(map)) else {
                continue;
            };
            for e in entries.flatten() {
                let stale = e.file_name().to_string_lossy().starts_with(".tmp-")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TMP));
                if stale {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    fn path(&self, map: &str, d: &Digest) -> PathBuf {
        self.root.join(map).join(d.to_hex())
    }

    fn write(
        &self,
        dest: &Path,
        fill: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> RemoteResult<()> {
        let dir = dest.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(|e| self.err(dir, e))?;
        self.swept.call_once(|| self.sweep_stale_tmp());
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{:?}",
            std::process::id(),
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::thread::current().id()
        ));
        let r = fill(&tmp)
            .and_then(|()| fs::File::open(&tmp)?.sync_all())
            .and_then(|()| fs::rename(&tmp, dest));
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(self.err(dest, e));
        }
        Ok(())
    }

    fn err(&self, path: &Path, e: std::io::Error) -> RemoteError {
        let msg = format!("{}: {e}", path.display());
        match e.kind() {
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => RemoteError::Denied(msg),
            _ => RemoteError::Unavailable(msg),
        }
    }
}

impl RemoteCache for DirRemote {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn get_action(&self, key: &Digest) -> RemoteResult<Option<Vec<u8>>> {
        let p = self.path("ac", key);
        let mut f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(&p, e)),
        };
        let mut bytes = Vec::new();
        use std::io::Read;
        (&mut f)
            .take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.err(&p, e))?;
        if bytes.len() as u64 > MAX_RECORD_BYTES {
            return Err(RemoteError::Rejected(format!(
                "{}: larger than {MAX_RECORD_BYTES} bytes; not an action record",
                p.display()
            )));
        }
        Ok(Some(bytes))
    }

    fn put_action(&self, key: &Digest, bytes: &[u8]) -> RemoteResult<()> {
        self.write(&self.path("ac", key), |tmp| fs::write(tmp, bytes))
    }

    fn blob_size(&self, digest: &Digest) -> RemoteResult<Option<Option<u64>>> {
        let p = self.path("cas", digest);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.is_file().then_some(Some(m.len()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&p, e)),
        }
    }

    fn get_blob(&self, digest: &Digest, dest: &Path, max_bytes: u64) -> RemoteResult<bool> {
        let p = self.path("cas", digest);
        let mut f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.err(&p, e)),
        };
        copy_limited(&mut f, dest, max_bytes, &p.display().to_string())?;
        Ok(true)
    }

    fn put_blob(&self, digest: &Digest, src: &Path) -> RemoteResult<()> {
        self.write(&self.path("cas", digest), |tmp| {
            fs::copy(src, tmp).map(drop)
        })
    }
}
