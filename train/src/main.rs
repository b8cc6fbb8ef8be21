//! `bsce-torch`: the half of bsce-pipe that links libtorch. The scheduler
//! runs the training and evaluation stages with it, and `bsce-pipe doctor`
//! asks it about the node. It is a separate binary because loading libtorch
//! (with CUDA, about 1 GB of shared libraries) costs ~0.4 s per process:
//! `bsce-pipe` itself and the data stages start in milliseconds.
//!
//! Usage (internal): `bsce-torch doctor [--json]`, `bsce-torch exec-stage JOB`,
//! `bsce-torch bench-train BATCH ITERS`, `bsce-torch bench-loader BATCH ITERS`.

use std::path::Path;
use std::process::ExitCode;

use bsce_pipeline::catalog::Runner;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["doctor", rest @ ..] => {
            let d = bsce_train::runtime::doctor();
            if rest.contains(&"--json") {
                println!("{}", serde_json::to_string_pretty(&d).expect("serialises"));
            } else if let Some(map) = d.as_object() {
                for (k, v) in map {
                    println!("{k:<22} {v}");
                }
            }
            ExitCode::SUCCESS
        }
        ["bench-train", batch, iters] | ["bench-loader", batch, iters] => {
            let parse = |s: &str| s.parse::<usize>().unwrap_or(0);
            let device = if tch::Cuda::is_available() {
                tch::Device::Cuda(0)
            } else {
                tch::Device::Cpu
            };
            let result = if args[0] == "bench-train" {
                bsce_train::bench::train_step(parse(batch) as i64, parse(iters), 3, device)
            } else {
                bsce_train::bench::loader(parse(iters), device)
            };
            match result {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        ["exec-stage", job] => bsce_stages::stage::exec_stage(
            Path::new(job),
            Runner::Torch,
            bsce_train::router::TORCH_STAGES,
        ),
        _ => {
            eprintln!("usage: bsce-torch doctor [--json] | exec-stage JOB (started by bsce-pipe)");
            ExitCode::from(2)
        }
    }
}
