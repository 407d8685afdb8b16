//! Training loops: the caller checkpoints after each epoch, and when asked to stop (a pause, a
//! quit, a scheduler's SIGTERM) in the middle of an epoch, at the next batch boundary, with
//! where the epoch stood; a resumed run continues from that batch exactly.

use std::ops::{ControlFlow, Range};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::adam::Adam;
use super::batch::{to_device_async, Feed};
use super::nets::{dice_loss, UNet, Vae};
use crate::data::Dataset;

/// The random stream of one epoch: a function of (seed, epoch) only, so a resumed run draws
/// exactly what an uninterrupted one would.
fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    rng
}

/// The slice order of one epoch.
pub fn epoch_order(slices: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = slices.to_vec();
    order.shuffle(&mut epoch_rng(seed, epoch));
    order
}

/// Keys the VAE's noise apart from the batch order, which uses the seed itself.
const NOISE_KEY: u64 = 0x005E_ED0F_1A7E;

/// How far into an epoch training stopped: its first `batches` batches done, whose losses sum
/// to `loss_sum` (so that the resumed epoch reports the whole epoch's mean loss).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MidEpoch {
    pub batches: usize,
    pub loss_sum: f64,
}

/// A point where the caller checkpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Checkpoint {
    /// Epoch `epoch` (0-based) is complete, with this mean loss; `Break` stops here.
    EpochEnd { epoch: usize, mean_loss: f64 },
    /// A stop was asked for in the middle of epoch `epoch`: training stops after this.
    MidEpoch { epoch: usize, at: MidEpoch },
}

/// Called at each checkpoint with the optimiser: save, and return `Break` to stop at an
/// epoch's end.
pub type OnCheckpoint<'a> = dyn FnMut(Checkpoint, &Adam) -> Result<ControlFlow<()>> + 'a;

/// What a training run goes over: `slices` of `ds` (reaching the device through `feed`), in
/// batches of `batch_size` in a seeded order per epoch, for the epochs of `epochs` (a resumed
/// run starts later, `resume` batches into its first epoch). `stop`, when set, ends training
/// at the next batch boundary.
pub struct Schedule<'a> {
    pub ds: &'a Dataset,
    pub feed: &'a Feed,
    pub slices: &'a [usize],
    pub batch_size: usize,
    pub epochs: Range<usize>,
    pub resume: Option<MidEpoch>,
    pub seed: u64,
    pub stop: Option<&'a AtomicBool>,
}

/// What a training loop does per batch besides the optimiser step.
struct Steps<'a> {
    /// At the start of each epoch.
    before_epoch: &'a mut dyn FnMut(usize),
    /// For a batch a resumed epoch already did: draw what it drew, compute nothing.
    skip: &'a mut dyn FnMut(&[usize]),
    /// The loss of a batch.
    loss_of: &'a mut dyn FnMut(&[usize]) -> Tensor,
}

/// What both training loops share: per epoch, a seeded order of the slices, one optimiser step
/// per batch on the loss `loss_of` computes, then the epoch's checkpoint with its mean loss. A
/// stop asked for before an epoch's last batch gives a mid-epoch checkpoint and ends training.
/// Returns the epochs completed (less than the schedule's end when stopped).
fn run_epochs(
    opt: &mut Adam,
    s: &Schedule,
    on_checkpoint: &mut OnCheckpoint,
    steps: Steps,
) -> Result<usize> {
    let stop_asked = || s.stop.is_some_and(|f| f.load(Ordering::Relaxed));
    for epoch in s.epochs.clone() {
        (steps.before_epoch)(epoch);
        let order = epoch_order(s.slices, s.seed, epoch);
        let batches: Vec<&[usize]> = order.chunks(s.batch_size).collect();
        let resumed = (epoch == s.epochs.start).then_some(s.resume).flatten();
        let first = resumed.map_or(0, |m| m.batches.min(batches.len()));
        for chunk in &batches[..first] {
            (steps.skip)(chunk);
        }
        // The losses add up on the device and are read once per epoch: reading each step's
        // value would make the host wait for the GPU at every step.
        let mut sum: Option<Tensor> = None;
        for (b, chunk) in batches.iter().enumerate().skip(first) {
            opt.zero_grad();
            let loss = (steps.loss_of)(chunk);
            match opt.loss_multiplier() {
                1.0 => loss.backward(),
                scale => (&loss * scale).backward(),
            }
            opt.step();
            let l = loss.detach().to_kind(tch::Kind::Double);
            sum = Some(match sum {
                Some(s) => s + l,
                None => l,
            });
            let done = b + 1;
            if done < batches.len() && stop_asked() {
                let loss_sum = resumed.map_or(0.0, |m| m.loss_sum)
                    + sum.as_ref().map_or(0.0, |s| s.double_value(&[]));
                let at = MidEpoch {
                    batches: done,
                    loss_sum,
                };
                // A mid-epoch point is a stop whatever the caller returns.
                let _ = on_checkpoint(Checkpoint::MidEpoch { epoch, at }, opt)?;
                return Ok(epoch);
            }
        }
        let total = resumed.map_or(0.0, |m| m.loss_sum) + sum.map_or(0.0, |s| s.double_value(&[]));
        let mean_loss = total / batches.len().max(1) as f64;
        if on_checkpoint(Checkpoint::EpochEnd { epoch, mean_loss }, opt)?.is_break() {
            return Ok(epoch + 1);
        }
    }
    Ok(s.epochs.end)
}

/// Trains the UNet with the Dice loss over the schedule. `mixed`: the forward pass under CUDA
/// autocast (float16 where safe; the loss in float32), for an optimiser with loss scaling.
pub fn train_unet(
    net: &UNet,
    opt: &mut Adam,
    schedule: &Schedule,
    mixed: bool,
    on_checkpoint: &mut OnCheckpoint,
) -> Result<usize> {
    let (ds, feed) = (schedule.ds, schedule.feed);
    let mut loss_of = |chunk: &[usize]| {
        let (x, y) = feed.batch(ds, chunk);
        // Only enter autocast for mixed precision, and through mixed::autocast_fp16:
        // libtorch 2.11 warns on every tch autocast call, even a disabled one.
        let logits = if mixed {
            crate::engine::mixed::autocast_fp16(|| net.forward_t(&x, true))
        } else {
            net.forward_t(&x, true)
        };
        dice_loss(&logits.to_kind(tch::Kind::Float), &y)
    };
    let steps = Steps {
        before_epoch: &mut |_| {},
        skip: &mut |_| {},
        loss_of: &mut loss_of,
    };
    run_epochs(opt, schedule, on_checkpoint, steps)
}

/// Trains the VAE (MSE + `kl_weight` × KL) over the schedule.
pub fn train_vae(
    net: &Vae,
    opt: &mut Adam,
    schedule: &Schedule,
    kl_weight: f64,
    on_checkpoint: &mut OnCheckpoint,
) -> Result<usize> {
    let (ds, feed, seed) = (schedule.ds, schedule.feed, schedule.seed);
    let latent = net.latent() as usize;
    let noise = std::cell::RefCell::new(VaeNoise::new(seed, schedule.epochs.start, latent));
    let mut start_epoch = |epoch: usize| *noise.borrow_mut() = VaeNoise::new(seed, epoch, latent);
    // A batch a resumed epoch already did drew its noise: draw it again, so the next batch
    // gets what it got in an uninterrupted run.
    let mut skip = |chunk: &[usize]| {
        let _ = noise.borrow_mut().draw(chunk.len());
    };
    let mut loss_of = |chunk: &[usize]| {
        let eps = noise.borrow_mut().draw(chunk.len());
        net.loss(
            &feed.images(ds, chunk),
            kl_weight,
            &to_device_async(eps, feed.device()),
        )
    };
    let steps = Steps {
        before_epoch: &mut start_epoch,
        skip: &mut skip,
        loss_of: &mut loss_of,
    };
    run_epochs(opt, schedule, on_checkpoint, steps)
}

/// The VAE's reparameterisation noise for one epoch. It comes from its own seeded stream per
/// epoch (not libtorch's global generator, which anything else in the process, such as the
/// TUI's preview thread building a network, would advance): a resumed run draws what an
/// uninterrupted one would, on any device, and a replay (engine::replay) draws the same.
pub struct VaeNoise {
    rng: ChaCha8Rng,
    latent: usize,
}

impl VaeNoise {
    /// The noise of `epoch` for a schedule seeded with `seed`.
    pub fn new(seed: u64, epoch: usize, latent: usize) -> VaeNoise {
        VaeNoise {
            rng: epoch_rng(seed ^ NOISE_KEY, epoch),
            latent,
        }
    }

    /// The next batch's noise: `batch` × latent draws of N(0, 1), on the CPU.
    pub fn draw(&mut self, batch: usize) -> Tensor {
        let eps = standard_normal(&mut self.rng, batch * self.latent);
        Tensor::from_slice(&eps).view([batch as i64, self.latent as i64])
    }
}

/// `n` draws of N(0, 1) (Box–Muller), as float32.
fn standard_normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 − u keeps the logarithm's argument in (0, 1].
        let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
        let r = (-2.0 * u.ln()).sqrt();
        let t = std::f64::consts::TAU * v;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VAE's noise: standard normal (mean 0, sd 1, a tail as thin as N(0, 1)'s), and the
    /// same numbers from the same seed.
    #[test]
    fn noise_is_standard_normal_and_reproducible() {
        let draw = |seed| standard_normal(&mut ChaCha8Rng::seed_from_u64(seed), 100_001);
        let v = draw(7);
        assert_eq!(v.len(), 100_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let beyond_2sd = v.iter().filter(|&&x| x.abs() > 2.0).count() as f64 / n;
        assert!(
            mean.abs() < 0.01 && (sd - 1.0).abs() < 0.01,
            "mean {mean}, sd {sd}"
        );
        assert!(
            (beyond_2sd - 0.0455).abs() < 0.003,
            "P(|x| > 2) = {beyond_2sd}"
        );
        assert_eq!(v, draw(7));
        assert_ne!(v, draw(8));
    }
}
