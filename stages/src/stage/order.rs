//! The `order` stage: an order spec and the dataset's class count -> an
//! explicit, validated class order.

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_pipeline::params::OrderParams;

use crate::dataset::artefact::read_meta;
use crate::error::{Result, StageError};
use crate::order::{resolve_order, write_order};

pub fn run(job: &StageJob, reporter: &ChildReporter) -> Result<()> {
    let OrderParams { spec } = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("spec", format!("not an order spec: {e}")))?;
    let dataset = job
        .input("dataset")
        .ok_or_else(|| StageError::Other("order stage has no dataset input".into()))?;
    let meta = read_meta(dataset)?;
    let order = resolve_order(&spec, meta.num_classes())?;
    reporter.provenance(
        "generator",
        serde_json::to_value(&order.provenance).expect("serialises"),
    );
    write_order(&job.out_dir, &order)
}
