//! `order show` and `dataset inspect`: look before spending GPU hours.

use std::path::Path;
use std::process::ExitCode;

use bsce_pipeline::config;
use bsce_pipeline::digest::Digest;
use bsce_pipeline::sources::SourceDigester;
use bsce_stages::dataset::{artefact, cifar, image_folder};
use bsce_stages::order::{
    icarl_order, named_order, named_order_names, numpy_shuffled_range, resolve_order,
};

use bsce_pipe::ops::{store, Ctx};
use bsce_pipe::{Error, Result};

use crate::cli::args::OrderCommand;

pub fn order(command: OrderCommand, ctx: &Ctx) -> Result<ExitCode> {
    let OrderCommand::Show {
        name,
        numpy_seed,
        icarl_seed,
        classes,
        config: cfg,
        entry,
        list,
    } = command;
    if list {
        for n in named_order_names() {
            let o = named_order(n).expect("listed");
            out!("{n:<22} {} classes  {}", o.classes.len(), o.description);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let order: Vec<u32> = match (name, numpy_seed, icarl_seed, cfg) {
        (Some(n), None, None, None) => match named_order(&n) {
            Some(o) => o.classes.to_vec(),
            None => {
                let hint = config::did_you_mean(&n, named_order_names().iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; `order show --list` lists them".into());
                return Err(Error::bad_input(format!("unknown order `{n}`{hint}")));
            }
        },
        (None, Some(seed), None, None) => numpy_shuffled_range(seed, classes.expect("clap requires it")),
        (None, None, Some(seed), None) => icarl_order(seed, classes.expect("clap requires it")),
        (None, None, None, Some(cfg_path)) => {
            let catalog = store::catalog(ctx);
            let cfg = config::load(&cfg_path, &catalog)?;
            let entry = entry.expect("clap requires it");
            let def = cfg.orders.get(&entry).ok_or_else(|| {
                Error::bad_input(format!(
                    "{}: no order `{entry}`; defined: {}",
                    cfg_path.display(),
                    cfg.orders.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let spec = &def.spec;
            let n = match (def.classes, classes) {
                (_, Some(c)) => c,
                (Some(c), None) => c,
                (None, None) => {
                    return Err(Error::bad_input(format!(
                        "order `{entry}` takes its class count from the dataset; pass --classes"
                    )))
                }
            };
            resolve_order(spec, n).map_err(|e| Error::bad_input(e.to_string()))?.classes
        }
        _ => {
            return Err(Error::bad_input(
                "give one of: NAME, --numpy-seed S --classes C, --icarl-seed S --classes C, --config FILE --entry NAME, --list"
            ))
        }
    };
    out!("{}", serde_json::to_string(&order)?);
    Ok(ExitCode::SUCCESS)
}

pub fn dataset(path: &Path, json: bool) -> Result<ExitCode> {
    if !path.exists() {
        return Err(Error::bad_input(format!(
            "{}: no such file or directory",
            path.display()
        )));
    }
    let scratch = store::Scratch::new()?;
    let digester = SourceDigester::new(scratch.path().into(), scratch.path().into());
    let report = inspect_path(path, &digester)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("path:     {}", path.display());
        out!("format:   {}", report["format"].as_str().unwrap_or("?"));
        out!(
            "digest:   sha256:{}",
            report["digest"].as_str().unwrap_or("?")
        );
        out!("classes:  {}", report["classes"]);
        if let Some(shape) = report.get("image_size") {
            out!("images:   {shape}");
        }
        out!("train:    {} images", report["train"]);
        out!("test:     {} images", report["test"]);
        if let Some(names) = report["class_names"].as_array() {
            let shown: Vec<&str> = names.iter().take(8).filter_map(|v| v.as_str()).collect();
            let more = if names.len() > 8 {
                format!(", ... ({} more)", names.len() - 8)
            } else {
                String::new()
            };
            out!("names:    {}{more}", shown.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_path(path: &Path, digester: &SourceDigester) -> Result<serde_json::Value> {
    let bad = |e: bsce_stages::StageError| Error::bad_input(e.to_string());
    let digest = |tree: bool| -> Result<Digest> { Ok(digester.digest(path, tree)?) };
    if path.is_dir() && path.join(artefact::META_FILE).is_file() {
        let meta = artefact::read_meta(path).map_err(bad)?;
        let d = digest(true)?;
        return Ok(serde_json::json!({
            "format": format!("prepared dataset ({})", meta.source_format),
            "digest": d.to_hex(), "classes": meta.classes.len(), "class_names": meta.classes,
            "image_size": if meta.aspect_kept {
                format!("short side {}, aspect ratio kept, x{}", meta.height, meta.channels)
            } else {
                format!("{}x{}x{}", meta.height, meta.width, meta.channels)
            },
            "train": meta.train_count, "test": meta.test_count,
        }));
    }
    if let Some(format) = cifar::detect(path).map_err(bad)? {
        let ds = cifar::load_cifar100(path).map_err(bad)?;
        let d = digest(path.is_dir())?;
        return Ok(serde_json::json!({
            "format": match format { cifar::CifarFormat::Python => "cifar100-python", cifar::CifarFormat::Binary => "cifar100-binary" },
            "digest": d.to_hex(), "classes": ds.classes.len(), "class_names": ds.classes,
            "image_size": format!("{}x{}x{}", ds.height, ds.width, ds.channels),
            "train": ds.train.labels.len(), "test": ds.test.labels.len(),
        }));
    }
    if path.is_dir() && image_folder::detect(path) {
        let spec = image_folder::ImageFolderSpec::new(path);
        let scan = image_folder::scan(&spec).map_err(bad)?;
        let d = digest(true)?;
        return Ok(serde_json::json!({
            "format": "image-folder", "digest": d.to_hex(),
            "classes": scan.classes.len(), "class_names": scan.classes,
            "train": scan.train_count, "test": scan.val_count,
        }));
    }
    Err(Error::bad_input(format!(
        "{}: not a CIFAR-100 archive or folder (python or binary), an image-folder tree (train/<class>/...), or a prepared dataset",
        path.display()
    )))
}
