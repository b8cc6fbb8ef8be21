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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{ctx_in, quickstart, Events};
    use bsce_pipeline::store::LocalStore;

    #[test]
    fn a_report_over_an_empty_store_lists_every_run_missing_and_trains_nothing() {
        let (dir, config, args) = quickstart();
        // Without its tables: a result stage runs as a child of this
        // binary, which is the test's here (the e2e tests run them).
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, &text[..text.find("\ntables:").unwrap()]).unwrap();
        let (ctx, _) = ctx_in(dir.path());
        LocalStore::open(args.store.as_ref().unwrap()).unwrap();
        let out = dir.path().join("out");
        let mut events = Events::default();
        let r = report(&config, &args, Some(out.clone()), &ctx, &mut events).unwrap();
        // 2 orders x 2 settings x 2 methods, every task missing.
        assert_eq!(r.missing.len(), 8, "{:?}", r.missing);
        assert_eq!(r.executed, 0);
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert!(out.join("README.md").is_file());
        let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(readme.contains("numpy1993"), "{readme}");
        assert!(
            events.0.iter().all(|e| !e.contains("Started")),
            "{:?}",
            events.0
        );
    }
}
