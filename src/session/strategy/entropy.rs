//! `entropy`: uncertainty sampling, the samples on which the previous model's prediction has
//! the highest mean binary entropy over the brain.

use anyhow::Result;

use super::{PickContext, Picked, Strategy};
use crate::engine::eval;
use crate::engine::select::{pick_highest, spaced};

pub struct Entropy;

impl Strategy for Entropy {
    fn name(&self) -> &'static str {
        "entropy"
    }

    fn pick(&self, cx: &PickContext) -> Result<Picked> {
        let m = cx.models;
        let (_vs, net) = m.previous_unet()?;
        // One pass over all unlabelled slices; a sample's entropy is its mean over the brain
        // pixels of its slices (a patient's slices pooled).
        let groups: Vec<Vec<usize>> = cx
            .unlabelled
            .iter()
            .map(|&s| m.sample_slices(&[s]))
            .collect();
        let slices: Vec<usize> = groups.concat();
        let per_slice = eval::slice_entropies(&net, m.dataset(), &slices, m.feed(), cx.batch);
        let mut at = 0;
        let scores: Vec<(usize, f64)> = cx
            .unlabelled
            .iter()
            .zip(&groups)
            .map(|(&s, g)| {
                let (h, n) = per_slice[at..at + g.len()]
                    .iter()
                    .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
                at += g.len();
                (s, if n > 0.0 { h / n } else { 0.0 })
            })
            .collect();
        let mut rng = cx.rng("ties");
        Ok(spaced(pick_highest(&scores, scores.len(), &mut rng), cx.k, cx.near).into())
    }
}
