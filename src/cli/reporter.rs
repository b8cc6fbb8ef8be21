//! The terminal consumer of run events: an indicatif bar per running stage
//! and an overall bar on a terminal; one plain line per event otherwise
//! (logs, CI, tests).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use bsce_pipeline::events::{Reporter, RunEvent};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct TerminalReporter {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    bars: HashMap<String, ProgressBar>,
    rates: HashMap<String, Rate>,
    quiet_cached: bool,
    /// Every skipped stage on its own line, not only the summary.
    verbose: bool,
    /// Skipped stages not yet summarised, per failed stage upstream of
    /// them: (failed label, [(kind, count)]).
    skipped: Vec<(String, Vec<(String, usize)>)>,
    /// Each skipped label -> the failed stage it is downstream of.
    skipped_root: HashMap<String, String>,
}

/// A stage's throughput since its first progress message. A resumed stage
/// starts at the work its earlier attempt finished, which must count
/// neither towards its speed nor against its ETA.
struct Rate {
    first_done: u64,
    since: Instant,
}

/// Below this a rate is noise.
const RATE_AFTER: Duration = Duration::from_secs(1);

impl Rate {
    fn new(done: u64, now: Instant) -> Self {
        Rate {
            first_done: done,
            since: now,
        }
    }

    /// `" 412 images/s, eta 1:02:03"`, or nothing before [`RATE_AFTER`].
    fn describe(&self, done: u64, total: Option<u64>, unit: &str, now: Instant) -> String {
        let elapsed = now.saturating_duration_since(self.since);
        let work = done.saturating_sub(self.first_done);
        if elapsed < RATE_AFTER || work == 0 {
            return String::new();
        }
        let per_second = work as f64 / elapsed.as_secs_f64();
        let mut text = format!("  {per_second:.0} {unit}/s");
        if let Some(total) = total {
            let left = total.saturating_sub(done) as f64 / per_second;
            text.push_str(&format!(", eta {}", clock(left.round() as u64)));
        }
        text
    }
}

/// `m:ss`, or `h:mm:ss` from an hour.
fn clock(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

impl TerminalReporter {
    pub fn new(quiet_cached: bool) -> Self {
        Self::with_verbosity(quiet_cached, false)
    }

    /// `verbose`: every skipped stage gets its own line too.
    pub fn with_verbosity(quiet_cached: bool, verbose: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        TerminalReporter {
            multi,
            overall: None,
            bars: HashMap::new(),
            rates: HashMap::new(),
            quiet_cached,
            verbose,
            skipped: Vec::new(),
            skipped_root: HashMap::new(),
        }
    }

    /// Counts a skipped stage under the failed stage upstream of it (the
    /// root of a chain of skips, when its input was itself skipped).
    fn count_skipped(&mut self, label: &str, because: &str) {
        let root = self
            .skipped_root
            .get(because)
            .cloned()
            .unwrap_or_else(|| because.to_string());
        self.skipped_root.insert(label.to_string(), root.clone());
        let kind = label.split('/').next().unwrap_or(label).to_string();
        let i = match self.skipped.iter().position(|(r, _)| *r == root) {
            Some(i) => i,
            None => {
                self.skipped.push((root, Vec::new()));
                self.skipped.len() - 1
            }
        };
        let kinds = &mut self.skipped[i].1;
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }

    /// One line per failed stage for the stages it blocked, per kind:
    /// `skipped 430 stages downstream of prepare/cifar100: 144 train, ...`.
    fn flush_skipped(&mut self) {
        for (root, kinds) in std::mem::take(&mut self.skipped) {
            let total: usize = kinds.iter().map(|(_, n)| n).sum();
            let per_kind: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            self.line(format!(
                "skipped  {total} {} downstream of {root}: {}{}",
                if total == 1 { "stage" } else { "stages" },
                per_kind.join(", "),
                if self.verbose {
                    ""
                } else {
                    " (--verbose lists them)"
                }
            ));
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
    fn finish(&mut self) {
        self.flush_skipped();
    }

    fn on_event(&mut self, event: &RunEvent) {
        // The skips of one failure arrive together: summarised at the next
        // other event, or at the end of the run.
        if !matches!(event, RunEvent::Skipped { .. }) {
            self.flush_skipped();
        }
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
                    let now = Instant::now();
                    let rate = self
                        .rates
                        .entry(label.clone())
                        .or_insert_with(|| Rate::new(*done, now))
                        .describe(*done, *total, unit, now);
                    match total {
                        Some(t) => bar.set_message(format!("{done}/{t} {unit}{rate}")),
                        None => bar.set_message(format!("{done} {unit}{rate}")),
                    }
                }
            }
            RunEvent::Finished {
                label,
                wall_seconds,
                ..
            } => {
                self.rates.remove(label);
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
                self.rates.remove(label);
                if let Some(bar) = self.bars.remove(label) {
                    bar.finish_and_clear();
                }
                self.line(format!("FAILED   {label}: {error}"));
                // The log's last lines, less the error line the FAILED
                // line already shows.
                let indented: Vec<String> = log_tail
                    .lines()
                    .filter(|l| l.trim().is_empty() || !error.contains(l.trim()))
                    .map(|l| format!("  | {l}"))
                    .collect();
                if indented.iter().any(|l| l.trim() != "|") {
                    self.line(indented.join("\n"));
                }
                self.tick();
            }
            RunEvent::FailedBefore { label, error, .. } => {
                self.line(format!(
                    "FAILED   {label}: {error} (failed on the same inputs last time; not run \
                     again until they change)"
                ));
                self.tick();
            }
            RunEvent::Requeued {
                label,
                message,
                producers,
            } => {
                self.rates.remove(label);
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
                if self.verbose {
                    self.line(format!("skipped  {label} (input {because} failed)"));
                }
                self.count_skipped(label, because);
                self.tick();
            }
            RunEvent::Interrupted => self.line("interrupted: stopping running stages".into()),
            RunEvent::Submitted {
                label,
                job,
                after,
                more,
            } => {
                let chain = match more {
                    0 => String::new(),
                    1 => " and the stage after it".into(),
                    m => format!(" and the {m} stages after it"),
                };
                let after = if after.is_empty() {
                    String::new()
                } else {
                    format!(", after {}", after.join(", "))
                };
                self.line(format!("submit   {label}{chain} as slurm job {job}{after}"));
            }
            RunEvent::JobStarted { label, job, node } => {
                self.line(format!("start    {label} (slurm job {job} on {node})"));
            }
        }
    }
}

impl Drop for TerminalReporter {
    fn drop(&mut self) {
        self.flush_skipped();
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_counted_per_kind_under_the_failed_stage_they_follow() {
        let mut r = TerminalReporter::with_verbosity(false, false);
        for (label, because) in [
            ("order/c/o", "prepare/c"),
            ("train/c/o/t0", "order/c/o"),
            ("evaluate/c/o/t0", "train/c/o/t0"),
            ("train/c/o/t1", "train/c/o/t0"),
            ("aggregate/e", "prepare/d"),
        ] {
            r.count_skipped(label, because);
        }
        assert_eq!(
            r.skipped,
            vec![
                (
                    "prepare/c".to_string(),
                    vec![
                        ("order".to_string(), 1),
                        ("train".to_string(), 2),
                        ("evaluate".to_string(), 1)
                    ]
                ),
                ("prepare/d".to_string(), vec![("aggregate".to_string(), 1)]),
            ]
        );
        r.flush_skipped();
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn rate_and_eta_count_only_this_attempts_work() {
        let start = Instant::now();
        let at = |s: f64| start + Duration::from_secs_f64(s);
        // Resumed at 600 of 1,000 images.
        let rate = Rate::new(600, start);
        assert_eq!(rate.describe(650, Some(1000), "images", at(0.5)), "");
        assert_eq!(
            rate.describe(700, Some(1000), "images", at(2.0)),
            "  50 images/s, eta 0:06"
        );
        assert_eq!(rate.describe(700, None, "bytes", at(2.0)), "  50 bytes/s");
        assert_eq!(rate.describe(600, Some(1000), "images", at(9.0)), "");
        let slow = Rate::new(0, start);
        assert_eq!(
            slow.describe(1, Some(10_000), "images", at(1.0)),
            "  1 images/s, eta 2:46:39"
        );
    }
}
