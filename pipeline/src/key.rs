//! Stage keys: what decides whether a stage's stored result can be reused.
//!
//! A key is the sha256 of the canonical JSON of a [`KeyRecord`]:
//!
//! | field          | in the key | why                                                    |
//! |----------------|------------|--------------------------------------------------------|
//! | `kind`         | yes        | two kinds never share results                          |
//! | `key_version`  | yes        | bumped by hand when the key's makeup changes ([`KEY_VERSION`]) |
//! | `code_digest`  | yes        | sha256 of the items of the source files the kind's entry points reach, made at build time; file paths and item order stay out, so code can move |
//! | `params`       | yes        | only the parameters this stage reads (a table caption never retrains) |
//! | `inputs`       | yes        | content digests of the input files it reads, upstream *output* digests (early cutoff) and source archives |
//! | `libraries`    | yes        | versions of the libraries that change its numerics (image decoder, libtorch) |
//! | config path, store path, host, user, clock, device | no | they go to provenance: the same config elsewhere must give the same keys |
//! | stage label    | no         | a human name for explanations; renaming never reruns    |
//!
//! Canonical JSON sorts object keys at every level and has no whitespace, so
//! the bytes depend on content only.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::{canonical_json, Digest};

/// Bump when the makeup of [`KeyRecord`] or its canonical form changes.
///
/// 2: code digests are path- and order-free and cover the files reachable
/// from each kind's entry points (`stages/src/code_digest.rs`).
pub(crate) const KEY_VERSION: u32 = 2;

/// The key of a stage instance.
pub(crate) type StageKey = Digest;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub kind: String,
    pub key_version: u32,
    pub code_digest: String,
    pub params: Value,
    pub inputs: BTreeMap<String, Digest>,
    pub libraries: BTreeMap<String, String>,
}

impl KeyRecord {
    pub fn key(&self) -> StageKey {
        // Exhaustive destructuring: a new field fails to compile here until
        // it is deliberately added to (or left out of) the hashed form.
        let KeyRecord {
            kind,
            key_version,
            code_digest,
            params,
            inputs,
            libraries,
        } = self;
        let hashed = serde_json::json!({
            "kind": kind,
            "key_version": key_version,
            "code_digest": code_digest,
            "params": params,
            "inputs": inputs,
            "libraries": libraries,
        });
        Digest::of_bytes(canonical_json(&hashed).as_bytes())
    }
}

impl KeyRecord {
    /// A stage's seed: a hash of its identity (kind, params, and the
    /// digests of the inputs named in `seed_inputs`), never of its code
    /// digest or libraries. A code change that does not change the
    /// computation then reruns the stage with the same random stream and
    /// gives byte-identical outputs (and early cutoff downstream).
    pub(crate) fn identity_seed(&self, seed_inputs: &[&str]) -> u64 {
        let KeyRecord {
            kind,
            key_version: _,
            code_digest: _,
            params,
            inputs,
            libraries: _,
        } = self;
        let inputs: BTreeMap<&String, &Digest> = inputs
            .iter()
            .filter(|(name, _)| {
                let group = name.split('/').next().unwrap_or("");
                seed_inputs.contains(&group)
            })
            .collect();
        let identity = serde_json::json!({
            "seed_format": 1,
            "kind": kind,
            "params": params,
            "inputs": inputs,
        });
        Digest::of_bytes(canonical_json(&identity).as_bytes()).seed64()
    }
}

/// Why a stage has to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DirtyReason {
    /// No earlier record of this logical stage.
    NewStage,
    /// `--force` named it.
    Forced,
    KeyFormatChanged {
        old: u32,
        new: u32,
    },
    CodeChanged {
        kind: String,
    },
    ParamChanged {
        path: String,
        old: String,
        new: String,
    },
    InputChanged {
        name: String,
    },
    LibraryChanged {
        name: String,
        old: String,
        new: String,
    },
    /// An upstream stage runs first; this one may still turn out cached if
    /// the upstream output is byte-identical (early cutoff).
    UpstreamPending {
        input: String,
        upstream: String,
    },
    /// The record of the same key exists but is unusable (a blob was
    /// quarantined or collected), or the last record equals the current one
    /// but its result is gone.
    OutputsMissing,
    /// The record of the same key exists but these outputs changed on
    /// disk after they were stored and were quarantined.
    OutputsCorrupt {
        files: Vec<String>,
    },
    /// The same inputs were seen before but their result is not in the store
    /// (collected, or the earlier attempt failed).
    NotInStore {
        failed: bool,
    },
    /// The last attempt on these inputs failed on its environment (a full
    /// disk, the network, a kill): the inputs are not blamed.
    EnvironmentFailed {
        error: String,
    },
    /// A source the config names is neither on disk nor downloadable, so
    /// the stage has no key yet.
    SourceMissing {
        name: String,
        path: std::path::PathBuf,
    },
    /// This config never ran the stage in this store: the reasons after
    /// this one compare with the last run of the same label by another
    /// config sharing the store (`config`), or with a record pulled from a
    /// remote cache (`None`).
    ComparedWith {
        config: Option<std::path::PathBuf>,
    },
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::NewStage => write!(f, "new stage"),
            DirtyReason::Forced => write!(f, "forced"),
            DirtyReason::KeyFormatChanged { old, new } => {
                write!(f, "key format changed {old} -> {new}")
            }
            DirtyReason::CodeChanged { kind } => write!(f, "code of stage {kind} changed"),
            DirtyReason::ParamChanged { path, old, new } => {
                write!(f, "param {path} changed {old} -> {new}")
            }
            DirtyReason::InputChanged { name } => write!(f, "input {name} changed"),
            DirtyReason::LibraryChanged { name, old, new } => {
                write!(f, "library {name} changed {old} -> {new}")
            }
            DirtyReason::UpstreamPending { input, upstream } => {
                write!(f, "input {input} is rebuilt by {upstream}")
            }
            DirtyReason::OutputsMissing => write!(f, "stored outputs are missing"),
            DirtyReason::OutputsCorrupt { files } => write!(
                f,
                "output {} changed on disk after it was stored (quarantined)",
                files.join(", ")
            ),
            DirtyReason::NotInStore { failed: true } => {
                write!(f, "same inputs failed last time")
            }
            DirtyReason::EnvironmentFailed { error } => write!(
                f,
                "last attempt failed on its environment, not its inputs ({error}); trying again"
            ),
            DirtyReason::NotInStore { failed: false } => {
                write!(f, "result was removed from the store")
            }
            DirtyReason::SourceMissing { name, path } => {
                write!(f, "source {name} is missing: {}", path.display())
            }
            DirtyReason::ComparedWith { config: Some(c) } => write!(
                f,
                "not run by this config in this store; compared with the last run by {}",
                c.display()
            ),
            DirtyReason::ComparedWith { config: None } => write!(
                f,
                "not run by this config in this store; compared with the record pulled from \
                 the remote cache"
            ),
        }
    }
}

/// Explains the difference between the last recorded key of a logical stage
/// and the current one. `pending` names inputs whose digest is not known yet
/// because their producer must run first (input name -> producer label).
pub(crate) fn diff_records(
    old: &KeyRecord,
    new: &KeyRecord,
    pending: &BTreeMap<String, String>,
) -> Vec<DirtyReason> {
    let KeyRecord {
        kind,
        key_version,
        code_digest,
        params,
        inputs,
        libraries,
    } = new;
    let mut reasons = Vec::new();
    if old.key_version != *key_version {
        reasons.push(DirtyReason::KeyFormatChanged {
            old: old.key_version,
            new: *key_version,
        });
    }
    if old.code_digest != *code_digest {
        reasons.push(DirtyReason::CodeChanged { kind: kind.clone() });
    }
    diff_values("", &old.params, params, &mut reasons);
    let names: std::collections::BTreeSet<&String> =
        old.inputs.keys().chain(inputs.keys()).collect();
    for name in names {
        if pending.contains_key(name) {
            continue;
        }
        if old.inputs.get(name) != inputs.get(name) {
            reasons.push(DirtyReason::InputChanged { name: name.clone() });
        }
    }
    for (input, upstream) in pending {
        reasons.push(DirtyReason::UpstreamPending {
            input: input.clone(),
            upstream: upstream.clone(),
        });
    }
    let libs: std::collections::BTreeSet<&String> =
        old.libraries.keys().chain(libraries.keys()).collect();
    for name in libs {
        let (o, n) = (old.libraries.get(name), libraries.get(name));
        if o != n {
            reasons.push(DirtyReason::LibraryChanged {
                name: name.clone(),
                old: o.cloned().unwrap_or_else(|| "(none)".into()),
                new: n.cloned().unwrap_or_else(|| "(none)".into()),
            });
        }
    }
    reasons
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<DirtyReason>) {
    if old == new {
        return;
    }
    if let (Value::Object(o), Value::Object(n)) = (old, new) {
        let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        for k in keys {
            let sub = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            diff_values(
                &sub,
                o.get(k).unwrap_or(&Value::Null),
                n.get(k).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    out.push(DirtyReason::ParamChanged {
        path: if path.is_empty() {
            "(all)".into()
        } else {
            path.into()
        },
        old: short_value(old),
        new: short_value(new),
    });
}

fn short_value(v: &Value) -> String {
    let s = match v {
        Value::Null => "(unset)".to_string(),
        other => other.to_string(),
    };
    if s.chars().count() > 40 {
        let head: String = s.chars().take(37).collect();
        format!("{head}...")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> KeyRecord {
        KeyRecord {
            kind: "order".into(),
            key_version: KEY_VERSION,
            code_digest: "c0de".into(),
            params: json!({"spec": {"numpy_seed": 1993}, "training": {"lr": 0.1}}),
            inputs: BTreeMap::from([("dataset/meta.json".into(), Digest::of_bytes(b"meta"))]),
            libraries: BTreeMap::new(),
        }
    }

    /// The pinned golden key: if this changes, KEY_VERSION must be bumped.
    #[test]
    fn golden_key() {
        assert_eq!(
            record().key().to_hex(),
            "68376a8d5ef6344182f2ac0fa4a1bf8b5c61c231e0b4021c26b982b472aa9635"
        );
    }

    #[test]
    fn the_seed_follows_identity_not_code() {
        let base = record();
        let seed = base.identity_seed(&["dataset"]);
        let mut r = record();
        r.code_digest = "edited".into();
        r.libraries.insert("tch".into(), "0.27".into());
        r.key_version += 1;
        assert_eq!(
            r.identity_seed(&["dataset"]),
            seed,
            "code and libraries stay out"
        );
        let mut r = record();
        r.inputs
            .insert("previous/model.json".into(), Digest::of_bytes(b"m"));
        assert_eq!(
            r.identity_seed(&["dataset"]),
            seed,
            "inputs not named stay out"
        );
        let mut r = record();
        r.params["training"]["lr"] = json!(0.05);
        assert_ne!(r.identity_seed(&["dataset"]), seed);
        let mut r = record();
        r.inputs
            .insert("dataset/meta.json".into(), Digest::of_bytes(b"other"));
        assert_ne!(r.identity_seed(&["dataset"]), seed);
        assert_ne!(record().identity_seed(&[]), seed);
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = record().key();
        let mut r = record();
        r.kind = "prepare".into();
        assert_ne!(r.key(), base);
        let mut r = record();
        r.key_version += 1;
        assert_ne!(r.key(), base);
        let mut r = record();
        r.code_digest = "other".into();
        assert_ne!(r.key(), base);
        let mut r = record();
        r.params["training"]["lr"] = json!(0.05);
        assert_ne!(r.key(), base);
        let mut r = record();
        r.inputs.insert("x".into(), Digest::of_bytes(b"x"));
        assert_ne!(r.key(), base);
        let mut r = record();
        r.libraries.insert("image".into(), "0.25".into());
        assert_ne!(r.key(), base);
    }

    #[test]
    fn reasons_name_what_changed() {
        let old = record();
        let mut new = record();
        new.params["training"]["lr"] = json!(0.05);
        new.code_digest = "new".into();
        new.inputs
            .insert("dataset/meta.json".into(), Digest::of_bytes(b"other"));
        let reasons: Vec<String> = diff_records(&old, &new, &BTreeMap::new())
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            reasons,
            vec![
                "code of stage order changed",
                "param training.lr changed 0.1 -> 0.05",
                "input dataset/meta.json changed",
            ]
        );
    }

    #[test]
    fn pending_inputs_are_reported_as_upstream() {
        let old = record();
        let mut new = record();
        new.inputs.clear();
        let pending =
            BTreeMap::from([("dataset/meta.json".to_string(), "prepare/synth".to_string())]);
        let reasons: Vec<String> = diff_records(&old, &new, &pending)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            reasons,
            vec!["input dataset/meta.json is rebuilt by prepare/synth"]
        );
    }
}
