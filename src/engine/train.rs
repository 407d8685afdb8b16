//! Training loops at epoch granularity: the caller checkpoints after each epoch and may stop
//! there (the "safe point" of a pause or quit).

use std::ops::{ControlFlow, Range};

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::Device;

use super::adam::Adam;
use super::batch;
use super::nets::{dice_loss, UNet, Vae};
use crate::data::Dataset;

/// The slice order of one epoch: a function of (seed, epoch) only, so a resumed run shuffles
/// exactly as an uninterrupted one.
pub fn epoch_order(slices: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = slices.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    order.shuffle(&mut rng);
    order
}

/// Called after each epoch with (epoch, mean loss, optimiser): checkpoint here, and return
/// `Break` to stop.
pub type AfterEpoch<'a> = dyn FnMut(usize, f64, &Adam) -> Result<ControlFlow<()>> + 'a;

/// Trains the UNet with the Dice loss for `epochs` over `slices`. Returns the epoch count
/// reached (less than `epochs.end` when `after_epoch` asked to stop).
#[allow(clippy::too_many_arguments)]
pub fn train_unet(
    net: &UNet,
    opt: &mut Adam,
    ds: &Dataset,
    slices: &[usize],
    batch_size: usize,
    device: Device,
    epochs: Range<usize>,
    seed: u64,
    after_epoch: &mut AfterEpoch,
) -> Result<usize> {
    for epoch in epochs.clone() {
        let order = epoch_order(slices, seed, epoch);
        let (mut sum, mut n) = (0.0, 0);
        for chunk in order.chunks(batch_size) {
            let x = batch::images(ds, chunk, device);
            let y = batch::masks(ds, chunk, device);
            opt.zero_grad();
            let loss = dice_loss(&net.forward_t(&x, true), &y);
            loss.backward();
            opt.step();
            sum += loss.double_value(&[]);
            n += 1;
        }
        if after_epoch(epoch, sum / n.max(1) as f64, opt)?.is_break() {
            return Ok(epoch + 1);
        }
    }
    Ok(epochs.end)
}

/// Trains the VAE (MSE + KL) over `slices`; the reported loss is the epoch mean.
#[allow(clippy::too_many_arguments)]
pub fn train_vae(
    net: &Vae,
    opt: &mut Adam,
    ds: &Dataset,
    slices: &[usize],
    batch_size: usize,
    kl_weight: f64,
    device: Device,
    epochs: Range<usize>,
    seed: u64,
    after_epoch: &mut AfterEpoch,
) -> Result<usize> {
    for epoch in epochs.clone() {
        // The reparameterisation noise is drawn by libtorch: seed it per epoch as well.
        tch::manual_seed((seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64);
        let order = epoch_order(slices, seed, epoch);
        let (mut sum, mut n) = (0.0, 0);
        for chunk in order.chunks(batch_size) {
            let x = batch::images(ds, chunk, device);
            opt.zero_grad();
            let (loss, _, _) = net.loss(&x, kl_weight);
            loss.backward();
            opt.step();
            sum += loss.double_value(&[]);
            n += 1;
        }
        if after_epoch(epoch, sum / n.max(1) as f64, opt)?.is_break() {
            return Ok(epoch + 1);
        }
    }
    Ok(epochs.end)
}
