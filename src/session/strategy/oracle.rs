//! `oracle`: the samples on which the previous model's Dice against the truth is lowest. It
//! reads labels nobody has given yet, so it is a reference for what hindsight would pick.

use anyhow::Result;

use super::{PickContext, Picked, Strategy};
use crate::engine::eval;
use crate::engine::select::{pick_oracle, spaced};

pub struct Oracle;

impl Strategy for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn needs_unlabelled_truth(&self) -> bool {
        true
    }

    fn pick(&self, cx: &PickContext) -> Result<Picked> {
        let m = cx.models;
        let (_vs, net) = m.previous_unet()?;
        let (ds, feed) = (m.dataset(), m.feed());
        let scores: Vec<(usize, f64)> = if cx.image {
            // Per-slice Dice is degenerate without tumour (one false positive scores 0), so the
            // oracle ranks the slices that contain tumour.
            let slices = m.sample_slices(cx.unlabelled);
            let ov = eval::slice_overlaps(&net, ds, &slices, feed, cx.batch);
            cx.unlabelled
                .iter()
                .zip(ov)
                .filter(|(_, o)| o.truth > 0)
                .map(|(&s, o)| (s, o.dice()))
                .collect()
        } else {
            let patients: Vec<usize> = cx.unlabelled.iter().map(|&s| m.patient(s)).collect();
            let d = eval::patient_dice(&net, ds, &patients, feed, cx.batch);
            cx.unlabelled.iter().copied().zip(d).collect()
        };
        let mut rng = cx.rng("ties");
        Ok(spaced(pick_oracle(&scores, scores.len(), &mut rng), cx.k, cx.near).into())
    }
}
