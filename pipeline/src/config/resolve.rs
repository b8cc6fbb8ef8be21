//! Raw config -> validated [`Config`]. All cross-references and value checks
//! happen here, once, with the key path and file position of the culprit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::defaults;
use super::locate::Locator;
use super::presets::{self, LossFamily};
use super::raw::*;
use super::{did_you_mean, ConfigError};
use crate::catalog::StageCatalog;
use crate::digest::Digest;
use crate::params::{IcarlDistillation, Normalization, OrderSpec, Profile, Recipe, SyntheticSpec};

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub datasets: BTreeMap<String, DatasetDef>,
    pub orders: BTreeMap<String, OrderDef>,
    pub settings: BTreeMap<String, SettingDef>,
    pub methods: BTreeMap<String, MethodDef>,
    pub recipes: BTreeMap<String, crate::params::Recipe>,
    pub experiments: Vec<Experiment>,
    pub evaluation: crate::params::EvaluationParams,
    pub tables: BTreeMap<String, TableDef>,
    /// From the config's `store.path`, relative to the config; None = default.
    pub store_path: Option<PathBuf>,
    /// `store.remote`, checked to be a remote URL; `--remote` overrides.
    pub remote: Option<String>,
    pub remote_read_only: bool,
    /// `stages_per_gpu:` per stage kind (GPU kinds only, each at least 1).
    pub stages_per_gpu: BTreeMap<crate::registry::StageKind, u32>,
    /// `executor.use`; `--executor` overrides.
    pub executor: ExecutorName,
    /// `executor.slurm` (defaults when absent).
    pub slurm: crate::config::executor::SlurmSettings,
}

/// A table of the report: its declaration and its templates' text.
#[derive(Debug, Clone)]
pub struct TableDef {
    pub params: crate::params::TableParams,
    pub experiments: Vec<String>,
    pub markdown_template: String,
    pub latex_template: String,
}

/// The templates in the repository's `reports/`, built in.
pub const DEFAULT_MARKDOWN_TEMPLATE: &str = include_str!("../../../reports/templates/table.md.j2");
pub const DEFAULT_LATEX_TEMPLATE: &str = include_str!("../../../reports/templates/table.tex.j2");

#[derive(Debug, Clone)]
pub struct DatasetDef {
    pub name: String,
    pub source: DatasetSource,
    /// Known before preparation for synthetic sets and CIFAR-100.
    pub classes: Option<u32>,
    pub profile: Profile,
    /// `normalize:` of the config, checked.
    pub normalize: Option<Normalization>,
}

#[derive(Debug, Clone)]
pub enum DatasetSource {
    Synthetic(SyntheticSpec),
    Cifar100 {
        path: Option<PathBuf>,
        url: Option<String>,
        sha256: Option<Digest>,
    },
    ImageFolder {
        root: PathBuf,
        train_dir: String,
        val: ValDef,
        subset: Option<PathBuf>,
        size: u32,
        /// Training and evaluation crop (never above `size`); `imagenet`
        /// style only.
        crop: u32,
        augment: AugmentStyle,
    },
}

#[derive(Debug, Clone)]
pub enum ValDef {
    Folders(String),
    LabelList { dir: String, labels: PathBuf },
}

#[derive(Debug, Clone)]
pub struct OrderDef {
    pub name: String,
    /// The order spec as the order stage reads it.
    pub spec: OrderSpec,
    /// Class count the order implies, when it implies one.
    pub classes: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct SettingDef {
    pub name: String,
    pub base: u32,
    pub increment: u32,
    pub steps: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct MethodDef {
    pub name: String,
    pub preset: MethodPreset,
    /// PODNet's NME configuration (`preset: podnet_nme`).
    pub nme_config: bool,
    pub bsce: bool,
    /// As the config says; `None`: the preset's default for the profile.
    pub balanced_finetune: Option<bool>,
    pub finetune: RawFinetune,
    pub features: Option<FeatureTap>,
    /// Overrides of the preset's defaults, field by field.
    pub hyper: MethodHyper,
    pub bsce_choices: BsceChoices,
    pub memory_per_class: Option<u32>,
    pub memory_total: Option<u32>,
    pub selection: MemorySelection,
    /// Itself, or for a BSCE variant the method it extends.
    pub base_method: String,
    /// Its recipe, and the method of its `extends` chain that names it.
    pub recipe: Option<(String, String)>,
}

impl MethodDef {
    pub(crate) fn loss_family(&self) -> LossFamily {
        LossFamily::of(self.preset, self.bsce)
    }
}

#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub dataset: String,
    pub orders: Vec<String>,
    pub settings: Vec<String>,
    pub methods: Vec<String>,
    /// Method -> the name of its recipe (in `Config::recipes`).
    pub recipes: BTreeMap<String, String>,
    pub seeds: Vec<u64>,
    pub network: Option<Network>,
    pub deterministic: bool,
}

struct Ctx<'a> {
    file: &'a Path,
    dir: PathBuf,
    locator: &'a Locator,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let path = path.into();
        ConfigError {
            file: self.file.to_path_buf(),
            position: self.locator.find(&path),
            path,
            message: message.into(),
        }
    }

    fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn reference<'n, T>(
        &self,
        path: String,
        what: &str,
        name: &str,
        table: &'n BTreeMap<String, T>,
    ) -> Result<&'n T, ConfigError> {
        table.get(name).ok_or_else(|| {
            let hint = match did_you_mean(name, table.keys().map(String::as_str)) {
                Some(s) => format!("; did you mean `{s}`?"),
                None if table.is_empty() => format!("; the config defines no {what}s"),
                None => format!(
                    "; defined {what}s: {}",
                    table.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            };
            self.err(path, format!("unknown {what} `{name}`{hint}"))
        })
    }
}

pub(crate) fn resolve(
    raw: RawConfig,
    file: &Path,
    locator: &Locator,
    catalog: &dyn StageCatalog,
) -> Result<Config, ConfigError> {
    let cx = Ctx {
        file,
        dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        locator,
    };
    let mut datasets = BTreeMap::new();
    for (name, d) in raw.datasets {
        let def = resolve_dataset(&cx, &name, d)?;
        datasets.insert(name, def);
    }
    let mut orders = BTreeMap::new();
    for (name, o) in raw.orders {
        let def = resolve_order(&cx, &name, o, catalog)?;
        orders.insert(name, def);
    }
    let mut settings = BTreeMap::new();
    for (name, s) in raw.settings {
        let at = format!("settings.{name}");
        if s.base == 0 {
            return Err(cx.err(format!("{at}.base"), "must be at least 1"));
        }
        if s.increment == 0 {
            return Err(cx.err(format!("{at}.increment"), "must be at least 1"));
        }
        if s.steps == Some(0) {
            return Err(cx.err(format!("{at}.steps"), "must be at least 1"));
        }
        settings.insert(
            name.clone(),
            SettingDef {
                name,
                base: s.base,
                increment: s.increment,
                steps: s.steps,
            },
        );
    }
    let methods = resolve_methods(&cx, &raw.methods)?;
    let mut recipes = BTreeMap::new();
    for (name, r) in raw.recipes {
        recipes.insert(name.clone(), resolve_recipe(&cx, &name, r)?);
    }
    let mut experiments = Vec::new();
    if raw.experiments.is_empty() {
        return Err(cx.err("experiments", "no experiment defined; nothing to run"));
    }
    for (name, e) in raw.experiments {
        let at = format!("experiments.{name}");
        let dataset = cx.reference(format!("{at}.dataset"), "dataset", &e.dataset, &datasets)?;
        if e.orders.is_empty() {
            return Err(cx.err(format!("{at}.orders"), "must list at least one order"));
        }
        if e.settings.is_empty() {
            return Err(cx.err(format!("{at}.settings"), "must list at least one setting"));
        }
        if e.seeds.is_empty() {
            return Err(cx.err(format!("{at}.seeds"), "must list at least one seed"));
        }
        for (i, o) in e.orders.iter().enumerate() {
            let order = cx.reference(format!("{at}.orders[{i}]"), "order", o, &orders)?;
            if let (Some(n), Some(c)) = (order.classes, dataset.classes) {
                if n != c as usize {
                    return Err(cx.err(
                        format!("{at}.orders[{i}]"),
                        format!(
                            "order `{o}` has {n} classes but dataset `{}` has {c}",
                            e.dataset
                        ),
                    ));
                }
            }
        }
        for (i, s) in e.settings.iter().enumerate() {
            let setting = cx.reference(format!("{at}.settings[{i}]"), "setting", s, &settings)?;
            if let Some(c) = dataset.classes {
                let needed = setting.base + setting.increment * setting.steps.unwrap_or(1);
                if needed > c {
                    return Err(cx.err(
                        format!("{at}.settings[{i}]"),
                        format!(
                            "setting `{s}` needs {needed} classes (base {} + increment {} x {} steps) but dataset `{}` has {c}",
                            setting.base,
                            setting.increment,
                            setting.steps.unwrap_or(1),
                            e.dataset
                        ),
                    ));
                }
            }
        }
        for (i, m) in e.methods.iter().enumerate() {
            cx.reference(format!("{at}.methods[{i}]"), "method", m, &methods)?;
        }
        if dataset.classes.is_none() && !e.methods.is_empty() {
            for (i, s) in e.settings.iter().enumerate() {
                if settings[s].steps.is_none() {
                    return Err(cx.err(
                        format!("{at}.settings[{i}]"),
                        format!("setting `{s}` needs `steps` to train on dataset `{}`: an image folder's class count is known only after preparation", e.dataset),
                    ));
                }
            }
        }
        let method_recipes = resolve_experiment_recipes(&cx, &at, &e, &methods, &mut recipes)?;
        experiments.push(Experiment {
            name,
            dataset: e.dataset,
            orders: e.orders,
            settings: e.settings,
            methods: e.methods,
            recipes: method_recipes,
            seeds: e.seeds,
            network: e.network,
            deterministic: e.deterministic,
        });
    }
    let mut tables = BTreeMap::new();
    for (name, t) in raw.tables {
        let table = resolve_table(&cx, &name, t, &raw.evaluation.classifiers, &experiments)?;
        tables.insert(name, table);
    }
    if raw.evaluation.classifiers.is_empty() {
        return Err(cx.err("evaluation.classifiers", "must list cnn, nme or both"));
    }
    if let Some(i) = raw.evaluation.top_k.iter().position(|&k| k == 0) {
        return Err(cx.err(format!("evaluation.top_k[{i}]"), "must be at least 1"));
    }
    let mut stages_per_gpu = BTreeMap::new();
    for (name, &n) in &raw.stages_per_gpu {
        let at = format!("stages_per_gpu.{name}");
        let kind = stage_kind(&cx, &at, name, "a stage kind that runs on a GPU", |s| {
            s.needs_gpu
        })?;
        if n == 0 {
            return Err(cx.err(at, "must be at least 1"));
        }
        stages_per_gpu.insert(kind, n);
    }
    let slurm = resolve_slurm(&cx, raw.executor.slurm)?;
    let evaluation = crate::params::EvaluationParams {
        classifiers: raw.evaluation.classifiers.clone(),
        top_k: raw.evaluation.top_k.iter().map(|&k| k as i64).collect(),
    };
    Ok(Config {
        file: file.to_path_buf(),
        datasets,
        orders,
        settings,
        methods,
        recipes,
        experiments,
        evaluation,
        tables,
        store_path: raw.store.path.map(|p| cx.relative(&p)),
        remote: match raw.store.remote {
            Some(url) => {
                crate::remote_url::check_url(&url)
                    .map_err(|why| cx.err("store.remote".to_string(), why))?;
                Some(url)
            }
            None => None,
        },
        remote_read_only: raw.store.remote_read_only,
        stages_per_gpu,
        executor: raw.executor.use_,
        slurm,
    })
}

/// The stage kind a config key names (`stages_per_gpu.train`), among the
/// kinds `fits` accepts; else an error at `at` listing them, with a "did
/// you mean".
fn stage_kind(
    cx: &Ctx,
    at: &str,
    name: &str,
    what: &str,
    fits: fn(&crate::registry::StageSpec) -> bool,
) -> Result<crate::registry::StageKind, ConfigError> {
    let names: Vec<&str> = crate::registry::STAGES
        .iter()
        .filter(|s| fits(s))
        .map(|s| s.name)
        .collect();
    crate::registry::StageKind::parse(name)
        .filter(|k| fits(k.spec()))
        .ok_or_else(|| {
            let hint = did_you_mean(name, names.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            cx.err(
                at.to_string(),
                format!(
                    "`{name}` is not {what} (those are {}){hint}",
                    names.join(", ")
                ),
            )
        })
}

fn resolve_slurm(
    cx: &Ctx,
    raw: Option<RawSlurm>,
) -> Result<crate::config::executor::SlurmSettings, ConfigError> {
    use crate::config::executor::{SlurmResources, SlurmSettings};
    let Some(raw) = raw else {
        return Ok(SlurmSettings::default());
    };
    let check = |at: &str, r: &SlurmResources| -> Result<(), ConfigError> {
        if r.cpus == Some(0) {
            return Err(cx.err(format!("{at}.cpus"), "must be at least 1"));
        }
        for (field, v) in [
            ("partition", &r.partition),
            ("account", &r.account),
            ("mem", &r.mem),
            ("time", &r.time),
            ("gres", &r.gres),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.chars().any(char::is_whitespace) {
                    return Err(cx.err(
                        format!("{at}.{field}"),
                        format!("`{v}` is not a Slurm value (expected one word, e.g. gpu:1, 16G, 2-00:00:00)"),
                    ));
                }
            }
        }
        if let Some((i, e)) = r
            .extra
            .iter()
            .enumerate()
            .find(|(_, e)| !e.starts_with('-'))
        {
            return Err(cx.err(
                format!("{at}.extra[{i}]"),
                format!("`{e}` is not an sbatch option (expected --name=value)"),
            ));
        }
        Ok(())
    };
    let defaults = SlurmResources {
        partition: raw.partition,
        account: raw.account,
        cpus: raw.cpus,
        mem: raw.mem,
        time: raw.time,
        gres: raw.gres,
        extra: raw.extra,
    };
    check("executor.slurm", &defaults)?;
    let mut kinds = BTreeMap::new();
    for (name, r) in raw.kinds {
        let at = format!("executor.slurm.kinds.{name}");
        let kind = stage_kind(cx, &at, &name, "a stage kind", |_| true)?;
        check(&at, &r)?;
        kinds.insert(kind, r);
    }
    if !(raw.poll_seconds > 0.0 && raw.poll_seconds <= 3600.0) {
        return Err(cx.err(
            "executor.slurm.poll_seconds",
            format!(
                "{} is out of range (expected more than 0, at most 3600)",
                raw.poll_seconds
            ),
        ));
    }
    if raw.max_retries > 100 {
        return Err(cx.err("executor.slurm.max_retries", "must be at most 100"));
    }
    if raw.max_jobs == 0 {
        return Err(cx.err("executor.slurm.max_jobs", "must be at least 1"));
    }
    let local_kinds = match raw.local_kinds {
        None => super::defaults::local_kinds(),
        Some(names) => {
            let mut kinds = Vec::new();
            for (i, name) in names.iter().enumerate() {
                // libtorch's stages belong on a node, never on the
                // machine that submits.
                let kind = stage_kind(
                    cx,
                    &format!("executor.slurm.local_kinds[{i}]"),
                    name,
                    "a stage kind that may run on the submitting machine",
                    |s| s.runner == crate::registry::Runner::Pipe,
                )?;
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            kinds
        }
    };
    Ok(SlurmSettings {
        defaults,
        kinds,
        max_retries: raw.max_retries,
        poll_seconds: raw.poll_seconds,
        node_store: raw.node_store.filter(|s| !s.is_empty()),
        group: raw.group,
        local_kinds,
        max_jobs: raw.max_jobs,
    })
}

fn resolve_dataset(cx: &Ctx, name: &str, d: RawDataset) -> Result<DatasetDef, ConfigError> {
    let at = format!("datasets.{name}");
    let profile = d.profile;
    if let Some(n) = &d.normalize {
        for (key, values) in [("mean", n.mean), ("std", n.std)] {
            for (i, v) in values.iter().enumerate() {
                let ok = v.is_finite() && (key == "mean" || *v > 0.0);
                if !ok {
                    return Err(cx.err(
                        format!("{at}.normalize.{key}[{i}]"),
                        format!(
                            "is {v}; expected a finite number{}",
                            if key == "std" { " above 0" } else { "" }
                        ),
                    ));
                }
            }
        }
    }
    let normalize = d.normalize;
    let one = match (d.synthetic, d.cifar100, d.image_folder) {
        (Some(s), None, None) => Source::Synthetic(s),
        (None, Some(c), None) => Source::Cifar100(c),
        (None, None, Some(f)) => Source::ImageFolder(f),
        _ => {
            return Err(cx.err(
                at,
                "needs exactly one of `synthetic`, `cifar100`, `image_folder`",
            ))
        }
    };
    let mut def = match one {
        Source::Synthetic(s) => {
            let at = format!("{at}.synthetic");
            if !(2..=u16::MAX as u32).contains(&s.classes) {
                return Err(cx.err(format!("{at}.classes"), "must be between 2 and 65535"));
            }
            if s.train_per_class == 0 {
                return Err(cx.err(format!("{at}.train_per_class"), "must be at least 1"));
            }
            if s.test_per_class == 0 {
                return Err(cx.err(format!("{at}.test_per_class"), "must be at least 1"));
            }
            if !(4..=512).contains(&s.image_size) {
                return Err(cx.err(format!("{at}.image_size"), "must be between 4 and 512"));
            }
            // The stage builds the whole set in memory; a size past this is
            // a typo, caught here instead of as an allocation failure.
            const SYNTHETIC_LIMIT: u64 = 16 << 30;
            let images = s.classes as u64 * (s.train_per_class as u64 + s.test_per_class as u64);
            let bytes = images * (s.image_size as u64).pow(2) * 3;
            if bytes > SYNTHETIC_LIMIT {
                return Err(cx.err(
                    at,
                    format!(
                        "{} classes x {} images x {}x{}x3 bytes is {:.1} GiB; a synthetic dataset is limited to {} GiB",
                        s.classes,
                        s.train_per_class as u64 + s.test_per_class as u64,
                        s.image_size,
                        s.image_size,
                        bytes as f64 / (1u64 << 30) as f64,
                        SYNTHETIC_LIMIT >> 30
                    ),
                ));
            }
            DatasetDef {
                name: name.into(),
                normalize: None,
                classes: Some(s.classes),
                profile: Profile::Cifar100,
                source: DatasetSource::Synthetic(s),
            }
        }
        Source::Cifar100(c) => {
            let at = format!("{at}.cifar100");
            if c.path.is_none() && c.url.is_none() {
                return Err(cx.err(at, "needs `path` (archive or extracted folder) or `url`"));
            }
            let sha256 = match &c.sha256 {
                Some(s) => Some(Digest::parse(s).ok_or_else(|| {
                    cx.err(
                        format!("{at}.sha256"),
                        format!("{s:?} is not a sha256 digest (64 hex digits)"),
                    )
                })?),
                None => None,
            };
            if c.url.is_some() && sha256.is_none() {
                return Err(cx.err(format!("{at}.sha256"), "a `url` needs the archive's sha256"));
            }
            DatasetDef {
                name: name.into(),
                normalize: None,
                classes: Some(100),
                profile: Profile::Cifar100,
                source: DatasetSource::Cifar100 {
                    path: c.path.as_deref().map(|p| cx.relative(p)),
                    url: c.url,
                    sha256,
                },
            }
        }
        Source::ImageFolder(f) => {
            let at = format!("{at}.image_folder");
            if !(8..=1024).contains(&f.size) {
                return Err(cx.err(format!("{at}.size"), "must be between 8 and 1024"));
            }
            if let (AugmentStyle::Cifar, Some(c)) = (f.augment, f.crop) {
                return Err(cx.err(
                    format!("{at}.crop"),
                    format!(
                        "is {c}, but `augment: cifar` trains on the whole {0}x{0} image with a \
                         padded random crop; a crop size is for `augment: imagenet`",
                        f.size
                    ),
                ));
            }
            let crop = match f.augment {
                AugmentStyle::Cifar => f.size,
                AugmentStyle::Imagenet => f.crop.unwrap_or(defaults::crop(f.size)),
            };
            if !(8..=f.size).contains(&crop) {
                return Err(cx.err(
                    format!("{at}.crop"),
                    format!(
                        "is {crop}; expected 8..={} (the crop is cut from the prepared \
                         {0}x{0} images, `size`)",
                        f.size
                    ),
                ));
            }
            DatasetDef {
                name: name.into(),
                normalize: None,
                classes: None,
                source: DatasetSource::ImageFolder {
                    root: cx.relative(&f.root),
                    train_dir: f.train_dir,
                    val: match f.val {
                        None => ValDef::Folders(defaults::val_dir()),
                        Some(RawVal {
                            folders: Some(dir),
                            label_list: None,
                        }) => ValDef::Folders(dir),
                        Some(RawVal {
                            folders: None,
                            label_list: Some(l),
                        }) => ValDef::LabelList {
                            dir: l.dir,
                            labels: cx.relative(&l.labels),
                        },
                        Some(_) => {
                            return Err(cx.err(
                                format!("{at}.val"),
                                "needs exactly one of `folders`, `label_list`",
                            ))
                        }
                    },
                    subset: f.subset.as_deref().map(|p| cx.relative(p)),
                    size: f.size,
                    crop,
                    augment: f.augment,
                },
                profile: Profile::Imagenet1k,
            }
        }
    };
    def.normalize = normalize;
    def.profile = profile.unwrap_or_else(|| defaults::profile(&def.source));
    Ok(def)
}

enum Source {
    Synthetic(SyntheticSpec),
    Cifar100(RawCifar100),
    ImageFolder(RawImageFolder),
}

fn resolve_order(
    cx: &Ctx,
    name: &str,
    o: RawOrder,
    catalog: &dyn StageCatalog,
) -> Result<OrderDef, ConfigError> {
    let at = format!("orders.{name}");
    let (spec, classes) = match (o.explicit, o.numpy_seed, o.named, o.icarl) {
        (Some(list), None, None, None) => {
            let n = list.len();
            if n == 0 {
                return Err(cx.err(format!("{at}.explicit"), "lists no class"));
            }
            let mut seen = vec![false; n];
            for (i, &c) in list.iter().enumerate() {
                let p = format!("{at}.explicit[{i}]");
                let slot = seen.get_mut(c as usize).ok_or_else(|| {
                    cx.err(
                        &p,
                        format!("class {c} is out of range 0..{n} for a list of {n} classes"),
                    )
                })?;
                if *slot {
                    return Err(cx.err(&p, format!("class {c} appears twice")));
                }
                *slot = true;
            }
            (OrderSpec::Explicit { classes: list }, Some(n))
        }
        (None, Some(seed), None, None) => (OrderSpec::NumpySeed { seed }, None),
        (None, None, None, Some(seed)) => (OrderSpec::Icarl { seed }, None),
        (None, None, Some(n), None) => {
            let Some(classes) = catalog.named_order(&n) else {
                let names = catalog.named_order_names();
                let hint = match did_you_mean(&n, names.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("known: {}", names.join(", ")),
                };
                return Err(cx.err(
                    format!("{at}.named"),
                    format!("unknown order `{n}`; {hint}"),
                ));
            };
            (OrderSpec::Named { name: n }, Some(classes))
        }
        _ => {
            return Err(cx.err(
                at,
                "needs exactly one of `explicit`, `numpy_seed`, `named`, `icarl`",
            ))
        }
    };
    Ok(OrderDef {
        name: name.into(),
        spec,
        classes,
    })
}

/// Which recipe each method of an experiment trains with: the
/// experiment's `method_recipes`, else the method's own (along `extends`),
/// else the experiment's `recipe`. A recipe is never shared silently
/// across loss families: iCaRL's BCE and a softmax loss need learning rates
/// 10-20x apart. So a BCE and a softmax method both left to the
/// experiment's `recipe`, a method inheriting a recipe from one of the
/// other family, and a built-in recipe made for the other family are
/// errors; a recipe named for a method itself is the user's choice (the
/// built-in check aside).
fn resolve_experiment_recipes(
    cx: &Ctx,
    at: &str,
    e: &super::raw::RawExperiment,
    methods: &BTreeMap<String, MethodDef>,
    recipes: &mut BTreeMap<String, Recipe>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let defined: BTreeSet<String> = recipes.keys().cloned().collect();
    // A recipe the config defines, or a built-in one (added on first use).
    let mut lookup = |path: String, name: &str| -> Result<(), ConfigError> {
        if recipes.contains_key(name) {
            return Ok(());
        }
        if let Some(b) = presets::builtin_recipe(name) {
            recipes.insert(name.to_string(), b.recipe());
            return Ok(());
        }
        let mut known: BTreeMap<String, ()> = recipes.keys().map(|k| (k.clone(), ())).collect();
        for r in presets::RECIPES {
            known.insert(r.name.to_string(), ());
        }
        cx.reference(path, "recipe", name, &known).map(drop)
    };
    if e.methods.is_empty() {
        if e.recipe.is_some() {
            return Err(cx.err(
                format!("{at}.methods"),
                "a recipe needs at least one method to train",
            ));
        }
        if let Some(m) = e.method_recipes.keys().next() {
            return Err(cx.err(
                format!("{at}.method_recipes.{m}"),
                format!("method `{m}` is not in this experiment's methods (none)"),
            ));
        }
        return Ok(BTreeMap::new());
    }
    if let Some(r) = &e.recipe {
        lookup(format!("{at}.recipe"), r)?;
    }
    for (m, r) in &e.method_recipes {
        if !e.methods.contains(m) {
            return Err(cx.err(
                format!("{at}.method_recipes.{m}"),
                format!(
                    "method `{m}` is not in this experiment's methods ({})",
                    e.methods.join(", ")
                ),
            ));
        }
        lookup(format!("{at}.method_recipes.{m}"), r)?;
    }
    // Method -> (recipe, the config path that names it).
    let mut chosen: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut shared: Vec<&str> = Vec::new();
    for m in &e.methods {
        let def = &methods[m];
        let (recipe, path) = if let Some(r) = e.method_recipes.get(m) {
            (r.clone(), format!("{at}.method_recipes.{m}"))
        } else if let Some((r, from)) = &def.recipe {
            let path = format!("methods.{from}.recipe");
            lookup(path.clone(), r)?;
            let parent = &methods[from];
            if from != m && parent.loss_family() != def.loss_family() {
                return Err(cx.err(
                    format!("methods.{m}"),
                    format!(
                        "inherits recipe `{r}` from `{from}`, which trains {}, but `{m}` trains {}: \
                         their learning rates differ 10-20x; give `{m}` a `recipe` of its own",
                        parent.loss_family().describe(),
                        def.loss_family().describe()
                    ),
                ));
            }
            (r.clone(), path)
        } else if let Some(r) = &e.recipe {
            shared.push(m);
            (r.clone(), format!("{at}.recipe"))
        } else {
            return Err(cx.err(
                format!("{at}.recipe"),
                format!(
                    "method `{m}` has no recipe: give the experiment a `recipe`, the method one \
                     (`methods.{m}.recipe`), or map it in `method_recipes`"
                ),
            ));
        };
        chosen.insert(m.clone(), (recipe, path));
    }
    if let (Some(r), Some(bce)) = (
        &e.recipe,
        shared
            .iter()
            .find(|m| methods[**m].loss_family() == LossFamily::Bce),
    ) {
        if let Some(soft) = shared
            .iter()
            .find(|m| methods[**m].loss_family() == LossFamily::Softmax)
        {
            return Err(cx.err(
                format!("{at}.recipe"),
                format!(
                    "recipe `{r}` would train `{bce}` ({}) and `{soft}` ({}) alike, but their \
                     learning rates differ 10-20x; give one of them its own recipe in \
                     `method_recipes` (built in: icarl_cifar100 or icarl_imagenet for BCE, \
                     icarl_bsce_cifar100 or icarl_bsce_imagenet for iCaRL+BSCE)",
                    LossFamily::Bce.describe(),
                    LossFamily::Softmax.describe()
                ),
            ));
        }
    }
    // A built-in recipe is for one loss (a config's own is the user's).
    for (m, (r, path)) in &chosen {
        let family = methods[m].loss_family();
        if let Some(b) = presets::builtin_recipe(r).filter(|_| !defined.contains(r)) {
            if b.family != family {
                let fits: Vec<&str> = presets::RECIPES
                    .iter()
                    .filter(|x| x.family == family)
                    .map(|x| x.name)
                    .collect();
                return Err(cx.err(
                    path.clone(),
                    format!(
                        "built-in recipe `{r}` is for {} (lr {}), but `{m}` trains {}; \
                         built in for it: {}",
                        b.family.describe(),
                        b.lr,
                        family.describe(),
                        fits.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(chosen.into_iter().map(|(m, (r, _))| (m, r)).collect())
}

fn resolve_methods(
    cx: &Ctx,
    raw: &BTreeMap<String, RawMethod>,
) -> Result<BTreeMap<String, MethodDef>, ConfigError> {
    let mut out = BTreeMap::new();
    for name in raw.keys() {
        // Walk the `extends` chain, most derived first.
        let mut chain: Vec<&str> = vec![name];
        let mut cur = &raw[name];
        while let Some(parent) = &cur.extends {
            let at = format!("methods.{}.extends", chain.last().expect("non-empty"));
            cur = cx.reference(at.clone(), "method", parent, raw)?;
            if chain.contains(&parent.as_str()) {
                chain.push(parent);
                return Err(cx.err(at, format!("cycle: {}", chain.join(" -> "))));
            }
            chain.push(parent);
        }
        let pick = |f: &dyn Fn(&RawMethod) -> Option<Value>| chain.iter().find_map(|n| f(&raw[*n]));
        let raw_preset: RawPreset = pick(&|m| m.preset.map(|p| json!(p)))
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| cx.err(format!("methods.{name}"), "needs a `preset` (finetune, icarl, lucir, podnet or podnet_nme), here or in what it extends"))?;
        let preset = raw_preset.preset();
        let bsce = pick(&|m| m.bsce.map(Value::Bool))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        // The default depends on the dataset's profile (the planner's).
        let balanced_finetune =
            pick(&|m| m.balanced_finetune.map(Value::Bool)).and_then(|v| v.as_bool());
        if balanced_finetune == Some(true)
            && !matches!(preset, MethodPreset::Lucir | MethodPreset::Podnet)
        {
            return Err(cx.err(
                format!("methods.{name}.balanced_finetune"),
                format!(
                    "only lucir and podnet have a class-balanced fine-tuning; {} has none",
                    json!(raw_preset).as_str().unwrap_or("this preset")
                ),
            ));
        }
        // Objects merged field by field along the chain, most derived last.
        let merged = |f: &dyn Fn(&RawMethod) -> Option<Value>| {
            let mut out = serde_json::Map::new();
            for n in chain.iter().rev() {
                if let Some(Value::Object(m)) = f(&raw[*n]) {
                    out.extend(m);
                }
            }
            Value::Object(out)
        };
        // Every number is checked where it is written, before the chain is
        // merged: a merge through JSON would read NaN as unset, and an error
        // names the method whose line holds the value.
        for n in &chain {
            check_method_numbers(n, &raw[*n], cx)?;
        }
        let finetune: RawFinetune =
            serde_json::from_value(merged(&|m| m.finetune.as_ref().map(|f| json!(f))))
                .expect("fields of RawFinetune");
        if let (Some(epochs), Some(ms)) = (finetune.epochs, &finetune.milestones) {
            if let Some(i) = ms.iter().position(|&x| x >= epochs) {
                let at = chain
                    .iter()
                    .copied()
                    .find(|n| {
                        raw[*n]
                            .finetune
                            .as_ref()
                            .is_some_and(|f| f.milestones.is_some())
                    })
                    .unwrap_or(name.as_str());
                return Err(cx.err(
                    format!("methods.{at}.finetune.milestones[{i}]"),
                    format!(
                        "is {}; a milestone must lie inside the {epochs} fine-tuning epochs",
                        ms[i]
                    ),
                ));
            }
        }
        let hyper: MethodHyper =
            serde_json::from_value(merged(&|m| m.hyper.as_ref().map(|h| json!(h))))
                .expect("fields of MethodHyper");
        let bsce_choices: BsceChoices =
            serde_json::from_value(merged(&|m| m.bsce_choices.as_ref().map(|b| json!(b))))
                .expect("fields of BsceChoices");
        check_options_apply(cx, name, &chain, raw, preset, bsce)?;
        let features =
            pick(&|m| m.features.map(|f| json!(f))).and_then(|v| serde_json::from_value(v).ok());
        let mem = |f: &dyn Fn(&RawMemory) -> Option<u32>| {
            chain
                .iter()
                .find_map(|n| raw[*n].memory.as_ref().and_then(f))
        };
        // A BSCE variant's base: the nearest method it extends that is not
        // one (plots draw the two in one colour).
        let base_method = if bsce {
            (1..chain.len())
                .find(|&k| {
                    !chain[k..]
                        .iter()
                        .find_map(|n| raw[*n].bsce)
                        .unwrap_or(false)
                })
                .map(|k| chain[k].to_string())
                .unwrap_or_else(|| name.clone())
        } else {
            name.clone()
        };
        let (per_class, total) = (mem(&|m| m.per_class), mem(&|m| m.total));
        if per_class.is_some() && total.is_some() {
            return Err(cx.err(
                format!("methods.{name}.memory"),
                "give `per_class` or `total`, not both",
            ));
        }
        let selection = chain
            .iter()
            .find_map(|n| raw[*n].memory.as_ref().and_then(|m| m.selection))
            .unwrap_or(defaults::MEMORY_SELECTION);
        let per_class =
            if per_class.is_none() && total.is_none() && preset != MethodPreset::Finetune {
                Some(defaults::MEMORY_PER_CLASS)
            } else {
                per_class
            };
        out.insert(
            name.clone(),
            MethodDef {
                name: name.clone(),
                preset,
                nme_config: raw_preset == RawPreset::PodnetNme,
                bsce,
                balanced_finetune,
                finetune,
                features,
                hyper,
                bsce_choices,
                memory_per_class: per_class,
                memory_total: total,
                selection,
                base_method,
                recipe: chain
                    .iter()
                    .find_map(|n| raw[*n].recipe.clone().map(|r| (r, n.to_string()))),
            },
        );
    }
    Ok(out)
}

fn resolve_recipe(
    cx: &Ctx,
    name: &str,
    r: RawRecipe,
) -> Result<crate::params::Recipe, ConfigError> {
    let at = format!("recipes.{name}");
    if r.epochs == 0 {
        return Err(cx.err(format!("{at}.epochs"), "must be at least 1"));
    }
    if r.batch_size == 0 {
        return Err(cx.err(format!("{at}.batch_size"), "must be at least 1"));
    }
    if !(r.lr > 0.0 && r.lr.is_finite()) {
        return Err(cx.err(
            format!("{at}.lr"),
            format!("must be a positive number, got {}", r.lr),
        ));
    }
    if !(0.0..1.0).contains(&r.momentum) {
        return Err(cx.err(format!("{at}.momentum"), "must be in [0, 1)"));
    }
    if !(r.weight_decay >= 0.0 && r.weight_decay.is_finite()) {
        return Err(cx.err(format!("{at}.weight_decay"), "must be >= 0"));
    }
    match r.schedule {
        Schedule::Multistep => {
            if r.milestones.is_empty() {
                return Err(cx.err(
                    format!("{at}.milestones"),
                    "a multistep schedule needs milestones",
                ));
            }
            check_increasing(&r.milestones, &format!("{at}.milestones"), cx)?;
            if let Some(i) = r.milestones.iter().position(|&x| x == 0 || x >= r.epochs) {
                return Err(cx.err(
                    format!("{at}.milestones[{i}]"),
                    format!("must be between 1 and epochs - 1 ({})", r.epochs - 1),
                ));
            }
        }
        _ if !r.milestones.is_empty() => {
            return Err(cx.err(
                format!("{at}.milestones"),
                "only a multistep schedule has milestones",
            ));
        }
        _ => {}
    }
    if !(r.gamma > 0.0 && r.gamma.is_finite()) {
        return Err(cx.err(format!("{at}.gamma"), "must be a positive number"));
    }
    Ok(crate::params::Recipe {
        epochs: r.epochs,
        batch_size: r.batch_size,
        lr: r.lr,
        momentum: r.momentum,
        weight_decay: r.weight_decay,
        schedule: r.schedule,
        milestones: r.milestones,
        gamma: r.gamma,
    })
}

fn resolve_table(
    cx: &Ctx,
    name: &str,
    t: RawTable,
    classifiers: &[Classifier],
    experiments: &[Experiment],
) -> Result<TableDef, ConfigError> {
    use crate::params::{Field, ReferenceValue, TableParams};
    let at = |k: &str| format!("tables.{name}.{k}");
    let by_name: BTreeMap<String, &Experiment> =
        experiments.iter().map(|e| (e.name.clone(), e)).collect();
    if t.experiments.is_empty() {
        return Err(cx.err(at("experiments"), "must list at least one experiment"));
    }
    let mut exps = Vec::new();
    for (i, e) in t.experiments.iter().enumerate() {
        exps.push(*cx.reference(
            format!("tables.{name}.experiments[{i}]"),
            "experiment",
            e,
            &by_name,
        )?);
    }
    let classifier = match t.classifier {
        Some(c) if !classifiers.contains(&c) => {
            return Err(cx.err(
                at("classifier"),
                format!(
                    "`{}` is not evaluated; evaluation.classifiers lists {}",
                    c.name(),
                    classifiers
                        .iter()
                        .map(|&c| c.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        Some(c) => c,
        None => *classifiers
            .first()
            .ok_or_else(|| cx.err("evaluation.classifiers", "must list cnn, nme or both"))?,
    };
    for (what, fields) in [("rows", &t.rows), ("columns", &t.columns)] {
        if fields.is_empty() {
            return Err(cx.err(
                at(what),
                "must list at least one of experiment, dataset, setting, method",
            ));
        }
    }
    if let Some(f) = t.rows.iter().find(|f| t.columns.contains(f)) {
        return Err(cx.err(
            at("columns"),
            format!(
                "`{}` is already a row field; a field is a row or a column, not both",
                f.column()
            ),
        ));
    }
    // The labels rows and columns can take, for checking reference keys.
    let labels = |fields: &[Field]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &exps {
            for s in &e.settings {
                for m in &e.methods {
                    let v: Vec<&str> = fields
                        .iter()
                        .map(|f| match f {
                            Field::Experiment => e.name.as_str(),
                            Field::Dataset => e.dataset.as_str(),
                            Field::Setting => s.as_str(),
                            Field::Method => m.as_str(),
                        })
                        .collect();
                    let label = v.join("/");
                    if !out.contains(&label) {
                        out.push(label);
                    }
                }
            }
        }
        out
    };
    let (rows, columns) = (labels(&t.rows), labels(&t.columns));
    let mut reference = Vec::new();
    for (row, cells) in &t.reference {
        if !rows.contains(row) {
            return Err(cx.err(
                format!("tables.{name}.reference.{row}"),
                format!(
                    "`{row}` is not a row of the table; rows: {}",
                    rows.to_vec().join(", ")
                ),
            ));
        }
        for (column, value) in cells {
            let key = format!("tables.{name}.reference.{row}.{column}");
            if !columns.contains(column) {
                return Err(cx.err(
                    key,
                    format!(
                        "`{column}` is not a column of the table; columns: {}",
                        columns.to_vec().join(", ")
                    ),
                ));
            }
            let (mean, std) = parse_reference(value).map_err(|m| cx.err(key, m))?;
            reference.push(ReferenceValue {
                row: row.clone(),
                column: column.clone(),
                mean,
                std,
            });
        }
    }
    let template =
        |path: &Option<String>, key: &str, default: &str| -> Result<String, ConfigError> {
            match path {
                None => Ok(default.to_string()),
                Some(p) => {
                    let file = cx.relative(p);
                    std::fs::read_to_string(&file).map_err(|e| {
                        cx.err(
                            at(key),
                            format!("cannot read template {}: {e}", file.display()),
                        )
                    })
                }
            }
        };
    Ok(TableDef {
        markdown_template: template(
            &t.templates.markdown,
            "templates.markdown",
            DEFAULT_MARKDOWN_TEMPLATE,
        )?,
        latex_template: template(
            &t.templates.latex,
            "templates.latex",
            DEFAULT_LATEX_TEMPLATE,
        )?,
        experiments: t.experiments,
        params: TableParams {
            name: name.to_string(),
            caption: t.caption,
            label: t.label.unwrap_or_else(|| defaults::table_label(name)),
            metric: t.metric,
            classifier,
            rows: t.rows,
            columns: t.columns,
            time_column: t.time_column,
            reference,
            reference_source: t.reference_source,
            row_labels: rows,
            column_labels: columns,
        },
    })
}

/// `64.83`, `"64.83"`, `"64.83 +- 0.51"` or `"64.83 ± 0.51"`.
fn parse_reference(v: &RawNumber) -> Result<(f64, Option<f64>), String> {
    let text = match v {
        RawNumber::Number(x) => return Ok((*x, None)),
        RawNumber::Text(t) => t,
    };
    let bad = || format!("`{text}` is not a number nor `mean +- std`");
    let parts: Vec<&str> = text
        .split(['±'])
        .flat_map(|p| p.split("+-"))
        .map(str::trim)
        .collect();
    let num = |s: &str| s.parse::<f64>().ok().filter(|x| x.is_finite());
    match parts.as_slice() {
        [m] => Ok((num(m).ok_or_else(bad)?, None)),
        [m, s] => Ok((num(m).ok_or_else(bad)?, Some(num(s).ok_or_else(bad)?))),
        _ => Err(bad()),
    }
}

/// Milestones (of a recipe or a fine-tuning) strictly increase; the first
/// that does not is the error, at `at[i]`.
fn check_increasing(milestones: &[u32], at: &str, cx: &Ctx) -> Result<(), ConfigError> {
    match milestones.windows(2).position(|w| w[1] <= w[0]) {
        Some(i) => Err(cx.err(format!("{at}[{}]", i + 1), "milestones must increase")),
        None => Ok(()),
    }
}

/// Options a method would silently ignore are errors, named at the key
/// of the method in its `extends` chain that set them: BSCE choices
/// without `bsce: true`, and a BSCE choice or hyper-parameter of another
/// preset (class-balanced fine-tuning is checked where it is read).
fn check_options_apply(
    cx: &Ctx,
    name: &str,
    chain: &[&str],
    raw: &BTreeMap<String, RawMethod>,
    preset: MethodPreset,
    bsce: bool,
) -> Result<(), ConfigError> {
    // The method nearest `name` that writes `section.field`.
    let set_by = |section: &str, field: &str| {
        chain.iter().copied().find(|n| {
            let m = &raw[*n];
            let v = match section {
                "bsce_choices" => m.bsce_choices.as_ref().map(|b| json!(b)),
                _ => m.hyper.as_ref().map(|h| json!(h)),
            };
            v.is_some_and(|v| v.get(field).is_some_and(|f| !f.is_null()))
        })
    };
    let owner = |p: MethodPreset| match p {
        MethodPreset::Finetune => "finetune",
        MethodPreset::Icarl => "icarl",
        MethodPreset::Lucir => "lucir",
        MethodPreset::Podnet => "podnet",
    };
    for (field, for_preset) in [
        ("nca_prior", MethodPreset::Podnet),
        ("margin_ranking", MethodPreset::Lucir),
        ("icarl_distillation", MethodPreset::Icarl),
    ] {
        let Some(at) = set_by("bsce_choices", field) else {
            continue;
        };
        let key = format!("methods.{at}.bsce_choices.{field}");
        if preset != for_preset {
            return Err(cx.err(
                key,
                format!(
                    "is a choice of {}; `{name}` is {} and would ignore it",
                    owner(for_preset),
                    owner(preset)
                ),
            ));
        }
        if !bsce {
            return Err(cx.err(
                key,
                format!("applies with `bsce: true` only; `{name}` trains without BSCE and would ignore it"),
            ));
        }
    }
    for (field, for_preset) in [
        ("less_forget", MethodPreset::Lucir),
        ("pod_flat", MethodPreset::Podnet),
        ("pod_spatial", MethodPreset::Podnet),
        ("classifier_scaling", MethodPreset::Podnet),
        ("learned_scale", MethodPreset::Podnet),
    ] {
        if let Some(at) = set_by("hyper", field) {
            if preset != for_preset {
                return Err(cx.err(
                    format!("methods.{at}.hyper.{field}"),
                    format!(
                        "is a setting of {}; `{name}` is {} and would ignore it",
                        owner(for_preset),
                        owner(preset)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The numbers one method of an `extends` chain writes (`finetune`,
/// `hyper`, `bsce_choices`), each checked at its own key: finite, and in
/// the range its use needs.
fn check_method_numbers(name: &str, m: &RawMethod, cx: &Ctx) -> Result<(), ConfigError> {
    if let Some(f) = &m.finetune {
        if f.epochs == Some(0) {
            return Err(cx.err(
                format!("methods.{name}.finetune.epochs"),
                "must be at least 1",
            ));
        }
        for (field, v) in [("lr", f.lr), ("gamma", f.gamma)] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(cx.err(
                        format!("methods.{name}.finetune.{field}"),
                        format!("is {v}; expected a positive number"),
                    ));
                }
            }
        }
        if let Some(ms) = &f.milestones {
            if let Some(i) = ms.iter().position(|&x| x == 0) {
                return Err(cx.err(
                    format!("methods.{name}.finetune.milestones[{i}]"),
                    "is 0; a milestone is an epoch after the first",
                ));
            }
            check_increasing(ms, &format!("methods.{name}.finetune.milestones"), cx)?;
        }
    }
    if let Some(h) = &m.hyper {
        for (field, v) in [
            ("less_forget", h.less_forget),
            ("pod_flat", h.pod_flat),
            ("pod_spatial", h.pod_spatial),
            ("classifier_scaling", h.classifier_scaling),
            ("gradient_clamp", h.gradient_clamp),
        ] {
            let Some(v) = v else { continue };
            let positive = matches!(field, "classifier_scaling" | "gradient_clamp");
            if !(v >= 0.0 && v.is_finite()) || (positive && v == 0.0) {
                return Err(cx.err(
                    format!("methods.{name}.hyper.{field}"),
                    format!(
                        "is {v}; expected a finite number {}",
                        if positive { "above 0" } else { "of 0 or more" }
                    ),
                ));
            }
        }
    }
    if let Some(d) = m.bsce_choices.as_ref().and_then(|b| b.icarl_distillation) {
        let at = format!("methods.{name}.bsce_choices.icarl_distillation");
        let (IcarlDistillation::SoftmaxKd { weight, .. }
        | IcarlDistillation::SigmoidBce { weight }) = d;
        if let IcarlDistillation::SoftmaxKd { temperature, .. } = d {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(cx.err(
                    format!("{at}.temperature"),
                    format!("is {temperature}; expected a finite number above 0"),
                ));
            }
        }
        if !(weight >= 0.0 && weight.is_finite()) {
            return Err(cx.err(
                format!("{at}.weight"),
                format!("is {weight}; expected a finite number of 0 or more"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::catalog::TestCatalog as Catalog;
    use crate::config::{parse, Config, ConfigError};

    const BASE: &str = "datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 4, test_per_class: 2, image_size: 8}
orders:
  a: {numpy_seed: 1993}
settings:
  s2: {base: 2, increment: 2}
recipes:
  r: {epochs: 2, batch_size: 4, lr: 0.1}
";

    fn config(methods: &str, rest: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "{BASE}methods:\n{methods}experiments:\n  e: {{dataset: synth, orders: [a], settings: [s2], methods: [{}], recipe: r}}\n{rest}",
            methods
                .lines()
                .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
                .map(|l| l.trim().split(':').next().unwrap())
                .collect::<Vec<_>>()
                .join(", ")
        );
        parse(&text, Path::new("c.yaml"), &Catalog)
    }

    #[test]
    fn an_extends_chain_merges_fields_most_derived_last() {
        let cfg = config(
            "  a: {preset: podnet, hyper: {pod_flat: 2, pod_spatial: 4}}\n  b: {extends: a, bsce: true, hyper: {pod_spatial: 6}}\n",
            "",
        )
        .unwrap();
        let (a, b) = (&cfg.methods["a"], &cfg.methods["b"]);
        assert_eq!(
            (a.hyper.pod_flat, a.hyper.pod_spatial),
            (Some(2.0), Some(4.0))
        );
        assert_eq!(
            (b.hyper.pod_flat, b.hyper.pod_spatial),
            (Some(2.0), Some(6.0))
        );
        assert!(b.bsce && !a.bsce);
        assert_eq!(b.base_method, "a");
    }

    #[test]
    fn a_bad_number_is_reported_in_the_method_that_writes_it() {
        let e = config(
            "  a: {preset: podnet, hyper: {pod_flat: .nan}}\n  b: {extends: a, bsce: true}\n",
            "",
        )
        .unwrap_err();
        assert_eq!(e.path, "methods.a.hyper.pod_flat");
        assert_eq!(e.position.map(|p| p.line), Some(11), "{e}");
    }

    #[test]
    fn an_option_the_method_would_ignore_is_an_error_at_its_key() {
        let err = |methods: &str| config(methods, "").unwrap_err();
        // A BSCE choice of another preset.
        let e = err("  a: {preset: lucir, bsce: true, bsce_choices: {nca_prior: before_scale}}\n");
        assert_eq!(e.path, "methods.a.bsce_choices.nca_prior", "{e}");
        assert!(
            e.to_string().contains("a choice of podnet; `a` is lucir"),
            "{e}"
        );
        // A BSCE choice without BSCE: named where it is written, also when
        // the BSCE variant that extends it would use it.
        let e = err("  a: {preset: lucir, bsce_choices: {margin_ranking: false}}\n  b: {extends: a, bsce: true}\n");
        assert_eq!(e.path, "methods.a.bsce_choices.margin_ranking", "{e}");
        assert!(e.to_string().contains("`bsce: true` only"), "{e}");
        // A hyper-parameter of another preset.
        let e = err("  a: {preset: podnet, hyper: {less_forget: 5}}\n");
        assert_eq!(e.path, "methods.a.hyper.less_forget", "{e}");
        // The same options where they apply are accepted.
        config(
            "  a: {preset: lucir, hyper: {less_forget: 5}}\n  b: {extends: a, bsce: true, bsce_choices: {margin_ranking: false}}\n",
            "",
        )
        .unwrap();
    }

    #[test]
    fn store_remote_is_checked_at_its_key() {
        let e = config(
            "  a: {preset: finetune}\n",
            "store: {remote: \"ftp://host/x\"}\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "store.remote", "{e}");
        let ok = config(
            "  a: {preset: finetune}\n",
            "store: {remote: \"s3://bucket/p\"}\n",
        )
        .unwrap();
        assert_eq!(ok.remote.as_deref(), Some("s3://bucket/p"));
    }

    #[test]
    fn an_unknown_name_gets_a_did_you_mean() {
        let text = format!(
            "{BASE}methods:\n  ce: {{preset: finetune}}\nexperiments:\n  e: {{dataset: synht, orders: [a], settings: [s2], methods: [ce], recipe: r}}\n"
        );
        let e = parse(&text, Path::new("c.yaml"), &Catalog).unwrap_err();
        assert!(e.message.contains("`synth`"), "{e}");
        assert!(e.path.starts_with("experiments.e.dataset"), "{e}");
    }
}
