//! `report` and `results`: from the store only, never training.

use std::path::{Path, PathBuf};

use bsce_pipeline::events::Reporter;
use bsce_reports::report::{self, ReportSummary};
use bsce_reports::results;

use super::store::{self, StoreArgs};
use super::{default_jobs, Ctx};
use crate::Result;

/// `report CONFIG [--out DIR]`: the result stages over the runs complete
/// in the store, then the report folder.
pub fn report(
    config: &Path,
    args: &StoreArgs,
    out: Option<PathBuf>,
    ctx: &Ctx,
    reporter: &mut dyn Reporter,
) -> Result<ReportSummary> {
    let e = store::load_existing(config, args, ctx)?;
    let l = &e.loaded;
    let out = out.unwrap_or_else(|| report::default_out_dir(&l.cfg, &ctx.ambient.cwd));
    Ok(report::write(
        &l.cfg,
        &l.plan,
        e.store.as_ref(),
        &l.catalog,
        &e.run_ctx,
        &out,
        default_jobs(),
        reporter,
    )?)
}

/// `results CONFIG`: the per-run numbers of the aggregate frames.
pub fn results(
    config: &Path,
    args: &StoreArgs,
    ctx: &Ctx,
    reporter: &mut dyn Reporter,
) -> Result<serde_json::Value> {
    let e = store::load_existing(config, args, ctx)?;
    let l = &e.loaded;
    let prepared = report::prepare(
        &l.cfg,
        &l.plan,
        e.store.as_ref(),
        &l.catalog,
        &e.run_ctx,
        default_jobs(),
        reporter,
    )?;
    Ok(results::collect(&prepared, e.store.as_ref())?)
}
