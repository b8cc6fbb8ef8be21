//! bsce-pipe's reports: the result stages (run by `bsce-pipe exec-stage`),
//! the report folder made of their outputs, and the per-run results.
//! Beside this crate: `templates/` (the default table templates and the
//! page's, built in), `fonts/` (DejaVu Sans for the PNGs, built in),
//! `tests/` (the default table templates: insta snapshots, the LaTeX
//! compiled) and `out/<config>/` (the reports written, ignored by git).
//!
//! | module        | stage kind  | what it computes                                          |
//! |---------------|-------------|-----------------------------------------------------------|
//! | [`aggregate`] | `aggregate` | an experiment's evaluations and training logs -> tidy, groups, runs, summary and epochs frames (polars) |
//! | [`render`]    | `render`    | summary frames + a table declaration -> Markdown and LaTeX (minijinja) |
//! | [`plot`]      | `plot`      | tidy and epochs frames -> accuracy against classes seen and the training-loss curves, SVG and PNG (plotters) |
//! | [`frame`]     | all three   | reading and writing frames as Parquet and CSV              |
//! | [`columns`]   | all three   | the frames' column names, one declaration for writer and readers |
//! | [`timeline`]  | (none)      | the report's timelines: every stored stage as a bar, per host and device lane, from provenance |
//! | [`html`]      | (none)      | the report's self-contained `index.html` |
//! | [`report`]    | (none)      | `report` and the end of `run`: the result stages over the runs complete in the store, then `out/<config>/` (with TensorBoard files from `log.json`) |
//! | [`results`]   | (none)      | `results`: per-run numbers from the aggregate frames        |
//!
//! Where a number of the report comes from, in one look: `eval.json` (the
//! evaluate stage) -> `tidy` rows here -> per-run metrics (`runs`) -> mean
//! and population std over orders and seeds (`summary`) -> a table cell.

pub mod aggregate;
pub mod columns;
pub mod frame;
pub mod html;
pub mod plot;
pub mod render;
pub mod report;
pub mod results;
pub mod timeline;

/// The polars the frames are made with, for readers of them.
pub use polars;

use bsce_pipeline::catalog::StageKind;
use bsce_stages::stage::StageFn;

/// The kinds `bsce-pipe exec-stage` runs from this crate (registry runner
/// `pipe`, beside `bsce_stages::stage::PIPE_STAGES`).
pub const RESULT_STAGES: &[(StageKind, StageFn)] = &[
    (StageKind::Aggregate, aggregate::run),
    (StageKind::Render, render::run),
    (StageKind::Plot, plot::run),
];
