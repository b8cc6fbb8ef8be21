//! One error type for every command, and the exit-code table.
//!
//! [`Exit`] is the README's table ("Exit codes: ..."), one row per
//! variant; [`Error::exit`] says which row an error is. Errors are
//! classified once, where they enter this type (`From`), not by
//! downcasting at the end.

use std::fmt;

use bsce_pipeline::config::ConfigError;
use bsce_pipeline::events::RunSummary;
use bsce_pipeline::exec::node::NodeResult;
use bsce_pipeline::exec::EngineError;
use bsce_pipeline::sources::SourceError;
use bsce_pipeline::store::StoreError;
use bsce_reports::report::ReportSummary;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a command ends, as its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Success,
    /// 1: a stage failed, or another error outside the store (a report
    /// folder that cannot be written, an internal error).
    Failed,
    /// 2: bad input: config, flags, sources, and stages that failed only
    /// on their input.
    BadInput,
    /// 3: a store problem: corrupt blobs or records found, the store
    /// locked by a gc, an I/O error inside it.
    Store,
    /// 130: interrupted (SIGINT, SIGTERM, SIGHUP).
    Interrupted,
    /// 141: the reader of stdout went away (`status CONFIG | head -1`).
    StdoutClosed,
}

impl Exit {
    /// Every row, in the README's order.
    pub const ALL: [Exit; 6] = [
        Exit::Success,
        Exit::Failed,
        Exit::BadInput,
        Exit::Store,
        Exit::Interrupted,
        Exit::StdoutClosed,
    ];

    /// The table.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::BadInput => 2,
            Exit::Store => 3,
            Exit::Interrupted => 130,
            Exit::StdoutClosed => 141,
        }
    }

    /// A run's end: interrupted first; failures that were all the input's
    /// own (an archive that is not CIFAR-100) are bad input.
    pub fn of_run(s: &RunSummary) -> Exit {
        if s.interrupted {
            Exit::Interrupted
        } else if s.failed > 0 && s.failed_on_input == s.failed {
            Exit::BadInput
        } else if s.failed > 0 {
            Exit::Failed
        } else {
            Exit::Success
        }
    }

    /// A Slurm job's end, which its `afterok` dependants wait on: 0 done
    /// or cached, 2 the input at fault, 130 interrupted, 1 otherwise.
    pub fn of_node(r: &NodeResult) -> Exit {
        match r {
            NodeResult::Executed { .. } | NodeResult::Cached { .. } => Exit::Success,
            NodeResult::Failed {
                bad_input: true, ..
            } => Exit::BadInput,
            NodeResult::Failed { .. } | NodeResult::Skipped { .. } => Exit::Failed,
            NodeResult::Interrupted => Exit::Interrupted,
        }
    }

    /// A report's end: a result stage that failed on a template error is
    /// the config's input (2, as in `run`); any other failure is 1.
    pub fn of_report(r: &ReportSummary) -> Exit {
        if r.failed.is_empty() {
            Exit::Success
        } else if r.failed_on_input {
            Exit::BadInput
        } else {
            Exit::Failed
        }
    }

    /// `doctor`'s end: `bsce-torch doctor` failing (libtorch that does not
    /// load, a broken CUDA) is an error outside the store.
    pub fn of_doctor(torch_succeeded: bool) -> Exit {
        Exit::unless(torch_succeeded, Exit::Failed)
    }

    /// `Success` when `ok`, else `otherwise`.
    pub fn unless(ok: bool, otherwise: Exit) -> Exit {
        if ok {
            Exit::Success
        } else {
            otherwise
        }
    }
}

/// What went wrong in a command.
#[derive(Debug)]
pub enum Error {
    /// The user's input (flags, paths, sources, labels): exit 2.
    BadInput(String),
    /// The config file, with file, line and key: exit 2.
    Config(ConfigError),
    /// The store is held by another process (a gc, a run): exit 3.
    StoreBusy(String),
    /// Anything that failed inside the store: exit 3.
    Store(anyhow::Error),
    /// Everything else: exit 1.
    Other(anyhow::Error),
}

impl Error {
    pub fn bad_input(message: impl Into<String>) -> Error {
        Error::BadInput(message.into())
    }

    /// The row of the exit-code table this error is.
    pub fn exit(&self) -> Exit {
        match self {
            Error::BadInput(_) | Error::Config(_) => Exit::BadInput,
            Error::StoreBusy(_) | Error::Store(_) => Exit::Store,
            Error::Other(_) => Exit::Failed,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.exit().code()
    }

    /// Sorts an error from the engine or a library: a config error and a
    /// missing or bad source are input, a store error anywhere in the
    /// chain is the store's, the rest is 1.
    fn classify(e: anyhow::Error) -> Error {
        let e = match e.downcast::<ConfigError>() {
            Ok(c) => return Error::Config(c),
            Err(e) => e,
        };
        let source = matches!(
            e.downcast_ref::<EngineError>(),
            Some(EngineError::Source(_))
        ) || e.downcast_ref::<SourceError>().is_some();
        if source {
            return Error::BadInput(e.to_string());
        }
        let store = e.chain().any(|c| {
            c.downcast_ref::<StoreError>().is_some()
                || matches!(c.downcast_ref::<EngineError>(), Some(EngineError::Store(_)))
        });
        if store {
            Error::Store(e)
        } else {
            Error::Other(e)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadInput(m) | Error::StoreBusy(m) => f.write_str(m),
            Error::Config(c) => write!(f, "{c}"),
            Error::Store(e) | Error::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::classify(e)
    }
}

/// The library errors commands meet, each classified as it arrives.
macro_rules! classified {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::classify(anyhow::Error::new(e))
            }
        }
    )*};
}
classified!(
    ConfigError,
    EngineError,
    SourceError,
    StoreError,
    bsce_pipeline::exec::slurm::SlurmError,
    std::io::Error,
    serde_json::Error
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's sentence, row by row.
    const README: &str = include_str!("../README.md");

    fn readme_codes() -> String {
        let at = README
            .find("Exit codes:")
            .expect("README has the exit-code table");
        README[at..]
            .split("\n\n")
            .next()
            .unwrap()
            .replace('\n', " ")
    }

    #[test]
    fn exit_0_is_success() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::of_run(&RunSummary::default()), Exit::Success);
        assert_eq!(Exit::of_report(&ReportSummary::default()), Exit::Success);
        assert_eq!(Exit::of_doctor(true), Exit::Success);
        assert!(readme_codes().contains("0 success"));
    }

    #[test]
    fn exit_1_is_a_failed_stage_or_an_error_outside_the_store() {
        let s = RunSummary {
            failed: 2,
            failed_on_input: 1,
            ..RunSummary::default()
        };
        assert_eq!(Exit::of_run(&s), Exit::Failed);
        let report = ReportSummary {
            failed: [("plot/quickstart/b4_s3".into(), "no such column".into())].into(),
            ..ReportSummary::default()
        };
        assert_eq!(Exit::of_report(&report), Exit::Failed);
        assert_eq!(Exit::of_doctor(false), Exit::Failed);
        let e = Error::from(anyhow::anyhow!("report folder cannot be written"));
        assert_eq!(e.exit_code(), 1);
        assert!(readme_codes().contains("1 a stage failed"));
    }

    #[test]
    fn exit_2_is_bad_input_config_flags_sources_and_input_failures() {
        assert_eq!(Error::bad_input("--jobs must be at least 1").exit_code(), 2);
        let c = ConfigError {
            file: "c.yaml".into(),
            position: None,
            path: "experiments".into(),
            message: "missing".into(),
        };
        assert_eq!(Error::from(c).exit_code(), 2);
        let source = EngineError::Source(SourceError::Io {
            path: "/nowhere".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(Error::from(source).exit_code(), 2);
        let s = RunSummary {
            failed: 1,
            failed_on_input: 1,
            ..RunSummary::default()
        };
        assert_eq!(Exit::of_run(&s).code(), 2);
        let report = ReportSummary {
            failed: [(
                "render/quickstart".into(),
                "the template uses `nosuch`".into(),
            )]
            .into(),
            failed_on_input: true,
            ..ReportSummary::default()
        };
        assert_eq!(Exit::of_report(&report), Exit::BadInput);
        assert!(readme_codes().contains("2 bad input"));
    }

    #[test]
    fn exit_3_is_the_store_busy_or_broken_anywhere_in_the_chain() {
        assert_eq!(Error::StoreBusy("in use".into()).exit_code(), 3);
        let io = std::io::Error::other("disk");
        let store = anyhow::Error::new(StoreError::Io {
            path: "/s".into(),
            source: io,
        })
        .context("writing a blob");
        assert_eq!(Error::from(store).exit_code(), 3);
        let engine = EngineError::Store(StoreError::BadRecord {
            path: "/s/ac/x".into(),
            message: "not JSON".into(),
        });
        assert_eq!(Error::from(engine).exit_code(), 3);
        assert!(readme_codes().contains("3 store problem"));
    }

    #[test]
    fn exit_130_is_an_interrupted_run() {
        let s = RunSummary {
            interrupted: true,
            failed: 1,
            ..RunSummary::default()
        };
        assert_eq!(Exit::of_run(&s).code(), 130);
        assert!(readme_codes().contains("130 interrupted"));
    }

    #[test]
    fn exit_141_is_a_reader_of_stdout_gone() {
        assert_eq!(Exit::StdoutClosed.code(), 141);
        assert!(readme_codes().contains("141 the reader of stdout went away"));
    }

    #[test]
    fn every_row_of_the_table_is_in_the_readme_once() {
        let text = readme_codes();
        for e in Exit::ALL {
            let n = format!(" {} ", e.code());
            assert_eq!(
                text.matches(&n).count(),
                1,
                "exit code {} in the README's table: {text}",
                e.code()
            );
        }
    }
}
