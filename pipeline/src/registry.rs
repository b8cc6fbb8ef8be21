//! The stage registry: every stage kind declared once, here.
//!
//! | field         | read by                                                       |
//! |---------------|---------------------------------------------------------------|
//! | `kind`, `name`| config, plan, keys, store records, `cache du`                 |
//! | `runner`      | the scheduler (which binary runs `exec-stage`), both routers  |
//! | `needs_gpu`   | the scheduler's GPU slots (`--gpus`, `--stages-per-gpu`)       |
//! | `outputs`     | the plan (what a consumer reads) and ingestion (a stage must write exactly these) |
//! | `code`        | `stages/build.rs`: the entry points whose reachable sources make the kind's code digest |
//! | `code_variants` | more entry points per value of one param (a train stage covers its own method's losses) |
//! | `libraries`   | `stages/build.rs`: crates (from Cargo.lock) whose versions change the kind's numerics |
//! | `seed_inputs` | the scheduler: inputs that, with the params, make the stage's seed |
//!
//! Adding a kind is a row here, a variant of [`StageKind`], its params in
//! `params.rs` and its module in the crate that runs it.
//!
//! This file is also compiled into `stages/build.rs` (via `#[path]`), so it
//! uses nothing but `std`, `serde` and `serde_json`.

#![allow(dead_code)] // the build script uses only part of it

use serde::{Deserialize, Serialize};

/// The stage kinds a plan can contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// A dataset source -> the canonical dataset artefact.
    Prepare,
    /// An order spec + the dataset's class count -> an explicit class order.
    Order,
    /// Dataset + order + incremental setting -> the classes of every task.
    Tasks,
    /// One incremental task: the previous model and memory + the task's
    /// data -> the new model, memory and class means (libtorch).
    Train,
    /// A task's model on the test images of every class seen so far.
    Evaluate,
    /// Every evaluation of an experiment -> tidy, per-run and summary
    /// frames (polars; Parquet and CSV).
    Aggregate,
    /// Summary frames + a table declaration + templates -> the table in
    /// Markdown and LaTeX (minijinja).
    Render,
    /// An experiment's tidy frame -> accuracy against classes seen for one
    /// setting, SVG and PNG (plotters).
    Plot,
}

/// Which binary runs a kind's `exec-stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runner {
    /// `bsce-pipe` itself: starts in milliseconds, no libtorch.
    Pipe,
    /// `bsce-torch`, the half that links libtorch (~0.4 s to load).
    Torch,
}

impl Runner {
    pub fn binary(self) -> &'static str {
        match self {
            Runner::Pipe => "bsce-pipe",
            Runner::Torch => "bsce-torch",
        }
    }
}

#[derive(Debug)]
pub struct StageSpec {
    pub kind: StageKind,
    pub name: &'static str,
    pub runner: Runner,
    /// Gets a GPU slot when `--gpus` lists some, and waits for one.
    pub needs_gpu: bool,
    /// Every file the stage writes to its output folder; no other.
    pub outputs: &'static [&'static str],
    /// The kind's entry points (workspace-relative files): its code is
    /// every file reachable from them through paths (`stages/build.rs`,
    /// `stages/src/code_digest.rs`), never a hand list. Comments,
    /// formatting, `#[cfg(test)]` items, file names and item order never
    /// count.
    pub code: &'static [&'static str],
    /// More entry points for some stages of the kind, chosen by a param: a
    /// train stage's digest covers its own method's losses only (the walk
    /// of one variant never enters another variant's entry points).
    pub code_variants: Option<CodeVariants>,
    pub libraries: &'static [&'static str],
    /// Inputs whose digests, with the params, seed the stage's randomness.
    /// Never the code digest, so an edit that does not change the
    /// computation gives byte-identical outputs; never the previous
    /// model, so a change upstream does not reshuffle every later task.
    pub seed_inputs: &'static [&'static str],
}

/// Code a stage's digest adds according to one of its params.
#[derive(Debug)]
pub struct CodeVariants {
    /// JSON pointer into the stage's params (`/method/preset`).
    pub param: &'static str,
    /// Param value -> its extra entry points. Every value the param can
    /// take is listed (a test checks it), so none falls back silently.
    pub by_value: &'static [(&'static str, &'static [&'static str])],
}

impl StageSpec {
    /// The variant a stage with these params belongs to, if the kind has
    /// variants.
    pub fn variant_of(&self, params: &serde_json::Value) -> Option<&'static str> {
        let v = self.code_variants.as_ref()?;
        let value = params.pointer(v.param)?.as_str()?;
        v.by_value
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(name, _)| *name)
    }
}

/// What `stages/build.rs` digests: each kind, and each kind:variant, with
/// its entry points and the files its walk must not enter (the other
/// variants' entry points).
pub fn code_kinds() -> Vec<(String, Vec<&'static str>, Vec<&'static str>)> {
    let mut kinds = Vec::new();
    for spec in STAGES {
        let variants: Vec<&str> = spec
            .code_variants
            .iter()
            .flat_map(|v| {
                v.by_value
                    .iter()
                    .flat_map(|(_, extra)| extra.iter().copied())
            })
            .collect();
        kinds.push((spec.name.to_string(), spec.code.to_vec(), variants.clone()));
        if let Some(v) = &spec.code_variants {
            for (value, extra) in v.by_value {
                kinds.push((
                    format!("{}:{value}", spec.name),
                    spec.code.iter().chain(extra.iter()).copied().collect(),
                    variants
                        .iter()
                        .copied()
                        .filter(|f| !extra.contains(f))
                        .collect(),
                ));
            }
        }
    }
    kinds
}

/// Files of a prepared dataset.
pub mod files {
    pub const META: &str = "meta.json";
    pub(crate) const TRAIN_IMAGES: &str = "train.images";
    pub(crate) const TRAIN_LABELS: &str = "train.labels";
    pub(crate) const TEST_IMAGES: &str = "test.images";
    pub(crate) const TEST_LABELS: &str = "test.labels";
    pub(crate) const TRAIN_SIZES: &str = "train.sizes";
    pub(crate) const TEST_SIZES: &str = "test.sizes";
    pub const ORDER: &str = "order.json";
    pub const TASKS: &str = "tasks.json";
    pub const WEIGHTS: &str = "model.safetensors";
    pub const MODEL: &str = "model.json";
    pub const MEMORY: &str = "memory.json";
    pub const TRAIN_LOG: &str = "log.json";
    pub const EVALUATION: &str = "eval.json";
    pub const TIDY_PARQUET: &str = "tidy.parquet";
    pub const TIDY_CSV: &str = "tidy.csv";
    pub const GROUPS_PARQUET: &str = "groups.parquet";
    pub const GROUPS_CSV: &str = "groups.csv";
    pub const RUNS_PARQUET: &str = "runs.parquet";
    pub const RUNS_CSV: &str = "runs.csv";
    pub const SUMMARY_PARQUET: &str = "summary.parquet";
    pub const SUMMARY_CSV: &str = "summary.csv";
    pub const EPOCHS_PARQUET: &str = "epochs.parquet";
    pub const EPOCHS_CSV: &str = "epochs.csv";
    pub const TABLE_MD: &str = "table.md";
    pub const TABLE_TEX: &str = "table.tex";
    pub const PLOT_SVG: &str = "plot.svg";
    pub const PLOT_PNG: &str = "plot.png";
    pub const LOSS_SVG: &str = "loss.svg";
    pub const LOSS_PNG: &str = "loss.png";

    /// A train stage's live TensorBoard file in its run's folder under
    /// `<store>/tensorboard/`: `events.out.tfevents.t<task>.<key>`, the
    /// key the stage's seed in hex. The train stage writes it, `cache gc`
    /// matches it to the kept train results.
    pub fn live_events(task: usize, key: &str) -> String {
        format!("events.out.tfevents.t{task:03}.{key}")
    }

    /// The task and key of a [`live_events`] name; None for any other.
    pub fn parse_live_events(name: &str) -> Option<(usize, &str)> {
        let (task, key) = name
            .strip_prefix("events.out.tfevents.t")?
            .split_once('.')?;
        Some((task.parse().ok()?, key))
    }

    pub const DATASET: &[&str] = &[
        META,
        TRAIN_IMAGES,
        TRAIN_SIZES,
        TRAIN_LABELS,
        TEST_IMAGES,
        TEST_SIZES,
        TEST_LABELS,
    ];
    /// What a train stage hands the next task and its evaluation (not its log).
    pub(crate) const MODEL_FILES: &[&str] = &[WEIGHTS, MODEL, MEMORY];
    /// What an `aggregate` stage writes: each frame as Parquet and CSV.
    pub const FRAMES: &[&str] = &[
        TIDY_PARQUET,
        TIDY_CSV,
        GROUPS_PARQUET,
        GROUPS_CSV,
        RUNS_PARQUET,
        RUNS_CSV,
        SUMMARY_PARQUET,
        SUMMARY_CSV,
        EPOCHS_PARQUET,
        EPOCHS_CSV,
    ];
}

pub const STAGES: &[StageSpec] = &[
    StageSpec {
        kind: StageKind::Prepare,
        name: "prepare",
        runner: Runner::Pipe,
        needs_gpu: false,
        outputs: files::DATASET,
        code: &["stages/src/stage/prepare.rs"],
        code_variants: None,
        libraries: &["image", "zune-jpeg", "flate2"],
        seed_inputs: &[],
    },
    StageSpec {
        kind: StageKind::Order,
        name: "order",
        runner: Runner::Pipe,
        needs_gpu: false,
        outputs: &[files::ORDER],
        code: &["stages/src/stage/order.rs"],
        code_variants: None,
        libraries: &[],
        seed_inputs: &[],
    },
    StageSpec {
        kind: StageKind::Tasks,
        name: "tasks",
        runner: Runner::Pipe,
        needs_gpu: false,
        outputs: &[files::TASKS],
        code: &["stages/src/stage/tasks.rs"],
        code_variants: None,
        libraries: &[],
        seed_inputs: &[],
    },
    StageSpec {
        kind: StageKind::Train,
        name: "train",
        runner: Runner::Torch,
        needs_gpu: true,
        outputs: &[
            files::WEIGHTS,
            files::MODEL,
            files::MEMORY,
            files::TRAIN_LOG,
        ],
        code: &["train/src/stage/train.rs"],
        code_variants: Some(CodeVariants {
            param: "/method/preset",
            by_value: &[
                ("finetune", &[]),
                ("icarl", &["train/src/loss/icarl.rs"]),
                (
                    "lucir",
                    &["train/src/loss/lucir.rs", "train/src/stage/finetune.rs"],
                ),
                (
                    "podnet",
                    &["train/src/loss/podnet.rs", "train/src/stage/finetune.rs"],
                ),
            ],
        }),
        libraries: &["tch", "torch-sys"],
        seed_inputs: &["dataset", "order"],
    },
    StageSpec {
        kind: StageKind::Evaluate,
        name: "evaluate",
        runner: Runner::Torch,
        needs_gpu: true,
        outputs: &[files::EVALUATION],
        code: &["train/src/stage/evaluate.rs"],
        code_variants: None,
        libraries: &["tch", "torch-sys"],
        seed_inputs: &["dataset", "order"],
    },
    StageSpec {
        kind: StageKind::Aggregate,
        name: "aggregate",
        runner: Runner::Pipe,
        needs_gpu: false,
        outputs: files::FRAMES,
        code: &["reports/src/aggregate.rs"],
        code_variants: None,
        libraries: &["polars"],
        seed_inputs: &[],
    },
    StageSpec {
        kind: StageKind::Render,
        name: "render",
        runner: Runner::Pipe,
        needs_gpu: false,
        outputs: &[files::TABLE_MD, files::TABLE_TEX],
        code: &["reports/src/render.rs"],
        code_variants: None,
        libraries: &["polars", "minijinja"],
        seed_inputs: &[],
    },
    StageSpec {
        kind: StageKind::Plot,
        name: "plot",
        runner: Runner::Pipe,
        needs_gpu: false,
        outputs: &[
            files::PLOT_SVG,
            files::PLOT_PNG,
            files::LOSS_SVG,
            files::LOSS_PNG,
        ],
        code: &["reports/src/plot.rs"],
        code_variants: None,
        libraries: &["polars", "plotters", "ab_glyph"],
        seed_inputs: &[],
    },
];

/// The one list of workspace sources that cannot change any stage's
/// outputs, with why. The build fails on a source file that is neither in
/// some kind's `code` nor here (nor only compiled for tests).
pub const NO_OUTPUT_EFFECT: &[(&str, &str)] = &[
    (
        "src",
        "the bsce-pipe library (ops) and CLI: commands, argument parsing, printing",
    ),
    (
        "build.rs",
        "records the git commit for --version and provenance",
    ),
    (
        "pipeline/src",
        "the engine: what it hands a stage reaches the key as params, inputs and sources",
    ),
    (
        "stages/src/stage/mod.rs",
        "routes a job to its kind and answers the engine's catalog questions",
    ),
    (
        "stages/src/stage/worker.rs",
        "a warm worker's loop: feeds jobs one at a time to the same entry as exec-stage \
         (byte-identical outputs warm and cold are tested)",
    ),
    (
        "stages/src/error.rs",
        "error types: change failure messages only",
    ),
    (
        "stages/src/tensorboard.rs",
        "writes TensorBoard views of log.json (live files outside the store, and the report's); \
         no stage output depends on it",
    ),
    (
        "stages/src/dataset/cifar/fixtures.rs",
        "writes CIFAR archives for tests; no stage calls it",
    ),
    (
        "reports/src/lib.rs",
        "routes a result stage's job to its kind",
    ),
    (
        "reports/src/report.rs",
        "assembles the report folder from stored outputs (copies, an index); no stage runs it",
    ),
    (
        "reports/src/results.rs",
        "reads stored frames for `results`; no stage runs it",
    ),
    (
        "reports/src/timeline.rs",
        "draws the report's timelines from provenance; no stage runs it",
    ),
    (
        "reports/src/html.rs",
        "assembles the report's index.html from stored outputs; no stage runs it",
    ),
    ("train/src/main.rs", "bsce-torch's command line"),
    ("train/src/router.rs", "routes a job to its kind"),
    ("train/src/bench.rs", "the benchmarks of bench/run.sh"),
    (
        "train/src/probe.rs",
        "`bsce-torch probe`: one training step written out for the parity tests; no stage runs it",
    ),
    (
        "train/src/crops.rs",
        "`bsce-torch crops`: the data path's batches written out for people and tests; no stage runs it",
    ),
    (
        "train/build.rs",
        "links libtorch (its version is a library of the train kinds)",
    ),
    (
        "stages/build.rs",
        "computes these digests; a change of rule changes every digest it makes",
    ),
];

/// Folders of the workspace whose `.rs` files must all be classified.
pub const SOURCE_ROOTS: &[&str] = &[
    "src",
    "pipeline/src",
    "stages/src",
    "reports/src",
    "train/src",
];

impl StageKind {
    pub const ALL: [StageKind; 8] = [
        StageKind::Prepare,
        StageKind::Order,
        StageKind::Tasks,
        StageKind::Train,
        StageKind::Evaluate,
        StageKind::Aggregate,
        StageKind::Render,
        StageKind::Plot,
    ];

    pub fn spec(self) -> &'static StageSpec {
        STAGES
            .iter()
            .find(|s| s.kind == self)
            .expect("every kind has a registry row")
    }

    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    pub fn parse(s: &str) -> Option<StageKind> {
        STAGES.iter().find(|k| k.name == s).map(|k| k.kind)
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
