//! How much of the pool the VAE's latent space holds: the reconstruction error from the encoder
//! mean against the error of predicting every image by the pool's mean image (their ratio gives
//! the fraction of the pool's variance the latent space explains), the KL divergence per latent
//! dimension, and the active dimensions (Burda et al., 2016: those whose encoder mean varies
//! over the data by more than 0.01). Computed in the same pass that encodes the pool.

use serde::{Deserialize, Deserializer, Serialize};
use tch::{Device, Kind, Tensor};

use super::batch::Feed;
use super::nets::Vae;
use crate::data::Dataset;

/// Below this variance over the data, a latent dimension carries nothing (Burda et al.).
pub const ACTIVE_VARIANCE: f64 = 0.01;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifoldStats {
    /// Slices encoded (the pool's).
    pub slices: usize,
    /// Mean squared error per pixel of decode(encoder mean) against the image.
    #[serde(deserialize_with = "nan_if_null")]
    pub recon_mse: f64,
    /// Mean squared error per pixel of the pool's mean image against each image.
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_image_mse: f64,
    /// 1 − recon_mse / mean_image_mse: the share of the pool's pixel variance the latent
    /// space reproduces (0: no better than the mean image).
    #[serde(deserialize_with = "nan_if_null")]
    pub variance_explained: f64,
    /// Per latent dimension: the mean over the pool of KL(q(z|x) ‖ N(0, 1)), nats.
    #[serde(deserialize_with = "nans_if_null")]
    pub kl_per_dim: Vec<f64>,
    /// Per latent dimension: the variance of the encoder mean over the pool.
    #[serde(deserialize_with = "nans_if_null")]
    pub mean_variance: Vec<f64>,
    /// Dimensions whose `mean_variance` exceeds `ACTIVE_VARIANCE`.
    pub active_dims: usize,
}

/// JSON has no NaN: serde_json writes one as null. Read null back as NaN, so the statistics of
/// a VAE that diverged never make a state file unreadable.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nans_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<Option<f64>>::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

impl ManifoldStats {
    /// `VAE: 62 % of the pool's variance (reconstruction MSE 0.2100 against 0.5500 for the
    /// mean image), 2 of 5 latent dimensions active`.
    pub fn line(&self) -> String {
        format!(
            "VAE: {:.0} % of the pool's variance (reconstruction MSE {:.4} against {:.4} for the mean image), {} of {} latent dimensions active",
            100.0 * self.variance_explained,
            self.recon_mse,
            self.mean_image_mse,
            self.active_dims,
            self.kl_per_dim.len()
        )
    }
}

/// One epoch of the VAE's training, measured on its validation slices (pool slices held out of
/// its training): the training loss, and the reconstruction error from the encoder mean with
/// the share of the validation slices' variance it explains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VaeEpoch {
    /// 1-based.
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub validation_mse: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub variance_explained: f64,
}

/// The epoch (1-based) with the lowest validation error so far; the first of equals, and none
/// while no error is a number.
pub fn best_epoch(curve: &[VaeEpoch]) -> Option<usize> {
    curve
        .iter()
        .filter(|e| e.validation_mse.is_finite())
        .min_by(|a, b| a.validation_mse.total_cmp(&b.validation_mse))
        .map(|e| e.epoch)
}

/// Whether training has plateaued: `patience` epochs (at least one) have passed since the best
/// one without a lower validation error. A curve whose errors are all NaN (a VAE that
/// diverged) plateaus after `patience` epochs too.
pub fn plateaued(curve: &[VaeEpoch], patience: usize) -> bool {
    let Some(last) = curve.last() else {
        return false;
    };
    patience > 0 && last.epoch >= best_epoch(curve).unwrap_or(0).saturating_add(patience)
}

/// Below this share of the pool's variance, by default, the latent space is called too weak to
/// pick in (`vae.min_variance_explained`).
pub const DEFAULT_MIN_VARIANCE_EXPLAINED: f64 = 0.25;

impl ManifoldStats {
    /// The warning for `arms`, the strategies that pick in the latent space, when it reproduces
    /// less than `threshold` of the pool's variance (or its statistics are not numbers):
    /// `the latent space reproduces 9 % of the pool's variance (below 25 %): proposed and
    /// coreset picks carry little information`. `None` when it clears the bar or no arm depends
    /// on it.
    pub fn weak_for(&self, threshold: f64, arms: &[&str]) -> Option<String> {
        let ve = self.variance_explained;
        if arms.is_empty() || ve >= threshold {
            return None;
        }
        let share = if ve.is_finite() {
            format!("{:.0} %", 100.0 * ve)
        } else {
            "no measurable share".into()
        };
        let arms = match arms {
            [one] => format!("{one} picks carry"),
            [init @ .., last] => format!("{} and {last} picks carry", init.join(", ")),
            [] => unreachable!(),
        };
        Some(format!(
            "the latent space reproduces {share} of the pool's variance (below {:.0} %): {arms} little information",
            100.0 * threshold
        ))
    }
}

/// The encoder means of `slices` (`(N, latent)` on the CPU, as `select::encode_slices`), and
/// the manifold's statistics over them.
pub fn encode_and_diagnose(
    vae: &Vae,
    ds: &Dataset,
    slices: &[usize],
    feed: &Feed,
    batch_size: usize,
) -> (Tensor, ManifoldStats) {
    let _guard = tch::no_grad_guard();
    let latent = vae.latent();
    let (c, s) = (ds.channels() as i64, ds.size() as i64);
    let dev = feed.device();
    let f64s = (Kind::Double, dev);
    // Sums on the device in float64: of x and x² per pixel, of the squared reconstruction
    // error, and per latent dimension of μ, μ² and the KL.
    let (mut sum_x, mut sum_x2) = (
        Tensor::zeros([c, s, s], f64s),
        Tensor::zeros([c, s, s], f64s),
    );
    let mut recon_sq = Tensor::zeros([], f64s);
    let (mut sum_mu, mut sum_mu2, mut sum_kl) = (
        Tensor::zeros([latent], f64s),
        Tensor::zeros([latent], f64s),
        Tensor::zeros([latent], f64s),
    );
    let mut parts = Vec::new();
    for chunk in slices.chunks(batch_size.max(1)) {
        let x = feed.images(ds, chunk);
        let (mu, logvar) = vae.encode(&x);
        let recon = vae.decode(&mu);
        let x64 = x.to_kind(Kind::Double);
        recon_sq += (recon.to_kind(Kind::Double) - &x64)
            .square()
            .sum(Kind::Double);
        sum_x += x64.sum_dim_intlist(0, false, Kind::Double);
        sum_x2 += x64.square().sum_dim_intlist(0, false, Kind::Double);
        let (mu64, lv64) = (mu.to_kind(Kind::Double), logvar.to_kind(Kind::Double));
        sum_mu += mu64.sum_dim_intlist(0, false, Kind::Double);
        sum_mu2 += mu64.square().sum_dim_intlist(0, false, Kind::Double);
        let kl = (mu64.square() + lv64.exp() - &lv64 - 1.0) * 0.5;
        sum_kl += kl.sum_dim_intlist(0, false, Kind::Double);
        parts.push(mu);
    }
    let z = if parts.is_empty() {
        Tensor::zeros([0, latent], (Kind::Float, Device::Cpu))
    } else {
        Tensor::cat(&parts, 0).to_device(Device::Cpu)
    };
    let n = slices.len().max(1) as f64;
    let pixels = n * (c * s * s) as f64;
    let read = |t: &Tensor| -> Vec<f64> {
        Vec::try_from(t.reshape([-1]).to_device(Device::Cpu)).unwrap_or_default()
    };
    let recon_mse = read(&recon_sq)[0] / pixels;
    // Σᵢ‖xᵢ − x̄‖² = Σ x² − N‖x̄‖², per pixel.
    let mean = &sum_x / n;
    let spread = read(&(sum_x2 - mean.square() * n).sum(Kind::Double))[0];
    let mean_image_mse = spread / pixels;
    let (mu, mu2, kl) = (read(&sum_mu), read(&sum_mu2), read(&sum_kl));
    let mean_variance: Vec<f64> = mu
        .iter()
        .zip(&mu2)
        .map(|(m, m2)| (m2 / n - (m / n).powi(2)).max(0.0))
        .collect();
    let stats = ManifoldStats {
        slices: slices.len(),
        recon_mse,
        mean_image_mse,
        variance_explained: if mean_image_mse > 0.0 {
            1.0 - recon_mse / mean_image_mse
        } else {
            0.0
        },
        kl_per_dim: kl.iter().map(|k| k / n).collect(),
        active_dims: mean_variance
            .iter()
            .filter(|&&v| v > ACTIVE_VARIANCE)
            .count(),
        mean_variance,
    };
    (z, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(errors: &[f64]) -> Vec<VaeEpoch> {
        errors
            .iter()
            .enumerate()
            .map(|(i, &e)| VaeEpoch {
                epoch: i + 1,
                loss: e,
                validation_mse: e,
                variance_explained: 1.0 - e,
            })
            .collect()
    }

    #[test]
    fn training_stops_after_patience_epochs_without_a_better_validation_error() {
        assert_eq!(best_epoch(&curve(&[])), None);
        assert!(!plateaued(&curve(&[]), 3));
        let c = curve(&[0.5, 0.4, 0.45, 0.41]);
        assert_eq!(best_epoch(&c), Some(2));
        assert!(!plateaued(&c, 3), "two epochs since the best");
        assert!(plateaued(&c, 2));
        assert!(!plateaued(&c, 0), "patience 0: never");
        let c = curve(&[0.5, 0.4, 0.45, 0.41, 0.39]);
        assert_eq!(best_epoch(&c), Some(5));
        assert!(!plateaued(&c, 1));
        // Equal is not better: the first of equals stays the best.
        assert_eq!(best_epoch(&curve(&[0.4, 0.4])), Some(1));
        assert!(plateaued(&curve(&[0.4, 0.4]), 1));
        // A diverged VAE (NaN) stops too, after `patience` epochs.
        let nan = curve(&[f64::NAN, f64::NAN]);
        assert_eq!(best_epoch(&nan), None);
        assert!(plateaued(&nan, 2) && !plateaued(&nan, 3));
        let text = serde_json::to_string(&nan).unwrap();
        let back: Vec<VaeEpoch> = serde_json::from_str(&text).unwrap();
        assert!(back[0].validation_mse.is_nan());
    }

    fn stats(variance_explained: f64) -> ManifoldStats {
        ManifoldStats {
            slices: 10,
            recon_mse: 0.5,
            mean_image_mse: 0.5,
            variance_explained,
            kl_per_dim: vec![0.1],
            mean_variance: vec![0.1],
            active_dims: 1,
        }
    }

    #[test]
    fn a_weak_latent_space_is_named_for_the_arms_that_pick_in_it() {
        let weak = stats(0.09);
        assert_eq!(
            weak.weak_for(0.25, &["proposed", "coreset"]).as_deref(),
            Some("the latent space reproduces 9 % of the pool's variance (below 25 %): proposed and coreset picks carry little information")
        );
        assert_eq!(
            weak.weak_for(0.25, &["proposed"]).as_deref(),
            Some("the latent space reproduces 9 % of the pool's variance (below 25 %): proposed picks carry little information")
        );
        assert_eq!(weak.weak_for(0.25, &[]), None, "no arm depends on it");
        assert_eq!(stats(0.25).weak_for(0.25, &["proposed"]), None);
        assert_eq!(stats(0.6).weak_for(0.5, &["coreset"]), None);
        let diverged = stats(f64::NAN).weak_for(0.25, &["proposed"]).unwrap();
        assert!(diverged.contains("no measurable share"), "{diverged}");
        assert!(stats(-0.08)
            .weak_for(0.25, &["proposed"])
            .unwrap()
            .contains("reproduces -8 %"));
    }

    /// A diverged VAE's statistics (NaN) are written as null and read back as NaN.
    #[test]
    fn not_a_number_survives_a_round_trip_through_json() {
        let stats = ManifoldStats {
            slices: 3,
            recon_mse: f64::NAN,
            mean_image_mse: 0.5,
            variance_explained: f64::NAN,
            kl_per_dim: vec![f64::INFINITY, 0.1],
            mean_variance: vec![0.0, f64::NAN],
            active_dims: 0,
        };
        let text = serde_json::to_string(&stats).unwrap();
        assert!(text.contains("\"recon_mse\":null"), "{text}");
        let back: ManifoldStats = serde_json::from_str(&text).unwrap();
        assert!(back.recon_mse.is_nan() && back.variance_explained.is_nan());
        assert_eq!(back.mean_image_mse, 0.5);
        assert!(back.kl_per_dim[0].is_nan() && back.kl_per_dim[1] == 0.1);
        assert!(back.mean_variance[1].is_nan());
    }
}
