//! Store maintenance: `cache verify`, `cache gc`, `cache du`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::digest::Digest;
use crate::store::local::read_json;
use crate::store::records::Stamp;
use crate::store::{ActionRecord, FailureRecord, LabelRecord, LocalStore, StoreError};

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub blobs: usize,
    pub bytes: u64,
    /// Digest the blob is filed under -> where it was moved.
    pub quarantined: BTreeMap<String, String>,
    /// Record files read (action, label and failure records).
    pub records: usize,
    /// Unreadable record -> where it was moved.
    pub bad_records: BTreeMap<String, String>,
    /// Action records naming a blob the store does not hold (a miss at the
    /// next run; `--repair` moves them away).
    pub dangling: Vec<Dangling>,
    /// Results computed from a blob found corrupt without its stamp having
    /// moved: the stages that read it ran on bad bytes, so their records
    /// were moved to `quarantine/records/` and they rerun.
    pub invalidated: Vec<Invalidated>,
    /// Whether `--repair` moved the dangling records away.
    pub repaired: bool,
}

#[derive(Debug, Serialize)]
pub struct Dangling {
    pub record: String,
    pub label: String,
    pub missing: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Invalidated {
    pub record: String,
    pub label: String,
    /// The inputs it read that were corrupt (input name -> digest).
    pub inputs: BTreeMap<String, String>,
}

impl VerifyReport {
    /// Nothing corrupt, unreadable or dangling was found.
    pub fn clean(&self) -> bool {
        self.quarantined.is_empty()
            && self.bad_records.is_empty()
            && self.dangling.is_empty()
            && self.invalidated.is_empty()
    }
}

/// Reads every record, then re-hashes every blob.
///
/// - An unreadable record is moved to `quarantine/records/`.
/// - A blob whose content does not match its name is moved to
///   `quarantine/`, which makes every action that made it a miss.
/// - If that blob's stamp is still one its records hold (or a record has
///   none), the change was invisible to `run`'s stamp checks, so stages
///   may have read the bad bytes: every action record that read it is
///   moved away too, and those stages rerun. A blob whose stamp moved was
///   changed after the last stage that checked it, so its readers stand.
/// - An action record whose outputs or log are not all in the store is
///   reported, and with `repair` moved away.
pub fn verify(store: &LocalStore, repair: bool) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let ac = store.root().join("ac");
    let labels = store.root().join("labels");
    let mut actions: Vec<(std::path::PathBuf, ActionRecord)> = Vec::new();
    for path in store.record_files()? {
        report.records += 1;
        let parsed = if path.starts_with(&ac) {
            read_json::<ActionRecord>(&path).map(|r| r.map(Some))
        } else if path.starts_with(&labels) {
            read_json::<LabelRecord>(&path).map(|r| r.map(|_| None))
        } else {
            read_json::<FailureRecord>(&path).map(|r| r.map(|_| None))
        };
        match parsed {
            Err(StoreError::BadRecord { .. }) => {
                let to = store.quarantine_record(&path)?;
                report
                    .bad_records
                    .insert(path.display().to_string(), to.display().to_string());
            }
            Err(e) => return Err(e),
            Ok(Some(Some(rec))) => actions.push((path, rec)),
            Ok(_) => {}
        }
    }
    // The stamps records hold per blob; None where one holds no stamp.
    let mut stamps: BTreeMap<Digest, Vec<Option<Stamp>>> = BTreeMap::new();
    for (_, rec) in &actions {
        for o in rec.outputs.values() {
            stamps.entry(o.digest).or_default().push(o.stamp);
        }
    }
    let mut present = BTreeSet::new();
    let mut unseen: BTreeSet<Digest> = BTreeSet::new();
    for (digest, path) in store.blobs()? {
        let stamp = std::fs::metadata(&path).map(|m| Stamp::of(&m)).ok();
        let (actual, size) = Digest::of_file(&path).map_err(|e| StoreError::io(&path, e))?;
        report.blobs += 1;
        report.bytes += size;
        if actual != digest {
            let held = stamps.get(&digest).map(Vec::as_slice).unwrap_or(&[]);
            if held.iter().any(|s| s.is_none() || *s == stamp) {
                unseen.insert(digest);
            }
            let to = store.quarantine(&digest)?;
            report
                .quarantined
                .insert(digest.to_hex(), to.display().to_string());
        } else {
            present.insert(digest);
        }
    }
    for (path, rec) in actions {
        let bad: BTreeMap<String, String> = rec
            .key_record
            .inputs
            .iter()
            .filter(|(_, d)| unseen.contains(d))
            .map(|(name, d)| (name.clone(), d.to_hex()))
            .collect();
        if !bad.is_empty() {
            store.quarantine_record(&path)?;
            report.invalidated.push(Invalidated {
                record: path.display().to_string(),
                label: rec.label,
                inputs: bad,
            });
            continue;
        }
        let missing: Vec<String> = rec
            .outputs
            .values()
            .map(|o| o.digest)
            .chain(rec.provenance.log)
            .filter(|d| !present.contains(d))
            .map(|d| d.to_hex())
            .collect();
        if !missing.is_empty() {
            if repair {
                store.quarantine_record(&path)?;
            }
            report.dangling.push(Dangling {
                record: path.display().to_string(),
                label: rec.label,
                missing,
            });
        }
    }
    report.repaired = repair && !report.dangling.is_empty();
    Ok(report)
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub kept_actions: usize,
    pub removed_actions: usize,
    pub removed_blobs: usize,
    /// Partial work of stages that failed or were killed (`resume/`).
    pub removed_partial: usize,
    /// Slurm runs whose jobs may still run: their results were kept
    /// (run id -> jobs queued or running, or why Slurm could not say).
    pub live_slurm_runs: BTreeMap<String, String>,
    /// Folders of finished Slurm runs removed (`<store>/slurm/<run>`).
    pub removed_slurm_runs: usize,
    /// Live TensorBoard files of train stages whose results were removed
    /// (`<store>/tensorboard/`); none while a Slurm run may still train.
    pub removed_live_files: usize,
    pub freed_bytes: u64,
}

/// Removes every action record whose key is not in `keep`, then every blob
/// no kept record references (outputs and logs), then every stage's
/// partial work (gc holds the store exclusively: no stage is running),
/// then the folders of the finished Slurm runs `finished_runs`, then, unless
/// `slurm_live` (a Slurm run's stages may be writing them), the live
/// TensorBoard files of train stages no kept record is.
pub fn gc(
    store: &LocalStore,
    keep: &BTreeSet<Digest>,
    finished_runs: &[std::path::PathBuf],
    slurm_live: bool,
) -> Result<GcReport, StoreError> {
    let mut report = GcReport::default();
    let mut live: BTreeSet<Digest> = BTreeSet::new();
    // Live TensorBoard files are named by the train stage's seed.
    let mut train_seeds: BTreeSet<String> = BTreeSet::new();
    for rec in store.actions()? {
        if keep.contains(&rec.key) {
            report.kept_actions += 1;
            live.extend(rec.outputs.values().map(|o| o.digest));
            live.extend(rec.provenance.log);
            let train = crate::registry::StageKind::Train;
            if crate::registry::StageKind::parse(&rec.key_record.kind) == Some(train) {
                let seed = rec.key_record.identity_seed(train.spec().seed_inputs);
                train_seeds.insert(format!("{seed:016x}"));
            }
        } else {
            store.remove_action(&rec.key)?;
            report.removed_actions += 1;
        }
    }
    for (digest, path) in store.blobs()? {
        if !live.contains(&digest) {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            store.remove_blob(&digest)?;
            report.removed_blobs += 1;
            report.freed_bytes += size;
        }
    }
    for (dir, bytes) in store.resume_dirs()? {
        crate::store::local::make_writable(&dir);
        std::fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        report.removed_partial += 1;
        report.freed_bytes += bytes;
    }
    for dir in finished_runs {
        let bytes = crate::store::local::disk_use(dir);
        std::fs::remove_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        report.removed_slurm_runs += 1;
        report.freed_bytes += bytes;
    }
    if !slurm_live {
        let views = store.root().join("tensorboard");
        for e in walkdir::WalkDir::new(&views).into_iter().flatten() {
            let name = e.file_name().to_string_lossy();
            let Some((_, seed)) = crate::registry::files::parse_live_events(&name) else {
                continue;
            };
            // A view, not a result: a file gc may not remove (another
            // user's, on a shared store) stays, and gc goes on.
            if e.file_type().is_file() && !train_seeds.contains(seed) {
                let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(e.path()).is_ok() {
                    report.removed_live_files += 1;
                    report.freed_bytes += bytes;
                }
            }
        }
    }
    Ok(report)
}

#[derive(Debug, Default, Serialize)]
pub struct KindUsage {
    pub actions: usize,
    pub bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct DuReport {
    pub kinds: BTreeMap<String, KindUsage>,
    pub logs_bytes: u64,
    /// Blobs no action record references (collected by `cache gc`).
    pub unreferenced_bytes: u64,
    pub total_bytes: u64,
}

/// Sizes per stage kind. A blob shared by several kinds counts for the
/// first kind (in name order) that references it, so the parts add up.
pub fn du(store: &LocalStore) -> Result<DuReport, StoreError> {
    let mut report = DuReport::default();
    let mut counted: BTreeSet<Digest> = BTreeSet::new();
    let mut actions = store.actions()?;
    actions.sort_by(|a, b| a.key_record.kind.cmp(&b.key_record.kind));
    for rec in &actions {
        let usage = report.kinds.entry(rec.key_record.kind.clone()).or_default();
        usage.actions += 1;
        for o in rec.outputs.values() {
            if counted.insert(o.digest) {
                usage.bytes += o.size;
            }
        }
    }
    let logs: BTreeSet<Digest> = actions.iter().filter_map(|r| r.provenance.log).collect();
    for (digest, path) in store.blobs()? {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        report.total_bytes += size;
        if counted.contains(&digest) {
            continue;
        }
        if logs.contains(&digest) {
            report.logs_bytes += size;
        } else {
            report.unreferenced_bytes += size;
        }
    }
    Ok(report)
}
