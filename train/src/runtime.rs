//! The libtorch runtime: device choice, threads, determinism, and the
//! facts `bsce-pipe doctor` and provenance report.

use serde_json::{json, Value};
use tch::{Cuda, Device};

use crate::{Result, StageError};

/// Parses a scheduler device string (`cpu`, `cuda:N`).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    StageError::param("device", format!("{s:?} is not cpu or cuda:N"))
                })?;
            if !Cuda::is_available() {
                return Err(StageError::param(
                    "device",
                    format!("{s} was assigned but CUDA is not available to libtorch (run `bsce-pipe doctor`)"),
                ));
            }
            if n as i64 >= Cuda::device_count() {
                return Err(StageError::param(
                    "device",
                    format!(
                        "{s} was assigned but libtorch sees {} GPU(s)",
                        Cuda::device_count()
                    ),
                ));
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// Configures libtorch for one stage process and returns what was set, for
/// provenance. cuDNN benchmark is on unless `deterministic` is asked for.
/// tch 0.26 exposes no switch for `torch.use_deterministic_algorithms`, so
/// deterministic mode means: benchmark off, seeded generators, and cuBLAS's
/// fixed workspace; the flags are recorded with the result.
pub fn configure(device: Device, deterministic: bool, seed: u64) -> Value {
    if deterministic {
        // Must be set before the first cuBLAS call; the stage process is
        // still single-threaded here.
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    tch::manual_seed(seed as i64);
    if let Some(n) = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        tch::set_num_threads(n.max(1));
    }
    if device.is_cuda() {
        Cuda::manual_seed_all(seed);
        Cuda::cudnn_set_benchmark(!deterministic);
    }
    json!({
        "device": format!("{device:?}"),
        "deterministic": deterministic,
        "cudnn_benchmark": device.is_cuda() && !deterministic,
        "threads": tch::get_num_threads(),
        "libtorch": bsce_stages::stage::LIBTORCH_VERSION,
    })
}

/// What `bsce-pipe doctor` prints.
pub fn doctor() -> Value {
    let cuda = Cuda::is_available();
    json!({
        "libtorch": bsce_stages::stage::LIBTORCH_VERSION,
        "cuda_available": cuda,
        "cuda_built": tch::utils::has_cuda(),
        "gpus": Cuda::device_count(),
        "cudnn_available": Cuda::cudnn_is_available(),
        "cudnn_version": if cuda { tch::utils::version_cudnn() } else { 0 },
        "cudart_version": if cuda { tch::utils::version_cudart() } else { 0 },
        "cuda_visible_devices": std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        "threads": tch::get_num_threads(),
        "interop_threads": tch::get_num_interop_threads(),
        "mkl": tch::utils::has_mkl(),
        "openmp": tch::utils::has_openmp(),
    })
}
