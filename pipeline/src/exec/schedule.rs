//! The scheduler's bookkeeping (cargo's `DrainState`): per node, what it
//! waits on, whether it is ready, resolved to run, running, done or failed;
//! the ready and runnable queues in plan order; the rounds that stages
//! whose inputs changed on disk take. No store, no processes, no events:
//! `Engine::run` asks it what to do next and tells it what happened, and
//! the tests below drive it on small graphs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::plan::{NodeId, Plan};
use crate::store::OutputEntry;

/// A stage's outputs, by file name.
pub(crate) type Outputs = BTreeMap<String, OutputEntry>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
    Failed,
}

/// `R`: what the engine resolved for a node it will run (its key record,
/// key and whether it was forced), held until a job slot takes it.
pub(crate) struct Schedule<R> {
    state: Vec<State>,
    outputs: Vec<Option<Outputs>>,
    /// Whether a done node was served from the store (for requeues).
    from_cache: Vec<bool>,
    /// Who reads each node's outputs, and how many distinct producers a
    /// waiting node still waits on.
    users: Vec<Vec<NodeId>>,
    missing: Vec<usize>,
    /// Each node's position in the topological order: ready and runnable
    /// nodes are taken in it, so the schedule does not depend on thread
    /// timing, and a chain started first is finished first.
    rank: Vec<usize>,
    ready: BinaryHeap<Reverse<(usize, NodeId)>>,
    runnable: BinaryHeap<Reverse<(usize, NodeId)>>,
    resolved: BTreeMap<NodeId, R>,
    /// Stages whose input changed on disk, with the producers to redo.
    requeued: Vec<(NodeId, Vec<NodeId>)>,
    rounds: usize,
    inputs: Vec<Vec<NodeId>>,
}

/// What a later round found (see [`Schedule::next_round`]).
pub(crate) struct Round {
    /// Requeued stages given up on: their inputs kept changing.
    pub given_up: Vec<NodeId>,
}

impl<R> Schedule<R> {
    /// `order`: the plan's topological order.
    pub(crate) fn new(plan: &Plan, order: &[NodeId]) -> Schedule<R> {
        let n = plan.nodes.len();
        let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        let mut missing = vec![0; n];
        let mut inputs = Vec::with_capacity(n);
        for (id, node) in plan.nodes.iter().enumerate() {
            let mut ups: Vec<NodeId> = node.inputs.iter().map(|i| i.node).collect();
            ups.sort_unstable();
            ups.dedup();
            missing[id] = ups.len();
            for &u in &ups {
                users[u].push(id);
            }
            inputs.push(ups);
        }
        let mut rank = vec![0usize; n];
        for (r, &id) in order.iter().enumerate() {
            rank[id] = r;
        }
        let ready = order
            .iter()
            .filter(|&&id| missing[id] == 0)
            .map(|&id| Reverse((rank[id], id)))
            .collect();
        Schedule {
            state: vec![State::Waiting; n],
            outputs: vec![None; n],
            from_cache: vec![false; n],
            users,
            missing,
            rank,
            ready,
            runnable: BinaryHeap::new(),
            resolved: BTreeMap::new(),
            requeued: Vec::new(),
            rounds: 0,
            inputs,
        }
    }

    /// Every ready node, in plan order, taken off the ready queue: the
    /// engine looks each one up (in the store, or to run).
    pub(crate) fn take_ready(&mut self) -> Vec<NodeId> {
        std::iter::from_fn(|| self.ready.pop())
            .map(|Reverse((_, id))| id)
            .collect()
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Ready or resolved nodes not started yet.
    pub(crate) fn has_pending(&self) -> bool {
        !self.ready.is_empty() || !self.runnable.is_empty()
    }

    /// The outputs of done nodes (`None` for the others).
    pub(crate) fn outputs(&self) -> &[Option<Outputs>] {
        &self.outputs
    }

    pub(crate) fn was_cached(&self, id: NodeId) -> bool {
        self.from_cache[id]
    }

    /// `id` is to run, with what the engine resolved for it.
    pub(crate) fn to_run(&mut self, id: NodeId, resolved: R) {
        self.resolved.insert(id, resolved);
        self.runnable.push(Reverse((self.rank[id], id)));
    }

    /// The first resolved node in plan order, for a free job slot.
    pub(crate) fn next_runnable(&mut self) -> Option<(NodeId, R)> {
        let Reverse((_, id)) = self.runnable.pop()?;
        let r = self.resolved.remove(&id).expect("resolved before runnable");
        Some((id, r))
    }

    pub(crate) fn started(&mut self, id: NodeId) {
        self.state[id] = State::Running;
    }

    /// `id` is done (computed, or served from the store): its waiting
    /// users whose last input it was become ready.
    pub(crate) fn done(&mut self, id: NodeId, outputs: Outputs, from_cache: bool) {
        self.outputs[id] = Some(outputs);
        self.state[id] = State::Done;
        self.from_cache[id] = from_cache;
        // Only waiting users count it: after a requeue, a node that is done
        // again may have users that already ran.
        for &u in &self.users[id] {
            if self.state[u] == State::Waiting {
                self.missing[u] -= 1;
                if self.missing[u] == 0 {
                    self.ready.push(Reverse((self.rank[u], u)));
                }
            }
        }
    }

    /// `id` failed: every waiting node downstream is skipped, once each.
    /// Returns them with the node each was reached through.
    pub(crate) fn failed(&mut self, id: NodeId) -> Vec<(NodeId, NodeId)> {
        self.state[id] = State::Failed;
        let mut skipped = Vec::new();
        let mut stack = vec![id];
        while let Some(f) = stack.pop() {
            for &u in &self.users[f] {
                if self.state[u] == State::Waiting {
                    self.state[u] = State::Failed;
                    skipped.push((u, f));
                    stack.push(u);
                }
            }
        }
        skipped
    }

    /// `id` was stopped by a cancellation.
    pub(crate) fn interrupted(&mut self, id: NodeId) {
        self.state[id] = State::Failed;
    }

    /// `id` found an input changed on disk: it waits for `producers` to be
    /// redone in the next round.
    pub(crate) fn input_changed(&mut self, id: NodeId, producers: Vec<NodeId>) {
        self.state[id] = State::Waiting;
        self.requeued.push((id, producers));
    }

    /// After a round has drained: `None` when nothing was requeued (the run
    /// is over). Otherwise the requeued stages' producers are redone: they
    /// and everything waiting on them are counted again and the ready ones
    /// queued. A stage requeued in more than `max_rounds` rounds in a row is
    /// given up on (failed) and returned.
    pub(crate) fn next_round(&mut self, max_rounds: usize) -> Option<Round> {
        if self.requeued.is_empty() {
            return None;
        }
        self.rounds += 1;
        let mut given_up = Vec::new();
        for (id, producers) in std::mem::take(&mut self.requeued) {
            if self.rounds > max_rounds {
                self.state[id] = State::Failed;
                given_up.push(id);
                continue;
            }
            for p in producers {
                self.state[p] = State::Waiting;
                self.outputs[p] = None;
                self.from_cache[p] = false;
            }
        }
        for id in 0..self.state.len() {
            if self.state[id] != State::Waiting {
                continue;
            }
            let ups: Vec<NodeId> = self.inputs[id]
                .iter()
                .copied()
                .filter(|&u| self.state[u] != State::Done)
                .collect();
            self.missing[id] = ups.len();
            if ups.iter().any(|&u| self.state[u] == State::Failed) {
                continue;
            }
            if ups.is_empty() {
                self.ready.push(Reverse((self.rank[id], id)));
            }
        }
        Some(Round { given_up })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{test_node, NodeInput};

    /// A plan of `edges[i]` = the inputs of node i (named n0, n1, ...).
    fn plan(edges: &[&[NodeId]]) -> (Plan, Vec<NodeId>) {
        let plan = Plan {
            nodes: edges
                .iter()
                .enumerate()
                .map(|(i, ins)| test_node(&format!("n{i}"), ins))
                .collect(),
            ..Plan::default()
        };
        let order = plan.topo_order().unwrap();
        (plan, order)
    }

    /// Runs the schedule to the end, computing every node at once unless
    /// `fail` names it; returns the order nodes were started in.
    fn drain(s: &mut Schedule<()>, fail: &[NodeId]) -> Vec<NodeId> {
        let mut started = Vec::new();
        while s.has_pending() {
            for id in s.take_ready() {
                s.to_run(id, ());
            }
            while let Some((id, ())) = s.next_runnable() {
                s.started(id);
                started.push(id);
                if fail.contains(&id) {
                    s.failed(id);
                } else {
                    s.done(id, Outputs::new(), false);
                }
            }
        }
        started
    }

    #[test]
    fn nodes_start_in_plan_order_once_their_inputs_are_done() {
        // 0 -> 1 -> 3, 0 -> 2 -> 3, 4 alone.
        let (p, order) = plan(&[&[], &[0], &[0], &[1, 2], &[]]);
        let mut s = Schedule::<()>::new(&p, &order);
        let started = drain(&mut s, &[]);
        assert_eq!(started.len(), 5);
        let pos = |n| started.iter().position(|&x| x == n).unwrap();
        assert!(pos(0) < pos(1) && pos(0) < pos(2));
        assert!(pos(1) < pos(3) && pos(2) < pos(3));
        // The same plan schedules the same way every time.
        let mut again = Schedule::<()>::new(&p, &order);
        assert_eq!(drain(&mut again, &[]), started);
    }

    #[test]
    fn a_node_read_twice_by_one_stage_is_waited_on_once() {
        let (mut p, order) = plan(&[&[], &[0]]);
        p.nodes[1].inputs.push(NodeInput {
            name: "again".into(),
            node: 0,
            files: vec![],
        });
        let mut s = Schedule::<()>::new(&p, &order);
        assert_eq!(drain(&mut s, &[]), vec![0, 1]);
    }

    #[test]
    fn a_failure_skips_everything_downstream_once_and_nothing_else() {
        // 0 -> 1 -> 2 -> 3, 1 -> 3, 4 alone.
        let (p, order) = plan(&[&[], &[0], &[1], &[1, 2], &[]]);
        let mut s = Schedule::<()>::new(&p, &order);
        for id in s.take_ready() {
            s.to_run(id, ());
        }
        let (first, ()) = s.next_runnable().unwrap();
        assert_eq!(first, 0);
        s.done(0, Outputs::new(), false);
        for id in s.take_ready() {
            s.to_run(id, ());
        }
        // 4 (ready from the start) and 1, in plan order.
        let mut next = vec![];
        while let Some((id, ())) = s.next_runnable() {
            next.push(id);
        }
        assert!(next.contains(&1) && next.contains(&4), "{next:?}");
        let skipped = s.failed(1);
        let mut ids: Vec<NodeId> = skipped.iter().map(|&(u, _)| u).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![2, 3], "each downstream node once");
        s.done(4, Outputs::new(), false);
        assert!(!s.has_pending());
        assert!(s.next_round(3).is_none());
    }

    #[test]
    fn a_requeued_stage_waits_for_its_producer_to_be_redone() {
        // 0 -> 1 -> 2.
        let (p, order) = plan(&[&[], &[0], &[1]]);
        let mut s = Schedule::<()>::new(&p, &order);
        for id in s.take_ready() {
            s.to_run(id, ());
        }
        let (id, ()) = s.next_runnable().unwrap();
        s.done(id, Outputs::new(), true);
        for id in s.take_ready() {
            s.to_run(id, ());
        }
        let (one, ()) = s.next_runnable().unwrap();
        assert_eq!(one, 1);
        s.started(1);
        // Node 1 finds node 0's output changed on disk.
        s.input_changed(1, vec![0]);
        assert!(s.was_cached(0));
        assert!(!s.has_pending());
        let round = s.next_round(3).expect("a second round");
        assert!(round.given_up.is_empty());
        assert!(!s.was_cached(0) && s.outputs()[0].is_none());
        // Only the producer is ready; 1 and 2 follow it.
        assert_eq!(s.take_ready(), vec![0]);
        s.done(0, Outputs::new(), false);
        assert_eq!(s.take_ready(), vec![1]);
        s.done(1, Outputs::new(), false);
        assert_eq!(s.take_ready(), vec![2]);
    }

    #[test]
    fn a_stage_whose_inputs_keep_changing_is_given_up_after_the_round_limit() {
        let (p, order) = plan(&[&[], &[0]]);
        let mut s = Schedule::<()>::new(&p, &order);
        let mut given_up = vec![];
        for round in 0..5 {
            for id in s.take_ready() {
                s.done(id, Outputs::new(), false);
            }
            let ready = s.take_ready();
            if ready.is_empty() {
                break;
            }
            assert_eq!(ready, vec![1], "round {round}");
            s.input_changed(1, vec![0]);
            if let Some(r) = s.next_round(2) {
                given_up = r.given_up;
            }
            if !given_up.is_empty() {
                break;
            }
        }
        assert_eq!(given_up, vec![1]);
        assert!(!s.has_pending());
        assert!(s.next_round(2).is_none());
    }
}
