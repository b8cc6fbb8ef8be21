//! `bsce-torch`: the half of bsce-pipe that links libtorch. The scheduler
//! runs the training and evaluation stages with it, and `bsce-pipe doctor`
//! asks it about the node. It is a separate binary because loading libtorch
//! (with CUDA, about 1 GB of shared libraries) costs ~0.4 s per process:
//! `bsce-pipe` itself and the data stages start in milliseconds.
//!
//! Usage (internal): `bsce-torch doctor [--json]`, `bsce-torch exec-stage JOB`,
//! `bsce-torch worker` (a warm worker: jobs on stdin, one per line),
//! `bsce-torch bench-train BATCH ITERS [--net resnet32|resnet18] [--device cpu|cuda:N] [--warmup N]`,
//! `bsce-torch bench-loader BATCH ITERS [--net resnet32|resnet18] [--device cpu|cuda:N] [--warmup N]`,
//! `bsce-torch calibrate NETWORK SIDE [--device cpu|cuda:N] [--batch N] [--seconds S]`
//! (images/s of a training step and a forward pass, for `bsce-pipe calibrate`),
//! `bsce-torch probe SPEC.json OUT_DIR` (one training step written out for
//! the parity tests, `train/src/probe.rs`),
//! `bsce-torch crops DATASET_DIR SPEC.json OUT_DIR` (what the network sees:
//! batches of the data path written out, `train/src/crops.rs`).
//! The benchmarks default to `resnet32` on `cuda:0` when libtorch sees a
//! GPU, else on the CPU, with 3 warm-up iterations.
//!
//! The doctor is here rather than in `runtime.rs` because that file is part
//! of the train and evaluate stages' code digest: a change there would
//! rerun every stored training result.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bsce_pipeline::catalog::Runner;
use bsce_train::bench::BenchNet;
use serde_json::{json, Value};
use tch::Cuda;

const USAGE: &str = "usage: bsce-torch doctor [--json] | exec-stage JOB | worker (started by bsce-pipe)\n       \
     bsce-torch bench-train|bench-loader BATCH ITERS [--net resnet32|resnet18] [--device cpu|cuda:N] [--warmup N]\n       \
     bsce-torch calibrate NETWORK SIDE [--device cpu|cuda:N] [--batch N] [--seconds S]\n       \
     bsce-torch probe SPEC.json OUT_DIR (one training step written out; see tests/parity/README.md)\n       \
     bsce-torch crops DATASET_DIR SPEC.json OUT_DIR (the data path's batches written out; see train/src/crops.rs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["doctor", rest @ ..] => {
            let d = doctor();
            if rest.contains(&"--json") {
                println!("{}", serde_json::to_string_pretty(&d).expect("serialises"));
            } else if let Some(map) = d.as_object() {
                for (k, v) in map {
                    match v.as_object() {
                        Some(inner) => {
                            for (ik, iv) in inner {
                                println!("{:<22} {iv}", format!("{k}.{ik}"));
                            }
                        }
                        None => println!("{k:<22} {v}"),
                    }
                }
            }
            ExitCode::SUCCESS
        }
        [cmd @ ("bench-train" | "bench-loader"), batch, iters, opts @ ..] => {
            match bench(cmd, batch, iters, opts) {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(if e.starts_with("usage") { 2 } else { 1 })
                }
            }
        }
        ["calibrate", network, side, opts @ ..] => match calibrate(network, side, opts) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(if e.starts_with("usage") { 2 } else { 1 })
            }
        },
        ["probe", spec, out] => match bsce_train::probe::run(Path::new(spec), Path::new(out)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        ["crops", dataset, spec, out] => {
            match bsce_train::crops::run(Path::new(dataset), Path::new(spec), Path::new(out)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ["exec-stage", job] => {
            bsce_pipeline::exec::job::die_with_parent();
            bsce_stages::stage::exec_stage(
                Path::new(job),
                Runner::Torch,
                bsce_train::router::TORCH_STAGES,
            )
        }
        // A warm worker: stage after stage, each with autograd on as in a
        // fresh process (stages/src/stage/worker.rs).
        ["worker"] => {
            bsce_pipeline::exec::job::die_with_parent();
            bsce_stages::stage::serve(Runner::Torch, bsce_train::router::TORCH_STAGES, |stage| {
                tch::with_grad(stage)
            })
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `bench-train` / `bench-loader` with their options.
fn bench(cmd: &str, batch: &str, iters: &str, opts: &[&str]) -> Result<Value, String> {
    let count = |what: &str, s: &str| {
        s.parse::<usize>()
            .ok()
            .filter(|&n| n > 0 || what == "--warmup")
            .ok_or_else(|| format!("usage: {what} must be a positive count, not {s:?}\n{USAGE}"))
    };
    let (batch, iters) = (count("BATCH", batch)?, count("ITERS", iters)?);
    let mut net = BenchNet::Resnet32;
    let mut device = None;
    let mut warmup = 3;
    let mut rest = opts.iter();
    while let Some(&flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| format!("usage: {flag} needs a value\n{USAGE}"))?;
        match flag {
            "--net" => net = BenchNet::parse(value).map_err(|e| format!("usage: {e}"))?,
            "--device" => {
                device = Some(
                    bsce_train::runtime::parse_device(value).map_err(|e| format!("usage: {e}"))?,
                )
            }
            "--warmup" => warmup = count("--warmup", value)?,
            _ => return Err(format!("usage: unknown option {flag}\n{USAGE}")),
        }
    }
    let device = device.unwrap_or_else(|| {
        if Cuda::is_available() {
            tch::Device::Cuda(0)
        } else {
            tch::Device::Cpu
        }
    });
    if cmd == "bench-train" {
        bsce_train::bench::train_step(net, batch as i64, iters, warmup, device)
    } else {
        bsce_train::bench::loader(net, batch, iters, warmup, device)
    }
    .map_err(|e| e.to_string())
}

/// `calibrate NETWORK SIDE` with its options: a network as configs name it,
/// the side of its square inputs.
fn calibrate(network: &str, side: &str, opts: &[&str]) -> Result<Value, String> {
    let network: bsce_pipeline::params::Network =
        serde_json::from_value(Value::String(network.into())).map_err(|_| {
            format!(
                "usage: NETWORK {network:?} is not resnet32, resnet32_lucir, resnet18, \
                 resnet18_podnet, small or tiny\n{USAGE}"
            )
        })?;
    let positive = |what: &str, s: &str| {
        s.parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("usage: {what} must be a positive count, not {s:?}\n{USAGE}"))
    };
    let side = positive("SIDE", side)?;
    let mut device = tch::Device::Cpu;
    let mut batch = None;
    let mut seconds = 4.0;
    let mut rest = opts.iter();
    while let Some(&flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| format!("usage: {flag} needs a value\n{USAGE}"))?;
        match flag {
            "--device" => {
                device =
                    bsce_train::runtime::parse_device(value).map_err(|e| format!("usage: {e}"))?
            }
            "--batch" => batch = Some(positive("--batch", value)?),
            "--seconds" => {
                seconds = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        format!("usage: --seconds must be a number of seconds, not {value:?}")
                    })?
            }
            _ => return Err(format!("usage: unknown option {flag}\n{USAGE}")),
        }
    }
    // A GPU is measured at the recipes' batch (128; PODNet's ImageNet 64);
    // a CPU's rate moves less with it, and a smaller one keeps a CPU
    // ResNet-18 step to seconds.
    let batch = batch.unwrap_or(if device.is_cuda() { 128 } else { 32 });
    let mut v =
        bsce_train::bench::calibrate(network, i64::from(side), i64::from(batch), seconds, device)
            .map_err(|e| e.to_string())?;
    v["device_class"] = Value::String(device_class(device));
    Ok(v)
}

/// What a calibration is kept under: `cpu`, or the GPU's model name as the
/// NVIDIA driver gives it (`/proc/driver/nvidia/gpus/*/information`), the
/// device index counted in PCI bus order over `CUDA_VISIBLE_DEVICES` when
/// it lists indices (set `CUDA_DEVICE_ORDER=PCI_BUS_ID` on a node with
/// mixed GPUs, so CUDA counts them the same way); `cuda` when the driver
/// does not say.
fn device_class(device: tch::Device) -> String {
    let tch::Device::Cuda(n) = device else {
        return "cpu".into();
    };
    let mut gpus: Vec<(String, String)> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path().join("information")).ok()?;
            let model = info
                .lines()
                .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))?;
            Some((e.file_name().to_string_lossy().into_owned(), model))
        })
        .collect();
    gpus.sort();
    let visible: Option<Vec<usize>> = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|v| v.split(',').map(|i| i.trim().parse().ok()).collect());
    let index = visible.map_or(Some(n), |v| v.get(n).copied());
    index
        .and_then(|i| gpus.get(i))
        .map(|(_, model)| model.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "cuda".into())
}

/// What `bsce-torch doctor` (and `bsce-pipe doctor`) prints:
/// `runtime::doctor()`'s facts, plus what this build contains (`build`)
/// told apart from what this machine offers (`machine`). `cuda_built`,
/// `cudart_version` and `cudnn_version` are the build's facts: libtorch's own `hasCUDA` (`tch::utils::has_cuda`)
/// asks for a device, so it is false for a CUDA build on a machine without
/// a GPU driver (a login node).
fn doctor() -> Value {
    let mut d = bsce_train::runtime::doctor();
    let build = build_facts();
    let machine = machine_facts();
    d["summary"] = Value::String(summary(&build, &machine));
    d["cuda_built"] = build["cuda"].clone();
    if build["cuda"] == true {
        // Compile-time constants of libtorch_cuda: known without a device.
        d["cudart_version"] = json!(quietly(tch::utils::version_cudart).unwrap_or(0));
        d["cudnn_version"] = json!(quietly(tch::utils::version_cudnn).unwrap_or(0));
    }
    d["build"] = build;
    d["machine"] = machine;
    d
}

/// Runs a libtorch query that throws (tch panics) where the build lacks
/// the feature, without printing the panic.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f).ok();
    std::panic::set_hook(hook);
    r
}

/// The shared library of this process whose file name starts with `name`
/// (from /proc/self/maps).
fn loaded_library(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(name))
        })
}

/// The version string of the libtorch distribution `lib_dir` belongs to:
/// a PyTorch wheel's `torch/version.py` (`2.13.0+cu130`), or a libtorch
/// archive's `build-version`.
fn distribution_version(lib_dir: &Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        let (_, v) = line.split_once('=')?;
        return Some(v.trim().trim_matches(['\'', '"']).to_string());
    }
    std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// What this build contains, whatever the machine: libtorch_cuda is in
/// the process (train/build.rs keeps it linked), and the CUDA runtime and
/// cuDNN versions it was compiled against (compile-time constants of
/// libtorch_cuda, answered without a device).
fn build_facts() -> Value {
    let cpu = loaded_library("libtorch_cpu.so");
    let cuda_lib = loaded_library("libtorch_cuda.so");
    let cuda = cuda_lib.is_some() && quietly(tch::utils::has_cudart).unwrap_or(false);
    let dotted = |v: i64, parts: &[i64]| -> String {
        // CUDART_VERSION is major*1000 + minor*10; CUDNN_VERSION (9.x)
        // major*10000 + minor*100 + patch.
        let mut out = Vec::new();
        let mut rest = v;
        for &p in parts {
            out.push((rest / p).to_string());
            rest %= p;
        }
        out.join(".")
    };
    let cudart = cuda
        .then(|| quietly(tch::utils::version_cudart))
        .flatten()
        .filter(|&v| v > 0);
    let cudnn = cuda
        .then(|| quietly(tch::utils::version_cudnn))
        .flatten()
        .filter(|&v| v > 0);
    let lib_dir = cpu.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    json!({
        "libtorch": bsce_stages::stage::LIBTORCH_VERSION,
        "torch_distribution": lib_dir.as_deref().and_then(distribution_version),
        "libtorch_dir": lib_dir,
        "cuda": cuda,
        "libtorch_cuda": cuda_lib,
        "cuda_version": cudart.map(|v| dotted(v, &[1000, 10])),
        "cudnn_version": cudnn.map(|v| dotted(v, &[10000, 100, 1])),
    })
}

/// What this machine offers: an NVIDIA driver (/proc/driver/nvidia), the
/// GPUs it drives, and what libtorch can use of them.
fn machine_facts() -> Value {
    let driver = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let v = line
                .split_once("Kernel Module")
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string));
            Some(v.unwrap_or(line))
        });
    let mut installed: Vec<(String, String)> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let model = std::fs::read_to_string(e.path().join("information"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
                })
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), model)
        })
        .collect();
    installed.sort();
    let available = Cuda::is_available();
    json!({
        "nvidia_driver": driver,
        "installed_gpus": installed.iter().map(|(bus, model)| json!({"bus": bus, "model": model})).collect::<Vec<_>>(),
        "cuda_available": available,
        "devices": Cuda::device_count(),
        "cudnn_available": Cuda::cudnn_is_available(),
        "cuda_visible_devices": std::env::var("CUDA_VISIBLE_DEVICES").ok(),
    })
}

/// One line: what this build can do on this machine.
fn summary(build: &Value, machine: &Value) -> String {
    let cuda = build["cuda"].as_bool().unwrap_or(false);
    let version = build["cuda_version"].as_str().unwrap_or("?");
    let devices = machine["devices"].as_i64().unwrap_or(0);
    let driver = machine["nvidia_driver"].as_str();
    match (cuda, devices > 0, driver) {
        (true, true, _) => {
            format!("CUDA {version} build; {devices} GPU(s) usable here (run with --gpus)")
        }
        (true, false, None) => format!(
            "CUDA {version} build; this machine has no NVIDIA driver, so stages run on the CPU here"
        ),
        (true, false, Some(d)) => format!(
            "CUDA {version} build and NVIDIA driver {d}, but libtorch sees no GPU \
             (CUDA_VISIBLE_DEVICES, or a driver too old for CUDA {version}?)"
        ),
        (false, _, _) => "CPU-only libtorch build: stages run on the CPU \
                          (a GPU needs the CUDA wheel scripts/setup.sh installs)"
            .to_string(),
    }
}
