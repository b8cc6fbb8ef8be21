//! The local store: a directory on this machine's filesystem.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::atomic::{sync_dir, temp_name, write_atomic};
use super::records::{ActionRecord, FailureRecord, LabelRecord, OutputEntry, Stamp};
use super::StoreError;
use crate::digest::Digest;

type Result<T> = std::result::Result<T, StoreError>;

/// Not among the folders made at open: most stores never need it.
const RESUME_DIR: &str = "resume";

/// Made in this order at open, `cas` last: it is what
/// [`LocalStore::open_existing`] takes for a store, so a store half-way
/// through being created (a `cache gc` started beside the first `run`) is
/// not one yet, and one with `cas` has its `locks/`.
const DIRS: [&str; 8] = [
    "ac",
    "labels",
    "failed",
    "locks",
    "state",
    "tmp",
    "quarantine",
    "cas",
];

/// What [`LocalStore::check_blob`] found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum BlobCheck {
    /// Its stamp is the recorded one.
    Intact,
    /// Its stamp had changed, its content had not: this is its new stamp.
    Restamped(Stamp),
    /// Not in the store (collected, or quarantined by another check).
    Missing,
    /// Its content no longer matches its name; it was moved here.
    Corrupt {
        actual: Digest,
        quarantined: PathBuf,
    },
}

/// What a run needs of a stage served from the store.
#[derive(Clone, Debug)]
pub struct CachedAction {
    pub outputs: BTreeMap<String, OutputEntry>,
    pub wall_seconds: f64,
}

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
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Partial work of a stage key, kept across its failed or killed
    /// attempts ([`crate::exec::job::StageJob::resume_dir`]).
    pub fn resume_dir(&self, key: &Digest) -> PathBuf {
        self.root.join(RESUME_DIR).join(key.to_hex())
    }

    /// Drops a key's partial work (its result is stored, or never will be
    /// from this work).
    pub(crate) fn remove_resume(&self, key: &Digest) {
        let dir = self.resume_dir(key);
        if dir.exists() {
            make_writable(&dir);
            let _ = fs::remove_dir_all(&dir);
        }
    }

    /// Every key's partial work, with its size in bytes on disk.
    pub(crate) fn resume_dirs(&self) -> Result<Vec<(PathBuf, u64)>> {
        let root = self.root.join(RESUME_DIR);
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| StoreError::io(&root, e))?.path();
            let bytes = disk_use(&path);
            out.push((path, bytes));
        }
        out.sort();
        Ok(out)
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.sharded(d, "cas", "")
    }

    /// `<root>/<dir>/<first 2 hex digits>/<other 62><ext>`, in one allocation.
    fn sharded(&self, d: &Digest, dir: &str, ext: &str) -> PathBuf {
        let mut buf = [0u8; 64];
        let h = std::str::from_utf8(d.hex_bytes(&mut buf)).expect("hex is ASCII");
        let root = self.root.as_os_str();
        let mut p = std::ffi::OsString::with_capacity(root.len() + dir.len() + ext.len() + 68);
        p.push(root);
        p.push("/");
        p.push(dir);
        p.push("/");
        p.push(&h[..2]);
        p.push("/");
        p.push(&h[2..]);
        p.push(ext);
        PathBuf::from(p)
    }

    pub(crate) fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Moves `path` (a file under `tmp/`) into the CAS under its digest.
    /// The file is synced before the rename so a crash never leaves a named
    /// blob with short content.
    pub(crate) fn insert_file(&self, path: &Path) -> Result<OutputEntry> {
        let (digest, size) = Digest::of_file(path).map_err(|e| StoreError::io(path, e))?;
        let stamp = self.insert_file_as(path, digest)?;
        Ok(OutputEntry {
            digest,
            size,
            stamp: Some(stamp),
        })
    }

    /// Inserts a file whose digest the caller has just computed, and
    /// returns the stored blob's stamp. A blob already stored under that
    /// name is replaced: the new file's content was just hashed, the old
    /// one's may have changed since, so the store heals itself on every
    /// insert. (A reader holding the old file open keeps reading it.)
    pub(crate) fn insert_file_as(&self, path: &Path, digest: Digest) -> Result<Stamp> {
        let dest = self.blob_path(&digest);
        let parent = dest.parent().expect("blob has a parent");
        fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        let f = fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
        f.sync_all().map_err(|e| StoreError::io(path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o444))
            .map_err(|e| StoreError::io(path, e))?;
        fs::rename(path, &dest).map_err(|e| StoreError::io(&dest, e))?;
        sync_dir(parent).map_err(|e| StoreError::io(parent, e))?;
        // Stat after the rename: renaming moves the ctime.
        let meta = fs::metadata(&dest).map_err(|e| StoreError::io(&dest, e))?;
        Ok(Stamp::of(&meta))
    }

    pub(crate) fn insert_bytes(&self, bytes: &[u8]) -> Result<OutputEntry> {
        let digest = Digest::of_bytes(bytes);
        let tmp = temp_name(&self.tmp_dir(), "blob");
        if let Err(e) = fs::write(&tmp, bytes) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io(&tmp, e));
        }
        let stamp = self.insert_file_as(&tmp, digest)?;
        Ok(OutputEntry {
            digest,
            size: bytes.len() as u64,
            stamp: Some(stamp),
        })
    }

    /// Whether the blob `entry` names is intact, without reading it when
    /// its stamp is the one `entry` recorded. Otherwise it is re-hashed: a
    /// match gives the new stamp; a mismatch moves the blob to
    /// `quarantine/`, so nothing can read it again and every action that
    /// made it is a miss.
    pub(crate) fn check_blob(&self, entry: &OutputEntry) -> Result<BlobCheck> {
        let path = self.blob_path(&entry.digest);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BlobCheck::Missing),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let now = Stamp::of(&meta);
        if entry.stamp == Some(now) {
            return Ok(BlobCheck::Intact);
        }
        let (actual, _) = match Digest::of_file(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BlobCheck::Missing),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        // Stat again: what was hashed must be what the new stamp names.
        let after = fs::metadata(&path).map(|m| Stamp::of(&m)).ok();
        if actual == entry.digest && after == Some(now) {
            return Ok(BlobCheck::Restamped(now));
        }
        if actual == entry.digest {
            // Touched while we read it, yet the bytes we hashed match. Its
            // new stamp may name later bytes, so none is recorded: the next
            // reader hashes it again.
            return Ok(match after {
                Some(_) => BlobCheck::Intact,
                None => BlobCheck::Missing,
            });
        }
        match self.quarantine(&entry.digest) {
            Ok(to) => Ok(BlobCheck::Corrupt {
                actual,
                quarantined: to,
            }),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(BlobCheck::Missing)
            }
            Err(e) => Err(e),
        }
    }

    /// The path of the blob `entry` names, once [`Self::check_blob`] finds
    /// it intact; for readers outside stages (`results`, `report`). `what`
    /// names it in the error (`table.md of render/...`).
    pub fn intact_blob_path(&self, entry: &OutputEntry, what: &str) -> Result<PathBuf> {
        let changed = |quarantined| StoreError::BlobChanged {
            what: what.to_string(),
            digest: entry.digest.short(),
            quarantined,
        };
        match self.check_blob(entry)? {
            BlobCheck::Intact | BlobCheck::Restamped(_) => Ok(self.blob_path(&entry.digest)),
            BlobCheck::Missing => Err(changed(None)),
            BlobCheck::Corrupt { quarantined, .. } => Err(changed(Some(quarantined))),
        }
    }

    fn action_path(&self, key: &Digest) -> PathBuf {
        self.sharded(key, "ac", ".json")
    }

    pub(crate) fn get_action(&self, key: &Digest) -> Result<Option<ActionRecord>> {
        self.read_record(&self.action_path(key))
    }

    /// An action is a hit only if every output blob is present and intact
    /// ([`Self::check_blob`]). A changed blob is quarantined with one
    /// warning and the action is a miss; re-hashed intact blobs get their
    /// new stamps written back, so each is hashed once.
    pub(crate) fn get_usable_action(&self, key: &Digest) -> Result<Option<ActionRecord>> {
        let Some(mut rec) = self.get_action(key)? else {
            return Ok(None);
        };
        let mut restamped = false;
        for (file, entry) in rec.outputs.iter_mut() {
            match self.check_blob(entry)? {
                BlobCheck::Intact => {}
                BlobCheck::Restamped(stamp) => {
                    entry.stamp = Some(stamp);
                    restamped = true;
                }
                BlobCheck::Missing => return Ok(None),
                BlobCheck::Corrupt {
                    actual,
                    quarantined,
                } => {
                    eprintln!(
                        "warning: {file} of {} (blob {}) changed on disk after it was stored \
                         (its content now hashes to {}); moved to {}, so the stage is no longer cached",
                        rec.label,
                        entry.digest.short(),
                        actual.short(),
                        quarantined.display()
                    );
                    return Ok(None);
                }
            }
        }
        if restamped {
            // Best effort: without it the blob is only hashed again.
            let _ = self.put_action(&rec);
        }
        Ok(Some(rec))
    }

    /// [`Self::get_usable_action`] for the scheduler's hot path, which
    /// needs only the outputs and the wall time: when the record parses as
    /// those and every output's stamp is unchanged, nothing else of it is
    /// decoded. Anything else (no such fields, a stamp that moved, a
    /// missing blob) goes through `get_usable_action`, which re-hashes,
    /// restamps, quarantines and warns as it always does.
    pub(crate) fn get_cached(&self, key: &Digest) -> Result<Option<CachedAction>> {
        #[derive(serde::Deserialize)]
        struct Light {
            outputs: BTreeMap<String, OutputEntry>,
            provenance: LightProvenance,
        }
        #[derive(serde::Deserialize)]
        struct LightProvenance {
            wall_seconds: f64,
        }
        let path = self.action_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let full = || {
            Ok(self.get_usable_action(key)?.map(|r| CachedAction {
                wall_seconds: r.provenance.wall_seconds,
                outputs: r.outputs,
            }))
        };
        let Ok(light) = serde_json::from_slice::<Light>(&bytes) else {
            return full();
        };
        for entry in light.outputs.values() {
            let stamp = fs::metadata(self.blob_path(&entry.digest)).map(|m| Stamp::of(&m));
            if entry.stamp.is_none() || stamp.ok() != entry.stamp {
                return full();
            }
        }
        Ok(Some(CachedAction {
            outputs: light.outputs,
            wall_seconds: light.provenance.wall_seconds,
        }))
    }

    pub(crate) fn put_action(&self, rec: &ActionRecord) -> Result<()> {
        self.write_json(&self.action_path(&rec.key), rec)
    }

    pub(crate) fn remove_action(&self, key: &Digest) -> Result<()> {
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

    pub(crate) fn remove_blob(&self, d: &Digest) -> Result<()> {
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

    /// Whether a blob of this name was quarantined (and not stored since).
    pub(crate) fn is_quarantined(&self, d: &Digest) -> bool {
        !self.has_blob(d) && self.root.join("quarantine").join(d.to_hex()).is_file()
    }

    /// `labels/<sha of label>.json`, the last run by any config, or
    /// `labels/<sha of config NUL label>.json`, the config's own.
    fn label_path(&self, config: Option<&Path>, label: &str) -> PathBuf {
        let name = match config {
            None => Digest::of_bytes(label.as_bytes()),
            Some(c) => {
                let mut id = c.as_os_str().as_encoded_bytes().to_vec();
                id.push(0);
                id.extend_from_slice(label.as_bytes());
                Digest::of_bytes(&id)
            }
        };
        self.root
            .join("labels")
            .join(format!("{}.json", name.to_hex()))
    }

    /// The last key record of `label` as `config` ran it, else as any
    /// config (or a pull) left it: the record's `config` says whose it is.
    pub(crate) fn get_label(&self, config: &Path, label: &str) -> Result<Option<LabelRecord>> {
        match self.read_record(&self.label_path(Some(config), label))? {
            Some(own) => Ok(Some(own)),
            None => self.read_record(&self.label_path(None, label)),
        }
    }

    /// Records `rec` as the last run of its label, and as its config's own
    /// when it has one.
    pub(crate) fn put_label(&self, rec: &LabelRecord) -> Result<()> {
        if let Some(c) = &rec.config {
            self.write_json(&self.label_path(Some(c), &rec.label), rec)?;
        }
        self.write_json(&self.label_path(None, &rec.label), rec)
    }

    fn failure_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("failed")
            .join(format!("{}.json", key.to_hex()))
    }

    pub(crate) fn get_failure(&self, key: &Digest) -> Result<Option<FailureRecord>> {
        self.read_record(&self.failure_path(key))
    }

    pub(crate) fn put_failure(&self, rec: &FailureRecord) -> Result<()> {
        self.write_json(&self.failure_path(&rec.key), rec)
    }

    pub(crate) fn clear_failure(&self, key: &Digest) {
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
    pub(crate) fn quarantine_record(&self, path: &Path) -> Result<PathBuf> {
        let to = record_quarantine_path(&self.root, path);
        let dir = to.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        fs::rename(path, &to).map_err(|e| StoreError::io(path, e))?;
        Ok(to)
    }

    /// Every record file (`ac/`, `labels/`, `failed/`), for `cache verify`.
    pub(crate) fn record_files(&self) -> Result<Vec<PathBuf>> {
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
    pub(crate) fn clean_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut fields = name.split('-');
            let pid: Option<i32> = fields.next().and_then(|p| p.parse().ok());
            // Another host's process: its pid means nothing here. (Names
            // without a host tag, 8 hex digits, predate it: this host's.)
            let host = fields.next().filter(|h| h.len() == 8);
            if host.is_some_and(|h| h != super::atomic::host_tag()) {
                continue;
            }
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
/// The disk space the files under `path` take. Preallocated files are
/// sparse: the blocks count, not the length.
pub(crate) fn disk_use(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .sum()
}

pub(crate) fn make_writable(dir: &Path) {
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

    /// Issue 23's gc loop: a `cache gc` started while the first `run`
    /// creates the store either finds no store or finds its lock folder.
    #[test]
    fn a_store_half_way_through_its_creation_is_not_taken_for_one() {
        for made in 0..=DIRS.len() {
            let dir = tempfile::tempdir().unwrap();
            for d in &DIRS[..made] {
                fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            if let Some(s) = LocalStore::open_existing(dir.path()) {
                assert!(
                    s.store_lock_path().parent().unwrap().is_dir(),
                    "after {:?}: a store without locks/",
                    &DIRS[..made]
                );
            }
        }
    }

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
        // Inserting the same content again replaces the blob (new stamp).
        let again = store.insert_bytes(b"hello").unwrap();
        assert_eq!((again.digest, again.size), (e.digest, e.size));
        assert_ne!(again.stamp, None);
        assert_eq!(store.blobs().unwrap().len(), 1);
        assert_eq!(store.check_blob(&again).unwrap(), BlobCheck::Intact);
    }

    /// Writes `bytes` over the blob as a user could (chmod, write, then
    /// `touch -d` back to the old mtime): same size, same mtime.
    fn tamper(path: &Path, bytes: &[u8]) {
        let before = fs::metadata(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o444)).unwrap();
        let f = fs::File::options().write(true).open(path).ok();
        let mtime = before.modified().unwrap();
        match f {
            Some(f) => f.set_modified(mtime).unwrap(),
            None => fs::File::open(path).unwrap().set_modified(mtime).unwrap(),
        }
        let after = fs::metadata(path).unwrap();
        assert_eq!(
            (after.len(), after.modified().unwrap()),
            (before.len(), mtime)
        );
    }

    #[test]
    fn a_blob_changed_behind_the_store_is_caught_by_its_stamp_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let e = store.insert_bytes(b"hello").unwrap();
        let path = store.blob_path(&e.digest);
        tamper(&path, b"jello");
        match store.check_blob(&e).unwrap() {
            BlobCheck::Corrupt {
                actual,
                quarantined,
            } => {
                assert_eq!(actual, Digest::of_bytes(b"jello"));
                assert_eq!(fs::read(quarantined).unwrap(), b"jello");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(!path.exists());
        assert_eq!(store.check_blob(&e).unwrap(), BlobCheck::Missing);
        let err = store
            .intact_blob_path(&e, "eval.json of eval/x")
            .unwrap_err();
        assert!(err.to_string().contains("eval.json of eval/x"), "{err}");
    }

    #[test]
    fn a_moved_stamp_with_the_same_content_is_rehashed_once_and_restamped() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let e = store.insert_bytes(b"hello").unwrap();
        let path = store.blob_path(&e.digest);
        tamper(&path, b"hello");
        let BlobCheck::Restamped(stamp) = store.check_blob(&e).unwrap() else {
            panic!("expected a new stamp");
        };
        let fresh = OutputEntry {
            stamp: Some(stamp),
            ..e.clone()
        };
        assert_eq!(store.check_blob(&fresh).unwrap(), BlobCheck::Intact);
        // A record without a stamp (older versions) is hashed, not trusted.
        let old = OutputEntry { stamp: None, ..e };
        assert!(matches!(
            store.check_blob(&old).unwrap(),
            BlobCheck::Restamped(_)
        ));
    }

    #[test]
    fn a_usable_action_needs_intact_outputs_and_keeps_new_stamps() {
        use crate::key::KeyRecord;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let e = store.insert_bytes(b"model").unwrap();
        let rec = ActionRecord {
            key: Digest::of_bytes(b"key"),
            label: "train/x".into(),
            key_record: KeyRecord {
                kind: "train".into(),
                key_version: 1,
                code_digest: String::new(),
                params: serde_json::Value::Null,
                inputs: Default::default(),
                libraries: Default::default(),
            },
            outputs: [("model.ot".to_string(), e.clone())].into(),
            provenance: Default::default(),
        };
        store.put_action(&rec).unwrap();
        assert!(store.get_usable_action(&rec.key).unwrap().is_some());
        // Same bytes written again: hashed once, the record takes the stamp.
        tamper(&store.blob_path(&e.digest), b"model");
        let got = store.get_usable_action(&rec.key).unwrap().unwrap();
        let stored = store.get_action(&rec.key).unwrap().unwrap();
        assert_eq!(got.outputs, stored.outputs);
        assert_ne!(stored.outputs["model.ot"].stamp, e.stamp);
        // Other bytes: a miss, and the blob is out of the CAS.
        tamper(&store.blob_path(&e.digest), b"mode!");
        assert!(store.get_usable_action(&rec.key).unwrap().is_none());
        assert!(!store.has_blob(&e.digest));
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
        // A dead pid of this host in today's naming: removed too.
        let dead_here = store.tmp_dir().join(format!(
            "2147483632-{}-1-0.work",
            crate::store::atomic::host_tag()
        ));
        fs::create_dir_all(&dead_here).unwrap();
        // The same pid on another host sharing the store: left alone, it
        // may be a live job on that node.
        let other_host = store.tmp_dir().join("2147483632-0badc0de-1-0.work");
        fs::create_dir_all(other_host.join("out")).unwrap();
        store.clean_stale_tmp();
        assert!(!dead.exists());
        assert!(!dead_here.exists());
        assert!(mine.exists());
        assert!(other_host.exists());
    }

    #[test]
    fn resume_dirs_are_per_key_listed_with_their_disk_use_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.resume_dirs().unwrap(), vec![]);
        let (a, b) = (Digest::of_bytes(b"a"), Digest::of_bytes(b"b"));
        let dir_a = store.resume_dir(&a);
        assert_eq!(dir_a, store.root().join("resume").join(a.to_hex()));
        fs::create_dir_all(&dir_a).unwrap();
        fs::write(dir_a.join("journal"), vec![7u8; 10_000]).unwrap();
        // Preallocated and never written: no blocks, no bytes.
        fs::File::create(dir_a.join("sparse"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        fs::create_dir_all(store.resume_dir(&b)).unwrap();
        let listed = store.resume_dirs().unwrap();
        assert_eq!(listed.len(), 2);
        let used = listed.iter().find(|(p, _)| *p == dir_a).unwrap().1;
        assert!((10_000..1 << 20).contains(&used), "{used}");
        store.remove_resume(&a);
        assert!(!dir_a.exists());
        assert_eq!(store.resume_dirs().unwrap().len(), 1);
        store.remove_resume(&a);
    }
}
