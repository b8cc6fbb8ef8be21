//! The plan: a config turned into a DAG of stage instances. Pure: reads no
//! file but the config, so `dag` and `status` cost nothing. Identical
//! instances (same kind, params, inputs and sources) merge into one node, so
//! a task split shared by several experiments is computed once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::catalog::StageKind;
use crate::config::{defaults, presets, Config, DatasetSource, Experiment, MethodPreset, ValDef};
use crate::digest::canonical_json;
use crate::digest::Digest;
use crate::params::{
    AggregateParams, AggregateRun, AugmentStyle, Augmentation, EvalParams, Keep, OrderParams,
    PlotParams, PrepareParams, RenderParams, TasksParams, TrainParams, ValParams, IMAGENET_CROP,
};
use crate::registry::files;

pub(crate) type NodeId = usize;

#[derive(Clone, Debug)]
pub struct PlanNode {
    pub kind: StageKind,
    /// Logical name (`order/synth/numpy1993`): how reruns are explained.
    /// Not in the key.
    pub label: String,
    /// Exactly the parameters the stage reads.
    pub params: Value,
    pub inputs: Vec<NodeInput>,
    pub sources: Vec<SourceInput>,
}

/// Files of an upstream node's output that this node reads. They appear to
/// the stage as `in/<name>/<file>` and in the key as `<name>/<file>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeInput {
    pub name: String,
    pub node: NodeId,
    pub files: Vec<String>,
}

/// A file or tree outside the store that a stage reads. The key holds its
/// content digest, never its path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceInput {
    pub name: String,
    pub path: Option<PathBuf>,
    pub is_tree: bool,
    /// For downloads: where to fetch it if `path` is absent.
    pub url: Option<String>,
    /// The digest the config promises, if any.
    pub expected: Option<Digest>,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub nodes: Vec<PlanNode>,
    /// Every training run of the sweep (dataset x order x setting x method
    /// x seed), with its evaluation node per task: what `results` reports.
    pub runs: Vec<RunRef>,
    /// Experiment -> its `aggregate` node (experiments with runs only).
    pub aggregates: Vec<(String, NodeId)>,
    /// Table name -> its `render` node.
    pub tables: Vec<(String, NodeId)>,
    /// (experiment, setting) -> its `plot` node.
    pub plots: Vec<(String, String, NodeId)>,
    /// The config file it was made from (absolute): the store keeps the
    /// last run of each stage per config, so that another config sharing
    /// the store never explains this one's reruns unannounced.
    pub config: PathBuf,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunRef {
    pub experiment: String,
    pub dataset: String,
    pub order: String,
    pub setting: String,
    pub method: String,
    pub seed: u64,
    /// Evaluation node of task t at index t.
    #[serde(skip)]
    pub evaluations: Vec<NodeId>,
    /// Train node of task t at index t.
    #[serde(skip)]
    pub trains: Vec<NodeId>,
    /// The method a BSCE variant extends (itself otherwise).
    #[serde(skip)]
    pub base_method: String,
    #[serde(skip)]
    pub bsce: bool,
}

impl RunRef {
    /// The run's folder, one name per component (through
    /// [`crate::names::file_name`]): `<experiment>/<order>/<setting>/<method>/seed<k>`.
    /// Its TensorBoard events live there, in the store while it trains and
    /// in the report.
    pub fn path(&self) -> PathBuf {
        use crate::names::file_name;
        [&self.experiment, &self.order, &self.setting, &self.method]
            .iter()
            .map(|n| file_name(n))
            .chain([format!("seed{}", self.seed)])
            .collect()
    }
}

impl Plan {
    /// Every stage of the config, the report's included.
    pub fn from_config(config: &Config) -> Plan {
        Plan::build(config, &|_| true)
    }

    /// The plan whose result stages (aggregate, render, plot) cover only
    /// the runs `include` accepts; `report` passes the runs complete in the
    /// store. Training and evaluation nodes are the same as the full plan's.
    pub fn build(config: &Config, include: &dyn Fn(&RunRef) -> bool) -> Plan {
        let mut b = Builder::default();
        for exp in &config.experiments {
            let ds = &config.datasets[&exp.dataset];
            let prepare = b.add(prepare_node(&exp.dataset, &ds.source));
            for order_name in &exp.orders {
                let order = &config.orders[order_name];
                let order_node = b.add(PlanNode {
                    kind: StageKind::Order,
                    label: format!("order/{}/{}", exp.dataset, order_name),
                    params: to_params(&OrderParams {
                        spec: order.spec.clone(),
                    }),
                    inputs: vec![NodeInput::of("dataset", prepare, &[files::META])],
                    sources: vec![],
                });
                for setting_name in &exp.settings {
                    let s = &config.settings[setting_name];
                    b.train_chains(config, exp, prepare, order_node, order_name, setting_name);
                    b.add(PlanNode {
                        kind: StageKind::Tasks,
                        label: format!("tasks/{}/{}/{}", exp.dataset, order_name, setting_name),
                        params: to_params(&TasksParams {
                            base: s.base,
                            increment: s.increment,
                            steps: s.steps,
                        }),
                        inputs: vec![
                            NodeInput::of("dataset", prepare, &[files::META]),
                            NodeInput::of("order", order_node, &[files::ORDER]),
                        ],
                        sources: vec![],
                    });
                }
            }
        }
        b.results(config, include);
        Plan {
            config: config.file.clone(),
            ..b.plan
        }
    }

    /// The report's nodes (render, plot) and everything upstream of them,
    /// renumbered; runs keep only those whose nodes are all kept.
    pub fn report_only(&self) -> Plan {
        let mut keep = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = self
            .tables
            .iter()
            .map(|t| t.1)
            .chain(self.plots.iter().map(|p| p.2))
            .chain(self.aggregates.iter().map(|a| a.1))
            .collect();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut keep[n], true) {
                stack.extend(self.nodes[n].inputs.iter().map(|i| i.node));
            }
        }
        let mut new_id = vec![usize::MAX; self.nodes.len()];
        let mut plan = Plan {
            config: self.config.clone(),
            ..Plan::default()
        };
        for (id, node) in self.nodes.iter().enumerate() {
            if keep[id] {
                new_id[id] = plan.nodes.len();
                let mut node = node.clone();
                for i in &mut node.inputs {
                    i.node = new_id[i.node];
                }
                plan.nodes.push(node);
            }
        }
        let map = |ids: &[NodeId]| -> Option<Vec<NodeId>> {
            ids.iter().map(|&i| keep[i].then(|| new_id[i])).collect()
        };
        for run in &self.runs {
            if let (Some(evaluations), Some(trains)) = (map(&run.evaluations), map(&run.trains)) {
                plan.runs.push(RunRef {
                    evaluations,
                    trains,
                    ..run.clone()
                });
            }
        }
        plan.aggregates = self
            .aggregates
            .iter()
            .map(|(e, n)| (e.clone(), new_id[*n]))
            .collect();
        plan.tables = self
            .tables
            .iter()
            .map(|(t, n)| (t.clone(), new_id[*n]))
            .collect();
        plan.plots = self
            .plots
            .iter()
            .map(|(e, s, n)| (e.clone(), s.clone(), new_id[*n]))
            .collect();
        plan
    }

    /// Per node, a digest of what it computes as far as the config
    /// decides it: its kind, params and sources (as the config names them)
    /// and, through its inputs, the same of every stage upstream. Two
    /// plans' nodes with equal definitions compute the same key from the
    /// same code and data; a config edit changes the definition of every
    /// stage it reaches. Unlike a key, it is known before anything runs
    /// (`status` compares a queued Slurm job's submitted config with this
    /// one's). `None` on a cycle.
    pub fn definitions(&self) -> Option<Vec<Digest>> {
        let order = self.topo_order().ok()?;
        let mut defs: Vec<Option<Digest>> = vec![None; self.nodes.len()];
        for id in order {
            let node = &self.nodes[id];
            let inputs: Vec<Value> = node
                .inputs
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "name": i.name,
                        "files": i.files,
                        "node": defs[i.node].expect("topological order").to_hex(),
                    })
                })
                .collect();
            let sources: Vec<Value> = node
                .sources
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name,
                        "path": s.path,
                        "tree": s.is_tree,
                        "url": s.url,
                        "sha256": s.expected.map(|d| d.to_hex()),
                    })
                })
                .collect();
            let def = serde_json::json!({
                "kind": node.kind.as_str(),
                "params": node.params,
                "sources": sources,
                "inputs": inputs,
            });
            defs[id] = Some(Digest::of_bytes(canonical_json(&def).as_bytes()));
        }
        defs.into_iter().collect()
    }

    /// Nodes that read `id`'s outputs.
    pub fn dependants(&self, id: NodeId) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].inputs.iter().any(|i| i.node == id))
            .collect()
    }

    /// A topological order, or the labels on a cycle.
    pub(crate) fn topo_order(&self) -> Result<Vec<NodeId>, Vec<String>> {
        let n = self.nodes.len();
        let mut indeg: Vec<usize> = self.nodes.iter().map(|x| x.inputs.len()).collect();
        let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        for (id, node) in self.nodes.iter().enumerate() {
            for i in &node.inputs {
                users[i.node].push(id);
            }
        }
        let mut ready: Vec<NodeId> = (0..n).filter(|&i| indeg[i] == 0).rev().collect();
        let mut out = Vec::with_capacity(n);
        while let Some(id) = ready.pop() {
            out.push(id);
            for &u in users[id].iter().rev() {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.push(u);
                }
            }
        }
        if out.len() == n {
            Ok(out)
        } else {
            Err((0..n)
                .filter(|&i| indeg[i] > 0)
                .map(|i| self.nodes[i].label.clone())
                .collect())
        }
    }

    /// An indented text tree. Each node appears once, under the input it
    /// lists last (for a task split: its order, under its dataset).
    pub fn render_text(&self) -> String {
        let mut children: Vec<Vec<NodeId>> = vec![Vec::new(); self.nodes.len()];
        for (id, node) in self.nodes.iter().enumerate() {
            if let Some(parent) = node.inputs.last() {
                children[parent.node].push(id);
            }
        }
        let mut out = String::new();
        for root in (0..self.nodes.len()).filter(|&i| self.nodes[i].inputs.is_empty()) {
            self.text_node(root, "", None, &children, &mut out);
        }
        let _ = writeln!(out, "{} stages", self.nodes.len());
        out
    }

    /// `last`: None for a root, else whether this is its parent's last child.
    fn text_node(
        &self,
        id: NodeId,
        prefix: &str,
        last: Option<bool>,
        children: &[Vec<NodeId>],
        out: &mut String,
    ) {
        let node = &self.nodes[id];
        let branch = match last {
            None => "",
            Some(true) => "└── ",
            Some(false) => "├── ",
        };
        let _ = writeln!(out, "{prefix}{branch}{} [{}]", node.label, node.kind);
        let child_prefix = match last {
            None => String::new(),
            Some(true) => format!("{prefix}    "),
            Some(false) => format!("{prefix}│   "),
        };
        let kids = &children[id];
        for (i, &c) in kids.iter().enumerate() {
            self.text_node(c, &child_prefix, Some(i + 1 == kids.len()), children, out);
        }
    }

    pub fn render_dot(&self) -> String {
        let mut out = String::from(
            "digraph bsce {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for (id, n) in self.nodes.iter().enumerate() {
            let _ = writeln!(out, "  n{id} [label=\"{}\\n[{}]\"];", n.label, n.kind);
        }
        for (id, n) in self.nodes.iter().enumerate() {
            for i in &n.inputs {
                let _ = writeln!(out, "  n{} -> n{id} [label=\"{}\"];", i.node, i.name);
            }
        }
        out.push_str("}\n");
        out
    }

    pub fn render_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (id, n) in self.nodes.iter().enumerate() {
            let _ = writeln!(out, "  n{id}[\"{}<br/>[{}]\"]", n.label, n.kind);
        }
        for (id, n) in self.nodes.iter().enumerate() {
            for i in &n.inputs {
                let _ = writeln!(out, "  n{} -->|{}| n{id}", i.node, i.name);
            }
        }
        out
    }
}

fn prepare_node(name: &str, source: &DatasetSource) -> PlanNode {
    let (params, sources) = match source {
        DatasetSource::Synthetic(spec) => (PrepareParams::Synthetic(spec.clone()), vec![]),
        DatasetSource::Cifar100 { path, url, sha256 } => (
            PrepareParams::Cifar100 {},
            vec![SourceInput {
                name: "archive".into(),
                path: path.clone(),
                is_tree: path.as_ref().is_some_and(|p| p.is_dir()),
                url: url.clone(),
                expected: *sha256,
            }],
        ),
        DatasetSource::ImageFolder {
            root,
            train_dir,
            val,
            subset,
            size,
            crop: _,
            augment,
        } => {
            let mut sources = vec![SourceInput {
                name: "root".into(),
                path: Some(root.clone()),
                is_tree: true,
                url: None,
                expected: None,
            }];
            let val = match val {
                ValDef::Folders(dir) => ValParams::Folders(dir.clone()),
                ValDef::LabelList { dir, labels } => {
                    sources.push(file_source("val_labels", labels));
                    ValParams::LabelList { dir: dir.clone() }
                }
            };
            if let Some(s) = subset {
                sources.push(file_source("subset", s));
            }
            let params = PrepareParams::ImageFolder {
                train_dir: train_dir.clone(),
                val,
                size: *size,
                keep: Keep::for_style(*augment),
            };
            (params, sources)
        }
    };
    PlanNode {
        kind: StageKind::Prepare,
        label: format!("prepare/{name}"),
        params: to_params(&params),
        inputs: vec![],
        sources,
    }
}

fn file_source(name: &str, path: &std::path::Path) -> SourceInput {
    SourceInput {
        name: name.into(),
        path: Some(path.to_path_buf()),
        is_tree: false,
        url: None,
        expected: None,
    }
}

impl NodeInput {
    fn of(name: &str, node: NodeId, files: &[&str]) -> NodeInput {
        NodeInput {
            name: name.into(),
            node,
            files: files.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// A kind's typed params as the JSON the key hashes and the stage reads.
fn to_params<T: serde::Serialize>(p: &T) -> Value {
    serde_json::to_value(p).expect("params serialise")
}

/// Whether every class has the same number of training images, known
/// before preparation. A fact about the data: what follows from it for a
/// task's computation is `MethodParams::for_task`'s to say.
fn known_balanced(source: &DatasetSource) -> bool {
    matches!(
        source,
        DatasetSource::Synthetic(_) | DatasetSource::Cifar100 { .. }
    )
}

/// A train stage's augmentation: the dataset's style, in the variant of
/// the preset's reference. PODNet's ImageNet options turn `color_jitter`
/// on (A `options/podnet/podnet_cnn_imagenet{100,1000}.yaml`:
/// ColorJitter(brightness 63/255) after the crop and flip); LUCIR's
/// ImageNet scripts have none.
fn augmentation(source: &DatasetSource, preset: MethodPreset) -> Augmentation {
    let imagenet_style = matches!(
        source,
        DatasetSource::ImageFolder {
            augment: AugmentStyle::Imagenet,
            ..
        }
    );
    match (imagenet_style, preset) {
        (true, MethodPreset::Podnet) => Augmentation::ImagenetPodnet,
        (true, _) => Augmentation::Imagenet,
        (false, MethodPreset::Podnet) => Augmentation::CifarPodnet,
        (false, _) => Augmentation::CifarLucir,
    }
}

#[derive(Default)]
struct Builder {
    plan: Plan,
    index: HashMap<String, NodeId>,
}

impl Builder {
    /// The train -> train -> ... chain of one run (method x seed) of a
    /// setting, with an evaluation after every task. A train node reads
    /// only the order positions it learns, so the base task is shared by
    /// every setting with the same base (and by a method and its +bsce
    /// variant on balanced data).
    fn train_chains(
        &mut self,
        config: &Config,
        exp: &Experiment,
        prepare: NodeId,
        order: NodeId,
        order_name: &str,
        setting_name: &str,
    ) {
        let setting = &config.settings[setting_name];
        let ds = &config.datasets[&exp.dataset];
        let Some(steps) = setting.steps.or_else(|| {
            ds.classes
                .map(|c| crate::params::max_steps(c, setting.base, setting.increment))
        }) else {
            return;
        };
        let ends: Vec<u32> = (0..=steps)
            .map(|t| setting.base + t * setting.increment)
            .collect();
        for method_name in &exp.methods {
            let m = &config.methods[method_name];
            let recipe = config.recipes[&exp.recipes[method_name]].clone();
            let network = exp
                .network
                .unwrap_or_else(|| defaults::network(&ds.source, m.preset));
            let method = presets::method_params(m, ds.profile);
            for &seed in &exp.seeds {
                let run = format!(
                    "{}/{}/{}/seed{}",
                    exp.dataset, order_name, method_name, seed
                );
                let mut previous: Option<NodeId> = None;
                let mut evaluations = Vec::new();
                let mut trains = Vec::new();
                for (t, &end) in ends.iter().enumerate() {
                    let start = if t == 0 { 0 } else { ends[t - 1] };
                    let base_task = t == 0;
                    let scope = if base_task {
                        format!("b{}", setting.base)
                    } else {
                        setting_name.to_string()
                    };
                    let mut inputs = vec![
                        NodeInput::of("dataset", prepare, files::DATASET),
                        NodeInput::of("order", order, &[files::ORDER]),
                    ];
                    if let Some(prev) = previous {
                        inputs.push(NodeInput::of("previous", prev, files::MODEL_FILES));
                    }
                    let params = TrainParams {
                        task: t,
                        start: start as usize,
                        end: end as usize,
                        method: method.for_task(t, known_balanced(&ds.source)),
                        recipe: recipe.clone(),
                        network,
                        augment: augmentation(&ds.source, m.preset),
                        crop: match &ds.source {
                            DatasetSource::ImageFolder {
                                crop,
                                augment: AugmentStyle::Imagenet,
                                ..
                            } if *crop != IMAGENET_CROP => Some(*crop),
                            _ => None,
                        },
                        normalize: ds.normalize.clone(),
                        seed,
                        deterministic: exp.deterministic,
                    };
                    let train = self.add(PlanNode {
                        kind: StageKind::Train,
                        label: format!("train/{run}/{scope}/t{t}"),
                        params: to_params(&params),
                        inputs,
                        sources: vec![],
                    });
                    let eval = self.add(PlanNode {
                        kind: StageKind::Evaluate,
                        label: format!("evaluate/{run}/{scope}/t{t}"),
                        params: to_params(&EvalParams {
                            task: t,
                            ends: ends[..=t].iter().map(|&e| e as usize).collect(),
                            evaluation: config.evaluation.clone(),
                        }),
                        inputs: vec![
                            NodeInput::of("dataset", prepare, files::DATASET),
                            NodeInput::of("order", order, &[files::ORDER]),
                            NodeInput::of("model", train, files::MODEL_FILES),
                        ],
                        sources: vec![],
                    });
                    evaluations.push(eval);
                    trains.push(train);
                    previous = Some(train);
                }
                self.plan.runs.push(RunRef {
                    experiment: exp.name.clone(),
                    dataset: exp.dataset.clone(),
                    order: order_name.to_string(),
                    setting: setting_name.to_string(),
                    method: method_name.clone(),
                    seed,
                    evaluations,
                    trains,
                    base_method: m.base_method.clone(),
                    bsce: m.bsce,
                });
            }
        }
    }

    /// The result stages: an `aggregate` per experiment over its included
    /// runs, a `plot` per experiment x setting, a `render` per table.
    fn results(&mut self, config: &Config, include: &dyn Fn(&RunRef) -> bool) {
        // Config resolution refuses an empty list.
        let classifier = config.evaluation.classifiers[0];
        for exp in &config.experiments {
            let runs: Vec<RunRef> = self
                .plan
                .runs
                .iter()
                .filter(|r| r.experiment == exp.name && include(r))
                .cloned()
                .collect();
            if runs.is_empty() {
                continue;
            }
            let mut inputs = Vec::new();
            for (i, r) in runs.iter().enumerate() {
                for (t, (&e, &tr)) in r.evaluations.iter().zip(&r.trains).enumerate() {
                    inputs.push(NodeInput::of(
                        &format!("eval.{i}.{t}"),
                        e,
                        &[files::EVALUATION],
                    ));
                    inputs.push(NodeInput::of(
                        &format!("log.{i}.{t}"),
                        tr,
                        &[files::TRAIN_LOG],
                    ));
                }
            }
            let params = AggregateParams {
                experiment: exp.name.clone(),
                dataset: exp.dataset.clone(),
                runs: runs
                    .iter()
                    .map(|r| AggregateRun {
                        order: r.order.clone(),
                        setting: r.setting.clone(),
                        method: r.method.clone(),
                        base_method: r.base_method.clone(),
                        bsce: r.bsce,
                        seed: r.seed,
                        tasks: r.evaluations.len(),
                    })
                    .collect(),
            };
            let agg = self.add(PlanNode {
                kind: StageKind::Aggregate,
                label: format!("aggregate/{}", exp.name),
                params: to_params(&params),
                inputs,
                sources: vec![],
            });
            self.plan.aggregates.push((exp.name.clone(), agg));
            for setting in &exp.settings {
                if !runs.iter().any(|r| &r.setting == setting) {
                    continue;
                }
                let plot = self.add(PlanNode {
                    kind: StageKind::Plot,
                    label: format!("plot/{}/{}", exp.name, setting),
                    params: to_params(&PlotParams {
                        experiment: exp.name.clone(),
                        dataset: exp.dataset.clone(),
                        setting: setting.clone(),
                        classifier,
                    }),
                    inputs: vec![NodeInput::of(
                        "frames",
                        agg,
                        &[files::TIDY_PARQUET, files::EPOCHS_PARQUET],
                    )],
                    sources: vec![],
                });
                self.plan
                    .plots
                    .push((exp.name.clone(), setting.clone(), plot));
            }
        }
        for (name, t) in &config.tables {
            let inputs: Vec<NodeInput> = t
                .experiments
                .iter()
                .filter_map(|e| self.plan.aggregates.iter().find(|a| &a.0 == e))
                .enumerate()
                .map(|(i, (_, n))| {
                    NodeInput::of(&format!("summary.{i}"), *n, &[files::SUMMARY_PARQUET])
                })
                .collect();
            let render = self.add(PlanNode {
                kind: StageKind::Render,
                label: format!("render/{name}"),
                params: to_params(&RenderParams {
                    table: t.params.clone(),
                    markdown_template: t.markdown_template.clone(),
                    latex_template: t.latex_template.clone(),
                }),
                inputs,
                sources: vec![],
            });
            self.plan.tables.push((name.clone(), render));
        }
    }

    fn add(&mut self, node: PlanNode) -> NodeId {
        let identity = format!(
            "{}|{}|{:?}|{:?}",
            node.kind,
            canonical_json(&node.params),
            node.inputs,
            node.sources
        );
        if let Some(&id) = self.index.get(&identity) {
            return id;
        }
        let id = self.plan.nodes.len();
        self.plan.nodes.push(node);
        self.index.insert(identity, id);
        id
    }
}

/// A bare node for the engine's unit tests: `label`, reading `inputs`
/// (each named `in<n>`).
#[cfg(test)]
pub(crate) fn test_node(label: &str, inputs: &[NodeId]) -> PlanNode {
    PlanNode {
        kind: StageKind::Order,
        label: label.into(),
        params: serde_json::json!({}),
        inputs: inputs
            .iter()
            .map(|&n| NodeInput {
                name: format!("in{n}"),
                node: n,
                files: vec![],
            })
            .collect(),
        sources: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_order_respects_edges() {
        let plan = Plan {
            nodes: vec![
                test_node("c", &[1, 2]),
                test_node("a", &[]),
                test_node("b", &[1]),
            ],
            ..Plan::default()
        };
        let order = plan.topo_order().unwrap();
        let pos = |x| order.iter().position(|&i| i == x).unwrap();
        assert!(pos(1) < pos(2) && pos(2) < pos(0));
    }

    #[test]
    fn cycles_are_reported_with_their_labels() {
        let plan = Plan {
            nodes: vec![
                test_node("a", &[1]),
                test_node("b", &[0]),
                test_node("root", &[]),
            ],
            ..Plan::default()
        };
        assert_eq!(plan.topo_order().unwrap_err(), vec!["a", "b"]);
    }

    #[test]
    fn a_definition_moves_with_the_node_and_everything_downstream_only() {
        let plan = |b_params: Value| Plan {
            nodes: vec![
                test_node("a", &[]),
                PlanNode {
                    params: b_params,
                    ..test_node("b", &[0])
                },
                test_node("c", &[1]),
                test_node("d", &[0]),
            ],
            ..Plan::default()
        };
        let before = plan(serde_json::json!({"lr": 0.1})).definitions().unwrap();
        let same = plan(serde_json::json!({"lr": 0.1})).definitions().unwrap();
        let after = plan(serde_json::json!({"lr": 0.2})).definitions().unwrap();
        assert_eq!(before, same);
        assert_eq!(before[0], after[0], "upstream of the edit");
        assert_ne!(before[1], after[1], "the edited node");
        assert_ne!(before[2], after[2], "downstream of it");
        assert_eq!(before[3], after[3], "beside it");
        // The label is a name, not what is computed.
        let mut renamed = plan(serde_json::json!({"lr": 0.1}));
        renamed.nodes[3].label = "d2".into();
        assert_eq!(renamed.definitions().unwrap(), before);
    }

    #[test]
    fn a_runs_folder_names_each_part_one_to_one() {
        let r = RunRef {
            experiment: "e".into(),
            dataset: "d".into(),
            order: "a b".into(),
            setting: "b2%".into(),
            method: "lucir".into(),
            seed: 3,
            evaluations: vec![],
            trains: vec![],
            base_method: "lucir".into(),
            bsce: false,
        };
        assert_eq!(r.path(), PathBuf::from("e/a~20b/b2~25/lucir/seed3"));
    }
}
