//! The suggestion strategies that rank or draw (random, oracle: the samples the current model
//! does worst on, an upper-bound reference; entropy), and the gradient step in image space whose
//! latent direction the cone search (cone.rs) follows.

use std::collections::HashSet;

use anyhow::Result;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::batch::{to_device_async, Feed};
use super::nets::{dice_loss_smoothed, UNet, Vae, DICE_FLOOR};
use crate::data::Dataset;

/// How `z' − z` is computed (see docs/method.md, "Numerical care"); a session setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionMethod {
    /// float32 step; falls back to float64 when the step is below float32 resolution.
    Auto,
    Float32,
    Float64,
    /// (enc(x + h·g) − enc(x − h·g)) / 2h · α with a step h large enough to resolve.
    CentralDifference,
}

crate::display_as_serde!(DirectionMethod);

/// One suggested sample (a patient or a slice, by pool index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub sample: usize,
    /// Proposed: the labelled sample whose gradient led here.
    #[serde(default)]
    pub source: Option<usize>,
    /// Proposed: distance from z'; oracle: the sample's Dice.
    #[serde(default)]
    pub distance: Option<f64>,
    /// Proposed: angle between z_j − z and z' − z, degrees.
    #[serde(default)]
    pub angle_deg: Option<f64>,
    /// Proposed: the cone was empty and the nearest sample was taken instead.
    #[serde(default)]
    pub fallback: bool,
    #[serde(default)]
    pub score: Option<f64>,
}

impl Pick {
    fn plain(sample: usize) -> Pick {
        Pick {
            sample,
            source: None,
            distance: None,
            angle_deg: None,
            fallback: false,
            score: None,
        }
    }
}

/// `k` uniform picks among `unlabelled`.
pub fn pick_random(unlabelled: &[usize], k: usize, rng: &mut ChaCha8Rng) -> Vec<Pick> {
    let mut pool = unlabelled.to_vec();
    pool.shuffle(rng);
    pool.into_iter().take(k).map(Pick::plain).collect()
}

/// Image-wise, what a round avoids picking: the samples `seen` already (the neighbours of the
/// labelled slices, shown as their context), and the neighbours (`near`) of each pick made.
/// Avoided, not forbidden: when only such samples are left, they are taken in order.
pub struct Spacing<'a> {
    pub near: &'a dyn Fn(usize) -> Vec<usize>,
    pub seen: HashSet<usize>,
}

/// The spacing rule of a round, if any.
pub type Near<'a> = Option<&'a Spacing<'a>>;

/// The first `k` of `ranked`, skipping the samples `near` rules out while others are left.
pub fn spaced(ranked: Vec<Pick>, k: usize, near: Near) -> Vec<Pick> {
    let Some(rule) = near else {
        return ranked.into_iter().take(k).collect();
    };
    let mut blocked = rule.seen.clone();
    let (mut out, mut skipped) = (Vec::with_capacity(k), Vec::new());
    for p in ranked {
        if out.len() == k {
            break;
        }
        if blocked.contains(&p.sample) {
            skipped.push(p);
            continue;
        }
        blocked.extend((rule.near)(p.sample));
        out.push(p);
    }
    let missing = k.saturating_sub(out.len());
    out.extend(skipped.into_iter().take(missing));
    out
}

/// The `k` samples with the lowest score (the current model's Dice), ties in a seeded order.
pub fn pick_oracle(scores: &[(usize, f64)], k: usize, rng: &mut ChaCha8Rng) -> Vec<Pick> {
    pick_ranked(scores, k, rng, |a, b| a.total_cmp(b))
}

/// The `k` samples with the highest score (uncertainty), ties in a seeded order.
pub fn pick_highest(scores: &[(usize, f64)], k: usize, rng: &mut ChaCha8Rng) -> Vec<Pick> {
    pick_ranked(scores, k, rng, |a, b| b.total_cmp(a))
}

/// The first `k` samples in `order` of their scores; each pick keeps its score. Ties fall in
/// an order shuffled with `rng`, not by index: image-wise many slices tie (a Dice of 0 on every
/// missed tumour), and by index the picks would crowd into the first patients.
fn pick_ranked(
    scores: &[(usize, f64)],
    k: usize,
    rng: &mut ChaCha8Rng,
    order: impl Fn(&f64, &f64) -> std::cmp::Ordering,
) -> Vec<Pick> {
    let mut s = scores.to_vec();
    s.shuffle(rng);
    s.sort_by(|a, b| order(&a.1, &b.1)); // stable: ties keep the shuffled order
    s.into_iter()
        .take(k)
        .map(|(i, v)| Pick {
            score: Some(v),
            ..Pick::plain(i)
        })
        .collect()
}

/// What the gradient step did for one labelled sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradientStep {
    /// Dice loss of the sample before the step.
    pub loss: f64,
    /// ‖α ∂L/∂x‖ / ‖x‖ (0 when x is empty).
    pub rel_dx: f64,
    /// ‖z' − z‖ of the sample (mean over its slices).
    pub dz_norm: f64,
    /// The path actually taken (auto resolves to float32 or float64).
    pub method: DirectionMethod,
    pub direction: Vec<f64>,
}

/// Below this relative step, float32 cannot resolve `x' − x` (docs/method.md): use float64.
const FLOAT32_RESOLUTION: f64 = 1e-6;

/// The networks of a gradient step: the UNet (in eval mode), the VAE whose encoder projects,
/// and its float64 copy for steps below float32 resolution.
pub struct DirectionNets<'a> {
    pub unet: &'a UNet,
    pub vae: &'a Vae,
    pub vae64: &'a Vae,
}

/// How far the images move (`x' = x + alpha ∂L/∂x`), the smoothing term of the Dice loss L
/// (1 as in training; 0 is the paper's loss, which has no gradient on a tumour-free sample),
/// and how `z' − z` is computed.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub alpha: f64,
    pub dice_smoothing: f64,
    pub method: DirectionMethod,
}

/// The gradient step of one labelled sample (see [`gradient_directions`]).
pub fn gradient_direction(
    nets: &DirectionNets,
    ds: &Dataset,
    feed: &Feed,
    slices: &[usize],
    step: StepSettings,
) -> Result<GradientStep> {
    let samples = [slices.to_vec()];
    let mut steps = gradient_directions(nets, ds, feed, &samples, step, usize::MAX)?;
    Ok(steps.remove(0))
}

/// `z' − z` for each labelled sample (a list of its slices): the Dice-loss gradient w.r.t. the
/// input (the UNet in eval mode; the weights' gradients untouched), masked to the brain, a step
/// of `step.alpha`, and the encoder mean before and after, by `step.method`.
///
/// Samples are packed into batches of up to `batch_slices` slices (a sample larger than that
/// is a batch of its own) and one backward pass serves the whole batch: the loss is the sum of
/// the samples' own Dice losses and the UNet is in eval mode, so each slice's input gradient is
/// exactly its sample's gradient. At image granularity this replaces one backward pass per
/// labelled slice with one per batch.
pub fn gradient_directions(
    nets: &DirectionNets,
    ds: &Dataset,
    feed: &Feed,
    samples: &[Vec<usize>],
    step: StepSettings,
    batch_slices: usize,
) -> Result<Vec<GradientStep>> {
    let mut out = Vec::with_capacity(samples.len());
    let mut start = 0;
    while start < samples.len() {
        let (mut end, mut n) = (start + 1, samples[start].len());
        while end < samples.len() && n + samples[end].len() <= batch_slices {
            n += samples[end].len();
            end += 1;
        }
        out.extend(direction_batch(nets, ds, feed, &samples[start..end], step)?);
        start = end;
    }
    Ok(out)
}

/// Encoder means of `slices`, `(N, latent)` on the CPU, in batches of `batch_size` (the
/// parts stay on the device until the end: one transfer, no wait per batch).
pub fn encode_slices(
    vae: &Vae,
    ds: &Dataset,
    slices: &[usize],
    feed: &Feed,
    batch_size: usize,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let parts: Vec<Tensor> = slices
        .chunks(batch_size.max(1))
        .map(|chunk| vae.encode(&feed.images(ds, chunk)).0)
        .collect();
    if parts.is_empty() {
        return Tensor::zeros([0, vae.latent()], (Kind::Float, Device::Cpu));
    }
    Tensor::cat(&parts, 0).to_device(Device::Cpu)
}

/// Each sample's own Dice loss (as [`dice_loss_smoothed`] over its slices), summed: one scalar whose
/// gradient w.r.t. each slice is its sample's gradient; and the losses themselves, detached,
/// still on the device (read later: reading them here would make the host wait for the forward
/// pass before it could queue the backward one). Equal-size samples (image granularity) take
/// one vectorised pass.
fn summed_sample_losses(
    logits: &Tensor,
    y: &Tensor,
    ranges: &[(i64, i64)],
    smoothing: f64,
) -> (Tensor, Tensor) {
    let equal = ranges.iter().all(|r| r.1 == ranges[0].1);
    let losses = if equal {
        let n = ranges.len() as i64;
        let p = logits.sigmoid().reshape([n, -1]);
        let t = y.reshape([n, -1]);
        let kind = logits.kind();
        let inter = (&p * &t).sum_dim_intlist(1, false, kind);
        let denom = p.sum_dim_intlist(1, false, kind) + t.sum_dim_intlist(1, false, kind);
        1.0 - (2.0 * inter + smoothing) / (denom + smoothing).clamp_min(DICE_FLOOR)
    } else {
        let each: Vec<Tensor> = ranges
            .iter()
            .map(|&(a, len)| {
                dice_loss_smoothed(&logits.narrow(0, a, len), &y.narrow(0, a, len), smoothing)
            })
            .collect();
        Tensor::stack(&each, 0)
    };
    (losses.sum(logits.kind()), losses.detach())
}

/// Per-slice sums of squares, `(N, C, H, W)` → N values, in float64.
fn slice_sq_norms(t: &Tensor) -> Vec<f64> {
    Vec::try_from(
        t.to_kind(Kind::Double)
            .square()
            .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Double)
            .to_device(Device::Cpu),
    )
    .unwrap_or_default()
}

/// Rows of `dz` (one per slice, on any device) averaged over each sample's slice range.
fn mean_rows(dz: &Tensor, ranges: &[(i64, i64)]) -> Vec<Vec<f64>> {
    let dz = dz.to_kind(Kind::Double).to_device(Device::Cpu);
    ranges
        .iter()
        .map(|&(a, len)| {
            Vec::try_from(dz.narrow(0, a, len).mean_dim(0, false, Kind::Double)).unwrap_or_default()
        })
        .collect()
}

fn direction_batch(
    nets: &DirectionNets,
    ds: &Dataset,
    feed: &Feed,
    group: &[Vec<usize>],
    step: StepSettings,
) -> Result<Vec<GradientStep>> {
    let DirectionNets { unet, vae, vae64 } = *nets;
    let StepSettings {
        alpha,
        dice_smoothing,
        method,
    } = step;
    let slices = group.concat();
    let mut ranges = Vec::with_capacity(group.len());
    let mut at = 0i64;
    for s in group {
        ranges.push((at, s.len() as i64));
        at += s.len() as i64;
    }
    let (x, y) = feed.batch(ds, &slices);
    let x = x.set_requires_grad(true);
    let logits = unet.forward_t(&x, false);
    let (total, losses) = summed_sample_losses(&logits, &y, &ranges, dice_smoothing);
    let grads = Tensor::run_backward(&[&total], &[&x], false, false);
    let x = x.detach();
    // Only brain pixels move: background gradients of empty slices would dominate otherwise.
    let brain = x
        .abs()
        .sum_dim_intlist(1, true, Kind::Float)
        .gt(0.0)
        .to_kind(Kind::Float);
    // The input gradient comes back in the weights' layout (channels-last); the float64
    // encoder runs fastest on the standard one.
    let g = (&grads[0] * &brain).detach().contiguous();
    let _guard = tch::no_grad_guard();
    let (x_sq, g_sq) = (slice_sq_norms(&x), slice_sq_norms(&g));
    let per_sample = |v: &[f64], (a, len): (i64, i64)| -> f64 {
        v[a as usize..(a + len) as usize].iter().sum::<f64>().sqrt()
    };
    let norms: Vec<(f64, f64)> = ranges
        .iter()
        .map(|&r| (per_sample(&x_sq, r), per_sample(&g_sq, r)))
        .collect();
    let rel_dx: Vec<f64> = norms
        .iter()
        .map(|&(xn, gn)| if xn > 0.0 { alpha * gn / xn } else { 0.0 })
        .collect();
    let methods: Vec<DirectionMethod> = rel_dx
        .iter()
        .map(|&r| match method {
            DirectionMethod::Auto if r < FLOAT32_RESOLUTION => DirectionMethod::Float64,
            DirectionMethod::Auto => DirectionMethod::Float32,
            m => m,
        })
        .collect();
    let needs = |m: DirectionMethod| methods.contains(&m);
    // Per-slice z' − z in each precision some sample needs, then averaged per sample.
    let float32 = needs(DirectionMethod::Float32).then(|| {
        let z = vae.encode(&x).0;
        let zp = vae.encode(&(&x + &g * alpha)).0;
        mean_rows(&(zp - z), &ranges)
    });
    let float64 = needs(DirectionMethod::Float64).then(|| {
        let x64 = x.to_kind(Kind::Double);
        let z = vae64.encode(&x64).0;
        let zp = vae64.encode(&(&x64 + g.to_kind(Kind::Double) * alpha)).0;
        mean_rows(&(zp - z), &ranges)
    });
    let central = needs(DirectionMethod::CentralDifference).then(|| {
        // A step of 1e-3 ‖x‖ along g resolves in float32; each sample's step is scaled back
        // to α (a sample without gradient gets no direction).
        let h: Vec<f64> = norms
            .iter()
            .map(|&(xn, gn)| if gn > 0.0 { 1e-3 * xn / gn } else { 0.0 })
            .collect();
        let per_slice = |f: &dyn Fn(f64) -> f64| -> Tensor {
            let v: Vec<f32> = ranges
                .iter()
                .zip(&h)
                .flat_map(|(&(_, len), &h)| std::iter::repeat_n(f(h) as f32, len as usize))
                .collect();
            to_device_async(Tensor::from_slice(&v), feed.device())
        };
        let step = per_slice(&|h| h).view([-1, 1, 1, 1]);
        let back = per_slice(&|h| if h > 0.0 { alpha / (2.0 * h) } else { 0.0 }).view([-1, 1]);
        let zp = vae.encode(&(&x + &g * &step)).0;
        let zm = vae.encode(&(&x - &g * &step)).0;
        mean_rows(&((zp - zm) * back), &ranges)
    });
    let losses: Vec<f64> =
        Vec::try_from(losses.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap_or_default();
    Ok(methods
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let dirs = match m {
                DirectionMethod::Float64 => &float64,
                DirectionMethod::CentralDifference => &central,
                _ => &float32,
            };
            let direction = dirs.as_ref().map(|d| d[i].clone()).unwrap_or_default();
            GradientStep {
                loss: losses[i],
                rel_dx: rel_dx[i],
                dz_norm: direction.iter().map(|v| v * v).sum::<f64>().sqrt(),
                method: m,
                direction,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::SeedableRng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn oracle_takes_the_lowest_scores() {
        let p = pick_oracle(&[(0, 0.9), (1, 0.1), (2, 0.5), (3, 0.1)], 3, &mut rng(0));
        let mut got: Vec<usize> = p.iter().map(|p| p.sample).collect();
        assert_eq!(got[2], 2);
        got[..2].sort();
        assert_eq!(got, [1, 3, 2]);
    }

    #[test]
    fn entropy_takes_the_highest_scores() {
        let p = pick_highest(&[(0, 0.2), (1, 0.6), (2, 0.1), (3, 0.6)], 3, &mut rng(0));
        let mut got: Vec<(usize, Option<f64>)> = p.iter().map(|p| (p.sample, p.score)).collect();
        got[..2].sort_by_key(|g| g.0);
        assert_eq!(got, [(1, Some(0.6)), (3, Some(0.6)), (0, Some(0.2))]);
    }

    #[test]
    fn spaced_picks_skip_the_neighbours_of_earlier_ones() {
        let ranked: Vec<Pick> = [5, 6, 9, 4, 7, 20].into_iter().map(Pick::plain).collect();
        let near = |s: usize| vec![s - 1, s + 1];
        let rule = Spacing {
            near: &near,
            seen: HashSet::from([20]),
        };
        let picked = |k| -> Vec<usize> {
            spaced(ranked.clone(), k, Some(&rule))
                .iter()
                .map(|p| p.sample)
                .collect()
        };
        assert_eq!(picked(3), [5, 9, 7], "6 and 4 neighbour 5; 20 was seen");
        // Only avoided samples left: they are taken in their order.
        assert_eq!(picked(5), [5, 9, 7, 6, 4]);
        let plain: Vec<usize> = spaced(ranked, 3, None).iter().map(|p| p.sample).collect();
        assert_eq!(plain, [5, 6, 9]);
    }

    /// Ties are broken in the seeded order, not by index: among 100 tied samples the picks
    /// spread over the whole range, the same for one seed and different for another.
    #[test]
    fn ties_fall_in_a_seeded_order_not_by_index() {
        let scores: Vec<(usize, f64)> = (0..100).map(|i| (i, 0.0)).collect();
        let picks = |seed| -> Vec<usize> {
            pick_oracle(&scores, 10, &mut rng(seed))
                .iter()
                .map(|p| p.sample)
                .collect()
        };
        let a = picks(1);
        assert_ne!(a, (0..10).collect::<Vec<_>>(), "not the first ten by index");
        assert!(a.iter().any(|&s| s >= 50), "{a:?}");
        assert_eq!(a, picks(1));
        assert_ne!(a, picks(2));
    }
}
