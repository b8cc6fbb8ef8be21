//! `bsce-pipe`: the only place that knows every crate. It reads ambient
//! state once (env, binary path, host), parses the command line, and hands
//! plain values to the engine and the stages.
//!
//! Exit codes: 0 success; 1 a stage failed; 2 bad input (config, flags,
//! sources); 3 store problem (corrupt blobs found, unreadable records);
//! 130 interrupted.

/// Stdout for everything a command prints, in place of `println!`: a closed
/// reader (`bsce-pipe status CONFIG | head -1`) turns further output off
/// instead of panicking, and `main` then exits 141. Closed stderr is
/// ignored everywhere (progress is best-effort), which is why SIGPIPE is
/// not simply restored: a signal cannot tell the two apart.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out_fmt(format_args!($($arg)*), true)
    };
}
macro_rules! out_raw {
    ($($arg:tt)*) => {
        $crate::out_fmt(format_args!($($arg)*), false)
    };
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

fn out_fmt(args: std::fmt::Arguments, newline: bool) {
    if stdout_closed() {
        return;
    }
    let mut o = std::io::stdout().lock();
    let r = if newline {
        writeln!(o, "{args}")
    } else {
        write!(o, "{args}")
    }
    .and_then(|()| o.flush());
    if r.is_err() {
        // Broken pipe or any other write error: the output is gone either
        // way; the command still finishes (locks, temp dirs) cleanly.
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

mod inspect;
mod report;
mod reporter;
mod results;
mod slurm_cli;

/// mimalloc: a no-op run of 100,000 stages spends a third of its time in
/// the system allocator (bench/scale.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use bsce_pipeline::catalog::Runner;
use bsce_pipeline::config::{self, Config};
use bsce_pipeline::exec::{
    force_names, CancelToken, Engine, EngineError, NodeStatus, RunContext, RunOptions,
};
use bsce_pipeline::key::DirtyReason;
use bsce_pipeline::maintenance;
use bsce_pipeline::plan::Plan;
use bsce_pipeline::store::layered::only_in_remote;
use bsce_pipeline::store::locate;
use bsce_pipeline::store::lock::FileLock;
use bsce_pipeline::store::{Layered, LocalStore, RemoteMode, Store};
use bsce_stages::stage::Catalog;
use clap::{Parser, Subcommand, ValueEnum};

/// `0.1.0 (commit <sha>[, dirty])`, from build.rs.
const LONG_VERSION: &str = env!("BSCE_LONG_VERSION");

#[derive(Parser)]
#[command(
    name = "bsce-pipe",
    version = LONG_VERSION,
    about = "Reproduce Balanced Softmax Cross-Entropy for Incremental Learning, every result computed once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// Store directory [default: env BSCE_STORE, else the config's store.path, else the nearest
    /// .bsce above the config (or the working folder), else a new .bsce at the project root]
    #[arg(long)]
    store: Option<PathBuf>,
    /// Remote cache shared between machines [env BSCE_REMOTE; default: the config's
    /// store.remote]: file:///path, http(s)://host/prefix (Bazel's HTTP cache layout),
    /// s3://bucket/prefix (AWS_* variables; AWS_ENDPOINT_URL for other S3 servers)
    #[arg(long, env = "BSCE_REMOTE", hide_env_values = true)]
    remote: Option<String>,
    /// Pull from the remote, never push [env BSCE_REMOTE_READ_ONLY]
    #[arg(long, env = "BSCE_REMOTE_READ_ONLY")]
    remote_read_only: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run every stage of CONFIG that is not in the store.
    Run {
        config: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Stages run in parallel [default: number of CPUs]
        #[arg(long, short)]
        jobs: Option<usize>,
        /// GPUs for training and evaluation stages (e.g. 0,1); a GPU stage waits for a free one
        #[arg(long, value_delimiter = ',')]
        gpus: Vec<u32>,
        /// GPU stages sharing one GPU [default 1; per kind: the config's stages_per_gpu]
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        stages_per_gpu: u32,
        /// Go on with independent stages after a failure
        #[arg(long)]
        keep_going: bool,
        /// Print what would run, and why; run nothing
        #[arg(long)]
        dry_run: bool,
        /// Rerun these stages even if cached: a label, a prefix ending in '/', or 'all'
        #[arg(long)]
        force: Vec<String>,
        /// Print a machine-readable summary on stdout
        #[arg(long)]
        json: bool,
        /// Where stages run [default: the config's executor.use, else local]: `local` (child
        /// processes here) or `slurm` (one sbatch job per stage, the DAG submitted at once)
        #[arg(long, value_enum)]
        executor: Option<ExecutorArg>,
        /// With the Slurm executor: return once every job is submitted (`status` shows their
        /// queue states, `cancel` cancels them)
        #[arg(long)]
        detach: bool,
    },
    /// Cancel the queued and running Slurm jobs of CONFIG's runs (scancel).
    Cancel {
        config: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List every stage as cached or to-run, with the reason.
    Status {
        config: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// The report of CONFIG from the store only (never trains): tables
    /// (Markdown, LaTeX), plots (SVG, PNG), frames (CSV, Parquet) and an
    /// index README.md; lists the runs that are not in the store.
    Report {
        config: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Output folder [default: reports/<config name>/ at the project root]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print a machine-readable summary on stdout
        #[arg(long)]
        json: bool,
    },
    /// Per-run numbers of CONFIG from the aggregate frames (the runs not in the store listed).
    Results {
        config: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Why a stage is cached or must run: its key record (params, inputs,
    /// libraries) and the source files in its code digest.
    Explain {
        config: PathBuf,
        /// A stage label (see `status`)
        label: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print the stage DAG of CONFIG.
    Dag {
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: DagFormat,
    },
    /// Store maintenance.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Class orders.
    Order {
        #[command(subcommand)]
        command: OrderCommand,
    },
    /// Dataset sources and prepared datasets.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// libtorch version, CUDA and cuDNN availability, visible GPUs, threads.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Print the sha256 of files as the store computes it (for `sha256:` in configs).
    Digest {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Internal: run one stage (the scheduler starts this as a child).
    #[command(hide = true)]
    ExecStage { job: PathBuf },
    /// Internal: the body of a Slurm job: run stage N (LABEL) of a submitted
    /// run, its inputs from the store, unless the store has it.
    #[command(hide = true)]
    ExecNode {
        run_dir: PathBuf,
        n: usize,
        label: String,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Clone, Copy, ValueEnum)]
enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Re-hash every blob and read every record; move corrupt blobs and
    /// unreadable records to quarantine/; report action records whose
    /// blobs are missing.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Also move the action records whose blobs are missing to
        /// quarantine/records/ (the next run recomputes them either way).
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove every result that none of the given configs reaches.
    Gc {
        #[arg(long, required = true, num_args = 1..)]
        keep: Vec<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Upload every stage of CONFIG that is in the local store to the
    /// remote: blobs first (those it lacks), each action record last.
    Push {
        config: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Download every stage of CONFIG that the remote has and the local
    /// store lacks (each blob verified), without running anything.
    Pull {
        config: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Sizes per stage kind.
    Du {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OrderCommand {
    /// Print an order as a JSON list.
    Show {
        /// A built-in order name (see --list)
        name: Option<String>,
        #[arg(long, requires = "classes")]
        numpy_seed: Option<u32>,
        /// The original iCaRL script's order for this seed
        #[arg(long, requires = "classes", conflicts_with = "numpy_seed")]
        icarl_seed: Option<u32>,
        #[arg(long)]
        classes: Option<usize>,
        /// Take the order from a config's `orders` entry
        #[arg(long, requires = "entry")]
        config: Option<PathBuf>,
        #[arg(long)]
        entry: Option<String>,
        /// List the built-in orders
        #[arg(long)]
        list: bool,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Detected format, images per split, classes, image size and content digest.
    Inspect {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// An error that is the user's input, not ours: exit code 2.
#[derive(Debug)]
struct BadInput(String);
impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BadInput {}

/// The store is locked by another process: exit 3.
#[derive(Debug)]
struct StoreBusy(String);
impl std::fmt::Display for StoreBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StoreBusy {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = run_cli(cli);
    if stdout_closed() {
        // The reader went away (`| head`): the conventional status of a
        // writer killed by SIGPIPE, after every destructor has run.
        return ExitCode::from(141);
    }
    code
}

fn run_cli(cli: Cli) -> ExitCode {
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<BadInput>().is_some()
                || e.downcast_ref::<config::ConfigError>().is_some()
            {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            if let Some(EngineError::Source(_)) = e.downcast_ref::<EngineError>() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            if e.downcast_ref::<StoreBusy>().is_some() {
                eprintln!("error: {e}");
                return ExitCode::from(3);
            }
            eprintln!("error: {e:#}");
            // 3 is the store's; anything else (a report folder that cannot
            // be written, an internal error) is 1, as a failed stage.
            let store = e.chain().any(|c| {
                c.downcast_ref::<bsce_pipeline::store::StoreError>()
                    .is_some()
                    || matches!(c.downcast_ref::<EngineError>(), Some(EngineError::Store(_)))
            });
            ExitCode::from(if store { 3 } else { 1 })
        }
    }
}

fn catalog() -> Catalog {
    // Test hook, read once here: BSCE_PIPE_CODE_SALT=order:x,prepare:y
    let salts = std::env::var("BSCE_PIPE_CODE_SALT")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Catalog { salts }
}

fn load_config(path: &Path, catalog: &Catalog) -> Result<Config> {
    Ok(config::load(path, catalog)?)
}

/// A config resolved into its plan and the store it uses.
struct Loaded {
    catalog: Catalog,
    cfg: Config,
    plan: Plan,
    root: PathBuf,
}

fn load(config: &Path, store: &StoreArgs) -> Result<Loaded> {
    let catalog = catalog();
    let cfg = load_config(config, &catalog)?;
    let choice = config_store(store, &cfg);
    announce(&choice);
    Ok(Loaded {
        plan: Plan::from_config(&cfg),
        root: choice.root,
        cfg,
        catalog,
    })
}

/// `local` with the remote the flags, the environment or the config name
/// layered over it; `local` alone without one.
fn with_remote(
    local: LocalStore,
    args: &StoreArgs,
    cfg: Option<&Config>,
) -> Result<Box<dyn Store>> {
    let url = args
        .remote
        .clone()
        .or_else(|| cfg.and_then(|c| c.remote.clone()));
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(Box::new(local));
    };
    let remote = bsce_pipeline::store::remote::open(&url)
        .map_err(|e| BadInput(format!("--remote / BSCE_REMOTE / store.remote: {e}")))?;
    let read_only = args.remote_read_only || cfg.is_some_and(|c| c.remote_read_only);
    let mode = if read_only {
        RemoteMode::ReadOnly
    } else {
        RemoteMode::ReadWrite
    };
    Ok(Box::new(Layered::new(local, remote, mode)))
}

/// The last line's remote part: what moved, or nothing without a remote.
fn transfer_line(store: &dyn Store) -> Option<String> {
    let (remote, t) = (store.remote()?, store.transfer_stats()?);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Some(format!(
        "remote {remote}: pulled {} stages ({:.1} MiB), pushed {} stages ({} blobs, {:.1} MiB){}",
        t.pulled_actions,
        mib(t.pulled_bytes),
        t.pushed_actions,
        t.pushed_blobs,
        mib(t.pushed_bytes),
        if t.refused > 0 {
            format!(", refused {}", t.refused)
        } else {
            String::new()
        }
    ))
}

/// The store rule for a command that reads `cfg`.
fn config_store(args: &StoreArgs, cfg: &Config) -> locate::StoreChoice {
    locate::choose(
        args.store.as_deref(),
        env_store().as_deref(),
        Some((&cfg.file, cfg.store_path.as_deref())),
        &cwd(),
    )
    .expect("a config always gives a store")
}

/// `BSCE_STORE`, read once here.
fn env_store() -> Option<PathBuf> {
    std::env::var_os("BSCE_STORE").map(PathBuf::from)
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// When the rule found a store the user did not name, say which (stderr:
/// stdout may be JSON). A new one is announced by `run` once it exists.
fn announce(choice: &locate::StoreChoice) {
    if matches!(choice.origin, locate::StoreOrigin::Enclosing(_)) {
        let _ = writeln!(std::io::stderr(), "using {choice}");
    }
}

/// The store of a command without a config: flag, env, or the nearest above
/// the working folder.
fn found_store(args: &StoreArgs) -> Result<LocalStore> {
    let Some(choice) = locate::choose(args.store.as_deref(), env_store().as_deref(), None, &cwd())
    else {
        return Err(BadInput(format!(
            "no bsce-pipe store in {} or any folder above it; pass --store DIR or set BSCE_STORE",
            cwd().display()
        ))
        .into());
    };
    announce(&choice);
    existing_store(&choice.root)
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            store,
            jobs,
            gpus,
            stages_per_gpu,
            keep_going,
            dry_run,
            force,
            json,
            executor,
            detach,
        } => {
            let Loaded {
                catalog,
                cfg,
                plan,
                root,
            } = load(&config, &store)?;
            check_force(&plan, &force)?;
            let slurm = match executor {
                Some(e) => e == ExecutorArg::Slurm,
                None => cfg.executor == config::ExecutorName::Slurm,
            };
            if slurm && !gpus.is_empty() {
                return Err(BadInput(
                    "--gpus is for the local executor; under Slurm a stage kind asks for GPUs \
                     with executor.slurm.kinds.<kind>.gres (e.g. train: {gres: \"gpu:1\"})"
                        .into(),
                )
                .into());
            }
            if detach && !slurm {
                return Err(BadInput(
                    "--detach needs the Slurm executor (--executor slurm or executor.use: slurm)"
                        .into(),
                )
                .into());
            }
            let opts = RunOptions {
                jobs: jobs.unwrap_or_else(default_jobs),
                gpus,
                stages_per_gpu,
                stages_per_gpu_kind: cfg.stages_per_gpu.clone(),
                keep_going,
                force,
                fetch: false,
            };
            if dry_run {
                return print_status(&plan, &root, &catalog, &opts, json, true, &store, &cfg);
            }
            if jobs == Some(0) {
                return Err(BadInput("--jobs must be at least 1".into()).into());
            }
            let ctx = run_context()?;
            if LocalStore::open_existing(&root).is_none() {
                // Check sources against a scratch store first, so bad input
                // never leaves a new store behind.
                let scratch = tempdir()?;
                let s = LocalStore::open(&scratch.0)?;
                Engine::new(&plan, &s, &catalog, &ctx).check_sources()?;
            }
            let created = LocalStore::open_existing(&root).is_none();
            let local = LocalStore::open(&root)?;
            if created {
                let _ = writeln!(
                    std::io::stderr(),
                    "created store {}",
                    local.root().display()
                );
            }
            let _in_use = hold_store(&local)?;
            let remote_env = slurm_cli::remote_env(&store);
            let store = with_remote(local, &store, Some(&cfg))?;
            let store = store.as_ref();
            let cancel = CancelToken::new();
            cancel_on_signals(&cancel)?;
            let engine = Engine::new(&plan, store, &catalog, &ctx);
            let mut reporter = reporter::TerminalReporter::new(false);
            let summary = if slurm {
                match slurm_cli::run(
                    &engine,
                    &cfg,
                    &opts,
                    &ctx,
                    remote_env,
                    detach,
                    &cancel,
                    &mut reporter,
                )? {
                    Some(s) => s,
                    None => return Ok(ExitCode::SUCCESS),
                }
            } else {
                engine.run(&opts, &cancel, &mut reporter)?
            };
            drop(reporter);
            let nothing = if summary.executed == 0 && summary.failed == 0 {
                " (nothing to do)"
            } else {
                ""
            };
            let _ = writeln!(
                std::io::stderr(),
                "{} executed, {} from cache, {} failed, {} skipped in {:.2}s; the cache saved {:.1}s of compute{nothing}",
                summary.executed, summary.cached, summary.failed, summary.skipped, summary.wall_seconds, summary.saved_seconds
            );
            if let Some(line) = transfer_line(store) {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            if !summary.interrupted && !plan.runs.is_empty() {
                let out = report::default_out_dir(&cfg);
                let r = report::write(&cfg, &plan, store, &catalog, &ctx, &out, opts.jobs)?;
                print_report(&r, &config, false);
            }
            if json {
                let mut j = serde_json::to_value(&summary)?;
                if let Some(t) = store.transfer_stats() {
                    j["remote"] = serde_json::to_value(t)?;
                }
                out!("{}", serde_json::to_string_pretty(&j)?);
            }
            Ok(ExitCode::from(summary.exit_code()))
        }
        Command::Status {
            config,
            store,
            json,
        } => {
            let Loaded {
                catalog,
                plan,
                root,
                cfg,
            } = load(&config, &store)?;
            let opts = RunOptions::default();
            print_status(&plan, &root, &catalog, &opts, json, false, &store, &cfg)
        }
        Command::Results {
            config,
            store,
            json,
        } => {
            let (
                Loaded {
                    catalog, cfg, plan, ..
                },
                store,
                _in_use,
                ctx,
            ) = load_existing(&config, &store)?;
            let prepared =
                report::prepare(&cfg, &plan, store.as_ref(), &catalog, &ctx, default_jobs())?;
            let results = results::collect(&prepared, store.as_ref())?;
            if json {
                out!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                results::print_summary(&results);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            config,
            store,
            out,
            json,
        } => {
            let (
                Loaded {
                    catalog, cfg, plan, ..
                },
                store,
                _in_use,
                ctx,
            ) = load_existing(&config, &store)?;
            let out = out.unwrap_or_else(|| report::default_out_dir(&cfg));
            let r = report::write(
                &cfg,
                &plan,
                store.as_ref(),
                &catalog,
                &ctx,
                &out,
                default_jobs(),
            )?;
            if json {
                out!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_report(&r, &config, true);
            }
            Ok(if r.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Explain {
            config,
            label,
            store,
            json,
        } => {
            let Loaded {
                catalog,
                plan,
                root,
                cfg,
            } = load(&config, &store)?;
            explain(&plan, &root, &catalog, &label, json, &store, &cfg)
        }
        Command::Dag { config, format } => {
            let cfg = load_config(&config, &catalog())?;
            let plan = Plan::from_config(&cfg);
            out_raw!(
                "{}",
                match format {
                    DagFormat::Text => plan.render_text(),
                    DagFormat::Dot => plan.render_dot(),
                    DagFormat::Mermaid => plan.render_mermaid(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { command } => cache(command),
        Command::Order { command } => inspect::order(command),
        Command::Dataset {
            command: DatasetCommand::Inspect { path, json },
        } => inspect::dataset(&path, json),
        Command::Doctor { json } => {
            let torch = run_context()?.torch_exe;
            let mut cmd = std::process::Command::new(&torch);
            cmd.arg("doctor");
            if json {
                cmd.arg("--json");
            }
            let status = cmd
                .status()
                .with_context(|| format!("running {}", torch.display()))?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Digest { files } => {
            for f in files {
                let (d, _) = bsce_pipeline::digest::Digest::of_file(&f)
                    .map_err(|e| BadInput(format!("{}: {e}", f.display())))?;
                out!("{d}  {}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ExecStage { job } => exec_stage(&job),
        Command::ExecNode { run_dir, n, label } => slurm_cli::exec_node(&run_dir, n, &label),
        Command::Cancel { config, store } => {
            let Loaded { cfg, root, .. } = load(&config, &store)?;
            slurm_cli::cancel(&root, &cfg)
        }
    }
}

/// A config with its existing store, held shared for the command, and the
/// run context: what `results` and `report` start from.
fn load_existing(
    config: &Path,
    args: &StoreArgs,
) -> Result<(Loaded, Box<dyn Store>, FileLock, RunContext)> {
    let loaded = load(config, args)?;
    let local = existing_store(&loaded.root)?;
    let held = hold_store(&local)?;
    let store = with_remote(local, args, Some(&loaded.cfg))?;
    Ok((loaded, store, held, run_context()?))
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Where the report went, its tables, and what is missing (stderr: stdout
/// may be JSON).
fn print_report(r: &report::ReportSummary, config: &Path, verbose: bool) {
    let mut err = std::io::stderr().lock();
    for f in r
        .files
        .iter()
        .filter(|f| f.starts_with("tables/") && f.ends_with(".md"))
    {
        if let Ok(md) = std::fs::read_to_string(r.out_dir.join(f)) {
            let _ = writeln!(err, "\n{}", md.trim_end());
        }
    }
    for (label, error) in &r.failed {
        let _ = writeln!(err, "failed   {label}: {error}");
    }
    if !r.missing.is_empty() {
        let _ = writeln!(
            err,
            "\n{} runs are not (completely) in the store:",
            r.missing.len()
        );
        let shown = if verbose { r.missing.len() } else { 5 };
        for m in r.missing.iter().take(shown) {
            let tasks: Vec<String> = m.tasks.iter().map(|t| format!("t{t}")).collect();
            let _ = writeln!(err, "  {}: {}", m.run, tasks.join(" "));
        }
        if r.missing.len() > shown {
            let _ = writeln!(
                err,
                "  ... and {} more (`bsce-pipe report` lists all)",
                r.missing.len() - shown
            );
        }
        let _ = writeln!(err, "`bsce-pipe run {}` computes them.", config.display());
    }
    let _ = writeln!(
        err,
        "\nreport: {} ({} files)",
        r.out_dir.join("README.md").display(),
        r.files.len()
    );
}

fn run_context() -> Result<RunContext> {
    // The commit, with `-dirty` when the tree had uncommitted changes.
    let commit = option_env!("BSCE_GIT_COMMIT").filter(|c| !c.is_empty());
    Ok(RunContext::detect(env!("CARGO_PKG_VERSION"), commit)?)
}

/// `status` and `run --dry-run`: reads the store, writes nothing.
fn print_status(
    plan: &Plan,
    root: &Path,
    catalog: &Catalog,
    opts: &RunOptions,
    json: bool,
    dry_run: bool,
    args: &StoreArgs,
    cfg: &Config,
) -> Result<ExitCode> {
    let (local, _scratch) = read_only_store(root)?;
    let store = with_remote(local, args, Some(cfg))?;
    let ctx = run_context()?;
    let engine = Engine::new(plan, store.as_ref(), catalog, &ctx);
    let status = engine.status(opts)?;
    // Stages a Slurm run of this config has queued or running.
    let live = slurm_cli::live_jobs(root, cfg);
    let mut rows = Vec::new();
    let (mut cached, mut to_run) = (0, 0);
    let mut missing = Vec::new();
    for (node, st) in plan.nodes.iter().zip(&status) {
        if let NodeStatus::ToRun { reasons, .. } = st {
            for r in reasons {
                if let DirtyReason::SourceMissing { name, path } = r {
                    missing.push((&node.label, name, path));
                }
            }
        }
        match st {
            NodeStatus::Cached { key, record } => {
                cached += 1;
                // In the remote only: the next run pulls it.
                let state = if only_in_remote(record) {
                    "remote"
                } else {
                    "cached"
                };
                rows.push(serde_json::json!({"label": node.label, "kind": node.kind, "state": state, "key": key.to_hex()}));
                if !json {
                    out!("{state:<8} {}", node.label);
                }
            }
            NodeStatus::ToRun { key, .. } if live.contains_key(&node.label) => {
                to_run += 1;
                let (job, q) = &live[&node.label];
                let (state, detail) = slurm_cli::describe(job, q);
                rows.push(serde_json::json!({"label": node.label, "kind": node.kind, "state": state,
                    "key": key.map(|k| k.to_hex()), "slurm": {"job": job, "state": q.state, "node": q.node, "reason": q.reason}}));
                if !json {
                    out!("{state:<8} {}: {detail}", node.label);
                }
            }
            NodeStatus::ToRun { key, reasons } => {
                to_run += 1;
                let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                rows.push(
                    serde_json::json!({"label": node.label, "kind": node.kind, "state": "to-run",
                    "key": key.map(|k| k.to_hex()), "reasons": why}),
                );
                if !json {
                    out!("to-run   {}: {}", node.label, why.join("; "));
                }
            }
        }
    }
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stages": plan.nodes.len(), "cached": cached, "to_run": to_run,
                "executed": 0, "failed": 0, "dry_run": dry_run,
                "missing_sources": missing.iter().map(|(stage, source, path)| serde_json::json!(
                    {"stage": stage, "source": source, "path": path})).collect::<Vec<_>>(),
                "nodes": rows}))?
        );
    } else {
        out!(
            "{} stages: {cached} cached, {to_run} to run",
            plan.nodes.len()
        );
        if !missing.is_empty() {
            out!(
                "{} source(s) missing; `run` needs them (or a `url` and `sha256` to download):",
                missing.len()
            );
            for (stage, source, path) in &missing {
                out!("  {stage}: {source} {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every `--force` value names a stage of the plan (a label, a prefix
/// ending in '/', or 'all'); one that names none is a typo, not a no-op.
fn check_force(plan: &Plan, force: &[String]) -> Result<()> {
    for f in force {
        if !plan.nodes.iter().any(|n| force_names(f, &n.label)) {
            let hint = label_hint(
                plan,
                f,
                "; `status CONFIG` lists every label (a prefix must end in '/')",
            );
            return Err(BadInput(format!(
                "--force {f}: no stage of this config has that label{hint}"
            ))
            .into());
        }
    }
    Ok(())
}

/// "; did you mean `L`?" for the plan's label nearest to `label`, or
/// `otherwise` when none is near.
fn label_hint(plan: &Plan, label: &str, otherwise: &str) -> String {
    config::did_you_mean(label, plan.nodes.iter().map(|n| n.label.as_str()))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_else(|| otherwise.into())
}

/// `explain CONFIG LABEL`: reads the store, writes nothing.
fn explain(
    plan: &Plan,
    root: &Path,
    catalog: &Catalog,
    label: &str,
    json: bool,
    args: &StoreArgs,
    cfg: &Config,
) -> Result<ExitCode> {
    use bsce_pipeline::catalog::StageCatalog;
    let Some(id) = plan.nodes.iter().position(|n| n.label == label) else {
        let hint = label_hint(plan, label, "; `status CONFIG` lists every label");
        return Err(BadInput(format!("no stage labelled `{label}` in this config{hint}")).into());
    };
    let (local, _scratch) = read_only_store(root)?;
    let store = with_remote(local, args, Some(cfg))?;
    let ctx = run_context()?;
    let engine = Engine::new(plan, store.as_ref(), catalog, &ctx);
    let e = engine.explain(&RunOptions::default())?.swap_remove(id);
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
    if json {
        let j = serde_json::json!({
            "label": node.label, "kind": node.kind, "runner": spec.runner.binary(),
            "needs_gpu": spec.needs_gpu, "outputs": spec.outputs,
            "state": state, "key": key.map(|k| k.to_hex()), "reasons": reasons,
            "code_digest": e.record.code_digest,
            "code_files": files.iter().map(|(f, d)| serde_json::json!({"file": f, "tokens_sha256": d})).collect::<Vec<_>>(),
            "params": e.record.params, "inputs": e.record.inputs, "pending": e.pending,
            "libraries": e.record.libraries, "seed": e.seed,
        });
        out!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{} [{}], run by {}{}",
        node.label,
        node.kind,
        spec.runner.binary(),
        if spec.needs_gpu {
            ", on a GPU when --gpus gives one"
        } else {
            ""
        }
    );
    match key {
        Some(k) => out!("key      {k}"),
        None => out!("key      not known until its inputs are rebuilt"),
    }
    if reasons.is_empty() {
        out!("state    {state}");
    } else {
        out!("state    {state}: {}", reasons.join("; "));
    }
    if let Some(seed) = e.seed {
        out!(
            "seed     {seed} (from params and {} inputs; never from code)",
            if spec.seed_inputs.is_empty() {
                "no".to_string()
            } else {
                spec.seed_inputs.join(", ")
            }
        );
    }
    out!("outputs  {}", spec.outputs.join(", "));
    out!(
        "code     {} = the items of the {} files its entry points reach (file names, item order, comments, formatting and tests left out):",
        e.record.code_digest,
        files.len()
    );
    for (f, d) in &files {
        out!("  {f}  {}", &d[..12]);
    }
    out!("params   {}", serde_json::to_string(&e.record.params)?);
    out!("inputs");
    for (name, d) in &e.record.inputs {
        out!("  {name}  {d}");
    }
    for (name, from) in &e.pending {
        out!("  {name}  (rebuilt by {from})");
    }
    if !e.record.libraries.is_empty() {
        let libs: Vec<String> = e
            .record
            .libraries
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        out!("libraries {}", libs.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The store at `root` for a command that only reads: a store that does not
/// exist yet is read as an empty one, in a temp folder kept alive by the
/// second value, so such commands never create anything.
fn read_only_store(root: &Path) -> Result<(LocalStore, Option<TempDir>)> {
    if let Some(s) = LocalStore::open_existing(root) {
        return Ok((s, None));
    }
    let scratch = tempdir()?;
    let store = LocalStore::open(&scratch.0)?;
    Ok((store, Some(scratch)))
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir() -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("bsce-status-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

fn cache(command: CacheCommand) -> Result<ExitCode> {
    match command {
        CacheCommand::Verify {
            store,
            repair,
            json,
        } => {
            let store = found_store(&store)?;
            let r = maintenance::verify(&store, repair)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                out!(
                    "{} blobs, {} bytes verified; {} records read",
                    r.blobs,
                    r.bytes,
                    r.records
                );
                for (d, to) in &r.quarantined {
                    out!("corrupt  blob {d} -> {to}");
                }
                for (from, to) in &r.bad_records {
                    out!("corrupt  record {from} -> {to}");
                }
                for d in &r.dangling {
                    out!(
                        "dangling {} ({}): missing blob {}{}",
                        d.record,
                        d.label,
                        d.missing.join(", "),
                        if r.repaired {
                            "; moved to quarantine/records/"
                        } else {
                            ""
                        }
                    );
                }
                for i in &r.invalidated {
                    let inputs: Vec<String> =
                        i.inputs.iter().map(|(n, d)| format!("{n} ({d})")).collect();
                    out!(
                        "invalid  {} ({}): read corrupt {}; moved to quarantine/records/, it reruns",
                        i.record,
                        i.label,
                        inputs.join(", ")
                    );
                }
                if !r.quarantined.is_empty() || !r.bad_records.is_empty() {
                    out!(
                        "{} corrupt blobs and {} unreadable records quarantined; the stages that made them will rerun",
                        r.quarantined.len(),
                        r.bad_records.len()
                    );
                }
                if !r.dangling.is_empty() && !r.repaired {
                    out!(
                        "{} action records name missing blobs (their stages rerun); `cache verify --repair` moves them away",
                        r.dangling.len()
                    );
                }
            }
            Ok(if r.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        CacheCommand::Push {
            config,
            store,
            json,
        } => sync(&config, &store, true, json),
        CacheCommand::Pull {
            config,
            store,
            json,
        } => sync(&config, &store, false, json),
        CacheCommand::Gc { keep, store, json } => {
            let catalog = catalog();
            let ctx = run_context()?;
            let mut keys = BTreeSet::new();
            let mut root: Option<PathBuf> = None;
            // The store is locked before any config is read, so no run can
            // add results between deciding what to keep and deleting.
            let mut held: Option<(LocalStore, FileLock)> = None;
            for cfg_path in &keep {
                let cfg = load_config(cfg_path, &catalog)?;
                let choice = config_store(&store, &cfg);
                let r = choice.root.clone();
                if root.is_none() {
                    announce(&choice);
                    root = Some(r.clone());
                }
                if Some(&r) != root.as_ref() {
                    return Err(BadInput(format!(
                        "{} uses store {}, not {}; pass --store to choose one",
                        cfg_path.display(),
                        r.display(),
                        root.as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ))
                    .into());
                }
                if held.is_none() {
                    let s = existing_store(&r)?;
                    let path = s.store_lock_path();
                    let Some(lock) = FileLock::try_exclusive(&path)
                        .with_context(|| path.display().to_string())?
                    else {
                        return Err(StoreBusy(format!(
                            "store {} is in use by a running `bsce-pipe run`; run `cache gc` when it has finished",
                            r.display()
                        ))
                        .into());
                    };
                    held = Some((s, lock));
                }
                let s = &held.as_ref().expect("locked above").0;
                let plan = Plan::from_config(&cfg);
                let engine = Engine::new(&plan, s, &catalog, &ctx);
                // A missing source leaves the config's keys unknown: gc
                // would keep none of its results (the whole prepared
                // dataset and every model of a briefly unmounted share).
                engine.check_sources().map_err(|e| {
                    BadInput(format!(
                        "{}: {e}; cache gc keeps a config's results by their keys, which it cannot \
                         compute while a source is missing, so it removes nothing (put the source \
                         back, or leave this config out of --keep)",
                        cfg_path.display()
                    ))
                })?;
                keys.extend(engine.stored_keys()?);
            }
            let (store, _lock) = held.expect("at least one config");
            // A detached Slurm run holds no lock between two of its jobs.
            let slurm_runs = slurm_cli::gc_slurm_runs(&store, &ctx)?;
            keys.extend(slurm_runs.keep);
            for (run, why) in &slurm_runs.live {
                let _ = writeln!(
                    std::io::stderr(),
                    "keeping every result that Slurm run {run} reads ({why})"
                );
            }
            let mut r = maintenance::gc(&store, &keys, &slurm_runs.finished)?;
            r.live_slurm_runs = slurm_runs.live;
            if json {
                out!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let partial = match r.removed_partial {
                    0 => String::new(),
                    n => format!(", {n} partial stage work folders"),
                };
                let runs = match r.removed_slurm_runs {
                    0 => String::new(),
                    1 => ", 1 finished Slurm run folder".to_string(),
                    n => format!(", {n} finished Slurm run folders"),
                };
                out!(
                    "kept {} results; removed {} results and {} blobs{partial}{runs} ({} bytes)",
                    r.kept_actions,
                    r.removed_actions,
                    r.removed_blobs,
                    r.freed_bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Du { store, json } => {
            let store = found_store(&store)?;
            let r = maintenance::du(&store)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                out!("{:<10} {:>8} {:>14}", "kind", "results", "bytes");
                for (kind, u) in &r.kinds {
                    out!("{kind:<10} {:>8} {:>14}", u.actions, u.bytes);
                }
                out!("{:<10} {:>8} {:>14}", "logs", "", r.logs_bytes);
                out!("{:<10} {:>8} {:>14}", "unused", "", r.unreferenced_bytes);
                out!("{:<10} {:>8} {:>14}", "total", "", r.total_bytes);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cache push` and `cache pull`: the config's stages against its remote.
fn sync(config: &Path, args: &StoreArgs, push: bool, json: bool) -> Result<ExitCode> {
    let loaded = load(config, args)?;
    let url = args
        .remote
        .clone()
        .or_else(|| loaded.cfg.remote.clone())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            BadInput(format!(
                "cache {} needs a remote: --remote URL, BSCE_REMOTE, or store.remote in {}",
                if push { "push" } else { "pull" },
                config.display()
            ))
        })?;
    let remote = bsce_pipeline::store::remote::open(&url).map_err(BadInput)?;
    let local = if push {
        existing_store(&loaded.root)?
    } else {
        LocalStore::open(&loaded.root)?
    };
    let _in_use = hold_store(&local)?;
    let ctx = run_context()?;
    let mut pushed = Vec::new();
    let mut missing = Vec::new();
    let layered = Layered::new(local.clone(), remote, RemoteMode::ReadWrite);
    let status = if push {
        // What this store holds, as a run would find it; each pushed.
        let status = Engine::new(&loaded.plan, &local, &loaded.catalog, &ctx)
            .status(&RunOptions::default())?;
        for (node, st) in loaded.plan.nodes.iter().zip(&status) {
            match st {
                NodeStatus::Cached { record, .. } => {
                    if layered.push(record) {
                        pushed.push(node.label.clone());
                        if !json {
                            let _ = writeln!(std::io::stderr(), "pushed   {}", node.label);
                        }
                    } else if layered.is_down() {
                        break;
                    }
                }
                NodeStatus::ToRun { .. } => missing.push(node.label.clone()),
            }
        }
        status
    } else {
        let opts = RunOptions {
            fetch: true,
            ..RunOptions::default()
        };
        // Pulled = cached now, not cached locally before.
        let before = Engine::new(&loaded.plan, &local, &loaded.catalog, &ctx)
            .status(&RunOptions::default())?;
        let status = Engine::new(&loaded.plan, &layered, &loaded.catalog, &ctx).status(&opts)?;
        for ((node, st), was) in loaded.plan.nodes.iter().zip(&status).zip(&before) {
            match (st, was) {
                (NodeStatus::Cached { .. }, NodeStatus::ToRun { .. }) => {
                    pushed.push(node.label.clone())
                }
                (NodeStatus::Cached { .. }, _) => {}
                (NodeStatus::ToRun { .. }, _) => missing.push(node.label.clone()),
            }
        }
        status
    };
    let t = layered.stats();
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "remote": layered.remote(), "stages": status.len(),
                if push { "pushed" } else { "pulled" }: pushed,
                "not_available": missing, "transfer": t,
                "remote_unavailable": layered.is_down(),
            }))?
        );
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "{}; {} of {} stages {}",
            transfer_line(&layered).unwrap_or_default(),
            missing.len(),
            status.len(),
            if push {
                "are not in the local store"
            } else {
                "are in neither store"
            }
        );
    }
    Ok(if layered.is_down() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn existing_store(root: &Path) -> Result<LocalStore> {
    LocalStore::open_existing(root)
        .ok_or_else(|| BadInput(format!("{}: no bsce-pipe store here", root.display())).into())
}

/// The child side of a stage: run it, report errors on stderr (the log),
/// exit non-zero on failure.
fn exec_stage(job_path: &Path) -> Result<ExitCode> {
    bsce_pipeline::exec::job::die_with_parent();
    let table: Vec<_> = bsce_stages::stage::PIPE_STAGES
        .iter()
        .chain(bsce_tables::RESULT_STAGES)
        .copied()
        .collect();
    Ok(bsce_stages::stage::exec_stage(
        job_path,
        Runner::Pipe,
        &table,
    ))
}

/// The first SIGINT/SIGTERM cancels the run (children are stopped, the
/// store keeps only complete records); a second one exits at once.
fn cancel_on_signals(cancel: &CancelToken) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if cancel.is_cancelled() {
                // Children die with us (PDEATHSIG).
                std::process::exit(130);
            }
            cancel.cancel();
        }
    });
    Ok(())
}

/// A run holds the store's lock shared for its whole length; `cache gc`
/// takes it exclusively. Waits (saying so) while a gc is in progress.
fn hold_store(store: &LocalStore) -> Result<FileLock> {
    let path = store.store_lock_path();
    let mut said = false;
    loop {
        if let Some(l) = FileLock::try_shared(&path).with_context(|| path.display().to_string())? {
            return Ok(l);
        }
        if !said {
            let _ = writeln!(
                std::io::stderr(),
                "waiting for `cache gc` to finish with {}",
                store.root().display()
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
