//! The concrete stages of bsce-pipe.
//!
//! | module      | stage kind | what it computes                                      |
//! |-------------|------------|-------------------------------------------------------|
//! | [`dataset`] | `prepare`  | a source (CIFAR-100, image folders, synthetic) into the canonical dataset artefact |
//! | [`order`]   | `order`    | a class order (explicit, numpy-seeded, named)          |
//! | [`stage`]   | all        | the child-process entry: a job routed to its kind; the `prepare`, `order` and `tasks` stages; the warm worker's loop |
//! | [`tensorboard`] | `train` (live), the report | TensorBoard event files of the per-epoch scalars |
//! | [`task_artefacts`] | `train`, `evaluate` -> `aggregate` | `eval.json` and `log.json`, one declaration for writer and reader |
//! | [`error`]   | all        | the crate's one error type, [`StageError`]             |
//!
//! Each stage kind's code digest is computed at build time (`build.rs`,
//! with the test-only module `code_digest`) over the source files reachable
//! through `use` trees and paths from the entry points
//! `pipeline/src/registry.rs` names for the kind, comments and formatting
//! left out; so an edit reruns only the stages whose code reaches it, and
//! their dependants. A source file no kind reaches and the registry does
//! not exempt fails the build.

#[cfg(test)]
mod code_digest;
pub mod dataset;
pub mod error;
pub mod order;
pub mod stage;
pub mod task_artefacts;
pub mod tensorboard;

pub use error::{Result, StageError};
