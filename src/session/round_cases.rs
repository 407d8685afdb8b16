//! What a round asks annotators for, as the repeat's state records it: round 0 the initial set
//! (the prefix of the seeded order), later rounds the session's arm's picks, each case with its
//! slices image-wise. The work package is written from this, and an import is counted only
//! against it (the worklist file is anyone's to edit).

use anyhow::{Context, Result};

use super::config::Granularity;
use super::plan::stages;
use super::pool::Pool;
use super::Session;
use crate::data::Dataset;
use crate::engine::select::Pick;

/// A case that a round asks for, as the repeat's state records it.
pub struct RecordedCase {
    /// Index into the data set's patients.
    pub patient: usize,
    /// Image-wise: the slices asked for (z of the original volume, ascending); empty: the
    /// whole case.
    pub slices: Vec<usize>,
    /// What picked it (round 0: nothing, the initial set is the seeded order's prefix).
    pub pick: Option<Pick>,
}

/// The cases round `round` of `repeat` asks for, in the order picked: round 0 the initial set
/// (the prefix of the seeded order), later rounds the picks of the session's arm. This, not
/// the worklist file, is what decides which segmentations may be counted.
pub fn recorded_cases(
    session: &Session,
    ds: &Dataset,
    repeat: usize,
    round: usize,
) -> Result<Vec<RecordedCase>> {
    let cfg = &session.config;
    let data = session
        .state
        .repeats
        .get(repeat)
        .filter(|d| !d.train.is_empty())
        .with_context(|| format!("repeat {} has no split yet", repeat + 1))?;
    let (arm, stage) = (cfg.experiment.arms[0], 0);
    let (samples, picks): (Vec<usize>, Vec<Option<Pick>>) = if round == 0 {
        let initial = stages(cfg)[stage].initial.min(data.order.len());
        (data.order[..initial].to_vec(), vec![None; initial])
    } else {
        let rec = session
            .state
            .picks
            .iter()
            .find(|r| r.repeat == repeat && r.stage == stage && r.arm == arm && r.round == round)
            .with_context(|| format!("round {round} has no picks yet"))?;
        (
            rec.picks.iter().map(|p| p.sample).collect(),
            rec.picks.iter().cloned().map(Some).collect(),
        )
    };
    let pool = Pool::new(ds, data, cfg.experiment.granularity);
    let drop_first = ds.preprocessing().drop_first;
    let mut cases: Vec<RecordedCase> = Vec::new();
    for (sample, pick) in samples.into_iter().zip(picks) {
        let slices = pool.sample_slices(&[sample]);
        let patient = ds.patient_index(slices[0]);
        let zs: Vec<usize> = match cfg.experiment.granularity {
            Granularity::Patient => Vec::new(),
            Granularity::Image => {
                let first = ds.patients()[patient].first_slice;
                slices.iter().map(|s| drop_first + s - first).collect()
            }
        };
        match cases.iter_mut().find(|c| c.patient == patient) {
            Some(c) => c.slices.extend(zs),
            None => cases.push(RecordedCase {
                patient,
                slices: zs,
                pick,
            }),
        }
    }
    for c in &mut cases {
        c.slices.sort_unstable();
        c.slices.dedup();
    }
    Ok(cases)
}
