//! The concrete stages of bsce-pipe.
//!
//! | module      | stage kind | what it computes                                      |
//! |-------------|------------|-------------------------------------------------------|
//! | [`dataset`] | `prepare`  | a source (CIFAR-100, image folders, synthetic) into the canonical dataset artefact |
//! | [`order`]   | `order`    | a class order (explicit, numpy-seeded, named)          |
//!
//! Each stage kind's code digest is computed at build time from its own
//! source folder (see `build.rs`), so editing one stage reruns that stage and
//! its dependants only.

pub mod dataset;
pub mod error;
pub mod order;

pub use error::{Result, StageError};
