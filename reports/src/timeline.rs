//! Where the hours went: every stored stage of a config as a bar from its
//! start to its end, from provenance (`started_unix_ms`, `wall_seconds`,
//! `host`, `device`), one lane per concurrent slot of each host and device
//! (a GPU, a host's CPU slots, a Slurm node), coloured by stage kind; and
//! beside it the total GPU-hours, each device's busy fraction and its
//! longest idle gap. The report draws it over every stage of the config
//! (`timeline.svg|png`) and once per run of `run` that computed stages
//! (`timeline/<run id>.svg|png`, the latest [`RUNS_DRAWN`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::register_font;

/// Per-run figures the report draws, the latest runs first.
pub const RUNS_DRAWN: usize = 10;

/// One stage's time, from its action record's provenance.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    /// The stage kind's name (`train`, `evaluate`, ...).
    pub kind: String,
    pub host: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub run_id: String,
    pub start_ms: u64,
    pub seconds: f64,
}

impl Bar {
    fn end_ms(&self) -> u64 {
        self.start_ms + (self.seconds * 1000.0).round() as u64
    }
}

/// A device of a host: its lanes, busy fraction and longest idle gap.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceUse {
    pub host: String,
    pub device: String,
    pub stages: usize,
    /// Stages that overlapped at most (its lanes).
    pub lanes: usize,
    /// Share of the timeline's span with at least one stage running here.
    pub busy: f64,
    /// The longest stretch of the span with none running here, seconds.
    pub longest_idle_s: f64,
}

/// The laid-out timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    pub bars: Vec<Bar>,
    /// Per bar, its lane (index into `lanes`).
    pub lane_of: Vec<usize>,
    /// Lane names, top to bottom.
    pub lanes: Vec<String>,
    pub start_ms: u64,
    pub span_s: f64,
    pub devices: Vec<DeviceUse>,
    /// The GPUs' busy time: per GPU, the union of its stages' intervals,
    /// so stages sharing a GPU (`stages_per_gpu`) count once.
    pub gpu_busy_hours: f64,
    /// The stages' own times on GPUs and on CPUs (shared time counted per
    /// stage).
    pub gpu_hours: f64,
    pub cpu_hours: f64,
}

impl Timeline {
    /// Lays out `bars`: per (host, device) in name order, each bar in the
    /// first lane free at its start (a greedy interval colouring: as many
    /// lanes as stages ran at once there).
    pub fn new(mut bars: Vec<Bar>) -> Timeline {
        bars.sort_by(|a, b| {
            (&a.host, &a.device, a.start_ms, &a.label)
                .cmp(&(&b.host, &b.device, b.start_ms, &b.label))
        });
        let start_ms = bars.iter().map(|b| b.start_ms).min().unwrap_or(0);
        let end_ms = bars.iter().map(Bar::end_ms).max().unwrap_or(start_ms);
        let span_s = (end_ms - start_ms) as f64 / 1000.0;
        let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, b) in bars.iter().enumerate() {
            groups
                .entry((b.host.clone(), b.device.clone()))
                .or_default()
                .push(i);
        }
        let mut lane_of = vec![0; bars.len()];
        let mut lanes = Vec::new();
        let mut devices = Vec::new();
        let mut gpu_busy_ms = 0u64;
        for ((host, device), members) in groups {
            // Lane ends, in this group's lanes.
            let mut ends: Vec<u64> = Vec::new();
            let first_lane = lanes.len();
            for &i in &members {
                let b = &bars[i];
                let lane = match ends.iter().position(|&e| e <= b.start_ms) {
                    Some(l) => l,
                    None => {
                        ends.push(0);
                        ends.len() - 1
                    }
                };
                ends[lane] = b.end_ms();
                lane_of[i] = first_lane + lane;
            }
            for l in 0..ends.len() {
                lanes.push(if ends.len() > 1 {
                    format!("{host} {device} #{}", l + 1)
                } else {
                    format!("{host} {device}")
                });
            }
            // Busy: the union of the group's intervals; idle: the gaps of
            // the span outside it.
            let mut busy_ms = 0u64;
            let mut longest_idle = 0u64;
            let mut cursor = start_ms;
            for &i in &members {
                let (s, e) = (bars[i].start_ms, bars[i].end_ms());
                if s > cursor {
                    longest_idle = longest_idle.max(s - cursor);
                }
                if e > cursor {
                    busy_ms += e - s.max(cursor);
                    cursor = e;
                }
            }
            longest_idle = longest_idle.max(end_ms.saturating_sub(cursor));
            if device.starts_with("cuda") {
                gpu_busy_ms += busy_ms;
            }
            devices.push(DeviceUse {
                host,
                device,
                stages: members.len(),
                lanes: ends.len(),
                busy: if end_ms > start_ms {
                    busy_ms as f64 / (end_ms - start_ms) as f64
                } else {
                    1.0
                },
                longest_idle_s: longest_idle as f64 / 1000.0,
            });
        }
        let hours = |gpu: bool| {
            bars.iter()
                .filter(|b| b.device.starts_with("cuda") == gpu)
                .map(|b| b.seconds)
                .fold(0.0, |a, b| a + b)
                / 3600.0
        };
        Timeline {
            gpu_busy_hours: gpu_busy_ms as f64 / 3_600_000.0,
            gpu_hours: hours(true),
            cpu_hours: hours(false),
            bars,
            lane_of,
            lanes,
            start_ms,
            span_s,
            devices,
        }
    }

    /// The figures beside the timeline, one line each.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} stages over {}: {:.3} GPU-hours busy ({:.3} of stage time), {:.3} CPU-hours of stage time",
            self.bars.len(),
            duration(self.span_s),
            self.gpu_busy_hours,
            self.gpu_hours,
            self.cpu_hours
        )];
        for d in &self.devices {
            out.push(format!(
                "{} {}: {} stages, busy {:.0} % of the span, longest idle gap {}",
                d.host,
                d.device,
                d.stages,
                d.busy * 100.0,
                duration(d.longest_idle_s)
            ));
        }
        out
    }
}

/// `1 h 02 min`, `3 min 05 s`, `4.2 s`.
pub fn duration(s: f64) -> String {
    if s >= 3600.0 {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else if s >= 60.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.1} s")
    }
}

/// Stage kinds' colours, in the order of the pipeline (Tableau 10).
fn colour(kind: &str) -> RGBColor {
    match kind {
        "prepare" => RGBColor(127, 127, 127),
        "order" => RGBColor(188, 189, 34),
        "tasks" => RGBColor(23, 190, 207),
        "train" => RGBColor(31, 119, 180),
        "evaluate" => RGBColor(255, 127, 14),
        "aggregate" => RGBColor(44, 160, 44),
        "render" => RGBColor(148, 103, 189),
        "plot" => RGBColor(214, 39, 40),
        _ => RGBColor(140, 86, 75),
    }
}

const KINDS: [&str; 8] = [
    "prepare",
    "order",
    "tasks",
    "train",
    "evaluate",
    "aggregate",
    "render",
    "plot",
];

fn size(t: &Timeline) -> (u32, u32) {
    let text = 24 * (t.devices.len() as u32 + 1) + 44;
    (1100, 130 + 32 * t.lanes.len().max(2) as u32 + text)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    t: &Timeline,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let text_h = 24 * (t.devices.len() as u32 + 1) + 44;
    let (_, h) = root.dim_in_pixel();
    let (chart_area, text_area) = root.split_vertically(h - text_h);
    let (unit, div) = if t.span_s >= 2.0 * 3600.0 {
        ("hours", 3600.0)
    } else if t.span_s >= 120.0 {
        ("minutes", 60.0)
    } else {
        ("seconds", 1.0)
    };
    let x1 = (t.span_s / div).max(1e-3);
    let n = t.lanes.len().max(1);
    let label_w = t.lanes.iter().map(|l| l.len()).max().unwrap_or(8) as u32 * 8 + 16;
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(label_w.clamp(80, 360))
        .build_cartesian_2d(0.0..x1 * 1.02, 0.0..n as f64)
        .map_err(e)?;
    let lanes = t.lanes.clone();
    chart
        .configure_mesh()
        .x_desc(format!("{unit} since the first stage started"))
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .y_labels(n * 2 + 1)
        .y_label_formatter(&move |y| {
            // Labels at lane centres only.
            let f = y.fract();
            if (f - 0.5).abs() < 0.01 {
                lanes
                    .get(n - 1 - (*y as usize).min(n - 1))
                    .cloned()
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for kind in KINDS {
        let c = colour(kind);
        let bars: Vec<Rectangle<(f64, f64)>> = t
            .bars
            .iter()
            .zip(&t.lane_of)
            .filter(|(b, _)| b.kind == kind)
            .map(|(b, &lane)| {
                let y = (n - 1 - lane) as f64;
                let x0 = (b.start_ms - t.start_ms) as f64 / 1000.0 / div;
                // A bar stays visible however short its stage.
                let x1b = (x0 + b.seconds / div).max(x0 + x1 * 0.002);
                Rectangle::new([(x0, y + 0.15), (x1b, y + 0.85)], c.filled())
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        chart.draw_series(bars).map_err(e)?;
    }
    // The legend: a row of the kinds present, under the chart.
    let mut x = 16;
    for kind in KINDS
        .iter()
        .filter(|k| t.bars.iter().any(|b| b.kind == **k))
    {
        text_area
            .draw(&Rectangle::new(
                [(x, 8), (x + 14, 22)],
                colour(kind).filled(),
            ))
            .map_err(e)?;
        text_area
            .draw(&Text::new(
                kind.to_string(),
                (x + 20, 7),
                ("sans-serif", 16).into_font().color(&BLACK),
            ))
            .map_err(e)?;
        x += 30 + 9 * kind.len() as i32;
    }
    for (i, line) in t.summary_lines().iter().enumerate() {
        text_area
            .draw(&Text::new(
                line.clone(),
                (16, 36 + 24 * i as i32),
                ("sans-serif", 17).into_font().color(&BLACK),
            ))
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// Draws the timeline to an SVG and a PNG file.
pub fn write(svg: &Path, png: &Path, title: &str, t: &Timeline) -> Result<()> {
    register_font();
    let size = size(t);
    draw(SVGBackend::new(svg, size).into_drawing_area(), title, t)
        .map_err(|m| anyhow!("drawing {}: {m}", svg.display()))?;
    draw(BitMapBackend::new(png, size).into_drawing_area(), title, t)
        .map_err(|m| anyhow!("drawing {}: {m}", png.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, device: &str, start_s: u64, seconds: f64) -> Bar {
        Bar {
            label: label.into(),
            kind: "train".into(),
            host: "h".into(),
            device: device.into(),
            run_id: "r".into(),
            start_ms: 1_000_000 + start_s * 1000,
            seconds,
        }
    }

    #[test]
    fn overlapping_stages_get_lanes_and_devices_their_busy_share_and_longest_gap() {
        // GPU 0: 0-10 and 5-15 overlap (two lanes), then idle 15-40, then
        // 40-50. GPU 1: 0-50 busy throughout.
        let t = Timeline::new(vec![
            bar("a", "cuda:0", 0, 10.0),
            bar("b", "cuda:0", 5, 10.0),
            bar("c", "cuda:0", 40, 10.0),
            bar("d", "cuda:1", 0, 50.0),
        ]);
        assert_eq!(t.span_s, 50.0);
        assert_eq!(t.lanes, ["h cuda:0 #1", "h cuda:0 #2", "h cuda:1"]);
        let lane = |l: &str| t.lane_of[t.bars.iter().position(|b| b.label == l).unwrap()];
        assert_eq!((lane("a"), lane("b"), lane("c"), lane("d")), (0, 1, 0, 2));
        let g0 = &t.devices[0];
        assert_eq!((g0.stages, g0.lanes), (3, 2));
        assert!((g0.busy - 25.0 / 50.0).abs() < 1e-9, "{}", g0.busy);
        assert_eq!(g0.longest_idle_s, 25.0);
        assert_eq!((t.devices[1].busy, t.devices[1].longest_idle_s), (1.0, 0.0));
        assert!((t.gpu_hours - 80.0 / 3600.0).abs() < 1e-12);
        // Two stages shared GPU 0 for 5 s: the GPUs were busy 25 + 50 s.
        assert!((t.gpu_busy_hours - 75.0 / 3600.0).abs() < 1e-12);
        assert_eq!(t.cpu_hours, 0.0);
        assert!(t.summary_lines()[0].contains("0.021 GPU-hours busy (0.022 of stage time)"));
        assert!(
            t.summary_lines()[1].contains("busy 50 %"),
            "{:?}",
            t.summary_lines()
        );
    }

    #[test]
    fn an_idle_end_of_the_span_counts_as_a_gap() {
        let t = Timeline::new(vec![bar("a", "cpu", 0, 5.0), bar("b", "cuda:0", 0, 60.0)]);
        let cpu = t.devices.iter().find(|d| d.device == "cpu").unwrap();
        assert_eq!(cpu.longest_idle_s, 55.0);
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(duration(185.0), "3 min 05 s");
    }
}
