//! The bsce-pipe engine. Knows nothing of tch, polars or minijinja: stage
//! implementations reach it through [`catalog::StageCatalog`] and the child
//! protocol of [`exec::job`].
//!
//! | module      | role                                                        |
//! |-------------|-------------------------------------------------------------|
//! | [`config`]  | YAML -> raw serde types -> validated `Config`, errors with file:line:column |
//! | [`plan`]    | `Config` -> DAG of stage instances (pure); text/dot/mermaid  |
//! | [`catalog`] | stage kinds and what the engine asks of their implementations |
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
pub mod plan;
pub mod sources;
pub mod store;
