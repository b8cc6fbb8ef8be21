//! The bsce-pipe engine. Knows nothing of tch, polars or minijinja: stage
//! implementations reach it through [`catalog::StageCatalog`] and the child
//! protocol of [`exec::job`].
//!
//! | module      | role                                                        |
//! |-------------|-------------------------------------------------------------|
//! | [`config`]  | YAML -> raw serde types -> validated `Config`, errors with file:line:column |
//! | [`params`]  | the typed params each stage kind reads, shared by plan and stage |
//! | [`plan`]    | `Config` -> DAG of stage instances (pure); text/dot/mermaid  |
//! | [`registry`] | every stage kind declared once: runner, GPU, outputs, code, seed |
//! | [`catalog`] | what the engine asks of the stage implementations (code digests) |
//! | [`key`]     | `KeyRecord` -> stage key; `DirtyReason`s from record diffs   |
//! | [`digest`]  | sha256 digests                                               |
//! | [`sources`] | digests of files outside the store, with a stat cache       |
//! | [`store`]   | content-addressed store: blobs, action records, locks; remote seam |
//! | [`exec`]    | status and the local scheduler; stage child processes        |
//! | [`events`]  | run events and the summary built from them                   |
//! | [`maintenance`] | `cache verify`, `cache gc`, `cache du`                   |

pub mod catalog;
pub mod config;
pub mod digest;
pub mod events;
pub mod exec;
pub mod key;
pub mod maintenance;
pub mod params;
pub mod plan;
pub mod registry;
pub mod sources;
pub mod store;
