//! `status` (and `run --dry-run`) and `explain`: what the store holds for a
//! config and why each stage would run. Both only read: a store that does
//! not exist is read as an empty one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bsce_pipeline::catalog::StageCatalog;
use bsce_pipeline::digest::Digest;
use bsce_pipeline::exec::{NodeStatus, RunOptions};
use bsce_pipeline::key::DirtyReason;
use bsce_pipeline::store::layered::only_in_remote;
use serde::Serialize;

use super::run::label_hint;
use super::store::{self, Loaded, StoreArgs};
use super::{slurm, Ctx};
use crate::{Error, Result};

/// One stage as `status` shows it.
#[derive(Debug, Serialize)]
pub struct StatusRow {
    pub label: String,
    pub kind: String,
    /// `cached`, `remote` (the next run pulls it), `to-run`, or a live Slurm
    /// job's `queued` / `running`.
    pub state: &'static str,
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmJobRow>,
    /// The Slurm job in words (`slurm job 12 on n1`).
    #[serde(skip)]
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct SlurmJobRow {
    pub job: String,
    pub state: String,
    pub node: String,
    pub reason: String,
    /// False when the job computes the version of the stage submitted
    /// before the config was edited (the row's state is then `to-run`).
    pub current: bool,
}

#[derive(Debug, Serialize)]
pub struct MissingSource {
    pub stage: String,
    pub source: String,
    pub path: PathBuf,
}

/// `status`: every stage of the config, in plan order.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub stages: usize,
    pub cached: usize,
    pub to_run: usize,
    pub executed: usize,
    pub failed: usize,
    pub dry_run: bool,
    pub missing_sources: Vec<MissingSource>,
    pub nodes: Vec<StatusRow>,
}

pub fn status(
    loaded: &Loaded,
    opts: &RunOptions,
    dry_run: bool,
    args: &StoreArgs,
) -> Result<StatusReport> {
    let Loaded { plan, .. } = loaded;
    let reading = store::Reading::open(loaded, args)?;
    let status = reading.engine(loaded).status(opts)?;
    // Stages a Slurm run of this config has queued or running.
    let live = slurm::live_jobs(loaded);
    let mut report = StatusReport {
        stages: plan.nodes.len(),
        cached: 0,
        to_run: 0,
        executed: 0,
        failed: 0,
        dry_run,
        missing_sources: Vec::new(),
        nodes: Vec::new(),
    };
    for (node, st) in plan.nodes.iter().zip(&status) {
        let row = |state, key: Option<Digest>| StatusRow {
            label: node.label.clone(),
            kind: node.kind.to_string(),
            state,
            key: key.map(|k| k.to_hex()),
            reasons: None,
            slurm: None,
            detail: String::new(),
        };
        match st {
            NodeStatus::Cached { key, record } => {
                report.cached += 1;
                let state = if only_in_remote(record) {
                    "remote"
                } else {
                    "cached"
                };
                report.nodes.push(row(state, Some(*key)));
            }
            NodeStatus::ToRun { key, reasons } => {
                report.to_run += 1;
                for r in reasons {
                    if let DirtyReason::SourceMissing { name, path } = r {
                        report.missing_sources.push(MissingSource {
                            stage: node.label.clone(),
                            source: name.clone(),
                            path: path.clone(),
                        });
                    }
                }
                if let Some(job) = live.get(&node.label) {
                    let (state, detail) = slurm::describe(job);
                    let q = &job.queue;
                    report.nodes.push(StatusRow {
                        slurm: Some(SlurmJobRow {
                            job: job.id.clone(),
                            state: q.state.clone(),
                            node: q.node.clone(),
                            reason: q.reason.clone(),
                            current: job.current,
                        }),
                        // A job computing an earlier version leaves this
                        // one to run, for its own reasons.
                        reasons: (!job.current)
                            .then(|| reasons.iter().map(|r| r.to_string()).collect()),
                        detail,
                        ..row(state, *key)
                    });
                } else {
                    report.nodes.push(StatusRow {
                        reasons: Some(reasons.iter().map(|r| r.to_string()).collect()),
                        ..row("to-run", *key)
                    });
                }
            }
        }
    }
    Ok(report)
}

/// `explain CONFIG LABEL`.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub label: String,
    pub kind: String,
    /// The binary that runs it (`bsce-pipe`, `bsce-torch`).
    pub runner: &'static str,
    pub needs_gpu: bool,
    pub outputs: &'static [&'static str],
    pub state: &'static str,
    pub key: Option<String>,
    pub reasons: Vec<String>,
    pub code_digest: String,
    pub code_files: Vec<CodeFile>,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, Digest>,
    /// Inputs not known yet: input -> the stage that rebuilds it.
    pub pending: BTreeMap<String, String>,
    pub libraries: BTreeMap<String, String>,
    pub seed: Option<u64>,
    /// The inputs the seed is derived from (besides params).
    #[serde(skip)]
    pub seed_inputs: &'static [&'static str],
}

#[derive(Debug, Serialize)]
pub struct CodeFile {
    pub file: String,
    pub tokens_sha256: String,
}

pub fn explain(loaded: &Loaded, label: &str, args: &StoreArgs) -> Result<Explanation> {
    let Loaded { catalog, plan, .. } = loaded;
    let Some(id) = plan.nodes.iter().position(|n| n.label == label) else {
        let hint = label_hint(plan, label, "; `status CONFIG` lists every label");
        return Err(Error::bad_input(format!(
            "no stage labelled `{label}` in this config{hint}"
        )));
    };
    let reading = store::Reading::open(loaded, args)?;
    let e = reading
        .engine(loaded)
        .explain(&RunOptions::default())?
        .swap_remove(id);
    let node = &plan.nodes[id];
    let spec = node.kind.spec();
    let files = catalog.code_files(node.kind, spec.variant_of(&node.params));
    let (state, key, reasons) = match &e.status {
        NodeStatus::Cached { key, .. } => ("cached", Some(*key), vec![]),
        NodeStatus::ToRun { key, reasons } => (
            "to-run",
            *key,
            reasons.iter().map(|r| r.to_string()).collect(),
        ),
    };
    Ok(Explanation {
        label: node.label.clone(),
        kind: node.kind.to_string(),
        runner: spec.runner.binary(),
        needs_gpu: spec.needs_gpu,
        outputs: spec.outputs,
        state,
        key: key.map(|k| k.to_hex()),
        reasons,
        code_digest: e.record.code_digest,
        code_files: files
            .into_iter()
            .map(|(file, tokens_sha256)| CodeFile {
                file,
                tokens_sha256,
            })
            .collect(),
        params: e.record.params,
        inputs: e.record.inputs,
        pending: e.pending,
        libraries: e.record.libraries,
        seed: e.seed,
        seed_inputs: spec.seed_inputs,
    })
}

/// `dag`: the plan drawn as text, Graphviz or Mermaid.
pub fn dag(config: &Path, format: DagFormat, ctx: &Ctx) -> Result<String> {
    let cfg = bsce_pipeline::config::load(config, &store::catalog(ctx))?;
    let plan = bsce_pipeline::plan::Plan::from_config(&cfg);
    Ok(match format {
        DagFormat::Text => plan.render_text(),
        DagFormat::Dot => plan.render_dot(),
        DagFormat::Mermaid => plan.render_mermaid(),
    })
}

#[derive(Clone, Copy, Debug)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{ctx_in, quickstart};

    #[test]
    fn status_on_no_store_lists_every_stage_as_new_and_creates_nothing() {
        let (dir, config, args) = quickstart();
        let (ctx, _) = ctx_in(dir.path());
        let loaded = store::load(&config, &args, &ctx).unwrap();
        let r = status(&loaded, &RunOptions::default(), false, &args).unwrap();
        assert_eq!((r.stages, r.cached, r.to_run), (77, 0, 77));
        assert!(r.nodes.iter().any(|n| n.label == "prepare/synth10"));
        assert!(
            r.nodes
                .iter()
                .all(|n| n.state == "to-run" && n.reasons == Some(vec!["new stage".to_string()])),
            "{:?}",
            r.nodes[0]
        );
        // Only stages without inputs have a key before anything ran.
        let keyed: Vec<_> = r
            .nodes
            .iter()
            .filter(|n| n.key.is_some())
            .map(|n| &n.kind)
            .collect();
        assert!(!keyed.is_empty());
        assert!(
            keyed.iter().all(|k| *k == "prepare" || *k == "order"),
            "{keyed:?}"
        );
        assert!(
            !args.store.as_ref().unwrap().exists(),
            "a read-only command made the store"
        );
    }

    #[test]
    fn explain_lists_the_code_a_stage_runs_and_names_an_unknown_label() {
        let (dir, config, args) = quickstart();
        let (ctx, _) = ctx_in(dir.path());
        let loaded = store::load(&config, &args, &ctx).unwrap();
        let e = explain(&loaded, "train/synth10/numpy1993/ce/seed0/b4/t0", &args).unwrap();
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("train/src/stage/train.rs"), "{text}");
        assert!(
            !text.contains("reports/src/"),
            "train code covers no result stage: {text}"
        );
        let err = explain(&loaded, "train/synth10/numpy1993/ce/seed0/b4/t9", &args)
            .err()
            .expect("no such stage");
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("t9"), "{err}");
    }

    #[test]
    fn dag_prints_every_stage_in_each_format() {
        let (dir, config, _) = quickstart();
        let (ctx, _) = ctx_in(dir.path());
        for format in [DagFormat::Text, DagFormat::Dot, DagFormat::Mermaid] {
            let d = dag(&config, format, &ctx).unwrap();
            assert!(d.contains("prepare/synth10"), "{format:?}: {d}");
            assert!(d.contains("render/quickstart_nme"), "{format:?}");
        }
    }
}
