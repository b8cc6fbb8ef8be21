//! The entry of a stage's child process: a job routed to its kind's code
//! through a table per binary ([`PIPE_STAGES`] here, `TORCH_STAGES` in the
//! training crate), both checked against the registry. On the
//! NO_OUTPUT_EFFECT list: routing never changes what a stage computes.

mod order;
mod prepare;
mod tasks;
mod worker;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use bsce_pipeline::catalog::{Runner, StageCatalog, StageKind};
use bsce_pipeline::exec::job::{ChildReporter, StageJob};

use crate::error::Result;

pub use tasks::{read_tasks, TaskPlan};
pub use worker::serve;

include!(concat!(env!("OUT_DIR"), "/code_digests.rs"));

/// A stage kind's entry point in the binary that runs it.
pub type StageFn = fn(&StageJob, &ChildReporter) -> Result<()>;

/// The kinds `bsce-pipe exec-stage` runs (registry runner `pipe`).
pub const PIPE_STAGES: &[(StageKind, StageFn)] = &[
    (StageKind::Prepare, prepare::run),
    (StageKind::Order, order::run),
    (StageKind::Tasks, tasks::run),
];

/// The child side of `exec-stage` for either binary: reads the job, runs
/// its kind from `table`, and reports an error on stderr (the stage log).
/// Exit 0 on success, 1 when the stage failed, 2 for a job this binary
/// cannot run.
pub fn exec_stage(job_path: &Path, runner: Runner, table: &[(StageKind, StageFn)]) -> ExitCode {
    report_panics();
    ExitCode::from(run_job(job_path, runner, table))
}

/// One job, as `exec-stage` and a warm worker run it: its exit status.
/// The panic hook ([`report_panics`]) is the caller's to install, once.
fn run_job(job_path: &Path, runner: Runner, table: &[(StageKind, StageFn)]) -> u8 {
    let job = match StageJob::read(job_path) {
        Ok(j) => j,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: reading job {}: {e}",
                job_path.display()
            );
            return 2;
        }
    };
    let Some((_, run)) = table.iter().find(|(k, _)| *k == job.kind) else {
        let _ = writeln!(
            std::io::stderr(),
            "error: stage kind {} runs in {}, not {}",
            job.kind,
            job.kind.spec().runner.binary(),
            runner.binary()
        );
        return 2;
    };
    let reporter = ChildReporter::default();
    match run(&job, &reporter) {
        Ok(()) => 0,
        Err(e) => {
            // Over the pipe, not the log: on a full disk the log write
            // fails (and eprintln! would panic on it).
            let bad_input = matches!(
                e,
                crate::StageError::InvalidInput { .. }
                    | crate::StageError::ChecksumMismatch { .. }
                    | crate::StageError::InvalidParam { .. }
            );
            reporter.error(&e.to_string(), bad_input, e.is_environment());
            1
        }
    }
}

/// A panic in a stage (libtorch's errors reach Rust as tch panics: a GPU
/// out of memory among them) is sent over the pipe like a stage's error:
/// its headline, not a C++ stack trace or `note: Some details are
/// omitted`, is what the FAILED line shows. The default hook still writes
/// the whole message to the log.
fn report_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let (headline, environment) = panic_headline(&payload);
        ChildReporter::default().error(&headline, false, environment);
        default(info);
    }));
}

/// What a stage's panic message comes down to: its first meaningful line,
/// without libtorch's C++ trace (`Exception raised from ...`), and whether
/// it is the machine's fault (memory), not the inputs'.
fn panic_headline(payload: &str) -> (String, bool) {
    let text = payload
        .split("Exception raised from")
        .next()
        .unwrap_or_default();
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("the stage panicked with no message");
    // tch wraps libtorch's message: `called Result::unwrap() on an Err
    // value: Torch("CUDA out of memory. ...`.
    let line = line
        .split_once("Torch(\"")
        .map(|(_, rest)| rest.strip_suffix("\")").unwrap_or(rest))
        .unwrap_or(line);
    let lower = line.to_ascii_lowercase();
    let environment = lower.contains("out of memory") || lower.contains("not enough memory");
    (format!("panicked: {line}"), environment)
}

#[cfg(test)]
mod panic_tests {
    use super::panic_headline;

    #[test]
    fn a_torch_out_of_memory_panic_is_one_line_and_the_machines_fault() {
        let payload = "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. \
                       Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)\nException \
                       raised from malloc at ../c10/cuda/CUDACachingAllocator.cpp:1073 (most recent \
                       call first):\nframe #0: c10::Error::Error(...)\")";
        let (line, environment) = panic_headline(payload);
        assert_eq!(
            line,
            "panicked: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"
        );
        assert!(environment);
        let (line, environment) =
            panic_headline("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB");
        assert!(line.starts_with("panicked: DefaultCPUAllocator"), "{line}");
        assert!(environment);
    }

    #[test]
    fn any_other_panic_keeps_its_first_line_and_blames_nothing() {
        let (line, environment) = panic_headline("\n  index out of bounds: the len is 3\nmore");
        assert_eq!(line, "panicked: index out of bounds: the len is 3");
        assert!(!environment);
        assert_eq!(
            panic_headline("").0,
            "panicked: the stage panicked with no message"
        );
    }
}

/// The stages crate's answers to the engine's questions.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Test hook (`BSCE_PIPE_CODE_SALT=kind:text,...`, read once at the
    /// binary's edge): mixes text into a kind's code digest, as an edit of
    /// that stage's source would, without rebuilding.
    pub salts: BTreeMap<String, String>,
}

impl StageCatalog for Catalog {
    fn code_digest(&self, kind: StageKind, variant: Option<&str>) -> String {
        let base = code_entry(kind, variant).1;
        match self.salts.get(kind.as_str()) {
            Some(salt) => {
                bsce_pipeline::digest::Digest::of_bytes(format!("{base}\0{salt}").as_bytes())
                    .to_hex()
            }
            None => base.to_string(),
        }
    }

    fn code_files(&self, kind: StageKind, variant: Option<&str>) -> Vec<(String, String)> {
        code_entry(kind, variant)
            .2
            .iter()
            .map(|(f, d)| (f.to_string(), d.to_string()))
            .collect()
    }

    fn libraries(&self, kind: StageKind) -> BTreeMap<String, String> {
        LIBRARIES
            .iter()
            .find(|(k, _)| *k == kind.as_str())
            .map(|(_, libs)| {
                libs.iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn named_order(&self, name: &str) -> Option<usize> {
        crate::order::named_order(name).map(|o| o.classes.len())
    }

    fn named_order_names(&self) -> Vec<String> {
        crate::order::named_order_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

type CodeEntry = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

fn code_entry(kind: StageKind, variant: Option<&str>) -> &'static CodeEntry {
    let name = match variant {
        Some(v) => format!("{kind}:{v}"),
        None => kind.to_string(),
    };
    CODE_DIGESTS
        .iter()
        .find(|(k, ..)| *k == name)
        .unwrap_or_else(|| panic!("build.rs digests every stage kind and variant, not {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_digest() {
        let c = Catalog::default();
        let digests: std::collections::BTreeSet<String> = StageKind::ALL
            .iter()
            .map(|k| c.code_digest(*k, None))
            .collect();
        assert_eq!(digests.len(), StageKind::ALL.len());
    }

    #[test]
    fn code_digests_list_their_files_and_leave_tests_out() {
        let c = Catalog::default();
        let files =
            |k, v| -> Vec<String> { c.code_files(k, v).into_iter().map(|(f, _)| f).collect() };
        let train = files(StageKind::Train, Some("lucir"));
        assert!(
            train.contains(&"train/src/loss/mod.rs".to_string()),
            "{train:?}"
        );
        assert!(
            train.contains(&"train/src/loss/lucir.rs".to_string()),
            "{train:?}"
        );
        assert!(
            !train.contains(&"train/src/loss/podnet.rs".to_string()),
            "{train:?}"
        );
        assert!(
            !train.contains(&"train/src/loss/tests.rs".to_string()),
            "test-only"
        );
        assert!(
            train.contains(&"train/src/stage/mod.rs".to_string()),
            "{train:?}"
        );
        assert!(
            train.contains(&"stages/src/dataset/artefact.rs".to_string()),
            "{train:?}"
        );
        // Derived, not listed: the order spec the order artefact reads.
        assert!(
            train.contains(&"stages/src/order/spec.rs".to_string()),
            "{train:?}"
        );
        let eval = files(StageKind::Evaluate, None);
        assert!(!eval.iter().any(|f| f.contains("loss")), "{eval:?}");
        let prepare = files(StageKind::Prepare, None);
        assert!(prepare.contains(&"stages/src/dataset/cifar/pickle.rs".to_string()));
        assert!(
            !prepare.contains(&"stages/src/dataset/cifar/tests.rs".to_string()),
            "test-only"
        );
        assert!(
            !prepare.contains(&"stages/src/dataset/cifar/fixtures.rs".to_string()),
            "exempt"
        );
    }

    /// The workspace's sources, copied to a scratch folder.
    fn scratch_workspace() -> tempfile::TempDir {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        for root in bsce_pipeline::registry::SOURCE_ROOTS {
            for e in walkdir::WalkDir::new(ws.join(root)) {
                let e = e.unwrap();
                let to = tmp.path().join(e.path().strip_prefix(ws).unwrap());
                if e.file_type().is_dir() {
                    std::fs::create_dir_all(&to).unwrap();
                } else {
                    std::fs::copy(e.path(), &to).unwrap();
                }
            }
            let toml = Path::new(root).parent().unwrap().join("Cargo.toml");
            std::fs::copy(ws.join(&toml), tmp.path().join(&toml)).unwrap();
        }
        tmp
    }

    fn scratch_digests(ws: &Path) -> BTreeMap<String, crate::code_digest::KindCode> {
        let kinds: Vec<crate::code_digest::KindSpec> = bsce_pipeline::registry::code_kinds()
            .into_iter()
            .map(|(name, entries, stop)| crate::code_digest::KindSpec {
                name,
                entries,
                stop,
            })
            .collect();
        let exempt: Vec<&str> = bsce_pipeline::registry::NO_OUTPUT_EFFECT
            .iter()
            .map(|(p, _)| *p)
            .collect();
        crate::code_digest::kind_digests(ws, bsce_pipeline::registry::SOURCE_ROOTS, &kinds, &exempt)
            .unwrap()
    }

    #[test]
    fn the_scratch_copy_digests_as_the_build_did() {
        let ws = scratch_workspace();
        let d = scratch_digests(ws.path());
        let c = Catalog::default();
        assert_eq!(
            d["train:lucir"].digest,
            c.code_digest(StageKind::Train, Some("lucir"))
        );
        assert_eq!(d["prepare"].digest, c.code_digest(StageKind::Prepare, None));
    }

    /// Code moves between the train kind's files without moving its key;
    /// one token edited moves it; a file a covered file starts to `use`
    /// joins the kind's list (what `explain` shows).
    #[test]
    fn a_function_moved_between_train_files_keeps_the_train_digest() {
        let ws = scratch_workspace();
        let before = scratch_digests(ws.path());
        let train = ws.path().join("train/src/stage/train.rs");
        let module = ws.path().join("train/src/stage/mod.rs");
        let text = std::fs::read_to_string(&train).unwrap();
        // The function with its doc comment.
        let mut start = text.find("\nfn kmeans(").expect("train.rs defines kmeans") + 1;
        while let Some(line) = text[..start - 1].rfind('\n').map(|i| i + 1) {
            if !text[line..start].starts_with("///") {
                break;
            }
            start = line;
        }
        let end = start + text[start..].find("\n}\n").unwrap() + 3;
        let kmeans = &text[start..end];
        // Imports go after the module's inner docs.
        let with_use =
            |text: &str, line: &str| text.replacen("\nuse ", &format!("\n{line}\nuse "), 1);
        let moved = with_use(
            &format!("{}{}", &text[..start], &text[end..]),
            "use super::kmeans;",
        );
        std::fs::write(&train, &moved).unwrap();
        let mut m = std::fs::read_to_string(&module).unwrap();
        let public = kmeans.replacen("fn kmeans(", "pub(crate) fn kmeans(", 1);
        m.push_str(&format!("\n{public}"));
        std::fs::write(&module, &m).unwrap();
        let after = scratch_digests(ws.path());
        for v in [
            "train:finetune",
            "train:icarl",
            "train:lucir",
            "train:podnet",
        ] {
            assert_eq!(after[v].digest, before[v].digest, "{v}");
        }
        // One token of the moved function edited.
        let edited = m.replace(&public, &public.replacen("0..", "1..", 1));
        assert_ne!(edited, m, "kmeans has a range to edit");
        std::fs::write(&module, &edited).unwrap();
        let edited = scratch_digests(ws.path());
        assert_ne!(edited["train:lucir"].digest, before["train:lucir"].digest);
        // A new file, used from train.rs.
        assert!(!before["train:lucir"]
            .files
            .contains_key("train/src/scaling.rs"));
        std::fs::write(
            ws.path().join("train/src/scaling.rs"),
            "pub(crate) const SCALE: f64 = 1.0;\n",
        )
        .unwrap();
        let lib = ws.path().join("train/src/lib.rs");
        let l = std::fs::read_to_string(&lib).unwrap();
        std::fs::write(&lib, format!("{l}\npub mod scaling;\n")).unwrap();
        std::fs::write(&train, with_use(&moved, "use crate::scaling::SCALE;")).unwrap();
        let joined = scratch_digests(ws.path());
        assert!(
            joined["train:lucir"]
                .files
                .contains_key("train/src/scaling.rs"),
            "{:?}",
            joined["train:lucir"].files.keys()
        );
    }

    #[test]
    fn salt_changes_one_kind_only() {
        let plain = Catalog::default();
        let salted = Catalog {
            salts: BTreeMap::from([("order".into(), "edit".into())]),
        };
        assert_ne!(
            plain.code_digest(StageKind::Order, None),
            salted.code_digest(StageKind::Order, None)
        );
        assert_eq!(
            plain.code_digest(StageKind::Prepare, None),
            salted.code_digest(StageKind::Prepare, None)
        );
    }

    #[test]
    fn a_train_stage_digests_its_own_method_only() {
        let c = Catalog::default();
        let d = |v| c.code_digest(StageKind::Train, Some(v));
        let all: std::collections::BTreeSet<String> = ["finetune", "icarl", "lucir", "podnet"]
            .into_iter()
            .map(d)
            .collect();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn every_preset_has_a_code_variant() {
        use bsce_pipeline::params::Preset;
        let spec = StageKind::Train.spec();
        for p in [
            Preset::Finetune,
            Preset::Icarl,
            Preset::Lucir,
            Preset::Podnet,
        ] {
            let params = serde_json::json!({"method": {"preset": p}});
            assert!(spec.variant_of(&params).is_some(), "{p:?}");
        }
    }

    #[test]
    fn prepare_records_the_jpeg_decoder_version() {
        let libs = Catalog::default().libraries(StageKind::Prepare);
        assert!(libs.contains_key("image"), "{libs:?}");
    }
}
