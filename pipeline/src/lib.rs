//! The bsce-pipe engine. Knows nothing of tch, polars or minijinja: stage
//! implementations reach it through [`catalog::StageCatalog`] and the child
//! protocol of [`exec::job`].
//!
//! | module      | role                                                        |
//! |-------------|-------------------------------------------------------------|
//! | [`config`]  | YAML -> raw serde types -> validated `Config`, errors with file:line:column |
//! | [`params`]  | the typed params each stage kind reads, shared by plan and stage |
//! | [`plan`]    | `Config` -> DAG of stage instances (pure); text/dot/mermaid  |
//! | [`registry`] | every stage kind declared once: runner, GPU, outputs, code, seed |
//! | [`catalog`] | what the engine asks of the stage implementations (code digests) |
//! | [`key`]     | `KeyRecord` -> stage key; `DirtyReason`s from record diffs   |
//! | [`digest`]  | sha256 digests                                               |
//! | [`sources`] | digests of files outside the store, with a stat cache       |
//! | [`store`]   | content-addressed store: blobs, action records, locks; remote seam |
//! | [`exec`]    | status and the local scheduler (`Engine::run` over `exec::schedule`'s pure bookkeeping); one stage run (`exec::child`, given a narrow `StageEnv`); Slurm |
//! | [`events`]  | run events and the summary built from them                   |
//! | [`maintenance`] | `cache verify`, `cache gc`, `cache du`                   |
//! | [`cost`]    | image passes of the train and evaluate stages from the plan; hours from a calibration |
//! | [`host`]    | this machine's name and clock (a leaf)                       |
//! | [`names`]   | config names as file names, one-to-one (a leaf)              |
//! | [`remote_url`] | remote cache URLs as text: checked and redacted (a leaf) |
//!
//! Layers, lowest first, as the data flows (the test `layers` below keeps
//! every `crate::` edge pointing down): digest, host, names, params,
//! registry, remote_url < catalog < config (with its executor settings) <
//! plan < key < events, store < maintenance, sources < exec, cost.

// `pub` is what other crates use; the rest is `pub(crate)`, and this
// lint says where a `pub` item is not reachable from outside.
#![warn(unreachable_pub)]

pub mod catalog;
pub mod config;
pub mod cost;
pub mod digest;
pub mod events;
pub mod exec;
pub mod host;
pub mod key;
pub mod maintenance;
pub mod names;
pub mod params;
pub mod plan;
pub mod registry;
pub mod remote_url;
pub mod sources;
pub mod store;

/// The engine's module graph follows its data: each module uses only
/// modules of lower layers (measured from `crate::` paths outside tests and
/// comments). A new back-edge, e.g. the config reaching into an executor or
/// the store into the scheduler, fails here.
#[cfg(test)]
mod layers {
    use std::collections::BTreeSet;

    /// Lowest first, as the data flows: leaves (digests, host and clock,
    /// names, stage params, the registry, remote URLs); the stage catalog;
    /// the config; the plan made of it; the keys made of the plan; the
    /// store that holds what keys name, and the events that report it;
    /// what reads sources or maintains a store; the executors and costs.
    const LAYERS: &[&[&str]] = &[
        &[
            "digest",
            "host",
            "names",
            "params",
            "registry",
            "remote_url",
        ],
        &["catalog"],
        &["config"],
        &["plan"],
        &["key"],
        &["events", "store"],
        &["maintenance", "sources"],
        &["exec", "cost"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// The top-level modules `text` names through `crate::`.
    fn uses(text: &str) -> BTreeSet<String> {
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut out = BTreeSet::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(g) => top_level_names(g),
                None => vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")],
            };
            out.extend(
                names
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .map(String::from),
            );
        }
        out
    }

    /// The first segment of each item of a `use` group that starts `g`
    /// (after its `{`), nested groups skipped: `a::{b, c}, d}` -> a, d.
    fn top_level_names(g: &str) -> Vec<&str> {
        let mut names = Vec::new();
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in g.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    names.push(&g[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(&g[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        names
            .into_iter()
            .map(|s| s.trim().split("::").next().unwrap_or("").trim())
            .collect()
    }

    /// Every edge that does not point to a lower layer: (file, from, to).
    fn back_edges(files: &[(String, String)]) -> Vec<(String, String, String)> {
        let mut bad = Vec::new();
        for (rel, text) in files {
            let from = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if from == "lib" {
                continue;
            }
            let Some(lf) = layer(&from) else {
                bad.push((
                    rel.clone(),
                    from.clone(),
                    "(no layer: add it to LAYERS)".into(),
                ));
                continue;
            };
            for to in uses(text) {
                if to == from || to == "self" {
                    continue;
                }
                if layer(&to).is_none_or(|lt| lt >= lf) {
                    bad.push((rel.clone(), from.clone(), to));
                }
            }
        }
        bad
    }

    fn sources() -> Vec<(String, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for e in walkdir::WalkDir::new(&root) {
            let e = e.unwrap();
            if e.path().extension().is_some_and(|x| x == "rs") {
                let rel = e
                    .path()
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read_to_string(e.path()).unwrap()));
            }
        }
        files
    }

    #[test]
    fn the_module_graph_is_layered_config_plan_keys_store_exec() {
        let bad = back_edges(&sources());
        assert!(bad.is_empty(), "back-edges (file, from, to): {bad:#?}");
    }

    #[test]
    fn a_back_edge_fails_the_layer_test() {
        let mut files = sources();
        let (_, text) = files
            .iter_mut()
            .find(|(f, _)| f == "config/resolve.rs")
            .unwrap();
        text.insert_str(0, "use crate::exec::slurm::RunDir;\n");
        assert_eq!(
            back_edges(&files),
            vec![(
                "config/resolve.rs".to_string(),
                "config".to_string(),
                "exec".to_string()
            )]
        );
        let mut files = sources();
        let (_, text) = files
            .iter_mut()
            .find(|(f, _)| f == "store/atomic.rs")
            .unwrap();
        text.insert_str(0, "use crate::{exec::RunContext, digest::Digest};\n");
        assert_eq!(back_edges(&files).len(), 1);
        // A name after a nested group, and the plan reaching for keys.
        let mut files = sources();
        let (_, text) = files.iter_mut().find(|(f, _)| f == "plan.rs").unwrap();
        text.insert_str(0, "use crate::{digest::{self, Digest}, key::StageKey};\n");
        assert_eq!(
            back_edges(&files),
            vec![("plan.rs".to_string(), "plan".to_string(), "key".to_string())]
        );
    }
}
