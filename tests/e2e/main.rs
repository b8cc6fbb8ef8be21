//! End-to-end tests: the real `bsce-pipe` binary on real files in temporary
//! directories, one test binary with a module per area (cargo's testsuite
//! layout). `support` holds the helpers and fixtures.

#![allow(clippy::disallowed_methods)] // tests read the caches' locations and set up servers

mod support;

mod cost;
mod curves;
mod data;
mod engine;
mod remote;
mod reports;
mod slurm;
mod store;
mod training;
mod workers;
