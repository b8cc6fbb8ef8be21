//! `bsce-pipe` as a library: every command's logic, returning data. The
//! binary (`src/main.rs`; `src/cli/`: clap definitions, printing, the
//! terminal reporter) parses the
//! command line, reads the process environment once into an [`Ambient`],
//! calls one function of [`ops`], and prints what it returns (cargo's
//! shape: "each command is a thin wrapper around ops").
//!
//! | module      | what it holds                                                   |
//! |-------------|-----------------------------------------------------------------|
//! | [`ambient`] | the process environment, read once at the edge (`BSCE_*`, `SLURM_*`, the working folder) |
//! | [`error`]   | one error type; [`Exit`] is the README's exit-code table          |
//! | [`ops`]     | `run`, `status`/`explain`/`dag`, `cache` (verify, gc, du, push, pull), `cost` (`status --cost`, `calibrate`, `explain --if-changed`), `report`/`results`, `slurm` (submit, cancel, the job body), `inspect` (`order show`, `dataset inspect`); `store`: which store, its remote and lock, for every command |
//!
//! Where things are done: config, plan, keys, store and executors in
//! `bsce-pipeline`; data stages in `bsce-stages`; result stages and the
//! report folder in `bsce-reports` (`reports/`); training in `bsce-train`.

pub mod ambient;
pub mod error;
pub mod ops;

pub use ambient::Ambient;
pub use error::{Error, Exit, Result};
