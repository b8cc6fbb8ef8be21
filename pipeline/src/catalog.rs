//! What the engine needs to know about stage implementations without
//! depending on them: the binary passes the stages crate's answers in.

use std::collections::BTreeMap;
use std::fmt;

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
}

impl StageKind {
    pub const ALL: [StageKind; 5] = [
        StageKind::Prepare,
        StageKind::Order,
        StageKind::Tasks,
        StageKind::Train,
        StageKind::Evaluate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Prepare => "prepare",
            StageKind::Order => "order",
            StageKind::Tasks => "tasks",
            StageKind::Train => "train",
            StageKind::Evaluate => "evaluate",
        }
    }

    /// Kinds that get one GPU each when `--gpus` lists some.
    pub fn needs_gpu(self) -> bool {
        self.needs_torch()
    }

    /// Kinds run by `bsce-torch` (which links libtorch) instead of
    /// `bsce-pipe` (which starts in milliseconds).
    pub fn needs_torch(self) -> bool {
        match self {
            StageKind::Prepare | StageKind::Order | StageKind::Tasks => false,
            StageKind::Train | StageKind::Evaluate => true,
        }
    }

    pub fn parse(s: &str) -> Option<StageKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub trait StageCatalog: Sync {
    /// sha256 of the kind's own source files, computed at build time.
    fn code_digest(&self, kind: StageKind) -> String;
    /// Versions of the libraries that change the kind's numerics.
    fn libraries(&self, kind: StageKind) -> BTreeMap<String, String>;
    /// Class count of a built-in order, None if there is no such order.
    fn named_order(&self, name: &str) -> Option<usize>;
    fn named_order_names(&self) -> Vec<String>;
}
