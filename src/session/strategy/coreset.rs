//! `coreset`: diversity, k-center greedy in the VAE's latent space from the labelled set.

use anyhow::Result;

use super::{PickContext, Picked, Strategy};
use crate::engine::coreset::pick_coreset;

pub struct Coreset;

impl Strategy for Coreset {
    fn name(&self) -> &'static str {
        "coreset"
    }

    fn uses_latent_space(&self) -> bool {
        true
    }

    fn pick(&self, cx: &PickContext) -> Result<Picked> {
        let latents = cx.models.latents()?;
        let centres: Vec<Vec<f64>> = cx.labelled.iter().map(|&s| latents[s].clone()).collect();
        let candidates: Vec<(usize, Vec<f64>)> = cx
            .unlabelled
            .iter()
            .map(|&s| (s, latents[s].clone()))
            .collect();
        Ok(pick_coreset(&centres, &candidates, cx.k, cx.near).into())
    }
}
