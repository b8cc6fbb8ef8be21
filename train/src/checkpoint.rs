//! Model weights as safetensors: every variable of a VarStore, trainable or
//! not (BatchNorm running statistics are part of the model), under its
//! VarStore name.
//!
//! tch's own `VarStore::load` ignores extra tensors in the file and
//! broadcasts a tensor into a larger variable, so a head with a missing task
//! block would load "successfully"; `load` here demands the exact set of
//! names, shapes and dtypes.

use std::collections::BTreeMap;
use std::path::Path;

use bsce_pipeline::store::atomic::{sync_dir, temp_name};
use tch::nn::VarStore;
use tch::Tensor;

use crate::{Result, StageError};

/// How many offending variables an error lists before it counts the rest.
const LISTED: usize = 8;

/// Writes all of `vs`'s variables to `path` atomically (temp file in the same
/// directory, fsync, rename). The bytes depend only on names and values:
/// safetensors sorts the tensors.
pub fn save(vs: &VarStore, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_name(dir, "safetensors");
    let result = (|| {
        let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &tmp).map_err(|e| write_error(&tmp, e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| StageError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| StageError::io(path, e))?;
        sync_dir(dir).map_err(|e| StageError::io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A failed weights write: an I/O failure (a full disk) as the I/O error
/// it is, with the file it hit, not as bad input; anything else as what
/// libtorch said.
fn write_error(tmp: &Path, e: tch::TchError) -> StageError {
    match e {
        tch::TchError::SafeTensorError {
            err: safetensors::SafeTensorError::IoError(io),
            ..
        }
        | tch::TchError::Io(io) => StageError::io(tmp, io),
        e => StageError::Other(format!("{}: cannot write weights: {e}", tmp.display())),
    }
}

/// Copies the weights in `path` into `vs`, which must hold exactly the same
/// variables (names, shapes, dtypes): build the model with the same spec and
/// grow its head to the same blocks first. Nothing is copied unless all match.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<()> {
    std::fs::metadata(path).map_err(|e| StageError::io(path, e))?;
    let stored: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| StageError::invalid(path, format!("not a safetensors file: {e}")))?
        .into_iter()
        .collect();
    let model: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();

    let missing: Vec<&str> = model
        .keys()
        .filter(|k| !stored.contains_key(*k))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = stored
        .keys()
        .filter(|k| !model.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mismatched: Vec<String> = model
        .iter()
        .filter_map(|(name, var)| {
            let src = stored.get(name)?;
            (src.size() != var.size() || src.kind() != var.kind()).then(|| {
                format!(
                    "{name} is {:?} {:?} in the file but {:?} {:?} in the model",
                    src.kind(),
                    src.size(),
                    var.kind(),
                    var.size()
                )
            })
        })
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing from the file: {}", listed(&missing, ", ")));
    }
    if !extra.is_empty() {
        problems.push(format!("not in the model: {}", listed(&extra, ", ")));
    }
    if !mismatched.is_empty() {
        problems.push(listed(&mismatched, "; "));
    }
    if !problems.is_empty() {
        return Err(StageError::invalid(
            path,
            format!(
                "weights do not fit the model (was it built with the same network and head blocks?): {}",
                problems.join("; ")
            ),
        ));
    }
    tch::no_grad(|| {
        for (name, var) in &model {
            var.shallow_clone()
                .f_copy_(&stored[name])
                .map_err(|e| StageError::invalid(path, format!("{name}: {e}")))?;
        }
        Ok(())
    })
}

fn listed<S: AsRef<str>>(items: &[S], separator: &str) -> String {
    let shown: Vec<&str> = items.iter().take(LISTED).map(AsRef::as_ref).collect();
    match items.len() - shown.len() {
        0 => shown.join(separator),
        more => format!("{} and {more} more", shown.join(separator)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{Head, HeadSpec};
    use crate::net::{Backbone, NetSpec};
    use tch::{nn, Device};

    struct Model {
        vs: VarStore,
        backbone: Backbone,
        head: Head,
    }

    fn model(spec: &NetSpec, head: &HeadSpec, blocks: &[i64], seed: i64) -> Model {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let backbone = Backbone::new(&(vs.root() / "backbone"), spec).expect("backbone");
        let p = vs.root() / "head";
        let mut head = Head::new(&p, head, backbone.out_dim()).expect("head");
        for &n in blocks {
            head.add_classes(&p, n, None).expect("grows");
        }
        Model { vs, backbone, head }
    }

    fn eval(m: &Model, x: &Tensor) -> Tensor {
        tch::no_grad(|| m.head.forward(&m.backbone.forward_t(x, false).raw))
    }

    #[test]
    fn saved_weights_reload_bit_identically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        let lsc = HeadSpec::LocalSimilarity {
            proxies: 3,
            scaling: 1.0,
        };
        let spec = NetSpec {
            zero_init_residual: false,
            ..NetSpec::tiny()
        };
        let trained = model(&spec, &lsc, &[4], 5);
        let x = Tensor::randn([3, 3, 32, 32], tch::kind::FLOAT_CPU);
        // A train-mode pass moves the running statistics, which must travel too.
        let _ = tch::no_grad(|| trained.backbone.forward_t(&x, true));
        let mut trained = trained;
        let features = tch::no_grad(|| trained.backbone.forward_t(&x, false).raw);
        let means = features.narrow(0, 0, 2).repeat([3, 1]);
        trained
            .head
            .add_classes(&(trained.vs.root() / "head"), 2, Some(&means))
            .expect("imprints");
        save(&trained.vs, &path).expect("saves");

        let mut fresh = model(&spec, &lsc, &[4, 2], 6);
        assert!(!eval(&fresh, &x).equal(&eval(&trained, &x)));
        load(&mut fresh.vs, &path).expect("loads");
        assert!(eval(&fresh, &x).equal(&eval(&trained, &x)));
        for (name, var) in trained.vs.variables() {
            assert!(var.equal(&fresh.vs.variables()[&name]), "{name}");
        }
        assert!(fresh.vs.variables()["head.block1.weight"].requires_grad());
    }

    #[test]
    fn save_is_deterministic_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = model(&NetSpec::tiny(), &HeadSpec::Cosine, &[2, 3], 7);
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.st"));
        save(&m.vs, &a).expect("saves");
        save(&m.vs, &b).expect("saves");
        save(&m.vs, &b).expect("overwrites");
        assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2);
    }

    #[test]
    fn wrong_models_are_refused_with_the_offending_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        let spec = NetSpec::tiny();
        save(&model(&spec, &HeadSpec::Cosine, &[2, 3], 8).vs, &path).expect("saves");
        let message = |mut m: Model| {
            let before = m.vs.variables()["head.block0.weight"].copy();
            let err = load(&mut m.vs, &path).expect_err("refused").to_string();
            assert!(
                m.vs.variables()["head.block0.weight"].equal(&before),
                "partly loaded"
            );
            assert!(err.contains("model.safetensors"), "{err}");
            err
        };
        let err = message(model(&spec, &HeadSpec::Cosine, &[2], 9));
        assert!(
            err.contains("not in the model: head.block1.weight"),
            "{err}"
        );
        let err = message(model(&spec, &HeadSpec::Cosine, &[2, 3, 1], 9));
        assert!(
            err.contains("missing from the file: head.block2.weight"),
            "{err}"
        );
        let err = message(model(&spec, &HeadSpec::Cosine, &[2, 4], 9));
        assert!(
            err.contains("head.block1.weight is Float [3, 16] in the file but Float [4, 16]"),
            "{err}"
        );
        let wide = NetSpec {
            width: 8,
            ..spec.clone()
        };
        let err = message(model(&wide, &HeadSpec::Cosine, &[2, 3], 9));
        let conv = "backbone.stage1.block0.a.conv.weight is Float [4, 4, 3, 3] in the file";
        assert!(err.contains(conv), "{err}");
        assert!(err.contains("more"), "{err}");
        let err = message(model(&spec, &HeadSpec::Linear, &[2, 3], 9));
        assert!(
            err.contains("head.block0.bias") && err.contains("head.sigma"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_files_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _ = vs.root().zeros("w", &[1]);
        let absent = dir.path().join("absent.safetensors");
        let err = load(&mut vs, &absent).expect_err("refused").to_string();
        assert!(err.contains("absent.safetensors"), "{err}");
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not weights").expect("writes");
        let err = load(&mut vs, &junk).expect_err("refused").to_string();
        assert!(
            err.contains("junk.safetensors") && err.contains("not a safetensors file"),
            "{err}"
        );
    }
}
