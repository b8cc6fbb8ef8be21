//! Where each stage of a Slurm run goes: in the store already, on the
//! submitting machine, or in which job. Decided once, before anything is
//! submitted, so the number of jobs is known (and checked against
//! `executor.slurm.max_jobs`) first.

use std::collections::BTreeMap;

use super::super::{EngineError, NodeStatus};
use crate::config::executor::{SlurmGroup, SlurmSettings};
#[cfg(test)]
use crate::plan::PlanNode;
use crate::plan::{NodeId, Plan};
use crate::registry::StageKind;

/// Where one stage goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// In the store: nothing to do.
    Stored,
    /// Run by the submitting machine, once its inputs are stored.
    Local,
    /// In job `j` of [`Layout::jobs`].
    Job(usize),
}

/// One job: its stages in the order it runs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPlan {
    pub nodes: Vec<NodeId>,
    /// A training run's chain (train and evaluate stages, task after
    /// task), rather than one stage.
    pub chain: bool,
}

impl JobPlan {
    /// The kind whose `executor.slurm` resources the job asks for: train's
    /// when it holds a train stage (a chain resumed at an evaluation still
    /// trains the tasks after it), else its first stage's.
    pub fn kind(&self, plan: &Plan) -> StageKind {
        self.nodes
            .iter()
            .map(|&n| plan.nodes[n].kind)
            .find(|&k| k == StageKind::Train)
            .unwrap_or(plan.nodes[self.nodes[0]].kind)
    }
}

/// Every stage's place and the jobs, in an order where a job comes after
/// every job and local stage it waits for.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub place: Vec<Place>,
    pub jobs: Vec<JobPlan>,
    /// The stages the submitting machine runs, in plan order.
    pub local: Vec<NodeId>,
}

impl Layout {
    /// Jobs that run a chain, and jobs that run one stage.
    pub fn counts(&self) -> (usize, usize) {
        let chains = self.jobs.iter().filter(|j| j.chain).count();
        (chains, self.jobs.len() - chains)
    }

    /// `12 slurm jobs (10 run chains, 2 single stages); 9 stages on this
    /// machine`.
    pub fn describe(&self) -> String {
        let (chains, single) = self.counts();
        let mut s = format!(
            "{} slurm job{}",
            self.jobs.len(),
            if self.jobs.len() == 1 { "" } else { "s" }
        );
        if chains > 0 {
            s += &format!(
                " ({chains} run chain{}, {single} single stage{})",
                if chains == 1 { "" } else { "s" },
                if single == 1 { "" } else { "s" }
            );
        }
        s += &format!(
            "; {} stage{} on this machine",
            self.local.len(),
            if self.local.len() == 1 { "" } else { "s" }
        );
        s
    }
}

/// Places every stage of `plan` not in the store (`status`). Kinds in
/// `local_kinds` run on the submitting machine, except, when `detached`
/// (no one stays to run them), those that wait for a job: they become
/// jobs. With `group: run`, the train and evaluate stages of a training
/// run are one job; a stage several runs share (a base task common to
/// several settings) goes in a job with the other stages shared by
/// exactly those runs, so no run waits for another run's whole chain.
pub fn layout(
    plan: &Plan,
    status: &[NodeStatus],
    settings: &SlurmSettings,
    detached: bool,
) -> Result<Layout, EngineError> {
    let order = plan.topo_order().map_err(EngineError::Cycle)?;
    // Node -> the runs (indices into plan.runs) whose chain holds it.
    let mut runs_of: Vec<Vec<usize>> = vec![Vec::new(); plan.nodes.len()];
    for (r, run) in plan.runs.iter().enumerate() {
        for &n in run.trains.iter().chain(&run.evaluations) {
            if !runs_of[n].contains(&r) {
                runs_of[n].push(r);
            }
        }
    }
    let mut out = Layout {
        place: vec![Place::Stored; plan.nodes.len()],
        ..Layout::default()
    };
    let mut chain_of: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
    for &n in &order {
        if matches!(status[n], NodeStatus::Cached { .. }) {
            continue;
        }
        let node = &plan.nodes[n];
        let inputs_here = node
            .inputs
            .iter()
            .all(|i| matches!(out.place[i.node], Place::Stored | Place::Local));
        if settings.is_local(node.kind) && (!detached || inputs_here) {
            out.place[n] = Place::Local;
            out.local.push(n);
            continue;
        }
        let chained = settings.group == SlurmGroup::Run
            && matches!(node.kind, StageKind::Train | StageKind::Evaluate)
            && !runs_of[n].is_empty();
        let j = if chained {
            let mut runs = runs_of[n].clone();
            runs.sort_unstable();
            // An evaluation no stage of a job reads (only the result
            // stages do): in a shared job, its failure would fail that job
            // and so every chain waiting for the shared training; in its
            // first run's chain it fails that chain's job alone.
            if node.kind == StageKind::Evaluate {
                runs.truncate(1);
            }
            *chain_of.entry(runs).or_insert_with(|| {
                out.jobs.push(JobPlan {
                    nodes: Vec::new(),
                    chain: true,
                });
                out.jobs.len() - 1
            })
        } else {
            out.jobs.push(JobPlan {
                nodes: Vec::new(),
                chain: false,
            });
            out.jobs.len() - 1
        };
        out.jobs[j].nodes.push(n);
        out.place[n] = Place::Job(j);
    }
    out.jobs = job_order(plan, &order, &out)?;
    // Renumbered: places follow.
    for (j, job) in out.jobs.iter().enumerate() {
        for &n in &job.nodes {
            out.place[n] = Place::Job(j);
        }
    }
    Ok(out)
}

/// The jobs in an order where each comes after the jobs it waits for,
/// directly or through local stages. A chain built from plan order never
/// waits for itself; should some plan make two jobs wait for each other,
/// that is an error naming their stages, not a deadlock on the cluster.
fn job_order(plan: &Plan, order: &[NodeId], layout: &Layout) -> Result<Vec<JobPlan>, EngineError> {
    let n_jobs = layout.jobs.len();
    // The jobs each node's result waits for (its own job included).
    let mut waits: Vec<Vec<usize>> = vec![Vec::new(); plan.nodes.len()];
    for &n in order {
        let mut w: Vec<usize> = Vec::new();
        for i in &plan.nodes[n].inputs {
            w.extend(&waits[i.node]);
        }
        if let Place::Job(j) = layout.place[n] {
            w.push(j);
        }
        w.sort_unstable();
        w.dedup();
        waits[n] = w;
    }
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n_jobs];
    for (j, job) in layout.jobs.iter().enumerate() {
        for &n in &job.nodes {
            for i in &plan.nodes[n].inputs {
                after[j].extend(waits[i.node].iter().filter(|&&d| d != j));
            }
        }
        after[j].sort_unstable();
        after[j].dedup();
    }
    // Kahn's algorithm, lowest index first: plan order where it can.
    let mut left: Vec<usize> = after.iter().map(Vec::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n_jobs];
    for (j, a) in after.iter().enumerate() {
        for &d in a {
            users[d].push(j);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n_jobs).filter(|&j| left[j] == 0).collect();
    let mut sorted = Vec::with_capacity(n_jobs);
    while let Some(j) = ready.pop_first() {
        sorted.push(j);
        for &u in &users[j] {
            left[u] -= 1;
            if left[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if sorted.len() < n_jobs {
        let stuck: Vec<String> = (0..n_jobs)
            .filter(|&j| left[j] > 0)
            .flat_map(|j| layout.jobs[j].nodes.first())
            .map(|&n| plan.nodes[n].label.clone())
            .collect();
        return Err(EngineError::JobCycle(stuck));
    }
    Ok(sorted.into_iter().map(|j| layout.jobs[j].clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_node;

    /// A chain resumed at an evaluation still trains the tasks after it:
    /// its job asks for train's resources (a GPU), not evaluate's.
    #[test]
    fn a_job_holding_a_train_stage_asks_for_trains_resources() {
        let node = |label: &str, kind: StageKind, inputs: &[NodeId]| PlanNode {
            kind,
            ..test_node(label, inputs)
        };
        let plan = Plan {
            nodes: vec![
                node("evaluate/t3", StageKind::Evaluate, &[]),
                node("train/t4", StageKind::Train, &[]),
                node("evaluate/t4", StageKind::Evaluate, &[1]),
                node("prepare/d", StageKind::Prepare, &[]),
            ],
            ..Plan::default()
        };
        let job = |nodes: Vec<NodeId>| JobPlan { nodes, chain: true };
        assert_eq!(job(vec![0, 1, 2]).kind(&plan), StageKind::Train);
        assert_eq!(job(vec![0]).kind(&plan), StageKind::Evaluate);
        assert_eq!(job(vec![3]).kind(&plan), StageKind::Prepare);
    }
}
