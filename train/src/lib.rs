//! Class-incremental training and evaluation on libtorch (tch). Only the
//! `bsce-torch` binary links this crate, so `bsce-pipe` and the data stages
//! start without loading libtorch.
//!
//! | module         | what it holds                                               |
//! |----------------|-------------------------------------------------------------|
//! | [`runtime`]    | device choice, threads, determinism, `doctor` facts          |
//!
//! The formulas follow ../shared/reference/method-formulas.md; where a
//! reference's code and paper differ, the code's behaviour is the default.

pub mod runtime;

pub use bsce_stages::error::{Result, StageError};
