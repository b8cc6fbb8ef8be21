//! The command line as clap parses it: every command, flag and help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// `0.1.0 (commit <sha>[, dirty])`: the commit build.rs found, formatted
/// as reports and provenance format it.
fn long_version() -> &'static str {
    static LONG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LONG.get_or_init(|| {
        bsce_pipeline::exec::context::long_version(
            env!("CARGO_PKG_VERSION"),
            option_env!("BSCE_GIT_COMMIT"),
        )
    })
}

#[derive(Parser)]
#[command(
    name = "bsce-pipe",
    version = long_version(),
    about = "Reproduce Balanced Softmax Cross-Entropy for Incremental Learning, every result computed once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// Store directory [default: env BSCE_STORE, else the config's store.path, else the nearest
    /// .bsce above the config, then above the working folder, else a new .bsce at the project
    /// root: the git checkout of the config or of the working folder, else the working folder]
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Remote cache shared between machines [env BSCE_REMOTE; default: the config's
    /// store.remote]: file:///path, http(s)://host/prefix (Bazel's HTTP cache layout),
    /// s3://bucket/prefix (AWS_* variables; AWS_ENDPOINT_URL for other S3 servers)
    #[arg(long, env = "BSCE_REMOTE", hide_env_values = true)]
    pub remote: Option<String>,
    /// Pull from the remote, never push [env BSCE_REMOTE_READ_ONLY]
    #[arg(long, env = "BSCE_REMOTE_READ_ONLY")]
    pub remote_read_only: bool,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// List every stage skipped after a failure (by default one line per failed stage
        /// counts them per kind)
        #[arg(long, short)]
        verbose: bool,
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
        /// Start every stage in a fresh process (by default libtorch stages run one after
        /// another in warm worker processes, one per job slot)
        #[arg(long)]
        cold: bool,
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
        /// Instead: per experiment and in total, the train and evaluate work still to do in
        /// image passes and its estimated hours on each device the store has a calibration for
        /// (`calibrate`), and the hours provenance recorded for what is stored
        #[arg(long)]
        cost: bool,
    },
    /// Measure this node's training and forward throughput (images/s) for the networks of
    /// CONFIG (default: resnet32@32 and resnet18@224) and record it in the store for
    /// `status --cost`; a few seconds per network.
    Calibrate {
        config: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        /// cpu or cuda:N [default: cuda:0 when libtorch sees a GPU, else cpu]
        #[arg(long)]
        device: Option<String>,
        /// A network to measure besides the config's, as NAME@SIDE (resnet18@224)
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Images per step [default: 128 on a GPU, 32 on the CPU]
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        batch: Option<u32>,
        /// CPU threads of the measurement [default 1: what each stage of a `run` gets with the
        /// default --jobs, the CPU count; a stage of `run --jobs J` gets CPUs / J]
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        threads: u32,
        /// Seconds per network, half training, half forward passes (a third of each warms up)
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
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
        /// Output folder [default: reports/out/<config name>/ at the project root]
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
    #[command(
        override_usage = "bsce-pipe explain [OPTIONS] <CONFIG> <LABEL>\n       \
                                bsce-pipe explain [OPTIONS] <CONFIG> --if-changed <FILE>..."
    )]
    Explain {
        config: PathBuf,
        /// A stage label (see `status`)
        #[arg(required_unless_present = "if_changed")]
        label: Option<String>,
        /// Instead: the stages an edit to these source files would rerun (the kinds whose code
        /// digest covers them, and everything downstream), and what that costs
        #[arg(long, num_args = 1.., conflicts_with = "label", value_name = "FILE")]
        if_changed: Vec<PathBuf>,
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
    /// Internal: the body of a Slurm job: run its stages (N=LABEL, in
    /// order) of a submitted run, their inputs from the store, each unless
    /// the store has it.
    #[command(hide = true)]
    ExecNode {
        run_dir: PathBuf,
        #[arg(required = true)]
        stages: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Subcommand)]
pub enum CacheCommand {
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
pub enum OrderCommand {
    /// Print an order as a JSON list.
    Show(ShowOrder),
}

/// `order show`'s flags (`ops::inspect::OrderQuery::from_flags` says which
/// sets go together).
#[derive(clap::Args)]
pub struct ShowOrder {
    /// A built-in order name (see --list)
    pub name: Option<String>,
    #[arg(long, requires = "classes")]
    pub numpy_seed: Option<u32>,
    /// The original iCaRL script's order for this seed
    #[arg(long, requires = "classes", conflicts_with = "numpy_seed")]
    pub icarl_seed: Option<u32>,
    #[arg(long)]
    pub classes: Option<usize>,
    /// Take the order from a config's `orders` entry
    #[arg(long, requires = "entry")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub entry: Option<String>,
    /// List the built-in orders
    #[arg(long)]
    pub list: bool,
}

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Detected format, images per split, classes, image size and content digest.
    Inspect {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}
