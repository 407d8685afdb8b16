//! results_long.csv: the tidy form, one row per repeat × arm × budget × test case, with the
//! case's ID and site, its whole-tumour Dice and HD95 (mm). pandas, R and seaborn read it as is.

use anyhow::Result;
use serde::Serialize;

use crate::session::config::Arm;
use crate::session::state::SessionState;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseRow {
    /// From 1, as everywhere a person reads it.
    pub repeat: usize,
    pub arm: Arm,
    pub stage: usize,
    pub round: usize,
    /// Annotated samples of the model evaluated (the pool for `full`).
    pub budget: usize,
    pub case: String,
    pub site: String,
    pub dice: f64,
    /// Empty where undefined (exactly one of prediction and truth empty).
    pub hd95_mm: Option<f64>,
}

/// Every evaluated model's per-case results. Sessions started before case IDs were recorded
/// name a case by its index in the data set (`#12`), and have no HD95.
pub fn rows(state: &SessionState) -> Vec<CaseRow> {
    let mut out = Vec::new();
    for r in &state.results {
        let Some(data) = state.repeats.get(r.repeat) else {
            continue;
        };
        for (i, &dice) in r.dice.iter().enumerate() {
            let (case, site) = match data.test_cases.get(i) {
                Some((id, site)) => (id.clone(), site.clone()),
                None => (
                    format!("#{}", data.test.get(i).copied().unwrap_or(i)),
                    String::new(),
                ),
            };
            out.push(CaseRow {
                repeat: r.repeat + 1,
                arm: r.arm,
                stage: r.stage + 1,
                round: r.round,
                budget: r.annotated,
                case,
                site,
                dice,
                hd95_mm: r.hd95.get(i).copied().flatten(),
            });
        }
    }
    out
}

/// The rows as CSV, with a header.
pub fn csv(rows: &[CaseRow]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        w.write_record([
            "repeat", "arm", "stage", "round", "budget", "case", "site", "dice", "hd95_mm",
        ])?;
    }
    for r in rows {
        w.serialize(r)?;
    }
    Ok(w.into_inner()?)
}
