//! What a strategy picks from: the round's samples, its spacing rule and settings, and access
//! to the models, latents and data it may need (loaded only when asked for).

use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;

use crate::data::Dataset;
use crate::engine::batch::Feed;
use crate::engine::nets::{UNet, Vae};
use crate::engine::select::Near;
use crate::session::config::SelectionConfig;
use crate::session::plan::seed_for;

/// The models, latents and data of the round's repeat, as the run holds them.
pub trait Models {
    /// The UNet the arm trained in the previous round (or the shared initial one).
    fn previous_unet(&self) -> Result<(VarStore, UNet)>;
    /// The repeat's VAE, and a float64 copy of it for gradient steps below float32's
    /// resolution.
    fn vae_and_f64_copy(&self) -> Result<((VarStore, Vae), (VarStore, Vae))>;
    /// The latent of every pool sample (a patient's: the mean of its slices').
    fn latents(&self) -> Result<Vec<Vec<f64>>>;
    /// The data set's slices of pool samples.
    fn sample_slices(&self, samples: &[usize]) -> Vec<usize>;
    /// Whether a pool sample holds brain.
    fn has_brain(&self, sample: usize) -> bool;
    /// Patient-wise: the data set's index of the patient a pool sample is.
    fn patient(&self, sample: usize) -> usize;
    fn dataset(&self) -> &Dataset;
    fn feed(&self) -> &Feed;
}

/// One round of one arm, as its strategy sees it.
pub struct PickContext<'a> {
    /// How many to pick.
    pub k: usize,
    /// Pool samples labelled so far (the initial set, then the arm's picks), in that order.
    pub labelled: &'a [usize],
    /// Pool samples neither labelled nor without brain, ascending.
    pub unlabelled: &'a [usize],
    /// Image-wise with `selection.avoid_context`: the samples a pick should not sit next to.
    pub near: Near<'a>,
    /// Image-wise (a sample is a slice) rather than patient-wise.
    pub image: bool,
    pub selection: &'a SelectionConfig,
    /// How many samples a model is evaluated on at once.
    pub batch: usize,
    pub models: &'a dyn Models,
    pub(crate) seed: u64,
    /// The round's step key (`r{repeat}-s{stage}-{arm}-k{round}-select`).
    pub(crate) key: &'a str,
}

impl PickContext<'_> {
    /// The round's random stream for `purpose`: seeded by the session's seed, the round's step
    /// and the purpose, so that it does not depend on anything else drawn before.
    pub fn rng(&self, purpose: &str) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed_for(self.seed, self.key, purpose))
    }
}
