//! Class-incremental training and evaluation on libtorch (tch). Only the
//! `bsce-torch` binary links this crate, so `bsce-pipe` and the data stages
//! start without loading libtorch.
//!
//! | module         | what it holds                                               |
//! |----------------|-------------------------------------------------------------|
//! | [`bench`]      | the training-step and loader measurements of bench/run.sh and scripts/gpu-check.sh |
//! | [`router`]     | the kinds `bsce-torch exec-stage` runs                        |
//! | [`runtime`]    | device choice, threads, determinism, `doctor` facts          |
//! | [`net`]        | ResNet-32 (CIFAR) and ResNet-18 (ImageNet) backbones         |
//! | [`classifier`] | growing linear, cosine (LUCIR) and local-similarity (PODNet) heads |
//! | [`checkpoint`] | model weights as safetensors                                  |
//! | [`loss`]       | CE, BSCE, distillation, LUCIR's and PODNet's losses          |
//! | [`memory`]     | herding / random exemplar selection, NME class means         |
//! | [`data`]       | batches from the u8 dataset: crops on the CPU, augmented on the training device |
//! | [`crops`]      | `bsce-torch crops`: the data path's batches written out       |
//! | [`probe`]      | `bsce-torch probe`: one train-stage step written out for `tests/parity/` |
//! | [`method`]     | stage params (typed in `bsce_pipeline::params`), recipes' lr schedules, each preset's choices |
//! | [`stage`]      | the `train` and `evaluate` stages (run by `bsce-torch`), the class-balanced fine-tuning and the steps both phases share |
//!
//! The formulas follow ../shared/reference/method-formulas.md; where a
//! reference's code and paper differ, the code's behaviour is the default.

pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod crops;
pub mod data;
pub mod loss;
pub mod memory;
pub mod method;
pub mod net;
pub mod probe;
pub mod router;
pub mod runtime;
pub mod stage;

pub use bsce_stages::error::{Result, StageError};
