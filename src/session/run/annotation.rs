//! A session labelled by people, in the run: each round's work package is written when the
//! round's cases are known, and a step that trains on labels waits until the annotators'
//! segmentations for its round are in (taken from the inbox, checked and counted). The pool is
//! trained on what they gave, never on the data set's own segmentations.

use std::sync::Arc;

use anyhow::{bail, Result};

use super::{Runner, EVAL_BATCH};
use crate::data::labels_to_original;
use crate::engine::eval;
use crate::session::annotations::{self, Prediction, RecordedCase, Verdict, WorkItem};
use crate::session::config::Labels;
use crate::session::events::Event;
use crate::session::plan::{previous_model, Step};

/// Whether a step may go on, or waits for annotations.
pub(super) enum Labelled {
    Ready,
    Waiting {
        round: usize,
        received: usize,
        needed: usize,
    },
}

impl Runner {
    pub(super) fn human_labels(&self) -> bool {
        self.cfg().experiment.labels == Labels::Human
    }

    /// The round whose labels `step` trains on, in a session labelled by people.
    pub(super) fn labels_round(&self, step: Step) -> Option<usize> {
        if !self.human_labels() {
            return None;
        }
        match step {
            Step::Init { .. } => Some(0),
            Step::Train { round, .. } => Some(round),
            _ => None,
        }
    }

    /// Takes what is in round `round`'s inbox; `Ready` once every case of its worklist has a
    /// counted segmentation (the pool's masks are then the annotators').
    pub(super) fn await_labels(
        &mut self,
        repeat: usize,
        round: usize,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<Labelled> {
        self.ensure_package(repeat, round)?;
        let items = annotations::worklist(&self.files, round)?.unwrap_or_default();
        let ds = self.ds.clone();
        let taken = annotations::take_inbox(&mut self.session, &ds, repeat, round, false)?;
        for (file, verdict) in taken {
            let (counted, text) = match verdict {
                Verdict::Counted { case, warnings } => {
                    let mut t = format!("round {round}: {case} counted ({})", file.display());
                    for w in warnings {
                        t += &format!("; warning: {w}");
                    }
                    (true, t)
                }
                Verdict::AlreadyCounted { case } => (
                    true,
                    format!(
                        "round {round}: {case} was counted before ({})",
                        file.display()
                    ),
                ),
                Verdict::Refused(why) => (
                    false,
                    format!("round {round}: refused, moved to rejected/: {why}"),
                ),
            };
            self.emit(
                Event::Annotation {
                    repeat,
                    round,
                    counted,
                    text,
                },
                sink,
            );
        }
        let missing = annotations::missing(&self.session, repeat, round, &items).len();
        if missing > 0 {
            return Ok(Labelled::Waiting {
                round,
                received: items.len() - missing,
                needed: items.len(),
            });
        }
        let counted = self.session.state.repeats[repeat].annotations.len();
        if self.annotated != Some(counted) {
            self.apply_annotations(repeat)?;
        }
        Ok(Labelled::Ready)
    }

    /// Lays the counted segmentations over the pool's masks (and places the pool on the device
    /// again).
    pub(super) fn apply_annotations(&mut self, repeat: usize) -> Result<()> {
        let ds = annotations::annotated_dataset(&self.session, &self.ds, repeat)?;
        self.replace_dataset(ds);
        self.annotated = Some(self.session.state.repeats[repeat].annotations.len());
        Ok(())
    }

    /// Right after the split: reads the data set's segmentations of the test (and source)
    /// cases, the only ones a session labelled by people reads.
    pub(super) fn apply_test_labels(&mut self, repeat: usize) -> Result<()> {
        let (ds, checksums) = annotations::labelled_dataset(&self.session, &self.ds, repeat)?;
        self.replace_dataset(ds);
        self.session.state.repeats[repeat].dataset_labels = checksums;
        Ok(())
    }

    fn replace_dataset(&mut self, ds: crate::data::Dataset) {
        self.ds = Arc::new(ds);
        // The old pool leaves the device before the new one is placed there.
        self.feed = crate::engine::batch::Feed::host(self.device);
        self.feed = crate::engine::batch::Feed::auto(&self.ds, self.device);
    }

    /// Writes round `round`'s work package unless it is there: the initial set (round 0), or
    /// the round's picks with the previous model's prediction of each case.
    pub(super) fn ensure_package(&mut self, repeat: usize, round: usize) -> Result<()> {
        if annotations::worklist(&self.files, round)?.is_some() {
            return Ok(());
        }
        let arm = self.cfg().experiment.arms[0];
        let cases = annotations::recorded_cases(&self.session, &self.ds, repeat, round)?;
        let pool = self.pool(repeat);
        let mut items = Vec::new();
        for (
            order,
            RecordedCase {
                patient,
                slices: zs,
                pick,
            },
        ) in cases.iter().enumerate()
        {
            let info = &self.ds.patients()[*patient];
            let files = annotations::case_files(&self.ds, &info.id)?;
            let mut images: Vec<String> = files
                .images
                .values()
                .map(|f| f.path.display().to_string())
                .collect();
            images.dedup();
            if let Some(bad) = images.iter().find(|p| p.contains(';')) {
                bail!(
                    "{}: the worklist separates a case's image files with ';', and this path holds one: rename it",
                    crate::untrusted::escaped(bad)
                );
            }
            let view = pick.as_ref().map(|p| pool.pick_view(p));
            let source = pick
                .as_ref()
                .and_then(|p| p.source)
                .map(|s| self.ds.patient_of(pool.sample_slices(&[s])[0]).id.clone())
                .unwrap_or_default();
            let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
            items.push(WorkItem {
                order: order + 1,
                case: info.id.clone(),
                images: images.join(";"),
                slices: zs
                    .iter()
                    .map(|z| z.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                strategy: if round == 0 {
                    "initial (random)".into()
                } else {
                    arm.name().into()
                },
                source,
                distance: fmt(view.as_ref().and_then(|v| v.distance)),
                angle_deg: fmt(view.as_ref().and_then(|v| v.angle_deg)),
                prediction: if round == 0 {
                    String::new()
                } else {
                    format!("{}_prediction.nii.gz", info.id)
                },
                segmentation: format!("{}_seg.nii.gz", info.id),
            });
        }
        let mut predictions = Vec::new();
        if round > 0 {
            let (_vs, net) = self.load_unet(&previous_model(repeat, 0, arm, round))?;
            let patients: Vec<usize> = cases.iter().map(|c| c.patient).collect();
            let prep = self.ds.preprocessing().clone();
            let geom = self.ds.geometry();
            eval::patient_predictions(
                &net,
                &self.ds,
                &patients,
                &self.feed,
                EVAL_BATCH,
                &mut |i, p| {
                    let info = &self.ds.patients()[patients[i]];
                    predictions.push(Prediction {
                        case: info.id.clone(),
                        labels: labels_to_original(&prep, geom, info.dims, &p.mask),
                    });
                },
            );
        }
        annotations::write_package(&self.files, &self.ds, round, &items, &predictions)
    }
}
