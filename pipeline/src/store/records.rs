//! The JSON records kept in the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::key::KeyRecord;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    pub digest: Digest,
    pub size: u64,
}

/// What running a stage produced. Everything outside `key_record` and
/// `outputs` is provenance: kept beside the result, never part of the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    pub key: Digest,
    pub label: String,
    pub key_record: KeyRecord,
    pub outputs: BTreeMap<String, OutputEntry>,
    pub provenance: Provenance,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub tool_version: String,
    pub git_commit: Option<String>,
    pub host: String,
    pub device: String,
    pub run_id: String,
    pub started_unix_ms: u64,
    pub wall_seconds: f64,
    pub peak_rss_kib: u64,
    /// Digest of the stage's captured stdout/stderr, stored as a blob.
    pub log: Option<Digest>,
    /// What the stage itself reported: library versions, thread counts,
    /// determinism flags, the order's generator...
    pub stage: BTreeMap<String, serde_json::Value>,
}

/// The last key record of a logical stage, to explain the next rerun.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRecord {
    pub label: String,
    pub key: Digest,
    pub key_record: KeyRecord,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRecord {
    pub key: Digest,
    pub label: String,
    pub error: String,
    pub log_tail: String,
    pub provenance: Provenance,
}
