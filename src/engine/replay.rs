//! A training run written out whole, for an independent implementation to replay: the initial
//! weights, the slices, every optimiser step's batch (and the VAE's noise), every step's loss,
//! and the trained network's quality. bench/twin.py trains a PyTorch twin from the same start
//! on the same numbers and compares; tests/parity.rs and bench/parity.py run the two.
//!
//! The steps are those of `train::train_vae` and `train::train_unet`: the same seeded batch
//! order (`train::epoch_order`), the same noise (`train::VaeNoise`), the same losses and Adam.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::batch::{self, Feed};
use super::manifold::encode_and_diagnose;
use super::nets::{
    dice_loss, save_weights, seeded, use_channels_last, UNet, UNetConfig, Vae, VaeConfig,
};
use super::train::{epoch_order, VaeNoise};
use crate::data::Dataset;

/// The network a replay trains, and its loss's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "network", rename_all = "lowercase")]
pub enum Network {
    Vae { config: VaeConfig, kl_weight: f64 },
    Unet { config: UNetConfig },
}

/// How the weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// As the network's constructor initialises them (what sessions train from).
    AsBuilt,
    /// tch's default initialisation (Kaiming uniform with the ReLU gain, zero conv biases): the
    /// VAE's initialisation before it was chosen by measurement, kept to show what it did.
    TchDefault,
}

/// What to train: `train` slices of the data set for `epochs`, quality measured on `train` and
/// on `held_out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplaySpec {
    #[serde(flatten)]
    pub network: Network,
    pub start: Start,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    pub train: Vec<usize>,
    pub held_out: Vec<usize>,
}

/// What a run measured: the loss of every optimiser step, each epoch's mean, and the trained
/// network's quality on the training and the held-out slices. Quality is the share of the
/// slices' pixel variance the VAE's reconstruction from the encoder mean reproduces
/// (`1 − MSE / MSE of the slices' mean image`), or the UNet's Dice in evaluation mode at
/// probability 0.5, pixels pooled over the slices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub losses: Vec<f64>,
    pub epoch_losses: Vec<f64>,
    pub quality_train: f64,
    pub quality_held_out: f64,
}

/// Trains the spec's network on the CPU and writes the replay to `dir`: `spec.json`,
/// `init.safetensors` (the starting weights), `data.safetensors` (`x`, the training slices then
/// the held-out ones, and their masks `y`), `steps.safetensors` (per step the positions into
/// `x` of its batch, `index` flat with `sizes`, and the VAE's noise `eps`), and `ours.json`.
pub fn record(ds: &Dataset, spec: &ReplaySpec, dir: &Path) -> Result<Trace> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, tensors: &[(&str, &Tensor)]| {
        let path = dir.join(name);
        Tensor::write_safetensors(tensors, &path)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    let all: Vec<usize> = spec.train.iter().chain(&spec.held_out).copied().collect();
    let x = batch::images(ds, &all, Device::Cpu);
    let y = batch::masks(ds, &all, Device::Cpu);
    write("data.safetensors", &[("x", &x), ("y", &y)])?;

    let vs = VarStore::new(Device::Cpu);
    let (c, s) = (ds.channels() as i64, ds.size() as i64);
    let net = seeded(spec.seed, || match &spec.network {
        Network::Vae { config, .. } => Net::Vae(Vae::new(&vs.root(), c, s, config)),
        Network::Unet { config } => Net::Unet(UNet::new(&vs.root(), c, config)),
    });
    use_channels_last(&vs); // as sessions train
    if spec.start == Start::TchDefault {
        seeded(spec.seed, || tch_default_init(&vs));
    }
    save_weights(&vs, &dir.join("init.safetensors")).context("cannot write init.safetensors")?;

    // Positions into `x`: a batch of training positions is the batch of those slices.
    let positions: Vec<usize> = (0..spec.train.len()).collect();
    let mut opt = Adam::new(&vs, spec.lr);
    let (mut index, mut sizes, mut noises) = (Vec::new(), Vec::new(), Vec::new());
    let (mut losses, mut epoch_losses) = (Vec::new(), Vec::new());
    for epoch in 0..spec.epochs {
        let order = epoch_order(&positions, spec.seed, epoch);
        let latent = match &net {
            Net::Vae(v) => v.latent() as usize,
            Net::Unet(_) => 0,
        };
        let mut noise = VaeNoise::new(spec.seed, epoch, latent);
        let first = losses.len();
        for chunk in order.chunks(spec.batch_size.max(1)) {
            let at = Tensor::from_slice(&chunk.iter().map(|&p| p as i64).collect::<Vec<_>>());
            let xb = x.index_select(0, &at);
            opt.zero_grad();
            let loss = match (&net, &spec.network) {
                (Net::Vae(v), Network::Vae { kl_weight, .. }) => {
                    let eps = noise.draw(chunk.len());
                    let l = v.loss(&xb, *kl_weight, &eps);
                    noises.push(eps);
                    l
                }
                (Net::Unet(u), _) => dice_loss(&u.forward_t(&xb, true), &y.index_select(0, &at)),
                (Net::Vae(_), Network::Unet { .. }) => unreachable!("built from the spec"),
            };
            loss.backward();
            opt.step();
            losses.push(loss.double_value(&[]));
            index.extend(chunk.iter().map(|&p| p as i64));
            sizes.push(chunk.len() as i64);
        }
        let epoch_steps = &losses[first..];
        epoch_losses.push(epoch_steps.iter().sum::<f64>() / epoch_steps.len().max(1) as f64);
    }
    let eps = if noises.is_empty() {
        Tensor::zeros([0], (Kind::Float, Device::Cpu))
    } else {
        Tensor::cat(&noises, 0)
    };
    let (index, sizes) = (Tensor::from_slice(&index), Tensor::from_slice(&sizes));
    write(
        "steps.safetensors",
        &[("index", &index), ("sizes", &sizes), ("eps", &eps)],
    )?;

    let quality = |slices: &[usize]| match &net {
        Net::Vae(v) => {
            encode_and_diagnose(v, ds, slices, &Feed::host(Device::Cpu), 64)
                .1
                .variance_explained
        }
        Net::Unet(u) => pooled_dice(u, ds, slices),
    };
    let trace = Trace {
        losses,
        epoch_losses,
        quality_train: quality(&spec.train),
        quality_held_out: quality(&spec.held_out),
    };
    let json = |name: &str, value: String| {
        let path = dir.join(name);
        std::fs::write(&path, value).with_context(|| format!("cannot write {}", path.display()))
    };
    json("spec.json", serde_json::to_string_pretty(spec)?)?;
    json("ours.json", serde_json::to_string_pretty(&trace)?)?;
    Ok(trace)
}

enum Net {
    Vae(Vae),
    Unet(UNet),
}

/// Dice of the UNet's prediction (evaluation mode, probability ≥ 0.5) over `slices`, pixels
/// pooled; 1 when neither prediction nor truth has a pixel.
fn pooled_dice(net: &UNet, ds: &Dataset, slices: &[usize]) -> f64 {
    let _guard = tch::no_grad_guard();
    let (mut inter, mut total) = (0.0, 0.0);
    for chunk in slices.chunks(64) {
        let x = batch::images(ds, chunk, Device::Cpu);
        let y = batch::masks(ds, chunk, Device::Cpu);
        let p = net.forward_t(&x, false).ge(0.0).to_kind(Kind::Double);
        inter += (&p * y.to_kind(Kind::Double))
            .sum(Kind::Double)
            .double_value(&[]);
        total += (p.sum(Kind::Double) + y.sum(Kind::Double)).double_value(&[]);
    }
    if total > 0.0 {
        2.0 * inter / total
    } else {
        1.0
    }
}

/// Redraws every weight as tch's default initialisation does: weights uniform in
/// ±√6/√fan_in (Kaiming with the ReLU gain; fan-in from dimension 1, as PyTorch counts it for
/// convolutions, transposed ones and linear layers alike), convolution biases zero, linear
/// biases uniform in ±1/√fan_in. Norm layers keep theirs.
pub fn tch_default_init(vs: &VarStore) {
    let _guard = tch::no_grad_guard();
    let vars = vs.variables();
    // In name order: the draws are then the same in every run.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let mut t = vars[name].shallow_clone();
        let Some(layer) = name.strip_suffix(".weight") else {
            continue;
        };
        let size = t.size();
        if size.len() < 2 {
            continue; // a norm's scale
        }
        let fan_in: i64 = size[1] * size[2..].iter().product::<i64>();
        let bound = (6.0 / fan_in as f64).sqrt();
        let _ = t.uniform_(-bound, bound);
        if let Some(mut b) = vars
            .get(&format!("{layer}.bias"))
            .map(Tensor::shallow_clone)
        {
            if size.len() == 2 {
                let lb = 1.0 / (fan_in as f64).sqrt();
                let _ = b.uniform_(-lb, lb);
            } else {
                let _ = b.zero_();
            }
        }
    }
}
