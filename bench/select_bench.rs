//! Selection at BraTS scale, driven by bench/select_bench.py and compared with
//! bench/reference_select.py in the same run: the three stages of one gradient-guided round on a
//! pool of ~39,000 slices, timed separately, through the engine's own functions.
//!
//!  1. encode every pool slice (the VAE encoder mean; the session's `latents` step);
//!  2. gradient directions of the labelled slices (image granularity: Dice gradient to the
//!     input, one step of α, z' − z in the precision `auto` picks);
//!  3. the cone search of every source over the unlabelled latents;
//!  4. the oracle's scoring: the 3D Dice of every pool patient under the current UNet (what the
//!     oracle arm does each round, and what evaluation does on the held-out patients);
//!  5. the input pipeline: UNet training steps fed from this pool as a session feeds them,
//!     against the same steps on one batch already on the device (no input at all).
//!
//! Writes the weights it drew (for the reference) and prints one JSON object with the seconds
//! per stage and what the reference must reproduce.
//!
//! Arguments: DATA CACHE OUT DEVICE UNET_DEPTH UNET_BASE VAE_LEVELS VAE_BASE LABELLED PATIENTS
//! (the pool: the slices of the first PATIENTS patients)

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use suggestive::data::{Dataset, LoadOptions};
use suggestive::engine::adam::Adam;
use suggestive::engine::batch::{self, Feed};
use suggestive::engine::cone::{pick_proposed, ConeFallback, ConeSettings, Source};
use suggestive::engine::device::parse_device;
use suggestive::engine::eval::patient_dice;
use suggestive::engine::nets::{
    dice_loss, fold_batch_norm, save_weights, use_channels_last, Norm, UNet, UNetConfig, Vae,
    VaeConfig,
};
use suggestive::engine::select::{encode_slices, gradient_directions, DirectionNets, StepSettings};
use suggestive::engine::train::{train_unet, Checkpoint, Schedule};
use suggestive::session::config::DirectionMethod;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The session's batch for evaluation, encoding and gradients (run.rs EVAL_BATCH).
const BATCH: usize = 32;
const ALPHA: f64 = 1e-4;
const CONE_DEGREES: f64 = 45.0;
/// The presets' UNet training batch, and the slices of one timed stretch of training.
const TRAIN_BATCH: usize = 16;
const TRAIN_SLICES: usize = 512;

fn sync(d: Device) {
    if let Device::Cuda(n) = d {
        tch::Cuda::synchronize(n as i64);
    }
}

fn main() -> anyhow::Result<()> {
    // As the suggestive binary does first (engine::host_memory).
    suggestive::engine::host_memory::keep_freed_blocks();
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let num = |i: usize| a[i].parse::<i64>().expect("numeric argument");
    let (data, cache, out) = (
        PathBuf::from(&a[0]),
        PathBuf::from(&a[1]),
        PathBuf::from(&a[2]),
    );
    let device = parse_device(&a[3])?;
    let unet_cfg = UNetConfig {
        depth: num(4) as usize,
        base: num(5),
        norm: Norm::Batch,
    };
    let vae_cfg = VaeConfig {
        latent: 5,
        levels: num(6) as usize,
        base: num(7),
    };
    let labelled_n = num(8) as usize;
    let pool_patients = num(9) as usize;
    std::fs::create_dir_all(&out)?;
    if let Device::Cuda(_) = device {
        tch::Cuda::cudnn_set_benchmark(true);
    }

    let t = Instant::now();
    let mut opts = LoadOptions::new(&cache);
    opts.preprocessing.pad_to = None;
    let (ds, _) = Dataset::load(&data, &opts)?;
    let open_s = t.elapsed().as_secs_f64();
    let pool = &ds.patients()[..pool_patients.min(ds.patients().len())];
    let n = pool.iter().map(|p| p.slices).sum::<usize>();
    let (c, s) = (ds.channels() as i64, ds.size() as i64);

    tch::manual_seed(0);
    let vs_u = VarStore::new(device);
    let unet = UNet::new(&vs_u.root(), c, &unet_cfg);
    // A fresh UNet predicts no pixel at all, which would make every oracle Dice 0 whatever the
    // programs compute: its head's bias is moved so that a tenth of the pool's pixels are
    // predicted, and the Dice varies from patient to patient as a trained model's does.
    tch::no_grad(|| {
        let probe: Vec<usize> = (0..BATCH).map(|i| i * n / BATCH).collect();
        let logits = unet.forward_t(&batch::images(&ds, &probe, device), false);
        let cut = logits
            .reshape([-1])
            .quantile_scalar(0.9, None, false, "linear");
        let mut bias = vs_u.variables()["head.bias"].shallow_clone();
        let _ = bias.g_sub_(&cut);
    });
    use_channels_last(&vs_u);
    save_weights(&vs_u, &out.join("unet.safetensors"))?;
    let vs_v = VarStore::new(device);
    let vae = Vae::new(&vs_v.root(), c, s, &vae_cfg);
    use_channels_last(&vs_v);
    save_weights(&vs_v, &out.join("vae.safetensors"))?;
    // As the session's selection step: batch norm folded into the convolutions.
    let (_folded, unet_eval) = fold_batch_norm(&vs_u, c, &unet_cfg).expect("batch norm");
    let mut vs64 = VarStore::new(device);
    let vae64 = Vae::new(&vs64.root(), c, s, &vae_cfg);
    vs64.copy(&vs_v)?;
    vs64.double();

    // As a session feeds its batches (on a GPU: the pool on the device when it fits).
    let feed = Feed::auto(&ds, device);
    // The labelled slices: evenly spaced over the pool.
    let labelled: Vec<usize> = (0..labelled_n).map(|i| i * n / labelled_n).collect();
    let all: Vec<usize> = (0..n).collect();

    sync(device);
    let t = Instant::now();
    let z = encode_slices(&vae, &ds, &all, &feed, BATCH);
    let encode_s = t.elapsed().as_secs_f64();
    let z: Vec<f64> = Vec::try_from(z.to_kind(Kind::Double).reshape([-1]))?;
    let latent = vae_cfg.latent as usize;
    let row = |i: usize| z[i * latent..(i + 1) * latent].to_vec();

    let samples: Vec<Vec<usize>> = labelled.iter().map(|&i| vec![i]).collect();
    let t = Instant::now();
    let nets = DirectionNets {
        unet: &unet_eval,
        vae: &vae,
        vae64: &vae64,
    };
    let step = StepSettings {
        alpha: ALPHA,
        dice_smoothing: 1.0,
        method: DirectionMethod::Auto,
    };
    let steps = gradient_directions(&nets, &ds, &feed, &samples, step, BATCH)?;
    sync(device);
    let gradients_s = t.elapsed().as_secs_f64();

    // As the session orders them: the hardest labelled samples lead.
    let mut order: Vec<usize> = (0..labelled.len()).collect();
    order.sort_by(|&a, &b| {
        steps[b]
            .loss
            .total_cmp(&steps[a].loss)
            .then(labelled[a].cmp(&labelled[b]))
    });
    let sources: Vec<Source> = order
        .iter()
        .map(|&i| Source {
            sample: labelled[i],
            z: row(labelled[i]),
            direction: steps[i].direction.clone(),
        })
        .collect();
    let taken: std::collections::HashSet<usize> = labelled.iter().copied().collect();
    let candidates: Vec<(usize, Vec<f64>)> = (0..n)
        .filter(|i| !taken.contains(i))
        .map(|i| (i, row(i)))
        .collect();
    let t = Instant::now();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let cone = ConeSettings {
        degrees: CONE_DEGREES,
        fallback: ConeFallback::Nearest,
        rng: &mut rng,
        near: None,
    };
    let picks = pick_proposed(&sources, &candidates, labelled.len(), cone);
    let cone_s = t.elapsed().as_secs_f64();

    let patients: Vec<usize> = (0..pool.len()).collect();
    sync(device);
    let t = Instant::now();
    let dice = patient_dice(&unet_eval, &ds, &patients, &feed, BATCH);
    let oracle_s = t.elapsed().as_secs_f64();

    let (fed, fixed) = fed_against_fixed(&ds, &feed, c, &unet_cfg, n)?;

    let float64 = steps
        .iter()
        .filter(|s| s.method == DirectionMethod::Float64)
        .count();
    let json = serde_json::json!({
        "slices": n, "size": s, "channels": c, "labelled": labelled.len(),
        "cache_images": ds.cache_dir().join("images.f16"),
        "cache_masks": ds.cache_dir().join("masks.u8"),
        "open_s": open_s, "encode_s": encode_s, "gradients_s": gradients_s, "cone_s": cone_s,
        "oracle_s": oracle_s, "dice": dice, "fed_rate": fed, "fixed_rate": fixed,
        "patient_slices": pool.iter().map(|p| p.slices).collect::<Vec<_>>(),
        "float64_directions": float64,
        "z_head": z[..latent * 4].to_vec(),
        "losses": steps.iter().map(|s| s.loss).collect::<Vec<_>>(),
        "directions": steps.iter().map(|s| s.direction.clone()).collect::<Vec<_>>(),
        "picks": picks.iter().map(|p| p.sample).collect::<Vec<_>>(),
        "fallbacks": picks.iter().filter(|p| p.fallback).count(),
        "threads": tch::get_num_threads(), "feed": feed.describe(),
    });
    println!("{json}");
    Ok(())
}

/// Slices per second of UNet training (fp32, the presets' batch) fed from the pool through
/// `feed` by the session's own loop (`train::train_unet`), and of the same steps on one batch
/// already on the device, which needs no input at all: their ratio is the share of the
/// throughput the input pipeline keeps (1.0: no stall). Alternating, the median of 3 each after
/// a warm-up of each (cuDNN's autotuning).
fn fed_against_fixed(
    ds: &Dataset,
    feed: &Feed,
    c: i64,
    cfg: &UNetConfig,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let device = feed.device();
    tch::manual_seed(1);
    let vs = VarStore::new(device);
    let net = UNet::new(&vs.root(), c, cfg);
    use_channels_last(&vs);
    let mut opt = Adam::new(&vs, 1e-3);
    // Spread over the whole pool, as a shuffled epoch reads it.
    let slices: Vec<usize> = (0..TRAIN_SLICES).map(|i| i * n / TRAIN_SLICES).collect();
    let (x, y) = feed.batch(ds, &slices[..TRAIN_BATCH]);
    let mut epoch = 0;
    let mut fed_pass = |opt: &mut Adam| -> anyhow::Result<()> {
        let mut go_on = |_: Checkpoint, _: &Adam| -> anyhow::Result<ControlFlow<()>> {
            Ok(ControlFlow::Continue(()))
        };
        let schedule = Schedule {
            ds,
            feed,
            slices: &slices,
            batch_size: TRAIN_BATCH,
            epochs: epoch..epoch + 1,
            resume: None,
            seed: 0,
            stop: None,
        };
        train_unet(&net, opt, &schedule, false, &mut go_on)?;
        epoch += 1;
        Ok(())
    };
    // The same step as train_unet's loop (losses summed on the device, read once at the end).
    let fixed_pass = |opt: &mut Adam| {
        let mut sum = Tensor::zeros([], (Kind::Double, device));
        for _ in 0..TRAIN_SLICES / TRAIN_BATCH {
            opt.zero_grad();
            let loss = dice_loss(&net.forward_t(&x, true), &y);
            loss.backward();
            opt.step();
            sum += loss.detach().to_kind(Kind::Double);
        }
        sum.double_value(&[])
    };
    let rate = |t: Instant| {
        sync(device);
        TRAIN_SLICES as f64 / t.elapsed().as_secs_f64()
    };
    fed_pass(&mut opt)?;
    fixed_pass(&mut opt);
    let (mut fed, mut fixed) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        fed_pass(&mut opt)?;
        fed.push(rate(t));
        let t = Instant::now();
        fixed_pass(&mut opt);
        fixed.push(rate(t));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(fed), median(fixed)))
}
