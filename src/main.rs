//! `bsce-pipe`: the command line. Parses arguments, reads the process
//! environment once ([`Ambient::read`]), calls one function of
//! `bsce_pipe::ops` per command, and prints what it returns (`cli::print`,
//! `cli::reporter`). The exit status is `bsce_pipe::Exit`, the README's
//! table: 0 success; 1 a stage failed; 2 bad input (config, flags,
//! sources); 3 store problem; 130 interrupted; 141 stdout closed.

/// Stdout for everything a command prints, in place of `println!`: a closed
/// reader (`bsce-pipe status CONFIG | head -1`) turns further output off
/// instead of panicking, and `main` then exits 141. Closed stderr is
/// ignored everywhere (progress is best-effort), which is why SIGPIPE is
/// not simply restored: a signal cannot tell the two apart.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out_fmt(format_args!($($arg)*), true)
    };
}
macro_rules! out_raw {
    ($($arg:tt)*) => {
        $crate::out_fmt(format_args!($($arg)*), false)
    };
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// A write to stdout that failed for another reason than a closed reader
/// (a full disk under `results > file`): said on stderr, exit 1.
static STDOUT_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn out_fmt(args: std::fmt::Arguments, newline: bool) {
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    let r = if newline {
        writeln!(o, "{args}")
    } else {
        write!(o, "{args}")
    }
    .and_then(|()| o.flush());
    if let Err(e) = r {
        // The output is gone either way; the command still finishes (locks,
        // temp dirs) cleanly. A closed reader is the conventional 141; any
        // other failure (ENOSPC) is an error to say.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_FAILED.set(e.to_string());
        }
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

mod cli;

/// mimalloc: a no-op run of 100,000 stages spends a third of its time in
/// the system allocator (bench/scale.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write as _;
use std::process::ExitCode;

use bsce_pipe::ops::{self, cache, run, status, store, Ctx};
use bsce_pipe::{Ambient, Error, Exit, Result};
use bsce_pipeline::catalog::Runner;
use bsce_pipeline::exec::RunOptions;
use clap::Parser;
use cli::args::{CacheCommand, Cli, Command, DagFormat, DatasetCommand, ExecutorArg, StoreArgs};
use cli::{print, reporter::TerminalReporter};

impl From<&StoreArgs> for store::StoreArgs {
    fn from(a: &StoreArgs) -> store::StoreArgs {
        store::StoreArgs {
            store: a.store.clone(),
            remote: a.remote.clone(),
            remote_read_only: a.remote_read_only,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ExecStage { job } = &cli.command {
        // The child side of a stage, started once per stage: its exit
        // status and its log (stderr) are the stage's own.
        bsce_pipeline::exec::job::die_with_parent();
        let table: Vec<_> = bsce_stages::stage::PIPE_STAGES
            .iter()
            .chain(bsce_reports::RESULT_STAGES)
            .copied()
            .collect();
        return bsce_stages::stage::exec_stage(job, Runner::Pipe, &table);
    }
    let ctx = Ctx::new(Ambient::read(), |line| {
        let _ = writeln!(std::io::stderr(), "{line}");
    });
    let exit = match dispatch(cli, &ctx) {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit()
        }
    };
    if let Some(e) = STDOUT_FAILED.get() {
        eprintln!("error: writing to stdout: {e}");
        return ExitCode::from(Exit::Failed.code());
    }
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        // The reader went away (`| head`): the conventional status of a
        // writer killed by SIGPIPE, after every destructor has run.
        return ExitCode::from(Exit::StdoutClosed.code());
    }
    ExitCode::from(exit.code())
}

fn json(v: &impl serde::Serialize) -> Result<()> {
    // Through a Value: keys sorted, as every --json output has them.
    out!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(v)?)?
    );
    Ok(())
}

fn dispatch(cli: Cli, ctx: &Ctx) -> Result<Exit> {
    match cli.command {
        Command::Run {
            config,
            store,
            jobs,
            gpus,
            stages_per_gpu,
            keep_going,
            verbose,
            dry_run,
            force,
            json: as_json,
            executor,
            detach,
            cold,
        } => {
            let args = run::RunArgs {
                store: (&store).into(),
                jobs,
                gpus,
                stages_per_gpu,
                keep_going,
                force,
                executor: executor.map(|e| match e {
                    ExecutorArg::Local => run::ExecutorChoice::Local,
                    ExecutorArg::Slurm => run::ExecutorChoice::Slurm,
                }),
                detach,
                cold,
            };
            if dry_run {
                let loaded = store::load(&config, &args.store, ctx)?;
                let (opts, _) = run::options(&loaded, &args)?;
                let r = status::status(&loaded, &opts, true, &args.store)?;
                return show(as_json, &r, print::status).map(|()| Exit::Success);
            }
            let mut reporter = TerminalReporter::with_verbosity(false, verbose);
            let mut report_reporter = TerminalReporter::new(true);
            let o = run::run(&config, &args, ctx, &mut reporter, &mut report_reporter)?;
            drop(reporter);
            let Some(summary) = o.summary else {
                return Ok(Exit::Success); // detached
            };
            if let Some(r) = &o.report {
                print::report(r, &config, false);
            }
            if as_json {
                let mut j = serde_json::to_value(&summary)?;
                if let Some(t) = &o.transfer {
                    j["remote"] = serde_json::to_value(t)?;
                }
                json(&j)?;
            }
            Ok(Exit::of_run(&summary))
        }
        Command::Status {
            config,
            store,
            json: as_json,
            cost: true,
        } => {
            let args = (&store).into();
            let loaded = store::load(&config, &args, ctx)?;
            let r = ops::cost::status_cost(&loaded, &args)?;
            show(as_json, &r, print::cost).map(|()| Exit::Success)
        }
        Command::Calibrate {
            config,
            store,
            device,
            networks,
            batch,
            threads,
            seconds,
            json: as_json,
        } => {
            if !(seconds.is_finite() && seconds >= 0.0) {
                return Err(Error::bad_input(format!(
                    "--seconds {seconds}: expected a number of seconds"
                )));
            }
            let args = ops::cost::CalibrateArgs {
                store: (&store).into(),
                device,
                networks,
                batch,
                threads,
                seconds,
            };
            let r =
                ops::cost::calibrate(config.as_deref(), &args, ctx, &mut |line| ctx.note(line))?;
            show(as_json, &r, print::calibration).map(|()| Exit::Success)
        }
        Command::Status {
            config,
            store,
            json: as_json,
            cost: false,
        } => {
            let args = (&store).into();
            let loaded = store::load(&config, &args, ctx)?;
            let r = status::status(&loaded, &RunOptions::default(), false, &args)?;
            show(as_json, &r, print::status).map(|()| Exit::Success)
        }
        Command::Results {
            config,
            store,
            json: as_json,
        } => {
            let mut reporter = TerminalReporter::new(true);
            let r = ops::report::results(&config, &(&store).into(), ctx, &mut reporter)?;
            drop(reporter);
            show(as_json, &r, print::results).map(|()| Exit::Success)
        }
        Command::Report {
            config,
            store,
            out,
            json: as_json,
        } => {
            let mut reporter = TerminalReporter::new(true);
            let r = ops::report::report(&config, &(&store).into(), out, ctx, &mut reporter)?;
            drop(reporter);
            if as_json {
                json(&r)?;
            } else {
                print::report(&r, &config, true);
            }
            Ok(Exit::of_report(&r))
        }
        Command::Explain {
            config,
            label,
            if_changed,
            store,
            json: as_json,
        } => {
            let args = (&store).into();
            let loaded = store::load(&config, &args, ctx)?;
            let Some(label) = label else {
                let r = ops::cost::if_changed(&loaded, &if_changed, &args, ctx)?;
                return show(as_json, &r, print::if_changed).map(|()| Exit::Success);
            };
            let e = status::explain(&loaded, &label, &args)?;
            show(as_json, &e, print::explain).map(|()| Exit::Success)
        }
        Command::Dag { config, format } => {
            let format = match format {
                DagFormat::Text => status::DagFormat::Text,
                DagFormat::Dot => status::DagFormat::Dot,
                DagFormat::Mermaid => status::DagFormat::Mermaid,
            };
            out_raw!("{}", status::dag(&config, format, ctx)?);
            Ok(Exit::Success)
        }
        Command::Cache { command } => cache(command, ctx),
        Command::Order { command } => cli::inspect::order(command, ctx).map(|()| Exit::Success),
        Command::Dataset {
            command: DatasetCommand::Inspect { path, json },
        } => cli::inspect::dataset(&path, json).map(|()| Exit::Success),
        Command::Doctor { json } => {
            let torch = store::run_context()?.torch_exe;
            let mut cmd = std::process::Command::new(&torch);
            cmd.arg("doctor");
            if json {
                cmd.arg("--json");
            }
            // Its output passes through `out!`, as every command's does: a
            // closed reader ends the command with 141, not a panic of the
            // child's `println!`.
            let o = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| Error::Other(anyhow::anyhow!("running {}: {e}", torch.display())))?;
            out_raw!("{}", String::from_utf8_lossy(&o.stdout));
            Ok(Exit::of_doctor(o.status.success()))
        }
        Command::Digest { files } => {
            for f in files {
                let (d, _) = bsce_pipeline::digest::Digest::of_file(&f)
                    .map_err(|e| Error::bad_input(format!("{}: {e}", f.display())))?;
                out!("{d}  {}", f.display());
            }
            Ok(Exit::Success)
        }
        // Answered in main, before the environment is read.
        Command::ExecStage { .. } => unreachable!("exec-stage is run by main"),
        Command::ExecNode { run_dir, stages } => {
            ops::slurm::exec_node(&run_dir, &stages, ctx, &mut |line| println!("{line}"))
        }
        Command::Cancel { config, store } => {
            let loaded = store::load(&config, &(&store).into(), ctx)?;
            let c = ops::slurm::cancel(&loaded.root, &loaded.cfg)?;
            for (run, ids) in &c.runs {
                ctx.note(&format!(
                    "cancelled {} slurm jobs of run {run} ({})",
                    ids.len(),
                    ids.join(" ")
                ));
            }
            if c.runs.is_empty() {
                ctx.note(&format!(
                    "no queued or running slurm jobs for {}",
                    loaded.cfg.file.display()
                ));
            }
            Ok(Exit::Success)
        }
    }
}

/// `--json` or the command's own lines.
fn show<T: serde::Serialize>(as_json: bool, v: &T, text: fn(&T)) -> Result<()> {
    if as_json {
        json(v)
    } else {
        text(v);
        Ok(())
    }
}

fn cache(command: CacheCommand, ctx: &Ctx) -> Result<Exit> {
    match command {
        CacheCommand::Verify {
            store,
            repair,
            json: as_json,
        } => {
            let r = cache::verify(&(&store).into(), repair, ctx)?;
            show(as_json, &r, print::verify)?;
            Ok(Exit::unless(r.clean(), Exit::Store))
        }
        CacheCommand::Push {
            config,
            store,
            json: as_json,
        } => sync(&config, &store, true, as_json, ctx),
        CacheCommand::Pull {
            config,
            store,
            json: as_json,
        } => sync(&config, &store, false, as_json, ctx),
        CacheCommand::Gc {
            keep,
            store,
            json: as_json,
        } => {
            let r = cache::gc(&keep, &(&store).into(), ctx)?;
            show(as_json, &r, print::gc).map(|()| Exit::Success)
        }
        CacheCommand::Du {
            store,
            json: as_json,
        } => {
            let r = cache::du(&(&store).into(), ctx)?;
            show(as_json, &r, print::du).map(|()| Exit::Success)
        }
    }
}

fn sync(
    config: &std::path::Path,
    store: &StoreArgs,
    push: bool,
    as_json: bool,
    ctx: &Ctx,
) -> Result<Exit> {
    let r = cache::sync(config, &store.into(), push, ctx, &mut |label| {
        if !as_json {
            let _ = writeln!(std::io::stderr(), "pushed   {label}");
        }
    })?;
    if as_json {
        json(&r.to_json())?;
    } else {
        print::sync(&r);
    }
    Ok(r.exit())
}
