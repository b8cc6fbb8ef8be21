//! The store seam: [`Store`] is what the engine, `results`, `report` and
//! maintenance use; [`LocalStore`] is one, [`Layered`] (local + remote)
//! the other. Labels, failure records, locks and work folders are always
//! local ([`Store::local`]).
//!
//! A remote is consulted only on a local miss, and never trusted: a remote
//! record must parse, hash to the key it is filed under, and name only the
//! outputs its stage kind declares, with sizes below [`MAX_BLOB_BYTES`];
//! every blob is hashed on arrival before it enters the local store. A
//! remote that fails degrades to misses with one warning: a run never
//! fails because of its remote.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::atomic::temp_name;
use super::local::BlobCheck;
use super::records::Stamp;
use super::remote::{RemoteCache, RemoteError};
use super::{ActionRecord, LabelRecord, LocalStore, OutputEntry, StoreError};
use crate::digest::Digest;
use crate::registry::StageKind;

/// No stage output is larger than this (a prepared ImageNet is ~250 GB).
pub(crate) const MAX_BLOB_BYTES: u64 = 4 << 40;

pub trait Store: Send + Sync {
    /// The local layer: labels, failures, locks, work folders, blobs.
    fn local(&self) -> &LocalStore;
    /// An action whose outputs are intact. Local first; on a miss, from
    /// the remote: with `fetch`, its blobs are downloaded and verified into
    /// the local store; without (`status`), the checked remote record is
    /// returned as it is, to plan with.
    fn lookup(&self, key: &Digest, fetch: bool) -> Result<Option<ActionRecord>, StoreError>;
    /// Records a computed action locally, then shares it.
    fn put_action(&self, rec: &ActionRecord) -> Result<(), StoreError>;
    /// The remote, as messages show it.
    fn remote(&self) -> Option<String> {
        None
    }
    /// What moved to and from the remote so far.
    fn transfer_stats(&self) -> Option<TransferStats> {
        None
    }
}

impl Store for LocalStore {
    fn local(&self) -> &LocalStore {
        self
    }
    fn lookup(&self, key: &Digest, _fetch: bool) -> Result<Option<ActionRecord>, StoreError> {
        self.get_usable_action(key)
    }
    fn put_action(&self, rec: &ActionRecord) -> Result<(), StoreError> {
        LocalStore::put_action(self, rec)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteMode {
    ReadWrite,
    /// Pulls, never pushes (`--remote-read-only`).
    ReadOnly,
}

/// What a layered store moved, for the run's last line and `--json`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TransferStats {
    pub pulled_actions: usize,
    pub pulled_bytes: u64,
    pub pushed_actions: usize,
    pub pushed_blobs: usize,
    pub pushed_bytes: u64,
    /// Remote records or blobs refused (bad, corrupt, traversal...).
    pub refused: usize,
}

pub struct Layered {
    local: LocalStore,
    remote: Box<dyn RemoteCache>,
    mode: RemoteMode,
    /// Set at the first transport failure: no more calls this run.
    down: AtomicBool,
    stats: Mutex<TransferStats>,
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let start: Vec<u8> = bytes
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(15)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    start.starts_with(b"<!doctype html")
        || start.starts_with(b"<html")
        || start.starts_with(b"<head")
}

impl Layered {
    pub fn new(local: LocalStore, remote: Box<dyn RemoteCache>, mode: RemoteMode) -> Self {
        Layered {
            local,
            remote,
            mode,
            down: AtomicBool::new(false),
            stats: Mutex::default(),
        }
    }

    pub fn stats(&self) -> TransferStats {
        self.stats.lock().expect("not poisoned").clone()
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// One warning for the whole run when the remote stops answering.
    fn failed(&self, e: RemoteError) {
        match e {
            RemoteError::Unavailable(m) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "warning: remote cache {} is unavailable ({m}); going on without it",
                        self.remote.describe()
                    );
                }
            }
            RemoteError::Denied(m) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "warning: remote cache {} refuses access ({m}); going on without it",
                        self.remote.describe()
                    );
                }
            }
            RemoteError::Rejected(m) => self.refused(&m),
        }
    }

    fn refused(&self, message: &str) {
        self.stats.lock().expect("not poisoned").refused += 1;
        eprintln!(
            "warning: remote cache {}: {message}; treated as a miss",
            self.remote.describe()
        );
    }

    /// The remote's record for `key`, checked: `None` for a miss or a
    /// record this store refuses (with a warning saying why).
    fn remote_record(&self, key: &Digest) -> Option<ActionRecord> {
        if self.is_down() {
            return None;
        }
        let bytes = match self.remote.get_action(key) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                self.failed(e);
                return None;
            }
        };
        match check_record(key, &bytes) {
            Ok(rec) => Some(rec),
            // A web page where a record should be: a login portal or a
            // proxy answering for the cache. Every key would get the same.
            Err(_) if looks_like_html(&bytes) => {
                self.failed(RemoteError::Denied(format!(
                    "ac/{} is an HTML page, not a cache record: a login page or proxy in the way?",
                    key.to_hex()
                )));
                None
            }
            Err(why) => {
                self.refused(&format!("record ac/{} {why}", key.to_hex()));
                None
            }
        }
    }

    /// Downloads and verifies one blob into the local store.
    fn fetch_blob(&self, entry: &OutputEntry) -> Result<Option<OutputEntry>, StoreError> {
        let local = &self.local;
        if local.has_blob(&entry.digest) {
            // Hashed once here; its stamp goes into the new record.
            let unstamped = OutputEntry {
                stamp: None,
                ..entry.clone()
            };
            if let BlobCheck::Restamped(s) = local.check_blob(&unstamped)? {
                return Ok(Some(OutputEntry {
                    stamp: Some(s),
                    ..entry.clone()
                }));
            }
        }
        let refused = |what: String| {
            self.refused(&format!("blob cas/{} {what}", entry.digest.to_hex()));
            Ok(None)
        };
        match self.download(&entry.digest, entry.size, true)? {
            Fetched::Stored { size, stamp } if size == entry.size => Ok(Some(OutputEntry {
                digest: entry.digest,
                size,
                stamp: Some(stamp),
            })),
            Fetched::Stored { size, .. } => refused(format!(
                "is {size} bytes, not the {} its record declares; refused",
                entry.size
            )),
            Fetched::Missing => refused("is missing though a record names it".into()),
            Fetched::Corrupt { size, actual } => refused(format!(
                "arrived as {size} bytes hashing to {}; refused",
                actual.to_hex()
            )),
            Fetched::Failed(e) => {
                self.failed(e);
                Ok(None)
            }
        }
    }

    /// Streams one blob of at most `max` bytes (`known`: its declared
    /// size, shown for large ones) from the remote into the local store,
    /// hashed on arrival: only bytes that hash to `digest` are stored.
    fn download(&self, digest: &Digest, max: u64, known: bool) -> Result<Fetched, StoreError> {
        let tmp = temp_name(&self.local.tmp_dir(), "pull");
        let shown_size = if known { max } else { 0 };
        let shown = Transfer::start("pull", shown_size, digest, &self.remote.describe());
        let got = self.remote.get_blob(digest, &tmp, max);
        shown.end(got.is_ok());
        let result = match got {
            Ok(true) => match Digest::of_file(&tmp) {
                Ok((actual, size)) if actual == *digest => {
                    let stamp = self.local.insert_file_as(&tmp, actual)?;
                    self.stats.lock().expect("not poisoned").pulled_bytes += size;
                    return Ok(Fetched::Stored { size, stamp });
                }
                Ok((actual, size)) => Fetched::Corrupt { size, actual },
                Err(e) => return Err(StoreError::io(&tmp, e)),
            },
            Ok(false) => Fetched::Missing,
            Err(e) => Fetched::Failed(e),
        };
        let _ = std::fs::remove_file(&tmp);
        Ok(result)
    }

    /// Pulls `rec` (checked) into the local store: every output, then the
    /// log if the remote has it, then the record and the label.
    fn pull(&self, mut rec: ActionRecord) -> Result<Option<ActionRecord>, StoreError> {
        for entry in rec.outputs.values_mut() {
            match self.fetch_blob(entry)? {
                Some(e) => *entry = e,
                None => return Ok(None),
            }
        }
        // The log is provenance, not a result: without it the record stands.
        if let Some(log) = rec.provenance.log {
            let have = self.local.has_blob(&log)
                || match self.download(&log, MAX_RECORD_LOG, false)? {
                    Fetched::Stored { .. } => true,
                    Fetched::Failed(e) => {
                        self.failed(e);
                        false
                    }
                    Fetched::Missing | Fetched::Corrupt { .. } => false,
                };
            if !have {
                rec.provenance.log = None;
            }
        }
        rec.provenance.stage.insert(
            PULLED_FROM.into(),
            serde_json::Value::String(self.remote.describe()),
        );
        self.local.put_action(&rec)?;
        self.local.put_label(&LabelRecord {
            label: rec.label.clone(),
            key: rec.key,
            key_record: rec.key_record.clone(),
            config: None,
        })?;
        self.stats.lock().expect("not poisoned").pulled_actions += 1;
        Ok(Some(rec))
    }

    /// Uploads a local action: its blobs first (those the remote lacks, or
    /// holds at another size: a blob truncated there is uploaded again),
    /// the record last, so no reader sees a record before its blobs.
    /// Returns whether it reached the remote.
    pub fn push(&self, rec: &ActionRecord) -> bool {
        if self.mode == RemoteMode::ReadOnly || self.is_down() {
            return false;
        }
        let blobs = rec
            .outputs
            .values()
            .map(|o| o.digest)
            .chain(rec.provenance.log);
        for d in blobs {
            let path = self.local.blob_path(&d);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let r = self.remote.blob_size(&d).and_then(|remote| {
                match remote {
                    Some(Some(s)) if s == size => return Ok(false),
                    Some(None) => return Ok(false),
                    _ => {}
                }
                let shown = Transfer::start("push", size, &d, &self.remote.describe());
                let r = self.remote.put_blob(&d, &path).map(|()| true);
                shown.end(r.is_ok());
                r
            });
            match r {
                Ok(true) => {
                    let mut s = self.stats.lock().expect("not poisoned");
                    s.pushed_blobs += 1;
                    s.pushed_bytes += size;
                }
                Ok(false) => {}
                Err(e) => {
                    self.failed(e);
                    return false;
                }
            }
        }
        // Stamps are this machine's; where it was pulled from is not news.
        let mut shared = rec.clone();
        for o in shared.outputs.values_mut() {
            o.stamp = None;
        }
        shared.provenance.stage.remove(PULLED_FROM);
        let mut bytes = serde_json::to_vec_pretty(&shared).expect("records serialise");
        bytes.push(b'\n');
        match self.remote.put_action(&rec.key, &bytes) {
            Ok(()) => {
                self.stats.lock().expect("not poisoned").pushed_actions += 1;
                true
            }
            Err(e) => {
                self.failed(e);
                false
            }
        }
    }
}

/// Transfers from this size on are shown as they start and end (small
/// ones are summed up in the run's last line).
pub(crate) const SHOWN_FROM_BYTES: u64 = 16 << 20;

/// The progress of one large transfer, on stderr.
struct Transfer {
    start: Option<std::time::Instant>,
    size: u64,
}

impl Transfer {
    fn start(verb: &str, size: u64, d: &Digest, remote: &str) -> Transfer {
        if size < SHOWN_FROM_BYTES {
            return Transfer { start: None, size };
        }
        eprintln!(
            "{verb}     blob {} ({:.1} MiB) {} {remote} ...",
            d.short(),
            size as f64 / (1 << 20) as f64,
            if verb == "pull" { "from" } else { "to" }
        );
        Transfer {
            start: Some(std::time::Instant::now()),
            size,
        }
    }

    fn end(self, ok: bool) {
        if let (Some(t), true) = (self.start, ok) {
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "         ... {:.1} MiB in {s:.1}s ({:.0} MiB/s)",
                self.size as f64 / (1 << 20) as f64,
                self.size as f64 / (1 << 20) as f64 / s.max(1e-6)
            );
        }
    }
}

/// Logs are capped like records.
const MAX_RECORD_LOG: u64 = 256 << 20;

impl Store for Layered {
    fn local(&self) -> &LocalStore {
        &self.local
    }

    fn lookup(&self, key: &Digest, fetch: bool) -> Result<Option<ActionRecord>, StoreError> {
        if let Some(rec) = self.local.get_usable_action(key)? {
            return Ok(Some(rec));
        }
        let Some(rec) = self.remote_record(key) else {
            return Ok(None);
        };
        if !fetch {
            let mut rec = rec;
            rec.provenance
                .stage
                .insert(IN_REMOTE.into(), serde_json::Value::Bool(true));
            return Ok(Some(rec));
        }
        self.pull(rec)
    }

    fn put_action(&self, rec: &ActionRecord) -> Result<(), StoreError> {
        self.local.put_action(rec)?;
        self.push(rec);
        Ok(())
    }

    fn remote(&self) -> Option<String> {
        Some(self.remote.describe())
    }

    fn transfer_stats(&self) -> Option<TransferStats> {
        Some(self.stats())
    }
}

/// What [`Layered::download`] got.
enum Fetched {
    Stored { size: u64, stamp: Stamp },
    Missing,
    Corrupt { size: u64, actual: Digest },
    Failed(RemoteError),
}

/// The provenance key of a pulled record: the remote it came from.
pub(crate) const PULLED_FROM: &str = "pulled_from";

/// Marks a record [`Store::lookup`] read from the remote without fetching.
pub(crate) const IN_REMOTE: &str = "in_remote";

/// Whether `rec` is only in the remote (read by a lookup without fetch).
pub fn only_in_remote(rec: &ActionRecord) -> bool {
    rec.provenance.stage.contains_key(IN_REMOTE)
}

/// A remote record is accepted only if it parses, hashes to its key, and
/// names only outputs its kind declares, with sane sizes.
pub(crate) fn check_record(key: &Digest, bytes: &[u8]) -> Result<ActionRecord, String> {
    let mut rec: ActionRecord =
        serde_json::from_slice(bytes).map_err(|e| format!("is not an action record ({e})"))?;
    if rec.key != *key || rec.key_record.key() != *key {
        return Err("does not hash to the key it is filed under".into());
    }
    let kind = StageKind::parse(&rec.key_record.kind)
        .ok_or_else(|| format!("names an unknown stage kind {:?}", rec.key_record.kind))?;
    let declared = kind.spec().outputs;
    for (name, o) in &rec.outputs {
        if !declared.contains(&name.as_str()) {
            return Err(format!(
                "names an output {name:?} that stage kind {kind} does not declare"
            ));
        }
        if o.size > MAX_BLOB_BYTES {
            return Err(format!("declares {name} as {} bytes", o.size));
        }
    }
    if let Some(missing) = declared.iter().find(|f| !rec.outputs.contains_key(**f)) {
        return Err(format!("lacks the output {missing}"));
    }
    // Another machine's stamps mean nothing here.
    for o in rec.outputs.values_mut() {
        o.stamp = None;
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyRecord, KEY_VERSION};
    use crate::store::remote::dir::DirRemote;
    use crate::store::Provenance;
    use std::path::Path;

    /// The one output of an `order` stage (a record must declare its kind's outputs).
    const OUT: &str = crate::registry::files::ORDER;

    /// A record of one output holding `bytes`, its blob in `local`.
    fn record(local: &LocalStore, label: &str, bytes: &[u8]) -> ActionRecord {
        let key_record = KeyRecord {
            kind: "order".into(),
            key_version: KEY_VERSION,
            code_digest: "code".into(),
            params: serde_json::json!({ "label": label }),
            inputs: Default::default(),
            libraries: Default::default(),
        };
        ActionRecord {
            key: key_record.key(),
            label: label.into(),
            key_record,
            outputs: [(OUT.to_string(), local.insert_bytes(bytes).unwrap())].into(),
            provenance: Provenance::default(),
        }
    }

    fn layered(root: &Path, remote: &Path, mode: RemoteMode) -> Layered {
        let url = format!("file://{}", remote.display());
        Layered::new(
            LocalStore::open(root).unwrap(),
            Box::new(DirRemote::new(&url).unwrap()),
            mode,
        )
    }

    /// Machine `a` (a store under `dir/a`) with the folder remote `remote`
    /// (created) in `mode`, after it put one `order/x` record whose output
    /// holds `bytes`.
    fn machine_with_remote(
        dir: &Path,
        remote: &Path,
        mode: RemoteMode,
        bytes: &[u8],
    ) -> (Layered, ActionRecord) {
        std::fs::create_dir_all(remote).unwrap();
        let a = layered(&dir.join("a"), remote, mode);
        let rec = record(a.local(), "order/x", bytes);
        a.put_action(&rec).unwrap();
        (a, rec)
    }

    fn blob_bytes(store: &Layered, rec: &ActionRecord) -> Vec<u8> {
        let path = store
            .local()
            .intact_blob_path(&rec.outputs[OUT], OUT)
            .unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_record_put_on_one_machine_is_pulled_with_its_blobs_on_another() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote");
        let (a, rec) =
            machine_with_remote(dir.path(), &remote, RemoteMode::ReadWrite, b"the order");
        assert_eq!(a.stats().pushed_blobs, 1, "{:?}", a.stats());

        let b = layered(&dir.path().join("b"), &remote, RemoteMode::ReadWrite);
        assert!(b.local().get_action(&rec.key).unwrap().is_none());
        // Without fetching: the remote's record, marked as only there.
        let seen = b.lookup(&rec.key, false).unwrap().unwrap();
        assert!(only_in_remote(&seen));
        assert!(b.local().get_action(&rec.key).unwrap().is_none());
        // Fetched: record and blob land in the local store, intact.
        let got = b.lookup(&rec.key, true).unwrap().unwrap();
        assert!(!only_in_remote(&got));
        assert_eq!(blob_bytes(&b, &got), b"the order");
        assert!(b.local().get_action(&rec.key).unwrap().is_some());
    }

    #[test]
    fn a_blob_changed_in_the_remote_is_refused_and_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote");
        let (_a, rec) =
            machine_with_remote(dir.path(), &remote, RemoteMode::ReadWrite, b"the order");
        // Rewrite the remote's copy of the blob behind its back.
        let digest = rec.outputs[OUT].digest.to_hex();
        let blob = walkdir::WalkDir::new(&remote)
            .into_iter()
            .filter_map(|e| e.ok())
            .find(|e| e.file_type().is_file() && e.file_name().to_string_lossy() == digest)
            .expect("the pushed blob")
            .into_path();
        std::fs::write(&blob, b"not the order").unwrap();

        let b = layered(&dir.path().join("b"), &remote, RemoteMode::ReadWrite);
        assert!(b.lookup(&rec.key, true).unwrap().is_none(), "a miss");
        assert!(b.local().get_action(&rec.key).unwrap().is_none());
        assert!(!b.local().blob_path(&rec.outputs[OUT].digest).exists());
    }

    #[test]
    fn a_read_only_remote_is_pulled_from_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote");
        let (ro, rec) = machine_with_remote(dir.path(), &remote, RemoteMode::ReadOnly, b"mine");
        assert!(ro.local().get_action(&rec.key).unwrap().is_some());
        let files = walkdir::WalkDir::new(&remote)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .count();
        assert_eq!(files, 0, "nothing pushed");
        // What another machine pushed is still pulled.
        let rw = layered(&dir.path().join("b"), &remote, RemoteMode::ReadWrite);
        let theirs = record(rw.local(), "order/y", b"theirs");
        rw.put_action(&theirs).unwrap();
        let got = ro.lookup(&theirs.key, true).unwrap().unwrap();
        assert_eq!(blob_bytes(&ro, &got), b"theirs");
    }

    #[test]
    fn an_unreachable_remote_is_a_miss_and_the_local_store_still_answers() {
        let dir = tempfile::tempdir().unwrap();
        // A remote folder that cannot exist: its parent is a file.
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let s = layered(
            &dir.path().join("a"),
            &file.join("remote"),
            RemoteMode::ReadWrite,
        );
        let rec = record(s.local(), "order/x", b"local");
        s.put_action(&rec).unwrap();
        assert!(
            s.is_down() || s.stats().pushed_blobs == 0,
            "{:?}",
            s.stats()
        );
        let got = s.lookup(&rec.key, true).unwrap().unwrap();
        assert_eq!(blob_bytes(&s, &got), b"local");
        let other = record(s.local(), "order/z", b"other");
        assert!(s.lookup(&other.key, true).unwrap().is_none());
    }
}
