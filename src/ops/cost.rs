//! What work costs before it runs: `status --cost` (the train and evaluate
//! stages still to run, in image passes and in hours on each calibrated
//! device; what is stored, in the hours its provenance recorded),
//! `calibrate` (the throughput those hours come from, measured on this
//! node) and `explain --if-changed` (what an edit to source files reruns).
//! The arithmetic is `bsce_pipeline::cost`'s; this module joins it with
//! the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bsce_pipeline::catalog::{StageCatalog, StageKind};
use bsce_pipeline::cost::{self, ImagesPerClass, NetKey, StageCost, Work};
use bsce_pipeline::exec::{NodeStatus, RunOptions};
use bsce_pipeline::plan::Plan;
use bsce_pipeline::registry::{files, NO_OUTPUT_EFFECT};
use bsce_pipeline::store::calibration::{
    read_calibration, Calibration, Throughput, CALIBRATION_FILE,
};
use bsce_pipeline::store::layered::only_in_remote;
use bsce_pipeline::store::{LocalStore, Store};
use serde::Serialize;

use super::store::{self, Loaded, StoreArgs};
use super::Ctx;
use crate::{Error, Result};

/// The estimate of a set of stages.
#[derive(Debug, Default, Serialize)]
pub struct Estimate {
    /// Train and evaluate stages in the set.
    pub stages: usize,
    pub work: Work,
    /// Epochs x images, fine-tuning included (`work.train + work.finetune`).
    pub image_passes: f64,
    /// The networks the stages run, as calibrations name them.
    pub networks: Vec<String>,
    /// Device class -> hours; `null` where a network of the set has no
    /// calibration on that device.
    pub hours: BTreeMap<String, Option<f64>>,
}

/// One experiment of `status --cost` (or the total).
#[derive(Debug, Serialize)]
pub struct CostRow {
    pub experiment: String,
    /// Empty for the total.
    pub dataset: String,
    /// The train and evaluate stages still to run.
    pub to_run: Estimate,
    /// Train and evaluate stages in the store.
    pub stored: usize,
    /// Their wall time as provenance recorded it, in hours.
    pub recorded_hours: f64,
    /// The devices they ran on (`cpu`, `cuda:0`).
    pub recorded_devices: Vec<String>,
}

/// `status CONFIG --cost`.
#[derive(Debug, Serialize)]
pub struct CostReport {
    pub config: PathBuf,
    pub calibration_file: PathBuf,
    /// The device classes the store has a calibration for.
    pub devices: Vec<String>,
    /// Per dataset, the images per class the estimate counts.
    pub images_per_class: BTreeMap<String, ImagesPerClass>,
    /// Each stage is counted once, in the first experiment (by name, as
    /// the config resolves them) that has it: experiments sharing a stage (a base task) do not both
    /// pay for it.
    pub experiments: Vec<CostRow>,
    pub total: CostRow,
    /// Device class -> the networks of the work to do it has no
    /// calibration for; every network when no device is calibrated
    /// (under `"(none)"`).
    pub uncalibrated: BTreeMap<String, Vec<String>>,
    /// What measures the missing rates.
    pub calibrate_command: String,
}

/// The estimator of one config: every stage's work and the store's
/// calibration.
struct Estimator {
    costs: Vec<Option<StageCost>>,
    calibration: Calibration,
    images: BTreeMap<String, ImagesPerClass>,
}

impl Estimator {
    fn new(loaded: &Loaded, store: &dyn Store, status: &[NodeStatus]) -> Result<Estimator> {
        let prepared = prepared_counts(&loaded.plan, store.local(), status);
        let images = cost::images_per_dataset(&loaded.cfg, &prepared)
            .map_err(|e| Error::bad_input(e.to_string()))?;
        let costs = cost::stage_costs(&loaded.plan, &images)
            .map_err(|e| Error::bad_input(e.to_string()))?;
        // The config's store's file, read even where the store has no
        // results yet (the reading then uses an empty scratch store).
        let calibration = read_calibration(&loaded.root.join(CALIBRATION_FILE))?;
        Ok(Estimator {
            costs,
            calibration,
            images,
        })
    }

    fn estimate(&self, nodes: impl IntoIterator<Item = usize>) -> Estimate {
        let mut e = Estimate::default();
        let mut nets = BTreeSet::new();
        let mut hours: BTreeMap<&str, Option<f64>> = self
            .calibration
            .devices
            .keys()
            .map(|d| (d.as_str(), Some(0.0)))
            .collect();
        for id in nodes {
            let Some(c) = &self.costs[id] else { continue };
            e.stages += 1;
            e.work += c.work;
            let net = c.net.to_string();
            for (device, h) in hours.iter_mut() {
                let rate = self.calibration.devices[*device].get(&net);
                *h = match (*h, rate) {
                    (Some(sum), Some(t)) => Some(sum + c.work.hours(t)),
                    _ => None,
                };
            }
            nets.insert(net);
        }
        e.image_passes = e.work.epoch_passes();
        e.networks = nets.into_iter().collect();
        e.hours = hours.into_iter().map(|(d, h)| (d.to_string(), h)).collect();
        e
    }

    /// Per device, the networks of `e` it has no rate for.
    fn missing(&self, e: &Estimate) -> BTreeMap<String, Vec<String>> {
        if self.calibration.devices.is_empty() && !e.networks.is_empty() {
            return BTreeMap::from([("(none)".to_string(), e.networks.clone())]);
        }
        self.calibration
            .devices
            .iter()
            .filter_map(|(device, rates)| {
                let lacking: Vec<String> = e
                    .networks
                    .iter()
                    .filter(|n| !rates.contains_key(*n))
                    .cloned()
                    .collect();
                (!lacking.is_empty()).then(|| (device.clone(), lacking))
            })
            .collect()
    }
}

/// Images per class of each dataset whose prepared artefact is in the local
/// store (its `meta.json`): exact where the config alone has only a
/// profile's figures.
fn prepared_counts(
    plan: &Plan,
    local: &LocalStore,
    status: &[NodeStatus],
) -> BTreeMap<String, ImagesPerClass> {
    // Each run's dataset, by the prepare stage its train stages read.
    let mut dataset_of: HashMap<usize, &str> = HashMap::new();
    for run in &plan.runs {
        for &t in &run.trains {
            for i in plan.nodes[t].inputs.iter().filter(|i| i.name == "dataset") {
                dataset_of.insert(i.node, &run.dataset);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (id, (node, st)) in plan.nodes.iter().zip(status).enumerate() {
        let (StageKind::Prepare, NodeStatus::Cached { record, .. }) = (node.kind, st) else {
            continue;
        };
        if only_in_remote(record) {
            continue;
        }
        let meta = record
            .outputs
            .get(files::META)
            .and_then(|entry| local.intact_blob_path(entry, files::META).ok())
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| {
                serde_json::from_slice::<bsce_stages::dataset::artefact::DatasetMeta>(&b).ok()
            });
        if let (Some(meta), Some(name)) = (meta, dataset_of.get(&id)) {
            out.insert(
                name.to_string(),
                ImagesPerClass::prepared(meta.train_count, meta.test_count, meta.num_classes()),
            );
        }
    }
    out
}

/// Hours of wall time a stored stage's provenance recorded, and where.
fn recorded(st: &NodeStatus) -> Option<(f64, &str)> {
    match st {
        NodeStatus::Cached { record, .. } => Some((
            record.provenance.wall_seconds / 3600.0,
            record.provenance.device.as_str(),
        )),
        NodeStatus::ToRun { .. } => None,
    }
}

fn calibrate_command(config: &Path) -> String {
    format!(
        "bsce-pipe calibrate {} --device cuda:0 (on the GPU node; --device cpu for the CPU)",
        config.display()
    )
}

pub fn status_cost(loaded: &Loaded, args: &StoreArgs) -> Result<CostReport> {
    let reading = store::Reading::open(loaded, args)?;
    let status = reading.engine(loaded).status(&RunOptions::default())?;
    let est = Estimator::new(loaded, reading.store(), &status)?;
    let plan = &loaded.plan;
    // Each GPU stage under the first experiment that has it.
    let mut owner: Vec<Option<usize>> = vec![None; plan.nodes.len()];
    let experiments: Vec<&str> = loaded
        .cfg
        .experiments
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    for run in &plan.runs {
        let e = experiments
            .iter()
            .position(|x| *x == run.experiment)
            .unwrap_or(0);
        for &n in run.trains.iter().chain(&run.evaluations) {
            owner[n].get_or_insert(e);
        }
    }
    let row = |name: &str, dataset: &str, member: &dyn Fn(usize) -> bool| {
        let nodes: Vec<usize> = (0..plan.nodes.len())
            .filter(|&n| member(n) && est.costs[n].is_some())
            .collect();
        let mut hours = 0.0;
        let mut devices = BTreeSet::new();
        let mut stored = 0;
        let mut to_run = Vec::new();
        for &n in &nodes {
            match recorded(&status[n]) {
                Some((h, device)) => {
                    stored += 1;
                    hours += h;
                    devices.insert(device.to_string());
                }
                None => to_run.push(n),
            }
        }
        CostRow {
            experiment: name.to_string(),
            dataset: dataset.to_string(),
            to_run: est.estimate(to_run),
            stored,
            recorded_hours: hours,
            recorded_devices: devices.into_iter().collect(),
        }
    };
    let rows: Vec<CostRow> = loaded
        .cfg
        .experiments
        .iter()
        .enumerate()
        .map(|(i, e)| row(&e.name, &e.dataset, &|n| owner[n] == Some(i)))
        .collect();
    let total = row("total", "", &|_| true);
    Ok(CostReport {
        config: loaded.cfg.file.clone(),
        calibration_file: loaded.root.join(CALIBRATION_FILE),
        devices: est.calibration.devices.keys().cloned().collect(),
        uncalibrated: est.missing(&total.to_run),
        images_per_class: est.images.clone(),
        experiments: rows,
        total,
        calibrate_command: calibrate_command(&loaded.cfg.file),
    })
}

/// `calibrate [CONFIG]`'s choices.
#[derive(Clone, Debug, Default)]
pub struct CalibrateArgs {
    pub store: StoreArgs,
    /// `cpu` or `cuda:N`; default `bsce-torch`'s (the first GPU when
    /// libtorch sees one, else the CPU).
    pub device: Option<String>,
    /// Networks as `name@side`, besides the config's.
    pub networks: Vec<String>,
    pub batch: Option<u32>,
    /// OpenMP and rayon threads, as the scheduler gives a stage. One
    /// thread is also what keeps a busy node's rates sane: OpenMP's
    /// spinning threads on oversubscribed cores slowed a training step
    /// fifty-fold here.
    pub threads: u32,
    pub seconds: f64,
}

/// One network measured by `calibrate`.
#[derive(Debug, Serialize)]
pub struct Calibrated {
    pub network: String,
    #[serde(flatten)]
    pub throughput: Throughput,
}

#[derive(Debug, Serialize)]
pub struct CalibrationReport {
    pub device_class: String,
    pub file: PathBuf,
    pub measured: Vec<Calibrated>,
}

/// The networks without a config: the paper's CIFAR and ImageNet ones.
const DEFAULT_NETWORKS: &[&str] = &["resnet32@32", "resnet18@224"];

/// `calibrate [CONFIG]`: measures each network the config's train stages
/// run (or `--network`s; without either, ResNet-32 at 32 px and ResNet-18
/// at 224) with `bsce-torch calibrate` on this node, and records the
/// rates in the store under the device's class.
pub fn calibrate(
    config: Option<&Path>,
    args: &CalibrateArgs,
    ctx: &Ctx,
    progress: &mut dyn FnMut(&str),
) -> Result<CalibrationReport> {
    let mut nets: Vec<NetKey> = Vec::new();
    let mut push = |k: NetKey| {
        if !nets.contains(&k) {
            nets.push(k);
        }
    };
    for n in &args.networks {
        push(NetKey::parse(n).ok_or_else(|| {
            Error::bad_input(format!(
                "--network {n:?}: expected NAME@SIDE, NAME one of resnet32, resnet32_lucir, \
                 resnet18, resnet18_podnet, small, tiny and SIDE the input side in pixels \
                 (resnet32@32)"
            ))
        })?);
    }
    let root = match config {
        Some(c) => {
            let cfg = bsce_pipeline::config::load(c, &store::catalog(ctx))?;
            let plan = Plan::from_config(&cfg);
            for k in cost::networks(&plan) {
                push(k);
            }
            let choice = store::config_store(&args.store, &cfg, ctx);
            store::announce(&choice, ctx);
            choice.root
        }
        None => {
            if args.networks.is_empty() {
                for n in DEFAULT_NETWORKS {
                    push(NetKey::parse(n).expect("a valid default"));
                }
            }
            match bsce_pipeline::store::locate::choose(
                args.store.store.as_deref(),
                ctx.ambient.store.as_deref(),
                None,
                &ctx.ambient.cwd,
            ) {
                Some(choice) => {
                    store::announce(&choice, ctx);
                    choice.root
                }
                None => {
                    return Err(Error::bad_input(format!(
                        "no bsce-pipe store in {} or any folder above it; give the CONFIG \
                         whose store to calibrate, --store DIR or BSCE_STORE",
                        ctx.ambient.cwd.display()
                    )))
                }
            }
        }
    };
    let local = LocalStore::open(&root)?;
    let torch = store::run_context()?.torch_exe;
    let mut report = CalibrationReport {
        device_class: String::new(),
        file: local.calibration_path(),
        measured: Vec::new(),
    };
    for k in nets {
        progress(&format!("calibrating {k} ..."));
        let mut cmd = std::process::Command::new(&torch);
        cmd.arg("calibrate")
            .arg(k.network_name())
            .arg(k.side.to_string())
            .arg("--seconds")
            .arg(args.seconds.to_string())
            .env("OMP_NUM_THREADS", args.threads.to_string())
            .env("RAYON_NUM_THREADS", args.threads.to_string());
        if let Some(d) = &args.device {
            cmd.arg("--device").arg(d);
        }
        if let Some(b) = args.batch {
            cmd.arg("--batch").arg(b.to_string());
        }
        let out = cmd
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| Error::Other(anyhow::anyhow!("running {}: {e}", torch.display())))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
            // bsce-torch's usage errors (a bad --device) are the user's.
            return Err(if out.status.code() == Some(2) {
                Error::bad_input(format!("calibrate {k}: {msg}"))
            } else {
                Error::Other(anyhow::anyhow!("calibrate {k}: {msg}"))
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let num = |f: &str| v[f].as_f64().unwrap_or(0.0);
        let device_class = v["device_class"].as_str().unwrap_or("unknown").to_string();
        let throughput = Throughput {
            train_images_per_s: num("train_images_per_s"),
            forward_images_per_s: num("forward_images_per_s"),
            batch: v["batch"].as_u64().unwrap_or(0) as u32,
            device: v["device"].as_str().unwrap_or_default().to_string(),
            threads: v["threads"].as_i64().unwrap_or(0),
            host: store::run_context()?.host,
            measured_unix_ms: bsce_pipeline::host::unix_ms(),
            seconds: num("seconds"),
        };
        local.record_calibration(&device_class, &k.to_string(), throughput.clone())?;
        report.device_class = device_class;
        report.measured.push(Calibrated {
            network: k.to_string(),
            throughput,
        });
    }
    Ok(report)
}

/// One file of `explain --if-changed`.
#[derive(Debug, Serialize)]
pub struct ChangedFile {
    /// As given.
    pub given: PathBuf,
    /// Relative to the checkout, as code digests name it.
    pub file: Option<String>,
    /// The stage kinds (and variants, `train:lucir`) whose code digest
    /// covers it.
    pub kinds: Vec<String>,
    /// Why no digest covers it, where none does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One stage an edit reruns.
#[derive(Debug, Serialize)]
pub struct RerunStage {
    pub label: String,
    pub kind: String,
    /// `code` (its digest covers an edited file) or `downstream` (it reads
    /// what such a stage makes).
    pub because: &'static str,
    /// `cached` or `to-run` now.
    pub state: &'static str,
}

/// `explain CONFIG --if-changed FILE...`.
#[derive(Debug, Serialize)]
pub struct ChangeReport {
    pub files: Vec<ChangedFile>,
    pub stages: Vec<RerunStage>,
    /// Kind -> stages rerun, as `code` and `downstream`.
    pub by_kind: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// The train and evaluate stages among them, estimated as if none were
    /// stored.
    pub estimate: Estimate,
    /// The hours provenance recorded for those of them that are stored:
    /// what the edit throws away.
    pub recorded_hours: f64,
    pub uncalibrated: BTreeMap<String, Vec<String>>,
    pub calibrate_command: String,
}

/// The file as code digests name it: relative to the checkout holding it
/// (the folder with `pipeline/src/registry.rs`), or as given when that is
/// already a digest's name.
fn repo_relative(file: &Path, cwd: &Path, known: &BTreeSet<String>) -> Result<String> {
    let given = file.to_string_lossy();
    let given = given.strip_prefix("./").unwrap_or(&given);
    if known.contains(given) {
        return Ok(given.to_string());
    }
    let abs = std::fs::canonicalize(cwd.join(file))
        .map_err(|e| Error::bad_input(format!("--if-changed {}: {e}", file.display())))?;
    let root = abs
        .ancestors()
        .skip(1)
        .find(|d| d.join("pipeline/src/registry.rs").is_file())
        .ok_or_else(|| {
            Error::bad_input(format!(
                "--if-changed {}: not inside a bsce-pipe checkout (no pipeline/src/registry.rs \
                 in a folder above it)",
                file.display()
            ))
        })?;
    Ok(abs
        .strip_prefix(root)
        .expect("an ancestor")
        .to_string_lossy()
        .into_owned())
}

/// Why a file no code digest covers cannot move a key (or how it can).
fn uncovered_note(file: &str) -> String {
    let exempt = NO_OUTPUT_EFFECT.iter().find(|(p, _)| {
        file == *p
            || file
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    });
    match exempt {
        Some((p, why)) => format!(
            "in no stage's code digest: {p} is on the NO_OUTPUT_EFFECT list of \
             pipeline/src/registry.rs ({why})"
        ),
        None if file.ends_with(".rs") => {
            "in no stage's code digest (test code, or only `mod` and `use` lines)".into()
        }
        None => "not source code: configs, templates and data reach keys as params or sources \
                 (`status CONFIG` shows what a config edit reruns); Cargo.lock as library versions"
            .into(),
    }
}

pub fn if_changed(
    loaded: &Loaded,
    changed: &[PathBuf],
    args: &StoreArgs,
    ctx: &Ctx,
) -> Result<ChangeReport> {
    let Loaded { catalog, plan, .. } = loaded;
    // The files of every kind's digest, per variant (`train:icarl`), the
    // config's or not: a file is named by its kinds even where this config
    // runs none of them.
    let mut digests: HashMap<(StageKind, Option<&str>), BTreeSet<String>> = HashMap::new();
    for kind in StageKind::ALL {
        let variants: Vec<Option<&str>> = match &kind.spec().code_variants {
            Some(v) => v.by_value.iter().map(|(name, _)| Some(*name)).collect(),
            None => vec![None],
        };
        for variant in variants {
            let files = catalog.code_files(kind, variant);
            digests.insert((kind, variant), files.into_iter().map(|(f, _)| f).collect());
        }
    }
    let known: BTreeSet<String> = digests.values().flatten().cloned().collect();
    let mut files_out = Vec::new();
    let mut rel = BTreeSet::new();
    for f in changed {
        let r = repo_relative(f, &ctx.ambient.cwd, &known)?;
        let mut kinds: Vec<String> = digests
            .iter()
            .filter(|(_, fs)| fs.contains(&r))
            .map(|((k, v), _)| match v {
                Some(v) => format!("{k}:{v}"),
                None => k.to_string(),
            })
            .collect();
        kinds.sort();
        files_out.push(ChangedFile {
            given: f.clone(),
            note: kinds.is_empty().then(|| uncovered_note(&r)),
            file: Some(r.clone()),
            kinds,
        });
        rel.insert(r);
    }
    // Stages whose own code changes, then everything that reads them.
    let n = plan.nodes.len();
    let mut because: Vec<Option<&'static str>> = vec![None; n];
    for (id, node) in plan.nodes.iter().enumerate() {
        let variant = node.kind.spec().variant_of(&node.params);
        if digests[&(node.kind, variant)]
            .iter()
            .any(|f| rel.contains(f))
        {
            because[id] = Some("code");
        }
    }
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (id, node) in plan.nodes.iter().enumerate() {
        for i in &node.inputs {
            users[i.node].push(id);
        }
    }
    let mut stack: Vec<usize> = (0..n).filter(|&i| because[i].is_some()).collect();
    while let Some(id) = stack.pop() {
        for &u in &users[id] {
            if because[u].is_none() {
                because[u] = Some("downstream");
                stack.push(u);
            }
        }
    }
    let reading = store::Reading::open(loaded, args)?;
    let status = reading.engine(loaded).status(&RunOptions::default())?;
    let est = Estimator::new(loaded, reading.store(), &status)?;
    let mut stages = Vec::new();
    let mut by_kind: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    let mut recorded_hours = 0.0;
    for (id, node) in plan.nodes.iter().enumerate() {
        let Some(why) = because[id] else { continue };
        let stored = recorded(&status[id]);
        if let (Some((h, _)), true) = (stored, est.costs[id].is_some()) {
            recorded_hours += h;
        }
        *by_kind
            .entry(node.kind.to_string())
            .or_default()
            .entry(why)
            .or_default() += 1;
        stages.push(RerunStage {
            label: node.label.clone(),
            kind: node.kind.to_string(),
            because: why,
            state: if stored.is_some() { "cached" } else { "to-run" },
        });
    }
    let estimate = est.estimate((0..n).filter(|&i| because[i].is_some()));
    Ok(ChangeReport {
        files: files_out,
        stages,
        by_kind,
        uncalibrated: est.missing(&estimate),
        estimate,
        recorded_hours,
        calibrate_command: calibrate_command(&loaded.cfg.file),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_of_a_config_with_nothing_stored_counts_every_train_pass_and_asks_for_calibration() {
        let (dir, config, args) = crate::ops::testing::quickstart();
        let (ctx, _) = crate::ops::testing::ctx_in(dir.path());
        let loaded = crate::ops::store::load(&config, &args, &ctx).unwrap();
        let r = status_cost(&loaded, &args).unwrap();
        // Per order: 2 bases (shared by ce and bsce) and 2 x 7 increments,
        // each trained and evaluated: 2 x 16 x 2.
        assert_eq!(r.total.stored, 0);
        assert_eq!(r.total.to_run.stages, 64);
        assert!(r.total.to_run.image_passes > 0.0);
        assert!(r.devices.is_empty());
        assert!(
            r.uncalibrated.contains_key("(none)"),
            "{:?}",
            r.uncalibrated
        );
        assert!(
            r.calibrate_command.contains("calibrate"),
            "{}",
            r.calibrate_command
        );
    }
}
