//! The report as text: results.csv, the Markdown tables of report.md, and the selection and
//! timing summaries.

use std::fmt::Write as _;

use super::Report;
use crate::session::config::{Arm, SessionConfig};

/// The paired difference the report says how many repeats would resolve (`repeats_needed`).
const TARGET_MDD: f64 = 0.03;

/// `+0.031 [-0.004, +0.066], p = 0.080`: a paired difference with its interval and p-value.
pub fn paired_text(p: &crate::stats::Paired) -> String {
    let ci = p
        .ci95
        .map(|[lo, hi]| format!(" [{lo:+.3}, {hi:+.3}]"))
        .unwrap_or_default();
    let pv = p
        .p_wilcoxon
        .map(|v| format!(", p = {v:.3}"))
        .unwrap_or_default();
    format!("{:+.3}{ci}{pv}", p.mean_diff)
}

impl Report {
    /// One line per arm: picks, cone fallbacks, tumour content, and the proposed arm's steps.
    pub fn selection_text(&self) -> String {
        let mut s = String::from("how the picks came about (all repeats and rounds):\n");
        for a in &self.selection {
            let _ = write!(
                s,
                "  {:<9} {} picks in {} rounds, {}{} cone fallbacks",
                a.arm.to_string(),
                a.picks,
                a.rounds,
                a.tumour_picks
                    .map_or(String::new(), |n| format!("{n} with tumour, ")),
                a.fallbacks
            );
            if let Some(n) = a.context_picks {
                let _ = write!(s, ", {n} next to a slice already labelled or picked");
            }
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
        if self.evaluation_off && self.summary.is_empty() {
            let mut s = String::from(
                "evaluation off: no labelled test case (none of the data set's cases has a segmentation, or experiment.test_fraction = 0), so no Dice is measured\n",
            );
            s += &self.effort_markdown();
            return s;
        }
        let weak: Vec<(usize, &str)> = self
            .manifold
            .iter()
            .filter_map(|m| Some((m.repeat, m.warning.as_deref()?)))
            .collect();
        let mut s = format!("| annotated {} |", self.unit);
        for a in &arms {
            match weak.is_empty() || !a.uses_latent_space() {
                true => write!(s, " {a} |"),
                false => write!(s, " {a} (weak latent space) |"),
            }
            .expect("writes to a string");
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
        if !weak.is_empty() {
            s += "\n";
        }
        for (repeat, warning) in &weak {
            let _ = writeln!(s, "**Warning**, repeat {}: {warning}.  ", repeat + 1);
        }
        s += &self.full_data_markdown();
        s += &self.comparisons_markdown(&budgets);
        s += &self.fallbacks_markdown();
        s += &self.manifold_markdown();
        s += &self.vae_training_markdown();
        s += &self.effort_markdown();
        s
    }

    /// Labelled by people: per round, how much the annotators changed the predictions.
    fn effort_markdown(&self) -> String {
        if self.annotation_effort.is_empty() {
            return String::new();
        }
        let mut s = String::from(concat!(
            "\nannotation effort: what the annotators changed of the model's prediction, per round ",
            "(Dice 1 and 0 voxels: accepted as predicted)\n\n",
            "| round | cases | mean Dice (prediction, annotation) | voxels changed per case | of the voxels asked for |\n",
            "|---|---|---|---|---|\n",
        ));
        for e in &self.annotation_effort {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.0} | {:.2} % |",
                e.round,
                e.cases,
                e.mean_dice,
                e.changed_per_case,
                100.0 * e.changed_fraction
            );
        }
        s
    }

    /// The full-data reference and, per arm, the smallest budget within δ of it.
    fn full_data_markdown(&self) -> String {
        let Some(f) = &self.full_data else {
            return String::new();
        };
        let ci = f
            .ci95
            .map(|[lo, hi]| format!(" [95 %: {lo:.3}, {hi:.3}]"))
            .unwrap_or_default();
        let mut s = format!(
            "\nfull-data reference (all {} {} of the pool, {} repeat{}): {:.3} ± {:.3}{ci}\n\n\
             | arm | smallest budget within {} of full data | of the pool | 95 % bootstrap interval |\n\
             |---|---|---|---|\n",
            f.annotated,
            self.unit,
            f.repeats,
            if f.repeats == 1 { "" } else { "s" },
            f.mean,
            f.sd,
            self.delta
        );
        for (arm, b) in &self.budget_to_full {
            let _ = match b {
                Some(b) => writeln!(
                    s,
                    "| {arm} | {} | {:.0} % | {} |",
                    b.budget,
                    100.0 * b.fraction,
                    b.interval_text()
                ),
                None => writeln!(s, "| {arm} | not reached | | |"),
            };
        }
        s
    }

    /// `proposed`'s empty cones per round: how many picks fell back.
    fn fallbacks_markdown(&self) -> String {
        if self.fallback_rates.is_empty() {
            return String::new();
        }
        let mut s = String::from(
            "\nproposed: picks whose cone was empty (fallbacks), all repeats\n\n\
             | stage | round | picks | fallbacks | rate |\n|---|---|---|---|---|\n",
        );
        for f in &self.fallback_rates {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} % |",
                f.stage + 1,
                f.round,
                f.picks,
                f.fallbacks,
                100.0 * f.rate
            );
        }
        s
    }

    /// Per repeat: the VAE's training on its validation slices, and the epoch kept.
    fn vae_training_markdown(&self) -> String {
        if self.vae_training.is_empty() {
            return String::new();
        }
        let mut s = String::from(
            "\nthe VAE's training, measured after each epoch on pool patients held out of it \
             (vae.validation); the epoch with the lowest validation error is kept\n\n\
             | repeat | epochs | stopped | kept epoch | validation MSE | variance explained | variance explained per epoch |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for v in &self.vae_training {
            let kept = v
                .best_epoch
                .and_then(|b| v.epochs.iter().find(|e| e.epoch == b));
            let curve: Vec<String> = v
                .epochs
                .iter()
                .map(|e| format!("{:.0}", 100.0 * e.variance_explained))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} % |",
                v.repeat + 1,
                v.epochs.len(),
                match v.ended {
                    "plateau" => "on a plateau",
                    "epochs" => "at vae.epochs",
                    _ => "still training",
                },
                kept.map_or("–".into(), |e| e.epoch.to_string()),
                kept.map_or("–".into(), |e| format!("{:.4}", e.validation_mse)),
                kept.map_or("–".into(), |e| format!(
                    "{:.0} %",
                    100.0 * e.variance_explained
                )),
                curve.join(", ")
            );
        }
        s
    }

    /// Per repeat: the VAE's reconstruction against the mean image, and its latent dimensions.
    fn manifold_markdown(&self) -> String {
        if self.manifold.is_empty() {
            return String::new();
        }
        let mut s = String::from(
            "\nthe VAE's latent space over the pool (reconstruction from the encoder mean; KL in \
             nats; active: variance of the mean above 0.01)\n\n\
             | repeat | recon MSE | mean-image MSE | variance explained | active dims | KL per dim |\n\
             |---|---|---|---|---|---|\n",
        );
        for m in &self.manifold {
            let kl: Vec<String> = m
                .stats
                .kl_per_dim
                .iter()
                .map(|k| format!("{k:.2}"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.4} | {:.0} % | {} of {} | {} |",
                m.repeat + 1,
                m.stats.recon_mse,
                m.stats.mean_image_mse,
                100.0 * m.stats.variance_explained,
                m.stats.active_dims,
                m.stats.kl_per_dim.len(),
                kl.join(", ")
            );
        }
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
            let mdd = p.mdd80.map(|m| format!("; MDD {m:.3}")).unwrap_or_default();
            format!(
                "{} ({}/{}/{}{mdd})",
                paired_text(p),
                p.wins,
                p.ties,
                p.losses
            )
        };
        let _ = write!(
            s,
            "\npaired by repeat: mean difference [95 % t interval], Wilcoxon signed-rank p \
             (wins/ties/losses; MDD: the smallest difference these repeats detect with 80 % \
             power at 5 %)\n\n| annotated {} |",
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
        s += &self.repeats_needed(&columns);
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

    /// How many repeats would bring each comparison's MDD at its largest budget down to
    /// `TARGET_MDD`, with the spread seen so far.
    fn repeats_needed(&self, columns: &[(Arm, Arm)]) -> String {
        let mut parts = Vec::new();
        for &(a, v) in columns {
            let last = self
                .comparisons
                .iter()
                .filter(|c| (c.arm, c.versus) == (a, v))
                .max_by_key(|c| (c.budget, c.stage, c.round));
            let Some(c) = last else { continue };
            let Some(sd) = c.paired.sd_diff else { continue };
            let n = crate::stats::repeats_for(sd, TARGET_MDD)
                .map_or("over 10,000".to_string(), |n| n.to_string());
            parts.push(format!("{a} − {v} at {}: {n}", c.budget));
        }
        if parts.is_empty() {
            return String::new();
        }
        format!(
            "\nrepeats for an MDD of {TARGET_MDD} (80 % power, 5 %), from the spread so far: {}\n",
            parts.join("; ")
        )
    }

    /// The whole report as Markdown, ready to paste: a heading with the session, its settings
    /// and the machine (`about`), then every table.
    pub fn document(&self, cfg: &SessionConfig, about: &str) -> String {
        let e = &cfg.experiment;
        let mut s = format!(
            "# {about}\n\n{}, seed {}; UNet depth {} base {}, {}+{} epochs; VAE latent {}, {} \
             epochs; cone {}° (fallback {}), α {}\n\n",
            e.describe(),
            e.seed,
            cfg.unet.depth,
            cfg.unet.base,
            cfg.unet.epochs_initial,
            cfg.unet.epochs_per_round,
            cfg.vae.latent,
            cfg.vae.epochs,
            cfg.selection.cone_degrees,
            cfg.selection.fallback,
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
}
