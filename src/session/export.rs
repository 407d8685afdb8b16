//! `suggestive export`: the suggested samples, to hand to annotators: which case, where its
//! files are, and for image-wise picks the slice as the original NIfTI volume numbers it.

use std::path::{Path, PathBuf};

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
    /// The case's image files, one per modality in the session's channel order (a 4D file that
    /// holds them all, once), and its segmentation.
    pub images: Vec<PathBuf>,
    pub label: Option<PathBuf>,
    /// Image-wise: the slice (index within the patient's kept slices) and its context slices.
    pub slice: Option<usize>,
    pub context: Vec<usize>,
    /// Image-wise: the same slices as z in the original volume (what a viewer shows: the kept
    /// index plus the slices dropped at the bottom).
    pub z: Option<usize>,
    pub context_z: Vec<usize>,
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
            let files = ds.files_of(&v.patient);
            let mut images: Vec<PathBuf> = Vec::new();
            for m in &ds.preprocessing().modalities {
                if let Some(f) = files.and_then(|f| f.images.get(m)) {
                    if !images.contains(&f.path) {
                        images.push(f.path.clone());
                    }
                }
            }
            // Kept slices start after the dropped ones; down-sampling and padding are in-plane.
            let first_kept = ds
                .patients()
                .iter()
                .find(|i| i.id == v.patient)
                .map_or(0, |i| ds.preprocessing().kept_slices(i.dims[2]).start);
            let context = pool.context(p.sample);
            out.push(ExportRow {
                arm: rec.arm,
                repeat: rec.repeat + 1,
                stage: rec.stage + 1,
                round: rec.round,
                rank: rank + 1,
                images,
                label: files.and_then(|f| f.seg.clone()),
                z: v.slice.map(|k| k + first_kept),
                context_z: context.iter().map(|k| k + first_kept).collect(),
                patient: v.patient,
                slice: v.slice,
                context,
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
        "csv" => to_csv(rows)?,
        _ => bail!("{}: the output must end in .csv or .json", out.display()),
    };
    super::files::write_atomic(out, &bytes)
}

/// One row per pick; lists (files, context slices) are `;`-separated within their field, and
/// the csv crate quotes fields that hold commas or quotes.
fn to_csv(rows: &[ExportRow]) -> Result<Vec<u8>> {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let join = |v: &[usize]| {
        v.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(";")
    };
    let num = |v: Option<usize>| v.map(|x| x.to_string()).unwrap_or_default();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "arm",
        "repeat",
        "stage",
        "round",
        "rank",
        "patient",
        "slice",
        "context",
        "z",
        "context_z",
        "images",
        "label",
        "distance",
        "angle_deg",
        "fallback",
        "dice",
    ])?;
    for r in rows {
        let images: Vec<String> = r.images.iter().map(|p| p.display().to_string()).collect();
        w.write_record([
            r.arm.to_string(),
            r.repeat.to_string(),
            r.stage.to_string(),
            r.round.to_string(),
            r.rank.to_string(),
            r.patient.clone(),
            num(r.slice),
            join(&r.context),
            num(r.z),
            join(&r.context_z),
            images.join(";"),
            r.label
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            opt(r.distance),
            opt(r.angle_deg),
            r.fallback.to_string(),
            opt(r.dice),
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}
