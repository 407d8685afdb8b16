//! `proposed`: the gradient-guided method of Dai et al. (MICCAI 2020). Each labelled sample's
//! Dice loss is back-propagated to its image; the image moved a step along that gradient is
//! encoded, and the unlabelled samples nearest the moved latent, within a cone around the
//! direction it moved in, are picked (the cone search: `engine::cone`).

use std::collections::BTreeMap;

use anyhow::Result;

use super::{PickContext, Picked, Strategy};
use crate::engine::cone::{pick_proposed, ConeSettings, Source};
use crate::engine::select::{gradient_directions, DirectionNets, GradientStep, StepSettings};
use crate::session::events::Phase;
use crate::session::state::DirectionSummary;

pub struct Proposed;

impl Strategy for Proposed {
    fn name(&self) -> &'static str {
        "proposed"
    }

    fn uses_latent_space(&self) -> bool {
        true
    }

    fn phase(&self) -> Phase {
        Phase::Gradient
    }

    fn pick(&self, cx: &PickContext) -> Result<Picked> {
        let m = cx.models;
        let (_u, unet) = m.previous_unet()?;
        let ((_vs, vae), (_vs64, vae64)) = m.vae_and_f64_copy()?;
        let latents = m.latents()?;
        // A slice without brain has no gradient and sits where every other such slice does:
        // it is not a source. With no labelled slice inside the brain, every source falls back
        // (zero directions, counted) rather than the round picking nothing.
        let sources: Vec<usize> = {
            let brain: Vec<usize> = cx
                .labelled
                .iter()
                .copied()
                .filter(|&s| m.has_brain(s))
                .collect();
            if brain.is_empty() {
                cx.labelled.to_vec()
            } else {
                brain
            }
        };
        let samples: Vec<Vec<usize>> = sources.iter().map(|&s| m.sample_slices(&[s])).collect();
        let nets = DirectionNets {
            unet: &unet,
            vae: &vae,
            vae64: &vae64,
        };
        let step = StepSettings {
            alpha: cx.selection.alpha,
            dice_smoothing: cx.selection.dice_smoothing,
            method: cx.selection.direction,
        };
        let gradients =
            gradient_directions(&nets, m.dataset(), m.feed(), &samples, step, cx.batch)?;
        let mut steps: Vec<(usize, GradientStep)> =
            sources.iter().copied().zip(gradients).collect();
        // The hardest labelled samples lead: highest loss first.
        steps.sort_by(|a, b| b.1.loss.total_cmp(&a.1.loss).then(a.0.cmp(&b.0)));
        let sources: Vec<Source> = steps
            .iter()
            .map(|(s, g)| Source {
                sample: *s,
                z: latents[*s].clone(),
                direction: g.direction.clone(),
            })
            .collect();
        let candidates: Vec<(usize, Vec<f64>)> = cx
            .unlabelled
            .iter()
            .map(|&s| (s, latents[s].clone()))
            .collect();
        let directions = summary(&steps);
        let mut rng = cx.rng("fallback");
        let cone = ConeSettings {
            degrees: cx.selection.cone_degrees,
            fallback: cx.selection.fallback,
            rng: &mut rng,
            near: cx.near,
        };
        Ok(Picked {
            picks: pick_proposed(&sources, &candidates, cx.k, cone),
            directions: Some(directions),
        })
    }
}

/// How the round's directions were computed, and how large the steps were.
fn summary(steps: &[(usize, GradientStep)]) -> DirectionSummary {
    let mut methods = BTreeMap::new();
    for (_, g) in steps {
        *methods.entry(g.method.to_string()).or_insert(0) += 1;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    DirectionSummary {
        methods,
        median_rel_dx: median(steps.iter().map(|(_, g)| g.rel_dx).collect()),
        median_dz: median(steps.iter().map(|(_, g)| g.dz_norm).collect()),
        zero_directions: steps.iter().filter(|(_, g)| g.dz_norm == 0.0).count(),
    }
}
