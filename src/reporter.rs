//! The terminal consumer of run events: an indicatif bar per running stage
//! and an overall bar on a terminal; one plain line per event otherwise
//! (logs, CI, tests).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use bsce_pipeline::events::{Reporter, RunEvent};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct TerminalReporter {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    bars: HashMap<String, ProgressBar>,
    quiet_cached: bool,
}

impl TerminalReporter {
    pub fn new(quiet_cached: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        TerminalReporter {
            multi,
            overall: None,
            bars: HashMap::new(),
            quiet_cached,
        }
    }

    fn line(&self, text: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            // A closed stderr (`| head`) must not kill the scheduler mid-run.
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    fn tick(&self) {
        if let Some(o) = &self.overall {
            o.inc(1);
        }
    }
}

impl Reporter for TerminalReporter {
    fn on_event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Planned { total } => {
                if let Some(m) = &self.multi {
                    let bar = m.add(ProgressBar::new(*total as u64));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} stages  {elapsed} (eta {eta})",
                        )
                        .expect("valid template"),
                    );
                    self.overall = Some(bar);
                }
            }
            RunEvent::Cached { label, .. } => {
                if !self.quiet_cached {
                    self.line(format!("cached   {label}"));
                }
                self.tick();
            }
            RunEvent::Waiting { label } => self.line(format!(
                "waiting  {label} (another bsce-pipe is running it)"
            )),
            RunEvent::Started {
                label,
                reasons,
                device,
                ..
            } => {
                let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                self.line(format!("run      {label} on {device}: {}", why.join("; ")));
                if let Some(m) = &self.multi {
                    let bar = m.insert_from_back(1, ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix} {msg}")
                            .expect("valid template"),
                    );
                    bar.set_prefix(label.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bars.insert(label.clone(), bar);
                }
            }
            RunEvent::Progress {
                label,
                done,
                total,
                unit,
            } => {
                if let Some(bar) = self.bars.get(label) {
                    match total {
                        Some(t) => bar.set_message(format!("{done}/{t} {unit}")),
                        None => bar.set_message(format!("{done} {unit}")),
                    }
                }
            }
            RunEvent::Finished {
                label,
                wall_seconds,
                ..
            } => {
                if let Some(bar) = self.bars.remove(label) {
                    bar.finish_and_clear();
                }
                self.line(format!("done     {label} in {wall_seconds:.2}s"));
                self.tick();
            }
            RunEvent::Failed {
                label,
                error,
                log_tail,
                ..
            } => {
                if let Some(bar) = self.bars.remove(label) {
                    bar.finish_and_clear();
                }
                self.line(format!("FAILED   {label}: {error}"));
                if !log_tail.is_empty() {
                    let indented: Vec<String> =
                        log_tail.lines().map(|l| format!("  | {l}")).collect();
                    self.line(indented.join("\n"));
                }
                self.tick();
            }
            RunEvent::Requeued {
                label,
                message,
                producers,
            } => {
                if let Some(bar) = self.bars.remove(label) {
                    bar.finish_and_clear();
                }
                let names: Vec<&str> = producers.iter().map(|(l, _)| l.as_str()).collect();
                self.line(format!(
                    "warning: {label}: {message}; recomputing {} first",
                    names.join(", ")
                ));
                if let Some(o) = &self.overall {
                    o.set_position(o.position().saturating_sub(producers.len() as u64));
                }
            }
            RunEvent::Skipped { label, because } => {
                self.line(format!("skipped  {label} (input {because} failed)"));
                self.tick();
            }
            RunEvent::Interrupted => self.line("interrupted: stopping running stages".into()),
            RunEvent::Submitted { label, job, after } => {
                if after.is_empty() {
                    self.line(format!("submit   {label} as slurm job {job}"));
                } else {
                    self.line(format!(
                        "submit   {label} as slurm job {job}, after {}",
                        after.join(", ")
                    ));
                }
            }
            RunEvent::JobStarted { label, job, node } => {
                self.line(format!("start    {label} (slurm job {job} on {node})"));
            }
        }
    }
}

impl Drop for TerminalReporter {
    fn drop(&mut self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}
