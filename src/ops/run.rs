//! `run`: check the sources, open (or create) and hold the store, layer the
//! remote, run every stage not in it (here or under Slurm), then write the
//! report.

use std::path::Path;

use bsce_pipeline::config;
use bsce_pipeline::events::{Reporter, RunEvent, RunSummary};
use bsce_pipeline::exec::worker::WorkerPool;
use bsce_pipeline::exec::{force_names, CancelToken, Engine, RunOptions};
use bsce_pipeline::plan::Plan;
use bsce_pipeline::store::{LocalStore, TransferStats};
use bsce_reports::report::{self, ReportSummary};

use super::store::{self, Scratch, StoreArgs};
use super::{cancel_on_signals, default_jobs, slurm, Ctx};
use crate::{Error, Result};

/// Where stages run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorChoice {
    Local,
    Slurm,
}

/// `run`'s flags.
#[derive(Clone, Debug, Default)]
pub struct RunArgs {
    pub store: StoreArgs,
    pub jobs: Option<usize>,
    pub gpus: Vec<u32>,
    pub stages_per_gpu: u32,
    pub keep_going: bool,
    pub force: Vec<String>,
    /// None: the config's `executor.use`.
    pub executor: Option<ExecutorChoice>,
    pub detach: bool,
    /// Every stage in a fresh process: no warm workers.
    pub cold: bool,
}

/// What a run did.
pub struct RunOutcome {
    /// None when detached: the Slurm jobs go on without us.
    pub summary: Option<RunSummary>,
    pub transfer: Option<TransferStats>,
    /// The report written at the end (none when interrupted, detached, or
    /// the config has no runs).
    pub report: Option<ReportSummary>,
}

/// Checks the flags against the config, and the options a run and a dry
/// run share.
pub fn options(loaded: &store::Loaded, args: &RunArgs) -> Result<(RunOptions, bool)> {
    check_force(&loaded.plan, &args.force)?;
    let slurm = match args.executor {
        Some(e) => e == ExecutorChoice::Slurm,
        None => loaded.cfg.executor == config::ExecutorName::Slurm,
    };
    if slurm && !args.gpus.is_empty() {
        return Err(Error::bad_input(
            "--gpus is for the local executor; under Slurm a stage kind asks for GPUs \
             with executor.slurm.kinds.<kind>.gres (e.g. train: {gres: \"gpu:1\"})",
        ));
    }
    if args.detach && !slurm {
        return Err(Error::bad_input(
            "--detach needs the Slurm executor (--executor slurm or executor.use: slurm)",
        ));
    }
    if args.jobs == Some(0) {
        return Err(Error::bad_input("--jobs must be at least 1"));
    }
    let opts = RunOptions {
        jobs: args.jobs.unwrap_or_else(default_jobs),
        gpus: args.gpus.clone(),
        stages_per_gpu: args.stages_per_gpu.max(1),
        stages_per_gpu_kind: loaded.cfg.stages_per_gpu.clone(),
        keep_going: args.keep_going,
        force: args.force.clone(),
        fetch: false,
        skip_failed: false,
    };
    Ok((opts, slurm))
}

/// Runs `config`. `reporter` follows the run's stages; `report_reporter`
/// the result stages of the report written at the end.
pub fn run(
    config: &Path,
    args: &RunArgs,
    ctx: &Ctx,
    reporter: &mut dyn Reporter,
    report_reporter: &mut dyn Reporter,
) -> Result<RunOutcome> {
    let loaded = store::load(config, &args.store, ctx)?;
    let (opts, slurm) = options(&loaded, args)?;
    let store::Loaded {
        catalog,
        cfg,
        plan,
        root,
    } = &loaded;
    let run_ctx = store::run_context()?;
    let created = LocalStore::open_existing(root).is_none();
    if created {
        // Check sources against a scratch store first, so bad input never
        // leaves a new store behind.
        let scratch = Scratch::new()?;
        let s = LocalStore::open(scratch.path())?;
        Engine::new(plan, &s, catalog, &run_ctx).check_sources()?;
    }
    let local = LocalStore::open(root)?;
    if created {
        ctx.note(&format!("created store {}", local.root().display()));
    }
    let _in_use = store::hold(&local, ctx)?;
    let remote_env = slurm::remote_env(&args.store);
    let store = store::with_remote(local, &args.store, Some(cfg))?;
    let store = store.as_ref();
    let cancel = CancelToken::new();
    cancel_on_signals(&cancel)?;
    let engine = Engine::new(plan, store, catalog, &run_ctx);
    let summary = if slurm {
        let s = slurm::run(
            &engine,
            cfg,
            &opts,
            &run_ctx,
            remote_env,
            args.detach,
            args.cold,
            &cancel,
            reporter,
            ctx,
        )?;
        match s {
            Some(s) => s,
            None => {
                return Ok(RunOutcome {
                    summary: None,
                    transfer: store.transfer_stats(),
                    report: None,
                })
            }
        }
    } else {
        // libtorch's stages run in warm workers unless `--cold`; the pool
        // ends its workers when it goes out of scope, with the run.
        let pool = WorkerPool::new();
        let engine = if args.cold {
            engine
        } else {
            Engine {
                executor: &pool,
                ..engine
            }
        };
        engine.run(&opts, &cancel, reporter)?
    };
    reporter.finish();
    let nothing = if summary.executed == 0 && summary.failed == 0 {
        " (nothing to do)"
    } else {
        ""
    };
    ctx.note(&format!(
        "{} executed, {} from cache, {} failed, {} skipped in {:.2}s; the cache saved {:.1}s of compute{nothing}",
        summary.executed, summary.cached, summary.failed, summary.skipped, summary.wall_seconds, summary.saved_seconds
    ));
    if let Some(line) = store::transfer_line(store) {
        ctx.note(&line);
    }
    let report = if !summary.interrupted && !plan.runs.is_empty() {
        let out = report::default_out_dir(cfg, &ctx.ambient.cwd);
        Some(report::write(
            cfg,
            plan,
            store,
            catalog,
            &run_ctx,
            &out,
            opts.jobs,
            &mut ShownOnce {
                inner: report_reporter,
                shown: &summary.failed_labels,
            },
        )?)
    } else {
        None
    };
    Ok(RunOutcome {
        summary: Some(summary),
        transfer: store.transfer_stats(),
        report,
    })
}

/// Every `--force` value names a stage of the plan (a label, a prefix
/// ending in '/', or 'all'); one that names none is a typo, not a no-op.
pub fn check_force(plan: &Plan, force: &[String]) -> Result<()> {
    for f in force {
        if !plan.nodes.iter().any(|n| force_names(f, &n.label)) {
            let hint = label_hint(
                plan,
                f,
                "; `status CONFIG` lists every label (a prefix must end in '/')",
            );
            return Err(Error::bad_input(format!(
                "--force {f}: no stage of this config has that label{hint}"
            )));
        }
    }
    Ok(())
}

/// "; did you mean `L`?" for the plan's label nearest to `label`, or
/// `otherwise` when none is near.
pub fn label_hint(plan: &Plan, label: &str, otherwise: &str) -> String {
    config::did_you_mean(label, plan.nodes.iter().map(|n| n.label.as_str()))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_else(|| otherwise.into())
}

/// The report's reporter at the end of a run: a result stage the run has
/// just shown failing is not shown again (the report does not retry it:
/// [`RunOptions::skip_failed`]).
struct ShownOnce<'a> {
    inner: &'a mut dyn Reporter,
    shown: &'a std::collections::BTreeMap<String, String>,
}

impl Reporter for ShownOnce<'_> {
    fn on_event(&mut self, event: &RunEvent) {
        if let RunEvent::FailedBefore { label, .. } = event {
            if self.shown.contains_key(label) {
                return;
            }
        }
        self.inner.on_event(event);
    }

    fn finish(&mut self) {
        self.inner.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{ctx_in, quickstart, Events};

    fn run_args(store: &StoreArgs) -> RunArgs {
        RunArgs {
            store: store.clone(),
            ..RunArgs::default()
        }
    }

    #[test]
    fn a_run_whose_source_is_missing_is_bad_input_and_leaves_no_store() {
        let (dir, config, args) = quickstart();
        let text = std::fs::read_to_string(&config).unwrap();
        let synthetic = "    synthetic:\n      classes: 10\n      train_per_class: 200\n      \
                         test_per_class: 50\n      image_size: 16\n      seed: 7\n";
        assert!(text.contains(synthetic));
        let text = text.replace(
            synthetic,
            "    cifar100:\n      path: nowhere/cifar-100-python.tar.gz\n",
        );
        std::fs::write(&config, text).unwrap();
        let (ctx, notes) = ctx_in(dir.path());
        let (mut a, mut b) = (Events::default(), Events::default());
        let e = run(&config, &run_args(&args), &ctx, &mut a, &mut b)
            .err()
            .expect("the source is missing");
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(
            e.to_string().contains("nowhere/cifar-100-python.tar.gz"),
            "{e}"
        );
        assert!(
            !args.store.as_ref().unwrap().exists(),
            "a failed precheck left a store"
        );
        assert!(a.0.is_empty(), "no stage ran: {:?}", a.0);
        assert!(!notes
            .borrow()
            .iter()
            .any(|n| n.starts_with("created store")));
    }

    #[test]
    fn flags_that_contradict_the_config_are_bad_input_before_anything_runs() {
        let (dir, config, args) = quickstart();
        let (ctx, _) = ctx_in(dir.path());
        let loaded = store::load(&config, &args, &ctx).unwrap();
        let refused = |a: RunArgs, says: &str| {
            let e = options(&loaded, &a).err().expect(says);
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        };
        refused(
            RunArgs {
                jobs: Some(0),
                ..run_args(&args)
            },
            "--jobs must be at least 1",
        );
        refused(
            RunArgs {
                detach: true,
                ..run_args(&args)
            },
            "--detach needs the Slurm executor",
        );
        refused(
            RunArgs {
                executor: Some(ExecutorChoice::Slurm),
                gpus: vec![0],
                ..run_args(&args)
            },
            "--gpus is for the local executor",
        );
        refused(
            RunArgs {
                force: vec!["train/synth10/numpy1993/ce/seed0/b4/t7".into()],
                ..run_args(&args)
            },
            "train/synth10/numpy1993/ce/seed0/b4/t7",
        );
        let (opts, slurm) = options(
            &loaded,
            &RunArgs {
                jobs: Some(3),
                ..run_args(&args)
            },
        )
        .unwrap();
        assert_eq!((opts.jobs, slurm), (3, false));
    }
}
