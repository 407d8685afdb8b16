//! `suggestive report`: results per arm, repeat and round as CSV and JSON, a summary over
//! repeats, paired comparisons between arms, the full-data reference, and a plot of test Dice
//! against the annotation budget (PNG and SVG). The text tables, the time breakdown and the
//! plot each live in their own file beside this one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::compare::{self, ArmAubc, Comparison};
use super::config::{Arm, Granularity, SessionConfig};
use super::files::write_atomic;
use super::state::{PickRecord, ResultRow, SessionState};
use crate::engine::eval::mean_sd;
use crate::engine::manifold::ManifoldStats;

mod cases;
mod plot;
mod reference;
mod tables;
mod timings;

pub use cases::CaseRow;
pub use reference::{BudgetToFull, FullData, DEFAULT_DELTA};
pub use tables::paired_text;

pub use plot::{arm_colour, budget_range, Curve, CurvePoint, FullLine};

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

#[cfg(test)]
impl Row {
    /// A result of stage 0 with `dice` as its mean, for the statistics' tests.
    pub(crate) fn point(arm: Arm, repeat: usize, round: usize, annotated: usize, dice: f64) -> Row {
        Row {
            arm,
            repeat,
            stage: 0,
            round,
            annotated,
            viewed: annotated,
            dice_mean: dice,
            dice_sd: 0.0,
            slice_dice_mean: 0.0,
            collapsed: false,
        }
    }
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
    /// 95 % t interval of the mean over repeats (none under two repeats).
    pub ci95: Option<[f64; 2]>,
}

/// How often `proposed`'s cones were empty in one round (all repeats): picks that fell back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FallbackRate {
    pub arm: Arm,
    pub stage: usize,
    pub round: usize,
    pub picks: usize,
    pub fallbacks: usize,
    pub rate: f64,
}

impl FallbackRate {
    fn of(records: &[PickRecord]) -> Vec<FallbackRate> {
        let mut by_round: BTreeMap<(Arm, usize, usize), (usize, usize)> = BTreeMap::new();
        for r in records.iter().filter(|r| r.arm == Arm::Proposed) {
            let e = by_round.entry((r.arm, r.stage, r.round)).or_default();
            e.0 += r.picks.len();
            e.1 += r.fallbacks;
        }
        by_round
            .into_iter()
            .map(|((arm, stage, round), (picks, fallbacks))| FallbackRate {
                arm,
                stage,
                round,
                picks,
                fallbacks,
                rate: fallbacks as f64 / picks.max(1) as f64,
            })
            .collect()
    }
}

/// Labelled by people: what the annotators changed of the model's predictions in one round
/// (the initial set has no prediction, so no row).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnotationEffort {
    pub round: usize,
    pub cases: usize,
    /// Mean Dice between prediction and annotation over the cases: 1 means nothing changed.
    pub mean_dice: f64,
    /// Voxels changed, in all and per case, over the voxels asked for.
    pub changed_voxels: u64,
    pub changed_per_case: f64,
    pub changed_fraction: f64,
}

impl AnnotationEffort {
    /// Per round, from the counted segmentations' efforts.
    pub fn of(state: &SessionState) -> Vec<AnnotationEffort> {
        let mut by_round: BTreeMap<usize, Vec<crate::session::state::Effort>> = BTreeMap::new();
        for d in &state.repeats {
            for a in &d.annotations {
                if let Some(e) = a.effort {
                    by_round.entry(a.round).or_default().push(e);
                }
            }
        }
        by_round
            .into_iter()
            .map(|(round, efforts)| {
                let n = efforts.len();
                let changed: u64 = efforts.iter().map(|e| e.changed_voxels).sum();
                let voxels: u64 = efforts.iter().map(|e| e.voxels).sum();
                AnnotationEffort {
                    round,
                    cases: n,
                    mean_dice: efforts.iter().map(|e| e.dice).sum::<f64>() / n as f64,
                    changed_voxels: changed,
                    changed_per_case: changed as f64 / n as f64,
                    changed_fraction: changed as f64 / voxels.max(1) as f64,
                }
            })
            .collect()
    }
}

/// One repeat's VAE training, epoch by epoch on its validation slices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaeTraining {
    pub repeat: usize,
    /// The epoch kept (the lowest validation error).
    pub best_epoch: Option<usize>,
    /// How its training ended: `plateau` (`vae.patience` epochs without a lower validation
    /// error), `epochs` (it trained `vae.epochs`), or `training` (not ended yet).
    pub ended: &'static str,
    pub epochs: Vec<crate::engine::manifold::VaeEpoch>,
}

/// One repeat's manifold statistics (see `engine::manifold`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepeatManifold {
    pub repeat: usize,
    #[serde(flatten)]
    pub stats: ManifoldStats,
    /// Set when the latent space is too weak for the arms that pick in it.
    pub warning: Option<String>,
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

/// One arm's picks over the whole session: how many, how many were cone fallbacks (no
/// candidate in the cone; what was taken instead is `selection.fallback`), how many contain
/// tumour, and for the proposed arm how its gradient steps were computed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectionSummary {
    pub arm: Arm,
    pub rounds: usize,
    pub picks: usize,
    pub fallbacks: usize,
    /// `None`: not known when picked (a session labelled by people).
    pub tumour_picks: Option<usize>,
    /// Directions per path (float32 / float64 / central difference), summed over rounds.
    pub direction_methods: BTreeMap<String, usize>,
    /// The median over rounds of each round's median relative step ‖αg‖/‖x‖.
    pub median_rel_dx: Option<f64>,
    pub zero_directions: usize,
    /// Image-wise: picks next to a slice labelled before them or to another pick of their round.
    pub context_picks: Option<usize>,
}

impl SelectionSummary {
    fn of(records: &[PickRecord]) -> Vec<SelectionSummary> {
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
                    context_picks: mine.iter().map(|r| r.context_picks).sum(),
                }
            })
            .collect()
    }
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
    /// The UNet trained on the whole pool, over repeats (sessions with the `full` arm).
    pub full_data: Option<FullData>,
    /// The headline: per arm, the smallest budget within `delta` of `full_data`'s mean.
    pub delta: f64,
    pub budget_to_full: BTreeMap<Arm, Option<BudgetToFull>>,
    /// `proposed`'s empty cones, per round.
    pub fallback_rates: Vec<FallbackRate>,
    /// Per repeat: how much of the pool the VAE's latent space holds.
    pub manifold: Vec<RepeatManifold>,
    /// Per repeat: the VAE's training measured on its validation slices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vae_training: Vec<VaeTraining>,
    /// Labelled by people: the annotators' corrections per round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotation_effort: Vec<AnnotationEffort>,
    /// Labelled by people without a labelled test case: no Dice is measured.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub evaluation_off: bool,
    /// One row per repeat, arm, budget and test case (results_long.csv).
    #[serde(skip)]
    pub cases: Vec<CaseRow>,
}

impl Report {
    pub fn new(cfg: &SessionConfig, state: &SessionState) -> Report {
        let mut report = Report::from_results(cfg, &state.results);
        report.selection = SelectionSummary::of(&state.picks);
        report.fallback_rates = FallbackRate::of(&state.picks);
        report.manifold = state
            .repeats
            .iter()
            .enumerate()
            .filter_map(|(repeat, d)| {
                let stats = d.manifold.clone()?;
                let warning = cfg.weak_manifold(&stats);
                Some(RepeatManifold {
                    repeat,
                    stats,
                    warning,
                })
            })
            .collect();
        report.vae_training = state
            .repeats
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.vae_epochs.is_empty())
            .map(|(repeat, d)| VaeTraining {
                repeat,
                best_epoch: crate::engine::manifold::best_epoch(&d.vae_epochs),
                ended: if crate::engine::manifold::plateaued(&d.vae_epochs, cfg.vae.patience) {
                    "plateau"
                } else if d.vae_epochs.len() >= cfg.vae.epochs {
                    "epochs"
                } else {
                    "training"
                },
                epochs: d.vae_epochs.clone(),
            })
            .collect();
        report.cases = cases::rows(state);
        report.annotation_effort = AnnotationEffort::of(state);
        report.evaluation_off = state.evaluation_off();
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
            .filter(|((arm, _, _), _)| arm.is_strategy())
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
                    ci95: crate::stats::t_interval(&means, 0.95),
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
        let arms = &cfg.experiment.strategies();
        let protocol = cfg.experiment.protocol;
        Report {
            unit,
            selection: Vec::new(),
            comparisons: compare::comparisons(&rows, arms, Arm::Random),
            aubc: compare::aubc(&rows, arms, protocol, Arm::Random),
            full_data: reference::full_data(&rows),
            delta: DEFAULT_DELTA,
            budget_to_full: reference::budget_to_full(&rows, arms, protocol, DEFAULT_DELTA),
            fallback_rates: Vec::new(),
            manifold: Vec::new(),
            vae_training: Vec::new(),
            annotation_effort: Vec::new(),
            evaluation_off: false,
            cases: Vec::new(),
            rows,
            summary,
            paired,
            timings: BTreeMap::new(),
        }
    }

    /// The headline with `delta` instead of the default (`report --delta`).
    pub fn with_delta(mut self, cfg: &SessionConfig, delta: f64) -> Report {
        let arms = cfg.experiment.strategies();
        self.delta = delta;
        self.budget_to_full =
            reference::budget_to_full(&self.rows, &arms, cfg.experiment.protocol, delta);
        self
    }

    /// Adds the comparisons of every arm with each of `arms` (besides random, always there).
    pub fn versus(mut self, cfg: &SessionConfig, arms: &[Arm]) -> Report {
        for &v in arms.iter().filter(|&&v| v != Arm::Random) {
            let more = compare::comparisons(&self.rows, &cfg.experiment.strategies(), v);
            self.comparisons.extend(more);
        }
        self
    }

    /// Writes results.csv, results.json, report.md (see `document`), dice_vs_budget.png and
    /// .svg into `out`.
    pub fn write(&self, cfg: &SessionConfig, out: &Path, about: &str) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let md = out.join("report.md");
        write_atomic(&md, self.document(cfg, about).as_bytes())?;
        let csv = out.join("results.csv");
        write_atomic(&csv, self.csv().as_bytes())?;
        let long = out.join("results_long.csv");
        write_atomic(&long, &cases::csv(&self.cases)?)?;
        let json = out.join("results.json");
        write_atomic(&json, &serde_json::to_vec_pretty(self)?)?;
        if self.rows.is_empty() {
            // Evaluation off: no curve to draw.
            return Ok(vec![csv, long, json, md]);
        }
        let png = out.join("dice_vs_budget.png");
        let svg = out.join("dice_vs_budget.svg");
        self.write_plots(cfg, &png, &svg)?;
        Ok(vec![csv, long, json, md, png, svg])
    }
}
