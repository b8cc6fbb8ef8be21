//! What the engine needs to know about stage implementations without
//! depending on them: the binary passes the stages crate's answers in.

use std::collections::BTreeMap;

pub use crate::registry::{Runner, StageKind, StageSpec};

pub trait StageCatalog: Sync {
    /// sha256 of the token streams of the kind's source files (and of its
    /// `variant`'s, see [`crate::registry::CodeVariants`]), computed at
    /// build time.
    fn code_digest(&self, kind: StageKind, variant: Option<&str>) -> String;
    /// The files in that digest, each with the sha256 of its token stream.
    fn code_files(&self, kind: StageKind, variant: Option<&str>) -> Vec<(String, String)>;
    /// Versions of the libraries that change the kind's numerics.
    fn libraries(&self, kind: StageKind) -> BTreeMap<String, String>;
    /// Class count of a built-in order, None if there is no such order.
    fn named_order(&self, name: &str) -> Option<usize>;
    fn named_order_names(&self) -> Vec<String>;
}

/// The stage side as the engine's unit tests see it: a code digest of
/// zeros, no libraries, one built-in order of 10 classes (`builtin10`).
#[cfg(test)]
pub(crate) struct TestCatalog;

#[cfg(test)]
impl StageCatalog for TestCatalog {
    fn code_digest(&self, _: StageKind, _: Option<&str>) -> String {
        "0".repeat(64)
    }
    fn code_files(&self, _: StageKind, _: Option<&str>) -> Vec<(String, String)> {
        Vec::new()
    }
    fn libraries(&self, _: StageKind) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    fn named_order(&self, name: &str) -> Option<usize> {
        (name == "builtin10").then_some(10)
    }
    fn named_order_names(&self) -> Vec<String> {
        vec!["builtin10".into()]
    }
}
