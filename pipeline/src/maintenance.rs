//! Store maintenance: `cache verify`, `cache gc`, `cache du`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::digest::Digest;
use crate::store::{LocalStore, StoreError};

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub blobs: usize,
    pub bytes: u64,
    /// Digest the blob is filed under -> where it was moved.
    pub quarantined: BTreeMap<String, String>,
}

/// Re-hashes every blob; a blob whose content does not match its name is
/// moved to `quarantine/`, which makes every action using it a miss.
pub fn verify(store: &LocalStore) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    for (digest, path) in store.blobs()? {
        let (actual, size) = Digest::of_file(&path).map_err(|e| StoreError::io(&path, e))?;
        report.blobs += 1;
        report.bytes += size;
        if actual != digest {
            let to = store.quarantine(&digest)?;
            report
                .quarantined
                .insert(digest.to_hex(), to.display().to_string());
        }
    }
    Ok(report)
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub kept_actions: usize,
    pub removed_actions: usize,
    pub removed_blobs: usize,
    pub freed_bytes: u64,
}

/// Removes every action record whose key is not in `keep`, then every blob
/// no kept record references (outputs and logs).
pub fn gc(store: &LocalStore, keep: &BTreeSet<Digest>) -> Result<GcReport, StoreError> {
    let mut report = GcReport::default();
    let mut live: BTreeSet<Digest> = BTreeSet::new();
    for rec in store.actions()? {
        if keep.contains(&rec.key) {
            report.kept_actions += 1;
            live.extend(rec.outputs.values().map(|o| o.digest));
            live.extend(rec.provenance.log);
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
