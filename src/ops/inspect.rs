//! `order show` and `dataset inspect`: look before spending GPU hours.

use std::path::{Path, PathBuf};

use bsce_pipeline::config;
use bsce_pipeline::sources::SourceDigester;
use bsce_stages::dataset::{artefact, cifar, image_folder};
use bsce_stages::order::{
    icarl_order, named_order, named_order_names, numpy_shuffled_range, resolve_order,
};
use serde::Serialize;

use super::{store, Ctx};
use crate::{Error, Result};

/// What `order show` is asked: one of its flag sets.
#[derive(Clone, Debug, PartialEq)]
pub enum OrderQuery {
    /// `--list`: every built-in order.
    List,
    /// A built-in order by name.
    Named(String),
    NumpySeed {
        seed: u32,
        classes: usize,
    },
    IcarlSeed {
        seed: u32,
        classes: usize,
    },
    /// An order a config defines; `classes` when its dataset gives none.
    Config {
        path: PathBuf,
        entry: String,
        classes: Option<usize>,
    },
}

/// The flags of `order show`, as clap gives them.
#[derive(Clone, Debug, Default)]
pub struct OrderFlags {
    pub name: Option<String>,
    pub numpy_seed: Option<u32>,
    pub icarl_seed: Option<u32>,
    pub classes: Option<usize>,
    pub config: Option<PathBuf>,
    pub entry: Option<String>,
    pub list: bool,
}

impl OrderQuery {
    /// The query the flags make, or which flag sets there are.
    pub fn from_flags(f: OrderFlags) -> Result<OrderQuery> {
        let needs_classes = || Error::bad_input("--numpy-seed and --icarl-seed need --classes C");
        Ok(match f {
            OrderFlags { list: true, .. } => OrderQuery::List,
            OrderFlags {
                name: Some(n),
                numpy_seed: None,
                icarl_seed: None,
                config: None,
                ..
            } => OrderQuery::Named(n),
            OrderFlags {
                name: None,
                numpy_seed: Some(seed),
                icarl_seed: None,
                config: None,
                classes,
                ..
            } => OrderQuery::NumpySeed {
                seed,
                classes: classes.ok_or_else(needs_classes)?,
            },
            OrderFlags {
                name: None,
                numpy_seed: None,
                icarl_seed: Some(seed),
                config: None,
                classes,
                ..
            } => OrderQuery::IcarlSeed {
                seed,
                classes: classes.ok_or_else(needs_classes)?,
            },
            OrderFlags {
                name: None,
                numpy_seed: None,
                icarl_seed: None,
                config: Some(path),
                entry: Some(entry),
                classes,
                ..
            } => OrderQuery::Config {
                path,
                entry,
                classes,
            },
            _ => {
                return Err(Error::bad_input(
                    "give one of: NAME, --numpy-seed S --classes C, --icarl-seed S --classes C, \
                     --config FILE --entry NAME, --list",
                ))
            }
        })
    }
}

/// A built-in order, as `--list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NamedOrder {
    pub name: String,
    pub classes: usize,
    pub description: String,
}

/// What `order show` answers.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum OrderAnswer {
    List(Vec<NamedOrder>),
    /// Dataset class ids in learning order.
    Classes(Vec<u32>),
}

pub fn order(query: OrderQuery, ctx: &Ctx) -> Result<OrderAnswer> {
    let classes = match query {
        OrderQuery::List => {
            return Ok(OrderAnswer::List(
                named_order_names()
                    .iter()
                    .map(|n| {
                        let o = named_order(n).expect("listed");
                        NamedOrder {
                            name: n.to_string(),
                            classes: o.classes.len(),
                            description: o.description.to_string(),
                        }
                    })
                    .collect(),
            ))
        }
        OrderQuery::Named(n) => match named_order(&n) {
            Some(o) => o.classes.to_vec(),
            None => {
                let hint = config::did_you_mean(&n, named_order_names().iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; `order show --list` lists them".into());
                return Err(Error::bad_input(format!("unknown order `{n}`{hint}")));
            }
        },
        OrderQuery::NumpySeed { seed, classes } => numpy_shuffled_range(seed, classes),
        OrderQuery::IcarlSeed { seed, classes } => icarl_order(seed, classes),
        OrderQuery::Config {
            path,
            entry,
            classes,
        } => {
            let cfg = config::load(&path, &store::catalog(ctx))?;
            let def = cfg.orders.get(&entry).ok_or_else(|| {
                Error::bad_input(format!(
                    "{}: no order `{entry}`; defined: {}",
                    path.display(),
                    cfg.orders.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let Some(n) = classes.or(def.classes) else {
                return Err(Error::bad_input(format!(
                    "order `{entry}` takes its class count from the dataset; pass --classes"
                )));
            };
            resolve_order(&def.spec, n)
                .map_err(|e| Error::bad_input(e.to_string()))?
                .classes
        }
    };
    Ok(OrderAnswer::Classes(classes))
}

/// What `dataset inspect` finds at a path.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetReport {
    /// `cifar100-python`, `cifar100-binary`, `image-folder`, or
    /// `prepared dataset (<its source format>)`.
    pub format: String,
    /// As `sha256:` in a config wants it.
    pub digest: String,
    pub classes: usize,
    pub class_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<String>,
    pub train: u64,
    pub test: u64,
}

pub fn dataset(path: &Path) -> Result<DatasetReport> {
    if !path.exists() {
        return Err(Error::bad_input(format!(
            "{}: no such file or directory",
            path.display()
        )));
    }
    let scratch = store::Scratch::new()?;
    let digester = SourceDigester::new(scratch.path().into(), scratch.path().into());
    let bad = |e: bsce_stages::StageError| Error::bad_input(e.to_string());
    let digest = |tree: bool| -> Result<String> { Ok(digester.digest(path, tree)?.to_hex()) };
    if path.is_dir() && path.join(artefact::META_FILE).is_file() {
        let meta = artefact::read_meta(path).map_err(bad)?;
        return Ok(DatasetReport {
            format: format!("prepared dataset ({})", meta.source_format),
            digest: digest(true)?,
            classes: meta.classes.len(),
            image_size: Some(if meta.aspect_kept {
                format!(
                    "short side {}, aspect ratio kept, x{}",
                    meta.height, meta.channels
                )
            } else {
                format!("{}x{}x{}", meta.height, meta.width, meta.channels)
            }),
            class_names: meta.classes,
            train: meta.train_count,
            test: meta.test_count,
        });
    }
    if let Some(format) = cifar::detect(path).map_err(bad)? {
        let ds = cifar::load_cifar100(path).map_err(bad)?;
        return Ok(DatasetReport {
            format: match format {
                cifar::CifarFormat::Python => "cifar100-python",
                cifar::CifarFormat::Binary => "cifar100-binary",
            }
            .into(),
            digest: digest(path.is_dir())?,
            classes: ds.classes.len(),
            image_size: Some(format!("{}x{}x{}", ds.height, ds.width, ds.channels)),
            class_names: ds.classes,
            train: ds.train.labels.len() as u64,
            test: ds.test.labels.len() as u64,
        });
    }
    if path.is_dir() && image_folder::detect(path) {
        let spec = image_folder::ImageFolderSpec::new(path);
        let scan = image_folder::scan(&spec).map_err(bad)?;
        return Ok(DatasetReport {
            format: "image-folder".into(),
            digest: digest(true)?,
            classes: scan.classes.len(),
            class_names: scan.classes,
            image_size: None,
            train: scan.train_count,
            test: scan.val_count,
        });
    }
    Err(Error::bad_input(format!(
        "{}: not a CIFAR-100 archive or folder (python or binary), an image-folder tree \
         (train/<class>/...), or a prepared dataset",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{ctx_in, quickstart};

    fn classes(a: OrderAnswer) -> Vec<u32> {
        match a {
            OrderAnswer::Classes(c) => c,
            OrderAnswer::List(l) => panic!("a list: {l:?}"),
        }
    }

    #[test]
    fn order_show_answers_each_flag_set_and_names_a_mistake() {
        let (dir, config, _) = quickstart();
        let (ctx, _) = ctx_in(dir.path());
        let ask = |f: OrderFlags| order(OrderQuery::from_flags(f)?, &ctx);
        // numpy's legacy shuffle of arange(10) with seed 1993.
        let numpy = classes(
            ask(OrderFlags {
                numpy_seed: Some(1993),
                classes: Some(10),
                ..OrderFlags::default()
            })
            .unwrap(),
        );
        assert_eq!(numpy, numpy_shuffled_range(1993, 10));
        let mut sorted = numpy.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<u32>>());
        // The config's entry is the same order, its class count given.
        let from_config = ask(OrderFlags {
            config: Some(config.clone()),
            entry: Some("numpy1993".into()),
            classes: Some(10),
            ..OrderFlags::default()
        })
        .unwrap();
        assert_eq!(classes(from_config), numpy);
        let e = ask(OrderFlags {
            config: Some(config.clone()),
            entry: Some("numpy1993".into()),
            ..OrderFlags::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("pass --classes"), "{e}");
        let e = ask(OrderFlags {
            config: Some(config),
            entry: Some("numpy".into()),
            ..OrderFlags::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("defined: icarl1993, numpy1993"),
            "{e}"
        );
        let OrderAnswer::List(list) = ask(OrderFlags {
            list: true,
            ..OrderFlags::default()
        })
        .unwrap() else {
            panic!("not a list")
        };
        let first = &list[0].name;
        let named = classes(
            ask(OrderFlags {
                name: Some(first.clone()),
                ..OrderFlags::default()
            })
            .unwrap(),
        );
        assert_eq!(named.len(), list[0].classes);
        let e = ask(OrderFlags {
            name: Some(format!("{first}x")),
            ..OrderFlags::default()
        })
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains(&format!("did you mean `{first}`")),
            "{e}"
        );
        let e = ask(OrderFlags::default()).unwrap_err();
        assert!(e.to_string().starts_with("give one of"), "{e}");
    }

    #[test]
    fn dataset_inspect_reads_an_image_folder_and_refuses_what_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        for (split, class) in [
            ("train", "n01"),
            ("train", "n02"),
            ("val", "n01"),
            ("val", "n02"),
        ] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..2 {
                image::RgbImage::from_pixel(8, 6, image::Rgb([i * 90, 20, 30]))
                    .save(d.join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let r = dataset(&root).unwrap();
        assert_eq!(r.format, "image-folder");
        assert_eq!((r.classes, r.train, r.test), (2, 4, 4));
        assert_eq!(r.class_names, ["n01", "n02"]);
        assert_eq!(r.digest.len(), 64);
        // The digest is the tree's content: a changed image changes it.
        image::RgbImage::from_pixel(8, 6, image::Rgb([1, 2, 3]))
            .save(root.join("train/n01/0.png"))
            .unwrap();
        assert_ne!(dataset(&root).unwrap().digest, r.digest);
        let e = dataset(dir.path()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("not a CIFAR-100 archive"), "{e}");
        let e = dataset(&dir.path().join("nothing")).unwrap_err();
        assert!(e.to_string().contains("no such file or directory"), "{e}");
    }
}
