//! The `prepare` stage: a dataset source -> the canonical dataset artefact
//! (see `dataset::artefact`).

use std::io::Write;
use std::path::PathBuf;

use bsce_pipeline::exec::job::{ChildReporter, SourceLocation, StageJob};
use bsce_pipeline::params::{PrepareParams, ValParams};
use serde_json::Value;

use crate::dataset::artefact::DatasetMeta;
use crate::dataset::image_folder::{prepare_image_folder, ImageFolderSpec, Keep, ValSource};
use crate::dataset::synthetic::generate;
use crate::dataset::{cifar, download};
use crate::error::{Result, StageError};

pub fn run(job: &StageJob, reporter: &ChildReporter) -> Result<()> {
    let params: PrepareParams = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("source", format!("bad stage params: {e}")))?;
    let dataset = match params {
        PrepareParams::Synthetic(spec) => generate(&spec)?,
        PrepareParams::Cifar100 {} => {
            let archive = fetch_source(job, "archive", reporter)?;
            cifar::load_cifar100(&archive)?
        }
        PrepareParams::ImageFolder {
            train_dir,
            val,
            size,
            keep,
        } => {
            // Streamed to disk, not held: the one source that can outgrow
            // memory (ImageNet-1k is about 340 GB prepared).
            let spec = image_folder_spec(job, train_dir, val, size, keep)?;
            let report =
                prepare_image_folder(&spec, &job.out_dir, &job.resume_dir, &|done, total| {
                    reporter.progress(done, Some(total), "images")
                })?;
            if report.resumed_shards > 0 {
                // A plain stdout line goes to the stage's log.
                let _ = writeln!(
                    std::io::stdout(),
                    "resumed {} of {} shards ({} images) from {}; decoded {} images",
                    report.resumed_shards,
                    report.shards,
                    report.resumed_images,
                    job.resume_dir.display(),
                    report.decoded_images
                );
            }
            reporter.provenance(
                "shards",
                serde_json::json!({
                    "total": report.shards,
                    "resumed": report.resumed_shards,
                    "resumed_images": report.resumed_images,
                    "decoded_images": report.decoded_images,
                }),
            );
            provenance(&report.meta, reporter);
            return Ok(());
        }
    };
    let meta = dataset.write(&job.out_dir)?;
    provenance(&meta, reporter);
    Ok(())
}

fn provenance(meta: &DatasetMeta, reporter: &ChildReporter) {
    reporter.provenance("source_format", Value::String(meta.source_format.clone()));
    reporter.provenance(
        "images",
        serde_json::json!({"train": meta.train_count, "test": meta.test_count, "classes": meta.classes.len()}),
    );
}

/// The path of a source, downloading it first when the config gave a URL
/// and the file is not there yet.
fn fetch_source(job: &StageJob, name: &str, reporter: &ChildReporter) -> Result<PathBuf> {
    let SourceLocation { path, url, sha256 } = job
        .sources
        .get(name)
        .ok_or_else(|| StageError::Other(format!("stage has no source {name:?}")))?;
    if let (Some(url), Some(sha)) = (url, sha256) {
        if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
            }
            download::download(url, sha, path, &mut |done, total| {
                reporter.progress(done, total, "bytes")
            })?;
        }
    }
    Ok(path.clone())
}

fn image_folder_spec(
    job: &StageJob,
    train_dir: String,
    val: ValParams,
    size: u32,
    keep: bsce_pipeline::params::Keep,
) -> Result<ImageFolderSpec> {
    let source = |name: &str| {
        job.sources
            .get(name)
            .map(|s| s.path.clone())
            .ok_or_else(|| {
                StageError::param(
                    format!("image_folder.{name}"),
                    "the stage has no such source",
                )
            })
    };
    let val = match val {
        ValParams::Folders(dir) => ValSource::Folders { dir },
        ValParams::LabelList { dir } => ValSource::LabelList {
            dir,
            labels: source("val_labels")?,
        },
    };
    Ok(ImageFolderSpec {
        root: source("root")?,
        train_dir,
        val,
        subset: job.sources.get("subset").map(|s| s.path.clone()),
        size,
        keep: match keep {
            bsce_pipeline::params::Keep::Whole => Keep::Whole,
            bsce_pipeline::params::Keep::CentreSquare => Keep::CentreSquare,
        },
    })
}
