//! The concrete stages of bsce-pipe.
//!
//! | module      | stage kind | what it computes                                      |
//! |-------------|------------|-------------------------------------------------------|
//! | [`dataset`] | `prepare`  | a source (CIFAR-100, image folders, synthetic) into the canonical dataset artefact |
//! | [`order`]   | `order`    | a class order (explicit, numpy-seeded, named)          |
//! | [`stage`]   | all        | the child-process entry: a job routed to its kind; `tasks` |
//! | [`tensorboard`] | `train` (live), the report | TensorBoard event files of the per-epoch scalars |
//! | [`task_artefacts`] | `train`, `evaluate` -> `aggregate` | `eval.json` and `log.json`, one declaration for writer and reader |
//!
//! Each stage kind's code digest is computed at build time from its own
//! source folder (see `code_digest.rs`, run by `build.rs`), so editing one stage reruns that stage and
//! its dependants only.

#[cfg(test)]
mod code_digest;
pub mod dataset;
pub mod error;
pub mod order;
pub mod stage;
pub mod task_artefacts;
pub mod tensorboard;

pub use error::{Result, StageError};
