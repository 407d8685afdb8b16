//! The model's outputs on data it is not trained on: per-patient 3D whole-tumour Dice and the
//! predicted masks of held-out patients, per-slice Dice, and the predictive entropy that
//! uncertainty sampling ranks by.

use tch::{Device, Kind, Tensor};

use super::batch::Feed;
use super::nets::UNet;
use crate::data::Dataset;

/// Overlap counts of a thresholded prediction against ground truth.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overlap {
    pub inter: u64,
    pub pred: u64,
    pub truth: u64,
}

impl Overlap {
    /// The overlaps of several slices added up (a patient's volume).
    pub fn total(slices: &[Overlap]) -> Overlap {
        slices.iter().fold(Overlap::default(), |a, o| Overlap {
            inter: a.inter + o.inter,
            pred: a.pred + o.pred,
            truth: a.truth + o.truth,
        })
    }

    /// Dice; 1 when both are empty (nothing to find, nothing found).
    pub fn dice(&self) -> f64 {
        if self.pred + self.truth == 0 {
            1.0
        } else {
            2.0 * self.inter as f64 / (self.pred + self.truth) as f64
        }
    }
}

/// Per-slice overlaps of the model's prediction (sigmoid > 0.5), in eval mode, batched. The
/// counts stay on the device until the end (one transfer, no wait per batch). Blank slices
/// (`Dataset::is_blank`: zero in every channel, outside the head, about a seventh of a BraTS
/// volume) all get the network's prediction on a zero image, computed once and compared with
/// each one's mask, instead of a pass each.
pub fn slice_overlaps(
    net: &UNet,
    ds: &Dataset,
    slices: &[usize],
    feed: &Feed,
    batch: usize,
) -> Vec<Overlap> {
    let _g = tch::no_grad_guard();
    let (blank, seen): (Vec<usize>, Vec<usize>) =
        (0..slices.len()).partition(|&i| ds.is_blank(slices[i]));
    let sum = |t: &Tensor| t.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Int64);
    let mut parts = Vec::new();
    let at = |positions: &[usize]| -> Vec<usize> { positions.iter().map(|&i| slices[i]).collect() };
    for chunk in seen.chunks(batch.max(1)) {
        let chunk = at(chunk);
        let (x, y) = feed.batch(ds, &chunk);
        let p = net.forward_t(&x, false).gt(0.0).to_kind(Kind::Float);
        parts.push(Tensor::stack(&[sum(&(&p * &y)), sum(&p), sum(&y)], 1));
    }
    if !blank.is_empty() {
        let (c, s) = (ds.channels() as i64, ds.size() as i64);
        let zero = Tensor::zeros([1, c, s, s], (Kind::Float, feed.device()));
        let p = net.forward_t(&zero, false).gt(0.0).to_kind(Kind::Float);
        for chunk in blank.chunks(batch.max(1)) {
            let y = feed.masks(ds, &at(chunk));
            let pred = sum(&p).expand([y.size()[0]], false);
            parts.push(Tensor::stack(&[sum(&(&p * &y)), pred, sum(&y)], 1));
        }
    }
    if parts.is_empty() {
        return Vec::new();
    }
    let counts: Vec<i64> =
        Vec::try_from(Tensor::cat(&parts, 0).reshape([-1]).to_device(Device::Cpu))
            .unwrap_or_default();
    // Back into the order of `slices`: the passes above went non-blank first, then blank.
    let mut out = vec![Overlap::default(); slices.len()];
    for (&i, c) in seen.iter().chain(&blank).zip(counts.chunks_exact(3)) {
        out[i] = Overlap {
            inter: c[0] as u64,
            pred: c[1] as u64,
            truth: c[2] as u64,
        };
    }
    out
}

/// Per-slice overlaps of each patient's slices (`patients` index `ds.patients()`). All the
/// patients' slices go through one batched pass: full batches across patient boundaries
/// (a patient's 150 slices would otherwise end in a part batch) and one transfer at the end
/// instead of a wait per patient.
pub fn patient_slice_overlaps(
    net: &UNet,
    ds: &Dataset,
    patients: &[usize],
    feed: &Feed,
    batch: usize,
) -> Vec<Vec<Overlap>> {
    let ranges: Vec<std::ops::Range<usize>> = patients
        .iter()
        .map(|&p| ds.patients()[p].slice_range())
        .collect();
    let slices: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
    let mut all = slice_overlaps(net, ds, &slices, feed, batch).into_iter();
    ranges
        .iter()
        .map(|r| all.by_ref().take(r.len()).collect())
        .collect()
}

/// A patient's predicted mask (`[slice][row][col]`, 1 where sigmoid > 0.5) and its per-slice
/// overlaps with the truth.
pub struct PatientPrediction {
    pub mask: Vec<u8>,
    pub slices: Vec<Overlap>,
}

/// The prediction of each of `patients` (index `ds.patients()`), handed to `each` in order with
/// the patient's position in `patients`; one patient's mask is held at a time. The counts
/// equal `patient_slice_overlaps`'s: the same threshold on the same network output (blank
/// slices share the prediction on a zero image, computed once).
pub fn patient_predictions(
    net: &UNet,
    ds: &Dataset,
    patients: &[usize],
    feed: &Feed,
    batch: usize,
    each: &mut dyn FnMut(usize, PatientPrediction),
) {
    let _g = tch::no_grad_guard();
    let (c, s) = (ds.channels() as i64, ds.size() as i64);
    let plane = (s * s) as usize;
    let to_host = |t: Tensor| -> Vec<u8> {
        Vec::try_from(t.to_kind(Kind::Uint8).reshape([-1]).to_device(Device::Cpu))
            .unwrap_or_default()
    };
    let zero = Tensor::zeros([1, c, s, s], (Kind::Float, feed.device()));
    let blank_prediction = to_host(net.forward_t(&zero, false).gt(0.0));
    for (n, &p) in patients.iter().enumerate() {
        let range = ds.patients()[p].slice_range();
        let mut mask = vec![0u8; range.len() * plane];
        let seen: Vec<usize> = range.clone().filter(|&i| !ds.is_blank(i)).collect();
        for chunk in seen.chunks(batch.max(1)) {
            let pred = to_host(net.forward_t(&feed.images(ds, chunk), false).gt(0.0));
            for (j, &slice) in chunk.iter().enumerate() {
                let at = (slice - range.start) * plane;
                mask[at..at + plane].copy_from_slice(&pred[j * plane..(j + 1) * plane]);
            }
        }
        for slice in range.clone().filter(|&i| ds.is_blank(i)) {
            let at = (slice - range.start) * plane;
            mask[at..at + plane].copy_from_slice(&blank_prediction);
        }
        let slices = range
            .clone()
            .map(|slice| {
                let at = (slice - range.start) * plane;
                let pred = &mask[at..at + plane];
                let truth = ds.mask(slice);
                let mut o = Overlap::default();
                for (&a, &b) in pred.iter().zip(truth) {
                    let (a, b) = (a != 0, b != 0);
                    o.inter += (a && b) as u64;
                    o.pred += a as u64;
                    o.truth += b as u64;
                }
                o
            })
            .collect();
        each(n, PatientPrediction { mask, slices });
    }
}

/// Per slice: the summed binary entropy of the model's prediction over the brain (pixels that
/// are non-zero in some channel), and the number of brain pixels. Blank slices (no brain)
/// give (0, 0) without a network pass.
pub fn slice_entropies(
    net: &UNet,
    ds: &Dataset,
    slices: &[usize],
    feed: &Feed,
    batch: usize,
) -> Vec<(f64, f64)> {
    let _g = tch::no_grad_guard();
    let mut out = vec![(0.0, 0.0); slices.len()];
    let seen: Vec<usize> = (0..slices.len())
        .filter(|&i| !ds.is_blank(slices[i]))
        .collect();
    let dims = [1i64, 2, 3];
    for chunk in seen.chunks(batch.max(1)) {
        let ids: Vec<usize> = chunk.iter().map(|&i| slices[i]).collect();
        let x = feed.images(ds, &ids);
        let brain = x
            .abs()
            .sum_dim_intlist(1, true, Kind::Float)
            .gt(0.0)
            .to_kind(Kind::Double);
        let p = net
            .forward_t(&x, false)
            .to_kind(Kind::Double)
            .sigmoid()
            .clamp(1e-12, 1.0 - 1e-12);
        let q: Tensor = 1.0 - &p;
        let h = -(&p * p.log() + &q * q.log());
        let sums = (h * &brain).sum_dim_intlist(dims.as_slice(), false, Kind::Double);
        let counts = brain.sum_dim_intlist(dims.as_slice(), false, Kind::Double);
        let pair = Tensor::stack(&[sums, counts], 1).to_device(Device::Cpu);
        let v: Vec<f64> = Vec::try_from(pair.reshape([-1])).unwrap_or_default();
        for (j, &i) in chunk.iter().enumerate() {
            out[i] = (v[2 * j], v[2 * j + 1]);
        }
    }
    out
}

/// 3D Dice of each patient (index into `ds.patients()`).
pub fn patient_dice(
    net: &UNet,
    ds: &Dataset,
    patients: &[usize],
    feed: &Feed,
    batch: usize,
) -> Vec<f64> {
    patient_slice_overlaps(net, ds, patients, feed, batch)
        .iter()
        .map(|slices| Overlap::total(slices).dice())
        .collect()
}

pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}
