//! Slices of the memory-mapped data set → tensors on the training device.

use half::slice::HalfFloatSliceExt;
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;

/// Images `(N, C, S, S)` as float32 on `device`.
pub fn images(ds: &Dataset, slices: &[usize], device: Device) -> Tensor {
    let n = ds.channels() * ds.size() * ds.size();
    let mut buf = vec![0f32; slices.len() * n];
    for (chunk, &s) in buf.chunks_mut(n).zip(slices) {
        ds.image(s).convert_to_f32_slice(chunk);
    }
    let s = ds.size() as i64;
    Tensor::from_slice(&buf)
        .view([slices.len() as i64, ds.channels() as i64, s, s])
        .to_device(device)
}

/// Masks `(N, 1, S, S)` as float32 on `device`.
pub fn masks(ds: &Dataset, slices: &[usize], device: Device) -> Tensor {
    let n = ds.size() * ds.size();
    let mut buf = Vec::with_capacity(slices.len() * n);
    for &s in slices {
        buf.extend(ds.mask(s).iter().map(|&m| m as f32));
    }
    let s = ds.size() as i64;
    Tensor::from_slice(&buf)
        .view([slices.len() as i64, 1, s, s])
        .to_device(device)
        .to_kind(Kind::Float)
}
