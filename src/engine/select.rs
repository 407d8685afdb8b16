//! The three suggestion strategies: random, oracle (the samples the current model does worst
//! on, an upper-bound reference), and the paper's gradient-guided cone search in latent space.

use std::collections::HashSet;

use anyhow::Result;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::batch;
use super::nets::{dice_loss, UNet, Vae};
use crate::data::Dataset;
use crate::session::config::DirectionMethod;

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

/// The `k` samples with the lowest score (the current model's Dice), ties by index.
pub fn pick_oracle(scores: &[(usize, f64)], k: usize) -> Vec<Pick> {
    let mut s = scores.to_vec();
    s.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    s.into_iter()
        .take(k)
        .map(|(i, d)| Pick {
            score: Some(d),
            ..Pick::plain(i)
        })
        .collect()
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Result of one cone search.
#[derive(Debug, Clone, PartialEq)]
pub struct ConePick {
    pub sample: usize,
    pub distance: f64,
    /// None when the angle is undefined (zero direction or a candidate at z itself).
    pub angle_deg: Option<f64>,
    pub fallback: bool,
}

/// Among `candidates` not in `taken`, the one nearest to `z' = z + d` inside the cone of
/// half-angle θ around `d` (cos∠(z_j − z, d) ≥ cos θ); when the cone is empty (or `d` is 0),
/// the nearest candidate to z' (a counted fallback). Ties go to the lower sample index.
pub fn cone_search(
    z: &[f64],
    d: &[f64],
    candidates: &[(usize, Vec<f64>)],
    cos_theta: f64,
    taken: &HashSet<usize>,
) -> Option<ConePick> {
    let zp: Vec<f64> = z.iter().zip(d).map(|(a, b)| a + b).collect();
    let dn = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut best_in: Option<(f64, usize, Option<f64>)> = None;
    let mut best_any: Option<(f64, usize, Option<f64>)> = None;
    for (j, zj) in candidates {
        if taken.contains(j) {
            continue;
        }
        let v: Vec<f64> = zj.iter().zip(z).map(|(a, b)| a - b).collect();
        let vn = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = if dn > 0.0 && vn > 0.0 {
            Some(v.iter().zip(d).map(|(a, b)| a * b).sum::<f64>() / (vn * dn))
        } else {
            None
        };
        let angle = cos.map(|c| c.clamp(-1.0, 1.0).acos().to_degrees());
        let dd = dist(zj, &zp);
        let better = |b: &Option<(f64, usize, Option<f64>)>| {
            b.as_ref()
                .is_none_or(|(bd, bj, _)| dd < *bd || (dd == *bd && j < bj))
        };
        if cos.is_some_and(|c| c >= cos_theta) && better(&best_in) {
            best_in = Some((dd, *j, angle));
        }
        if better(&best_any) {
            best_any = Some((dd, *j, angle));
        }
    }
    match (best_in, best_any) {
        (Some((distance, sample, angle_deg)), _) => Some(ConePick {
            sample,
            distance,
            angle_deg,
            fallback: false,
        }),
        (None, Some((distance, sample, angle_deg))) => Some(ConePick {
            sample,
            distance,
            angle_deg,
            fallback: true,
        }),
        _ => None,
    }
}

/// A labelled sample's latent position and gradient direction.
#[derive(Debug, Clone)]
pub struct Source {
    pub sample: usize,
    pub z: Vec<f64>,
    pub direction: Vec<f64>,
}

/// `k` distinct picks: the sources take turns (in the given order, cycling when k exceeds
/// their number), each taking the best unpicked candidate of its cone.
pub fn pick_proposed(
    sources: &[Source],
    candidates: &[(usize, Vec<f64>)],
    k: usize,
    cone_degrees: f64,
) -> Vec<Pick> {
    let cos_theta = cone_degrees.to_radians().cos();
    let mut taken = HashSet::new();
    let mut picks = Vec::new();
    if sources.is_empty() {
        return picks;
    }
    for s in sources.iter().cycle() {
        if picks.len() >= k {
            break;
        }
        let Some(c) = cone_search(&s.z, &s.direction, candidates, cos_theta, &taken) else {
            break; // no candidates left
        };
        taken.insert(c.sample);
        picks.push(Pick {
            sample: c.sample,
            source: Some(s.sample),
            distance: Some(c.distance),
            angle_deg: c.angle_deg,
            fallback: c.fallback,
            score: None,
        });
    }
    picks
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

/// Below this relative step, float32 cannot resolve `x' − x` (DESIGN.md): use float64.
const FLOAT32_RESOLUTION: f64 = 1e-6;

/// `z' − z` for the sample made of `slices`: the Dice-loss gradient w.r.t. the input (the UNet
/// in eval mode; the weights' gradients untouched), masked to the brain, a step of `alpha`, and
/// the encoder mean before and after, by `method`. `vae64` is the float64 copy of the encoder.
#[allow(clippy::too_many_arguments)]
pub fn gradient_direction(
    unet: &UNet,
    vae: &Vae,
    vae64: &Vae,
    ds: &Dataset,
    slices: &[usize],
    alpha: f64,
    method: DirectionMethod,
    device: Device,
) -> Result<GradientStep> {
    let x = batch::images(ds, slices, device).set_requires_grad(true);
    let y = batch::masks(ds, slices, device);
    let loss = dice_loss(&unet.forward_t(&x, false), &y);
    let grads = Tensor::run_backward(&[&loss], &[&x], false, false);
    let x = x.detach();
    // Only brain pixels move: background gradients of empty slices would dominate otherwise.
    let brain = x
        .abs()
        .sum_dim_intlist(1, true, Kind::Float)
        .gt(0.0)
        .to_kind(Kind::Float);
    let g = (&grads[0] * &brain).detach();
    let _guard = tch::no_grad_guard();
    let xn = x.norm().double_value(&[]);
    let gn = g.norm().double_value(&[]);
    let rel_dx = if xn > 0.0 { alpha * gn / xn } else { 0.0 };
    let method = match method {
        DirectionMethod::Auto if rel_dx < FLOAT32_RESOLUTION => DirectionMethod::Float64,
        DirectionMethod::Auto => DirectionMethod::Float32,
        m => m,
    };
    let mean_latent = |t: Tensor| -> Vec<f64> {
        Vec::try_from(
            t.to_kind(Kind::Double)
                .mean_dim(0, false, Kind::Double)
                .to_device(Device::Cpu),
        )
        .unwrap_or_default()
    };
    let direction = match method {
        DirectionMethod::Float32 | DirectionMethod::Auto => {
            let z = vae.encode(&x).0;
            let zp = vae.encode(&(&x + &g * alpha)).0;
            mean_latent(zp - z)
        }
        DirectionMethod::Float64 => {
            let x64 = x.to_kind(Kind::Double);
            let z = vae64.encode(&x64).0;
            let zp = vae64.encode(&(&x64 + g.to_kind(Kind::Double) * alpha)).0;
            mean_latent(zp - z)
        }
        DirectionMethod::CentralDifference => {
            // A step 1e-3 of ‖x‖ along g resolves in float32; scale back to α.
            let h = if gn > 0.0 { 1e-3 * xn / gn } else { 0.0 };
            if h == 0.0 {
                vec![0.0; vae_latent(vae, &x)]
            } else {
                let zp = vae.encode(&(&x + &g * h)).0;
                let zm = vae.encode(&(&x - &g * h)).0;
                mean_latent((zp - zm) * (alpha / (2.0 * h)))
            }
        }
    };
    let dz_norm = direction.iter().map(|v| v * v).sum::<f64>().sqrt();
    Ok(GradientStep {
        loss: loss.double_value(&[]),
        rel_dx,
        dz_norm,
        method,
        direction,
    })
}

fn vae_latent(vae: &Vae, x: &Tensor) -> usize {
    vae.encode(&x.narrow(0, 0, 1)).0.size()[1] as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(v: &[(usize, [f64; 2])]) -> Vec<(usize, Vec<f64>)> {
        v.iter().map(|(i, z)| (*i, z.to_vec())).collect()
    }

    #[test]
    fn cone_search_prefers_the_cone_over_nearer_samples_outside_it() {
        let c = cands(&[(1, [-0.1, 0.0]), (2, [1.0, 0.2]), (3, [0.0, 1.0])]);
        let r = cone_search(
            &[0.0, 0.0],
            &[0.01, 0.0],
            &c,
            45f64.to_radians().cos(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(r.sample, 2);
        assert!(!r.fallback);
        assert!(r.angle_deg.unwrap() < 12.0);
    }

    #[test]
    fn empty_cone_falls_back_to_the_nearest_and_says_so() {
        let c = cands(&[(1, [-0.1, 0.0]), (3, [0.0, 1.0])]);
        let r = cone_search(
            &[0.0, 0.0],
            &[0.01, 0.0],
            &c,
            45f64.to_radians().cos(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!((r.sample, r.fallback), (1, true));
        // A zero direction has no cone at all.
        let r = cone_search(&[0.0, 0.0], &[0.0, 0.0], &c, 0.5, &HashSet::new()).unwrap();
        assert_eq!((r.sample, r.fallback, r.angle_deg), (1, true, None));
    }

    #[test]
    fn ties_go_to_the_lower_index_and_nothing_is_picked_twice() {
        let c = cands(&[(7, [1.0, 1.0]), (4, [1.0, -1.0]), (9, [2.0, 0.0])]);
        let src = |s| Source {
            sample: s,
            z: vec![0.0, 0.0],
            direction: vec![1.0, 0.0],
        };
        let picks = pick_proposed(&[src(100), src(101)], &c, 3, 60.0);
        let got: Vec<usize> = picks.iter().map(|p| p.sample).collect();
        assert_eq!(got, [4, 7, 9]);
        assert_eq!(picks[0].source, Some(100));
        assert_eq!(picks[1].source, Some(101));
        assert!(picks.iter().all(|p| !p.fallback));
        // More picks than candidates: stops when the pool is exhausted.
        assert_eq!(pick_proposed(&[src(100)], &c, 10, 60.0).len(), 3);
    }

    #[test]
    fn oracle_takes_the_lowest_scores() {
        let p = pick_oracle(&[(0, 0.9), (1, 0.1), (2, 0.5), (3, 0.1)], 3);
        let got: Vec<usize> = p.iter().map(|p| p.sample).collect();
        assert_eq!(got, [1, 3, 2]);
    }
}
