//! The local store: a directory on this machine's filesystem.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::atomic::{sync_dir, temp_name, write_atomic};
use super::records::{ActionRecord, FailureRecord, LabelRecord, OutputEntry};
use super::StoreError;
use crate::digest::Digest;

type Result<T> = std::result::Result<T, StoreError>;

const DIRS: [&str; 8] = [
    "cas",
    "ac",
    "labels",
    "failed",
    "locks",
    "state",
    "tmp",
    "quarantine",
];

#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens the store at `root`, creating its folders on first use.
    pub fn open(root: &Path) -> Result<LocalStore> {
        // Absolute, because stages read blobs through links from their own
        // work folders.
        let root = std::path::absolute(root).map_err(|e| StoreError::io(root, e))?;
        for d in DIRS {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, e))?;
        }
        Ok(LocalStore { root })
    }

    /// Opens an existing store without creating anything (for read-only
    /// commands such as `status`).
    pub fn open_existing(root: &Path) -> Option<LocalStore> {
        let root = std::path::absolute(root).ok()?;
        root.join("cas").is_dir().then_some(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let h = d.to_hex();
        self.root.join("cas").join(&h[..2]).join(&h[2..])
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Moves `path` (a file under `tmp/`) into the CAS under its digest.
    /// The file is synced before the rename so a crash never leaves a named
    /// blob with short content.
    pub fn insert_file(&self, path: &Path) -> Result<OutputEntry> {
        let (digest, size) = Digest::of_file(path).map_err(|e| StoreError::io(path, e))?;
        self.insert_file_as(path, digest, size)?;
        Ok(OutputEntry { digest, size })
    }

    /// Inserts a file whose digest the caller has just computed.
    pub fn insert_file_as(&self, path: &Path, digest: Digest, _size: u64) -> Result<()> {
        let dest = self.blob_path(&digest);
        if dest.is_file() {
            let _ = fs::remove_file(path);
            return Ok(());
        }
        let parent = dest.parent().expect("blob has a parent");
        fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        let f = fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
        f.sync_all().map_err(|e| StoreError::io(path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o444))
            .map_err(|e| StoreError::io(path, e))?;
        fs::rename(path, &dest).map_err(|e| StoreError::io(&dest, e))?;
        sync_dir(parent).map_err(|e| StoreError::io(parent, e))?;
        Ok(())
    }

    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<OutputEntry> {
        let digest = Digest::of_bytes(bytes);
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            let tmp = temp_name(&self.tmp_dir(), "blob");
            fs::write(&tmp, bytes).map_err(|e| StoreError::io(&tmp, e))?;
            self.insert_file_as(&tmp, digest, bytes.len() as u64)?;
        }
        Ok(OutputEntry {
            digest,
            size: bytes.len() as u64,
        })
    }

    fn action_path(&self, key: &Digest) -> PathBuf {
        let h = key.to_hex();
        self.root
            .join("ac")
            .join(&h[..2])
            .join(format!("{}.json", &h[2..]))
    }

    pub fn get_action(&self, key: &Digest) -> Result<Option<ActionRecord>> {
        self.read_record(&self.action_path(key))
    }

    /// An action is a hit only if every output blob is still present.
    pub fn get_usable_action(&self, key: &Digest) -> Result<Option<ActionRecord>> {
        Ok(self
            .get_action(key)?
            .filter(|rec| rec.outputs.values().all(|o| self.has_blob(&o.digest))))
    }

    pub fn put_action(&self, rec: &ActionRecord) -> Result<()> {
        self.write_json(&self.action_path(&rec.key), rec)
    }

    pub fn remove_action(&self, key: &Digest) -> Result<()> {
        let p = self.action_path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&p, e)),
        }
    }

    /// Every action record in the store.
    pub fn actions(&self) -> Result<Vec<ActionRecord>> {
        let mut out = Vec::new();
        for path in files_under(&self.root.join("ac"))? {
            if path.extension().is_some_and(|e| e == "json") {
                if let Some(rec) = self.read_record::<ActionRecord>(&path)? {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// Every blob digest in the CAS.
    pub fn blobs(&self) -> Result<Vec<(Digest, PathBuf)>> {
        let mut out = Vec::new();
        for path in files_under(&self.root.join("cas"))? {
            let name = format!(
                "{}{}",
                path.parent()
                    .and_then(|p| p.file_name())
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            if let Some(d) = Digest::parse(&name) {
                out.push((d, path));
            }
        }
        Ok(out)
    }

    pub fn remove_blob(&self, d: &Digest) -> Result<()> {
        let p = self.blob_path(d);
        fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))
    }

    /// Moves a blob out of the CAS so no action can use it again.
    pub fn quarantine(&self, d: &Digest) -> Result<PathBuf> {
        let from = self.blob_path(d);
        let to = self.root.join("quarantine").join(d.to_hex());
        fs::rename(&from, &to).map_err(|e| StoreError::io(&from, e))?;
        Ok(to)
    }

    fn label_path(&self, label: &str) -> PathBuf {
        self.root.join("labels").join(format!(
            "{}.json",
            Digest::of_bytes(label.as_bytes()).to_hex()
        ))
    }

    pub fn get_label(&self, label: &str) -> Result<Option<LabelRecord>> {
        self.read_record(&self.label_path(label))
    }

    pub fn put_label(&self, rec: &LabelRecord) -> Result<()> {
        self.write_json(&self.label_path(&rec.label), rec)
    }

    fn failure_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("failed")
            .join(format!("{}.json", key.to_hex()))
    }

    pub fn get_failure(&self, key: &Digest) -> Result<Option<FailureRecord>> {
        self.read_record(&self.failure_path(key))
    }

    pub fn put_failure(&self, rec: &FailureRecord) -> Result<()> {
        self.write_json(&self.failure_path(&rec.key), rec)
    }

    pub fn clear_failure(&self, key: &Digest) {
        let _ = fs::remove_file(self.failure_path(key));
    }

    /// Held (shared) by every `run` for its whole length, so `cache gc`,
    /// which needs it exclusively, never deletes what a run has just made.
    pub fn store_lock_path(&self) -> PathBuf {
        self.root.join("locks").join("store.lock")
    }

    pub fn lock_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("{}.lock", key.to_hex()))
    }

    /// A record that cannot be parsed (truncated, garbage, another
    /// version's fields) is a miss, never an error: it is moved to
    /// `quarantine/records/` with one warning naming both paths, so the
    /// stage reruns and writes a good one. Records are only ever replaced
    /// by rename, so a damaged one is damage from outside, not a write in
    /// progress.
    fn read_record<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        match read_json(path) {
            Err(StoreError::BadRecord { path, message }) => {
                match self.quarantine_record(&path) {
                    Ok(to) => eprintln!(
                        "warning: store record {} is unreadable ({message}); moved to {}, its stage counts as not run",
                        path.display(),
                        to.display()
                    ),
                    Err(e) => eprintln!(
                        "warning: store record {} is unreadable ({message}) and could not be moved away ({e}); its stage counts as not run",
                        path.display()
                    ),
                }
                Ok(None)
            }
            other => other,
        }
    }

    /// Moves a damaged record out of the way (see [`Self::read_record`]).
    pub fn quarantine_record(&self, path: &Path) -> Result<PathBuf> {
        let to = record_quarantine_path(&self.root, path);
        let dir = to.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        fs::rename(path, &to).map_err(|e| StoreError::io(path, e))?;
        Ok(to)
    }

    /// Every record file (`ac/`, `labels/`, `failed/`), for `cache verify`.
    pub fn record_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for d in ["ac", "labels", "failed"] {
            out.extend(
                files_under(&self.root.join(d))?
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "json")),
            );
        }
        Ok(out)
    }

    fn write_json<T: serde::Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).expect("records serialise");
        bytes.push(b'\n');
        write_atomic(path, &self.tmp_dir(), &bytes).map_err(|e| StoreError::io(path, e))
    }

    /// Removes what killed processes left in `tmp/`. Entries are named
    /// `<pid>-...`; those of live processes are kept.
    pub fn clean_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('-').next().and_then(|p| p.parse().ok());
            let alive = pid.is_some_and(|pid| {
                // SAFETY: signal 0 only checks that the process exists.
                pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) } == 0
            });
            if !alive {
                let p = entry.path();
                if p.is_dir() {
                    make_writable(&p);
                    let _ = fs::remove_dir_all(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }
}

/// Work dirs hold read-only outputs; make them removable.
pub fn make_writable(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let mode = if entry.file_type().is_dir() {
            0o755
        } else {
            0o644
        };
        let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode));
    }
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::BadRecord {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Where a damaged record under `root` goes: `quarantine/records/` plus its
/// path below the store root with `/` as `_` (`ac_ab_cdef....json`).
fn record_quarantine_path(root: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let flat = rel.to_string_lossy().replace('/', "_");
    root.join("quarantine").join("records").join(flat)
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_file() {
            out.push(entry.into_path());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let e = store.insert_bytes(b"hello").unwrap();
        assert_eq!(e.digest, Digest::of_bytes(b"hello"));
        let p = store.blob_path(&e.digest);
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o444
        );
        // Inserting the same content again is a no-op.
        let again = store.insert_bytes(b"hello").unwrap();
        assert_eq!(again, e);
        assert_eq!(store.blobs().unwrap().len(), 1);
    }

    #[test]
    fn stale_tmp_of_dead_processes_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        // pid 0x7ffffff0 does not exist.
        let dead = store.tmp_dir().join("2147483632-1-0.work");
        fs::create_dir_all(dead.join("out")).unwrap();
        let mine = temp_name(&store.tmp_dir(), "part");
        fs::write(&mine, b"x").unwrap();
        store.clean_stale_tmp();
        assert!(!dead.exists());
        assert!(mine.exists());
    }
}
