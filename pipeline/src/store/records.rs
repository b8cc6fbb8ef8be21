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
    /// The blob file's stat stamp when this record last knew it intact.
    /// Absent in records of older versions: the blob is then re-hashed
    /// once at its next use and the stamp filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<Stamp>,
}

/// What `stat` says of a stored blob: a blob whose stamp is unchanged is
/// taken as intact without reading it; any other is re-hashed before use.
/// Every write to a file, and every `chmod`, `touch` or rename of it,
/// moves its ctime, which no user tool can set back, so a change made
/// through the filesystem cannot keep the stamp. (Bit rot below the
/// filesystem can: that is what `cache verify` is for.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
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
/// Kept twice: per config (the config's own last run) and per label alone
/// (the last run by any config, or a record pulled from a remote).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRecord {
    pub label: String,
    pub key: Digest,
    pub key_record: KeyRecord,
    /// The config whose run computed it (absolute path); `None` when it
    /// was pulled from a remote cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRecord {
    pub key: Digest,
    pub label: String,
    pub error: String,
    pub log_tail: String,
    pub provenance: Provenance,
    /// The environment failed (a full disk, the network, a kill), not the
    /// stage on these inputs: the next run retries without blaming them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub environment: bool,
    /// The stage's input was at fault (a bad archive, a template error):
    /// exit 2, as for a bad config.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bad_input: bool,
}
