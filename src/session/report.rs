//! `suggestive report`: results per arm, repeat and round as CSV and JSON, a summary over
//! repeats, the paired difference proposed − random, and a plot of test Dice against the
//! annotation budget (PNG and SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use super::compare::{self, ArmAubc, Comparison};
use super::config::{Arm, Granularity, Protocol, SessionConfig};
use super::events::{Event, LoggedEvent, Phase};
use super::files::{write_atomic, write_atomic_with};
use super::state::{ResultRow, SessionState};
use crate::engine::eval::mean_sd;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub arm: Arm,
    pub repeat: usize,
    pub stage: usize,
    pub round: usize,
    pub annotated: usize,
    pub viewed: usize,
    pub dice_mean: f64,
    pub dice_sd: f64,
    pub slice_dice_mean: f64,
    pub collapsed: bool,
}

/// One arm at one budget, over repeats.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub arm: Arm,
    pub stage: usize,
    pub round: usize,
    pub annotated: usize,
    pub viewed: f64,
    pub repeats: usize,
    /// Mean over repeats of the per-repeat mean test Dice.
    pub dice_mean: f64,
    /// Sd over repeats (with one repeat: the sd over test patients).
    pub dice_sd: f64,
}

/// proposed − random at one budget, paired by repeat (same split, initial set and VAE).
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub stage: usize,
    pub round: usize,
    pub annotated: usize,
    pub repeats: usize,
    pub mean_diff: f64,
    pub sd_diff: f64,
    pub proposed_wins: usize,
}

/// Time-breakdown labels for I/O.
const IO_DATA: &str = "I/O: data set open (+ pool upload)";
const IO_CHECKPOINTS: &str = "I/O: epoch checkpoints";

/// One arm's picks over the whole session: how many, how many fell back to the nearest free
/// sample (no candidate in the cone), how many contain tumour, and for the proposed arm how its
/// gradient steps were computed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectionSummary {
    pub arm: Arm,
    pub rounds: usize,
    pub picks: usize,
    pub fallbacks: usize,
    pub tumour_picks: usize,
    /// Directions per path (float32 / float64 / central difference), summed over rounds.
    pub direction_methods: BTreeMap<String, usize>,
    /// The median over rounds of each round's median relative step ‖αg‖/‖x‖.
    pub median_rel_dx: Option<f64>,
    pub zero_directions: usize,
}

impl SelectionSummary {
    fn of(records: &[crate::session::state::PickRecord]) -> Vec<SelectionSummary> {
        let mut arms: Vec<Arm> = records.iter().map(|r| r.arm).collect();
        arms.sort();
        arms.dedup();
        arms.into_iter()
            .map(|arm| {
                let mine: Vec<_> = records.iter().filter(|r| r.arm == arm).collect();
                let mut methods = BTreeMap::new();
                let mut rel: Vec<f64> = Vec::new();
                let mut zero = 0;
                for d in mine.iter().filter_map(|r| r.directions.as_ref()) {
                    for (m, n) in &d.methods {
                        // Sessions of earlier versions wrote `centraldifference`.
                        let m = match m.as_str() {
                            "centraldifference" => "central-difference",
                            other => other,
                        };
                        *methods.entry(m.to_string()).or_insert(0) += n;
                    }
                    rel.push(d.median_rel_dx);
                    zero += d.zero_directions;
                }
                rel.sort_by(f64::total_cmp);
                SelectionSummary {
                    arm,
                    rounds: mine.len(),
                    picks: mine.iter().map(|r| r.picks.len()).sum(),
                    fallbacks: mine.iter().map(|r| r.fallbacks).sum(),
                    tumour_picks: mine.iter().map(|r| r.tumour_picks).sum(),
                    direction_methods: methods,
                    median_rel_dx: rel.get(rel.len() / 2).copied(),
                    zero_directions: zero,
                }
            })
            .collect()
    }
}

/// A step of the event log whose end has not been read yet.
struct OpenStep {
    label: String,
    /// Training steps split into training and evaluation.
    training: bool,
    start: f64,
    last_epoch: Option<f64>,
    checkpoints: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub unit: &'static str,
    /// How the picks came about, per arm (from state.json's pick records).
    pub selection: Vec<SelectionSummary>,
    /// Where the wall time went, by kind of step (from events.jsonl), seconds.
    pub timings: BTreeMap<String, f64>,
    pub rows: Vec<Row>,
    pub summary: Vec<SummaryRow>,
    pub paired: Vec<Paired>,
    /// Every arm against `random` at every budget: mean paired difference, its 95 % interval,
    /// the Wilcoxon signed-rank p-value, wins, ties and losses.
    pub comparisons: Vec<Comparison>,
    /// Per arm: the normalised area under its budget curve, and paired against `random`.
    pub aubc: Vec<ArmAubc>,
}

impl Report {
    pub fn new(cfg: &SessionConfig, state: &SessionState) -> Report {
        let mut report = Report::from_results(cfg, &state.results);
        report.selection = SelectionSummary::of(&state.picks);
        report
    }

    pub fn from_results(cfg: &SessionConfig, results: &[ResultRow]) -> Report {
        let rows: Vec<Row> = results
            .iter()
            .map(|r| Row {
                arm: r.arm,
                repeat: r.repeat,
                stage: r.stage,
                round: r.round,
                annotated: r.annotated,
                viewed: r.viewed,
                dice_mean: r.dice_mean,
                dice_sd: r.dice_sd,
                slice_dice_mean: r.slice_dice_mean,
                collapsed: r.collapsed,
            })
            .collect();
        let mut groups: BTreeMap<(Arm, usize, usize), Vec<&Row>> = BTreeMap::new();
        for r in &rows {
            groups.entry((r.arm, r.stage, r.round)).or_default().push(r);
        }
        let summary = groups
            .iter()
            .map(|(&(arm, stage, round), rs)| {
                let means: Vec<f64> = rs.iter().map(|r| r.dice_mean).collect();
                let (m, sd) = mean_sd(&means);
                SummaryRow {
                    arm,
                    stage,
                    round,
                    annotated: rs[0].annotated,
                    viewed: rs.iter().map(|r| r.viewed as f64).sum::<f64>() / rs.len() as f64,
                    repeats: rs.len(),
                    dice_mean: m,
                    dice_sd: if rs.len() > 1 { sd } else { rs[0].dice_sd },
                }
            })
            .collect();
        let mut paired = Vec::new();
        let keys: Vec<(usize, usize)> = groups
            .keys()
            .filter(|k| k.0 == Arm::Proposed && k.2 > 0)
            .map(|k| (k.1, k.2))
            .collect();
        for (stage, round) in keys {
            let (Some(p), Some(r)) = (
                groups.get(&(Arm::Proposed, stage, round)),
                groups.get(&(Arm::Random, stage, round)),
            ) else {
                continue;
            };
            let diffs: Vec<f64> = p
                .iter()
                .filter_map(|a| {
                    r.iter()
                        .find(|b| b.repeat == a.repeat)
                        .map(|b| a.dice_mean - b.dice_mean)
                })
                .collect();
            if diffs.is_empty() {
                continue;
            }
            let (m, sd) = mean_sd(&diffs);
            paired.push(Paired {
                stage,
                round,
                annotated: p[0].annotated,
                repeats: diffs.len(),
                mean_diff: m,
                sd_diff: sd,
                proposed_wins: diffs.iter().filter(|d| **d > 0.0).count(),
            });
        }
        let unit = match cfg.experiment.granularity {
            Granularity::Patient => "patients",
            Granularity::Image => "slices",
        };
        let arms = &cfg.experiment.arms;
        Report {
            unit,
            selection: Vec::new(),
            comparisons: compare::comparisons(&rows, arms, Arm::Random),
            aubc: compare::aubc(&rows, arms, cfg.experiment.protocol, Arm::Random),
            rows,
            summary,
            paired,
            timings: BTreeMap::new(),
        }
    }

    /// Adds the comparisons of every arm with each of `arms` (besides random, always there).
    pub fn versus(mut self, cfg: &SessionConfig, arms: &[Arm]) -> Report {
        for &v in arms.iter().filter(|&&v| v != Arm::Random) {
            let more = compare::comparisons(&self.rows, &cfg.experiment.arms, v);
            self.comparisons.extend(more);
        }
        self
    }

    /// Adds the time breakdown from a session's event log, steps grouped by what they do (VAE,
    /// latents, pre-training, the shared initial UNet, and per arm: selection, training,
    /// evaluation). Each `step_done` gives its step's seconds and the part spent evaluating;
    /// the epochs' checkpoint writes (from `epoch_done`) and the opening of the data set (and
    /// its upload to a GPU, from `started`) are I/O, counted apart. Steps are matched by index,
    /// so the interleaved events of `--devices` lanes add up right (to more than the wall
    /// time: lanes run at once). A step cut by a stop counts until the stop. Logs written
    /// before `step_done` existed: a step lasts until the next step starts, and its evaluation
    /// is what follows its last epoch.
    pub fn with_timings(mut self, logs: &[PathBuf]) -> Report {
        for log in logs {
            self.add_log(&LoggedEvent::read_all(log));
        }
        self
    }

    /// The time breakdown of one event log (see `with_timings`): each log on its own, as the
    /// repeats that wrote them ran apart.
    fn add_log(&mut self, events: &[LoggedEvent]) {
        let by_index = events
            .iter()
            .any(|e| matches!(e.event, Event::StepDone { .. }));
        // Steps in progress, by index (one at a time in logs without step_done).
        let mut open: BTreeMap<usize, OpenStep> = BTreeMap::new();
        for logged in events {
            let t = logged.time;
            match &logged.event {
                Event::Started { data_load_s, .. } => self.add_time(IO_DATA, *data_load_s),
                Event::EpochDone {
                    index,
                    checkpoint_s,
                    ..
                } => {
                    let step = if by_index {
                        open.get_mut(index)
                    } else {
                        open.values_mut().next()
                    };
                    if let Some(o) = step {
                        o.last_epoch = Some(t);
                        o.checkpoints += checkpoint_s;
                    }
                }
                Event::StepDone {
                    index,
                    seconds,
                    evaluation_s,
                } => {
                    if let Some(o) = open.remove(index) {
                        self.add_step(&o, *seconds, *evaluation_s);
                    }
                }
                _ => {}
            }
            let ends_all = matches!(
                logged.event,
                Event::Stopped { .. } | Event::Finished { .. } | Event::Error { .. }
            );
            let starts = matches!(logged.event, Event::StepStarted { .. });
            if ends_all || (!by_index && starts) {
                for (_, o) in std::mem::take(&mut open) {
                    let evaluation = match o.last_epoch {
                        Some(end) if o.training && !by_index => t - end,
                        _ => 0.0,
                    };
                    self.add_step(&o, t - o.start, evaluation);
                }
            }
            if let Event::StepStarted {
                index, phase, arm, ..
            } = &logged.event
            {
                let (label, training) = match (phase, arm) {
                    (Phase::Training, None) => ("shared initial UNet".to_string(), true),
                    (Phase::Training, Some(arm)) => (arm.to_string(), true),
                    (Phase::Gradient | Phase::Search, Some(arm)) => {
                        (format!("selection: {arm}"), false)
                    }
                    (p, _) => (p.to_string(), false),
                };
                open.insert(
                    *index,
                    OpenStep {
                        label,
                        training,
                        start: t,
                        last_epoch: None,
                        checkpoints: 0.0,
                    },
                );
            }
        }
    }

    fn add_time(&mut self, label: &str, seconds: f64) {
        *self.timings.entry(label.to_string()).or_insert(0.0) += seconds.max(0.0);
    }

    /// A step of `seconds`, `evaluation` of them evaluating, its checkpoints' time apart.
    fn add_step(&mut self, o: &OpenStep, seconds: f64, evaluation: f64) {
        self.add_time(IO_CHECKPOINTS, o.checkpoints);
        if o.training {
            let training = seconds - evaluation - o.checkpoints;
            self.add_time(&format!("training: {}", o.label), training);
            self.add_time(&format!("evaluation: {}", o.label), evaluation);
        } else {
            self.add_time(&o.label, seconds - o.checkpoints);
        }
    }

    /// One line per arm: picks, cone fallbacks, tumour content, and the proposed arm's steps.
    pub fn selection_text(&self) -> String {
        let mut s = String::from("how the picks came about (all repeats and rounds):\n");
        for a in &self.selection {
            let _ = write!(
                s,
                "  {:<9} {} picks in {} rounds, {} with tumour, {} cone fallbacks",
                a.arm.to_string(),
                a.picks,
                a.rounds,
                a.tumour_picks,
                a.fallbacks
            );
            if let Some(rel) = a.median_rel_dx {
                let methods: Vec<String> = a
                    .direction_methods
                    .iter()
                    .map(|(m, n)| format!("{n} {m}"))
                    .collect();
                let _ = write!(
                    s,
                    "; directions: {}, median ‖αg‖/‖x‖ {rel:.2e}, {} without gradient",
                    methods.join(", "),
                    a.zero_directions
                );
            }
            s += "\n";
        }
        s
    }

    pub fn timings_text(&self) -> String {
        let total: f64 = self.timings.values().sum();
        let mut v: Vec<(&String, &f64)> = self.timings.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        let mut s = format!("where the time went ({total:.0} s of steps):\n");
        for (k, t) in v {
            let _ = writeln!(
                s,
                "  {k:<36} {t:>8.1} s  {:>5.1} %",
                100.0 * t / total.max(1e-9)
            );
        }
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from(
            "arm,repeat,stage,round,annotated,viewed,dice_mean,dice_sd,slice_dice_mean,collapsed\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{:.6},{:.6},{:.6},{}",
                r.arm,
                r.repeat + 1,
                r.stage + 1,
                r.round,
                r.annotated,
                r.viewed,
                r.dice_mean,
                r.dice_sd,
                r.slice_dice_mean,
                r.collapsed
            );
        }
        s
    }

    /// The summary as a Markdown table: budgets down, arms across.
    pub fn markdown(&self) -> String {
        let arms: Vec<Arm> = {
            let mut a: Vec<Arm> = self.summary.iter().map(|r| r.arm).collect();
            a.sort();
            a.dedup();
            a
        };
        let mut budgets: Vec<(usize, usize, usize)> = self
            .summary
            .iter()
            .map(|r| (r.stage, r.round, r.annotated))
            .collect();
        budgets.sort();
        budgets.dedup();
        let mut s = format!("| annotated {} |", self.unit);
        for a in &arms {
            let _ = write!(s, " {a} |");
        }
        s += "\n|---|";
        s += &"---|".repeat(arms.len());
        s += "\n";
        for &(stage, round, n) in &budgets {
            let _ = write!(s, "| {n}{} |", if round == 0 { " (initial)" } else { "" });
            for a in &arms {
                match self
                    .summary
                    .iter()
                    .find(|r| r.arm == *a && r.stage == stage && r.round == round)
                {
                    Some(r) => {
                        let _ = write!(s, " {:.3} ± {:.3} |", r.dice_mean, r.dice_sd);
                    }
                    None => s += " |",
                }
            }
            s += "\n";
        }
        s += &self.comparisons_markdown(&budgets);
        s
    }

    /// Each arm against random, paired by repeat, at every budget and over the whole curve.
    fn comparisons_markdown(&self, budgets: &[(usize, usize, usize)]) -> String {
        let mut s = String::new();
        // One column per (arm, versus), in the order they were made.
        let mut columns: Vec<(Arm, Arm)> = Vec::new();
        for c in &self.comparisons {
            if !columns.contains(&(c.arm, c.versus)) {
                columns.push((c.arm, c.versus));
            }
        }
        if columns.is_empty() {
            return s;
        }
        let cell = |p: &crate::stats::Paired| {
            let ci = p
                .ci95
                .map(|[lo, hi]| format!(" [{lo:+.3}, {hi:+.3}]"))
                .unwrap_or_default();
            let pv = p
                .p_wilcoxon
                .map(|v| format!(", p = {v:.3}"))
                .unwrap_or_default();
            format!(
                "{:+.3}{ci}{pv} ({}/{}/{})",
                p.mean_diff, p.wins, p.ties, p.losses
            )
        };
        let _ = write!(
            s,
            "\npaired by repeat: mean difference [95 % t interval], Wilcoxon signed-rank p \
             (wins/ties/losses)\n\n| annotated {} |",
            self.unit
        );
        for (a, v) in &columns {
            let _ = write!(s, " {a} − {v} |");
        }
        s += "\n|---|";
        s += &"---|".repeat(columns.len());
        s += "\n";
        for &(stage, round, n) in budgets.iter().filter(|b| b.1 > 0) {
            let _ = write!(s, "| {n} |");
            for &(a, v) in &columns {
                match self
                    .comparisons
                    .iter()
                    .find(|c| (c.arm, c.versus) == (a, v) && c.stage == stage && c.round == round)
                {
                    Some(c) => {
                        let _ = write!(s, " {} |", cell(&c.paired));
                    }
                    None => s += " |",
                }
            }
            s += "\n";
        }
        s += "\narea under the budget curve (normalised to [0, 1]):\n\n| arm | AUBC [95 %] | − random |\n|---|---|---|\n";
        for a in &self.aubc {
            let ci = a
                .ci95
                .map(|[lo, hi]| format!(" [{lo:.3}, {hi:.3}]"))
                .unwrap_or_default();
            let vs = a.paired.as_ref().map(cell).unwrap_or_default();
            let _ = writeln!(s, "| {} | {:.3}{ci} | {vs} |", a.arm, a.mean);
        }
        s
    }

    /// Writes results.csv, results.json, dice_vs_budget.png and .svg into `out`.
    /// The whole report as Markdown, ready to paste: a heading with the session, its settings
    /// and the machine (`about`), then every table.
    pub fn document(&self, cfg: &SessionConfig, about: &str) -> String {
        let e = &cfg.experiment;
        let mut s = format!(
            "# {about}\n\n{}, seed {}; UNet depth {} base {}, {}+{} epochs; VAE latent {}, {} \
             epochs; cone {}°, α {}\n\n",
            e.describe(),
            e.seed,
            cfg.unet.depth,
            cfg.unet.base,
            cfg.unet.epochs_initial,
            cfg.unet.epochs_per_round,
            cfg.vae.latent,
            cfg.vae.epochs,
            cfg.selection.cone_degrees,
            cfg.selection.alpha,
        );
        s += &self.markdown();
        if !self.selection.is_empty() {
            let _ = write!(s, "\n```text\n{}```\n", self.selection_text());
        }
        if !self.timings.is_empty() {
            let _ = write!(s, "\n```text\n{}```\n", self.timings_text());
        }
        s
    }

    /// Writes results.csv, results.json, report.md (see `document`), dice_vs_budget.png and
    /// .svg into `out`.
    pub fn write(&self, cfg: &SessionConfig, out: &Path, about: &str) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let md = out.join("report.md");
        write_atomic(&md, self.document(cfg, about).as_bytes())?;
        let csv = out.join("results.csv");
        write_atomic(&csv, self.csv().as_bytes())?;
        let json = out.join("results.json");
        write_atomic(&json, &serde_json::to_vec_pretty(self)?)?;
        let png = out.join("dice_vs_budget.png");
        let svg = out.join("dice_vs_budget.svg");
        register_font();
        let series = self.series(cfg);
        // Drawn into temporary files of the same extension (the backend picks the format by
        // it) and renamed into place, like every other file the session writes.
        write_atomic_with(&png, |tmp| {
            draw(
                BitMapBackend::new(tmp, (900, 560)).into_drawing_area(),
                &series,
                self.unit,
            )
            .with_context(|| format!("cannot draw {}", png.display()))
        })?;
        write_atomic_with(&svg, |tmp| {
            draw(
                SVGBackend::new(tmp, (900, 560)).into_drawing_area(),
                &series,
                self.unit,
            )
            .with_context(|| format!("cannot draw {}", svg.display()))
        })?;
        Ok(vec![csv, json, md, png, svg])
    }

    /// Per arm: (annotated, mean, sd) points in budget order. The budgets protocol plots each
    /// budget's final point; the rounds protocol every round, the shared start included.
    pub fn series(&self, cfg: &SessionConfig) -> Vec<Curve> {
        let mut out: Vec<Curve> = Vec::new();
        for &arm in &cfg.experiment.arms {
            let mut pts: Vec<(f64, f64, f64)> = self
                .summary
                .iter()
                .filter(|r| {
                    r.arm == arm && (cfg.experiment.protocol == Protocol::Rounds || r.round > 0)
                })
                .map(|r| (r.annotated as f64, r.dice_mean, r.dice_sd))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            out.push((arm, pts));
        }
        out
    }
}

/// One arm's curve: (annotated, mean Dice, sd) points in budget order.
pub type Curve = (Arm, Vec<(f64, f64, f64)>);

/// The annotation budgets the curves span (a unit range around a single budget).
pub fn budget_range(series: &[Curve]) -> (f64, f64) {
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if x0 > x1 {
        (0.0, 1.0)
    } else if x0 == x1 {
        (x0 - 1.0, x1 + 1.0)
    } else {
        (x0, x1)
    }
}

/// Okabe–Ito colours, distinguishable with colour-vision deficiency.
pub fn arm_colour(arm: Arm) -> RGBColor {
    match arm {
        Arm::Random => RGBColor(230, 159, 0),
        Arm::Proposed => RGBColor(0, 114, 178),
        Arm::Oracle => RGBColor(0, 158, 115),
        Arm::Entropy => RGBColor(213, 94, 0),
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[Curve],
    unit: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1) = budget_range(series);
    let pad = (x1 - x0) * 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("Test Dice against annotation budget", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), 0.0..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(format!("annotated {unit}"))
        .y_desc("test Dice, mean ± sd")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (arm, pts) in series {
        let c = arm_colour(*arm);
        if pts.is_empty() {
            continue;
        }
        let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, (p.1 + p.2).min(1.0))).collect();
        band.extend(pts.iter().rev().map(|p| (p.0, (p.1 - p.2).max(0.0))));
        chart
            .draw_series(std::iter::once(Polygon::new(band, c.mix(0.18))))
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(3),
            ))
            .map_err(e)?
            .label(arm.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(log: &str) -> BTreeMap<String, f64> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, log).unwrap();
        Report::default().with_timings(&[path]).timings
    }

    fn close(t: &BTreeMap<String, f64>, label: &str, want: f64) {
        let got = t.get(label).copied().unwrap_or(f64::NAN);
        assert!(
            (got - want).abs() < 1e-9,
            "{label}: {got} vs {want} in {t:?}"
        );
    }

    /// Two lanes' training steps interleaved in one log (as `--devices` writes it): each step is
    /// matched by its index, its evaluation and checkpoints split off.
    #[test]
    fn interleaved_lanes_are_matched_by_step_index() {
        let log = r#"{"event":"started","session":"s","device":"cpu","steps_done":5,"steps_total":9,"time":0.0,"data_load_s":2.5}
{"event":"step_started","index":5,"total":9,"phase":"training","arm":"random","description":"d","time":10.0}
{"event":"step_started","index":6,"total":9,"phase":"training","arm":"oracle","description":"d","time":10.5}
{"event":"epoch_done","index":5,"phase":"training","arm":"random","epoch":1,"epochs":1,"loss":0.5,"time":14.0,"checkpoint_s":0.5}
{"event":"epoch_done","index":6,"phase":"training","arm":"oracle","epoch":1,"epochs":1,"loss":0.5,"time":15.0,"checkpoint_s":0.25}
{"event":"step_done","index":5,"time":16.0,"seconds":6.0,"evaluation_s":1.5}
{"event":"step_done","index":6,"time":17.0,"seconds":6.5,"evaluation_s":2.0}
{"event":"finished","steps_total":9,"time":17.0}
"#;
        let t = timings(log);
        close(&t, IO_DATA, 2.5);
        close(&t, IO_CHECKPOINTS, 0.75);
        close(&t, "training: random", 4.0);
        close(&t, "evaluation: random", 1.5);
        close(&t, "training: oracle", 4.25);
        close(&t, "evaluation: oracle", 2.0);
    }

    /// A log from before step_done: a step lasts until the next one starts; what follows its
    /// last epoch is evaluation.
    #[test]
    fn old_logs_are_timed_by_the_next_step() {
        let log = r#"{"event":"step_started","index":0,"total":2,"phase":"vae","arm":null,"description":"d","time":0.0}
{"event":"epoch_done","index":0,"phase":"vae","arm":null,"epoch":1,"epochs":1,"loss":0.5,"time":3.0}
{"event":"step_started","index":1,"total":2,"phase":"training","arm":"proposed","description":"d","time":4.0}
{"event":"epoch_done","index":1,"phase":"training","arm":"proposed","epoch":1,"epochs":1,"loss":0.5,"time":9.0}
{"event":"stopped","steps_done":1,"steps_total":2,"time":10.0}
{"event":"epoch_d
"#;
        let t = timings(log);
        close(&t, "vae", 4.0);
        close(&t, "training: proposed", 5.0);
        close(&t, "evaluation: proposed", 1.0);
    }
}
