//! Training loops at epoch granularity: the caller checkpoints after each epoch and may stop
//! there (the "safe point" of a pause or quit).

use std::ops::{ControlFlow, Range};

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
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

/// Called after each epoch with (epoch, mean loss, optimiser): checkpoint here, and return
/// `Break` to stop.
pub type AfterEpoch<'a> = dyn FnMut(usize, f64, &Adam) -> Result<ControlFlow<()>> + 'a;

/// What a training run goes over: `slices` of `ds` (reaching the device through `feed`), in
/// batches of `batch_size` in a seeded order per epoch, for the epochs of `epochs` (a resumed
/// run starts later).
pub struct Schedule<'a> {
    pub ds: &'a Dataset,
    pub feed: &'a Feed,
    pub slices: &'a [usize],
    pub batch_size: usize,
    pub epochs: Range<usize>,
    pub seed: u64,
}

/// What both training loops share: per epoch, a seeded order of the slices, one optimiser step
/// per batch on the loss `loss_of` computes, then `after_epoch` with the epoch's mean loss.
/// Returns the epoch count reached (less than the schedule's end when `after_epoch` asked to
/// stop).
fn run_epochs(
    opt: &mut Adam,
    s: &Schedule,
    after_epoch: &mut AfterEpoch,
    before_epoch: &mut dyn FnMut(usize),
    loss_of: &mut dyn FnMut(&[usize]) -> tch::Tensor,
) -> Result<usize> {
    let batch_size = s.batch_size;
    for epoch in s.epochs.clone() {
        before_epoch(epoch);
        let order = epoch_order(s.slices, s.seed, epoch);
        // The losses add up on the device and are read once per epoch: reading each step's
        // value would make the host wait for the GPU at every step.
        let mut sum: Option<tch::Tensor> = None;
        let mut n = 0;
        for chunk in order.chunks(batch_size) {
            opt.zero_grad();
            let loss = loss_of(chunk);
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
            n += 1;
        }
        let mean = sum.map_or(0.0, |s| s.double_value(&[]) / n as f64);
        if after_epoch(epoch, mean, opt)?.is_break() {
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
    after_epoch: &mut AfterEpoch,
) -> Result<usize> {
    let (ds, feed) = (schedule.ds, schedule.feed);
    run_epochs(opt, schedule, after_epoch, &mut |_| {}, &mut |chunk| {
        let (x, y) = feed.batch(ds, chunk);
        // Only enter autocast for mixed precision, and through mixed::autocast_fp16:
        // libtorch 2.11 warns on every tch autocast call, even a disabled one.
        let logits = if mixed {
            crate::engine::mixed::autocast_fp16(|| net.forward_t(&x, true))
        } else {
            net.forward_t(&x, true)
        };
        dice_loss(&logits.to_kind(tch::Kind::Float), &y)
    })
}

/// Trains the VAE (MSE + `kl_weight` × KL) over the schedule.
pub fn train_vae(
    net: &Vae,
    opt: &mut Adam,
    schedule: &Schedule,
    kl_weight: f64,
    after_epoch: &mut AfterEpoch,
) -> Result<usize> {
    let (ds, feed, seed) = (schedule.ds, schedule.feed, schedule.seed);
    // The reparameterisation noise comes from its own seeded stream per epoch (not libtorch's
    // global generator, which anything else in the process, such as the TUI's preview thread
    // building a network, would advance): a resumed run draws what an uninterrupted one would,
    // on any device.
    let noise = std::cell::RefCell::new(epoch_rng(seed ^ NOISE_KEY, schedule.epochs.start));
    let mut start_epoch = |epoch: usize| *noise.borrow_mut() = epoch_rng(seed ^ NOISE_KEY, epoch);
    let latent = net.latent() as usize;
    run_epochs(opt, schedule, after_epoch, &mut start_epoch, &mut |chunk| {
        let eps = standard_normal(&mut noise.borrow_mut(), chunk.len() * latent);
        let eps = Tensor::from_slice(&eps).view([chunk.len() as i64, latent as i64]);
        net.loss(
            &feed.images(ds, chunk),
            kl_weight,
            &to_device_async(eps, feed.device()),
        )
    })
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
