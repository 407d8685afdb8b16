//! `suggestive export`: the suggested samples, to hand to annotators.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use super::config::Arm;
use super::pool::Pool;
use super::Session;
use crate::data::Dataset;

#[derive(Debug, Clone, Serialize)]
pub struct ExportRow {
    pub arm: Arm,
    pub repeat: usize,
    pub stage: usize,
    pub round: usize,
    /// Order within the round.
    pub rank: usize,
    pub patient: String,
    /// Image-wise: the slice (index within the patient's kept slices) and its context slices.
    pub slice: Option<usize>,
    pub context: Vec<usize>,
    pub distance: Option<f64>,
    pub angle_deg: Option<f64>,
    pub fallback: bool,
    /// Oracle: the current model's Dice on the sample.
    pub dice: Option<f64>,
}

pub fn rows(s: &Session, ds: &Dataset, arm: Option<Arm>, round: Option<usize>) -> Vec<ExportRow> {
    let mut out = Vec::new();
    for rec in &s.state.picks {
        if arm.is_some_and(|a| a != rec.arm) || round.is_some_and(|k| k != rec.round) {
            continue;
        }
        let pool = Pool::new(
            ds,
            &s.state.repeats[rec.repeat],
            s.config.experiment.granularity,
        );
        for (rank, p) in rec.picks.iter().enumerate() {
            let v = pool.pick_view(p);
            out.push(ExportRow {
                arm: rec.arm,
                repeat: rec.repeat + 1,
                stage: rec.stage + 1,
                round: rec.round,
                rank: rank + 1,
                patient: v.patient,
                slice: v.slice,
                context: pool.context(p.sample),
                distance: v.distance,
                angle_deg: v.angle_deg,
                fallback: v.fallback,
                dice: v.dice,
            });
        }
    }
    out
}

pub fn write(rows: &[ExportRow], out: &Path) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    let bytes = match ext {
        "json" => serde_json::to_vec_pretty(rows)?,
        "csv" => {
            let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
            let mut s = String::from("arm,repeat,stage,round,rank,patient,slice,context,distance,angle_deg,fallback,dice\n");
            for r in rows {
                let ctx: Vec<String> = r.context.iter().map(|c| c.to_string()).collect();
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{},{}",
                    r.arm,
                    r.repeat,
                    r.stage,
                    r.round,
                    r.rank,
                    r.patient,
                    r.slice.map(|x| x.to_string()).unwrap_or_default(),
                    ctx.join(";"),
                    opt(r.distance),
                    opt(r.angle_deg),
                    r.fallback,
                    opt(r.dice)
                );
            }
            s.into_bytes()
        }
        _ => bail!("{}: the output must end in .csv or .json", out.display()),
    };
    super::store::write_atomic(out, &bytes)
}
