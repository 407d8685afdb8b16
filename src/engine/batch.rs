//! Slices of the memory-mapped data set → tensors on the training device: the input pipeline.

use half::f16;
use tch::{Device, Kind, TchError, Tensor};

use crate::data::Dataset;

/// Images `(N, C, S, S)` as float32 on `device`, converted on the host by libtorch (vectorised,
/// on all cores).
pub fn images(ds: &Dataset, slices: &[usize], device: Device) -> Tensor {
    with_half_batch(ds, slices, |half| {
        half.to_kind(Kind::Float).to_device(device)
    })
}

/// Calls `f` with the slices' images as a half-precision host tensor `(N, C, S, S)` that borrows
/// its memory: straight from the memory map for consecutive slices (encoding the pool), else
/// gathered into one buffer. `f` must copy what it keeps (a conversion or an upload does).
fn with_half_batch(ds: &Dataset, slices: &[usize], f: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
    let (c, s) = (ds.channels() as i64, ds.size() as i64);
    let shape = [slices.len() as i64, c, s, s];
    if slices.is_empty() {
        return f(&Tensor::zeros(shape, (Kind::Half, Device::Cpu)));
    }
    let n = ds.channels() * ds.size() * ds.size();
    let consecutive = slices.windows(2).all(|w| w[1] == w[0] + 1);
    let gathered: Vec<f16>;
    let halves: &[f16] = if consecutive {
        &ds.images()[slices[0] * n..(slices[0] + slices.len()) * n]
    } else {
        let mut v = Vec::with_capacity(slices.len() * n);
        for &i in slices {
            v.extend_from_slice(ds.image(i));
        }
        gathered = v;
        &gathered
    };
    // SAFETY: `halves` holds exactly `shape`'s elements and outlives `blob`, which `f` only
    // reads (copying what it keeps) and which is dropped before this function returns.
    let blob =
        unsafe { Tensor::from_blob(halves.as_ptr().cast(), &shape, &[], Kind::Half, Device::Cpu) };
    f(&blob)
}

/// Masks `(N, 1, S, S)` as float32 on `device`: gathered as bytes, uploaded without a wait
/// (`to_device_async`), converted there.
pub fn masks(ds: &Dataset, slices: &[usize], device: Device) -> Tensor {
    let n = ds.size() * ds.size();
    let mut buf = Vec::with_capacity(slices.len() * n);
    for &s in slices {
        buf.extend_from_slice(ds.mask(s));
    }
    let s = ds.size() as i64;
    let bytes = Tensor::from_slice(&buf).view([slices.len() as i64, 1, s, s]);
    to_device_async(bytes, device).to_kind(Kind::Float)
}

/// Where batches come from.
///
/// - `Host`: gathered from the memory-mapped cache for every batch. On the CPU that is the
///   data already in memory; for a GPU the batch is gathered in half precision into pinned
///   memory and copied asynchronously, so the host gathers the next batch while the GPU
///   computes (nothing in the loops waits for the GPU: losses are read once per epoch).
/// - `Resident`: the whole preprocessed pool uploaded once (half-precision images, byte
///   masks), batches gathered on the device: no transfer at all during training.
pub struct Feed {
    device: Device,
    resident: Option<(Tensor, Tensor)>,
}

/// Slices copied per upload when the pool moves to the device.
const UPLOAD_CHUNK: usize = 1024;

impl Feed {
    pub fn host(device: Device) -> Feed {
        Feed {
            device,
            resident: None,
        }
    }

    /// The whole data set on `device`; an error (nothing kept) when it does not fit.
    pub fn resident(ds: &Dataset, device: Device) -> Result<Feed, TchError> {
        let (n, c, s) = (
            ds.num_slices() as i64,
            ds.channels() as i64,
            ds.size() as i64,
        );
        let images = Tensor::f_empty([n, c, s, s], (Kind::Half, device))?;
        let masks = Tensor::f_empty([n, 1, s, s], (Kind::Uint8, device))?;
        let (per_image, per_mask) = ((c * s * s) as usize, (s * s) as usize);
        for start in (0..n as usize).step_by(UPLOAD_CHUNK) {
            let len = UPLOAD_CHUNK.min(n as usize - start);
            let img = &ds.images()[start * per_image..(start + len) * per_image];
            let bytes = half_bytes(img);
            let src = Tensor::f_from_data_size(bytes, &[len as i64, c, s, s], Kind::Half)?;
            images.narrow(0, start as i64, len as i64).f_copy_(&src)?;
            let m = &ds.masks()[start * per_mask..(start + len) * per_mask];
            let src = Tensor::f_from_data_size(m, &[len as i64, 1, s, s], Kind::Uint8)?;
            masks.narrow(0, start as i64, len as i64).f_copy_(&src)?;
            // The copies above are synchronous (pageable memory), so the chunk's pages are
            // done with: unmap them, or the whole pool would count as this process's memory.
            ds.release_pages(start..start + len);
        }
        Ok(Feed {
            device,
            resident: Some((images, masks)),
        })
    }

    /// On a GPU, the pool on the device when it fits (else pinned host batches); on the CPU,
    /// host batches (the memory map is already the pool in memory).
    pub fn auto(ds: &Dataset, device: Device) -> Feed {
        match device {
            Device::Cuda(_) => Feed::resident(ds, device).unwrap_or_else(|_| Feed::host(device)),
            _ => Feed::host(device),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// How batches reach the device, for people: "pool on the device", "pinned host
    /// batches" or "host batches".
    pub fn describe(&self) -> &'static str {
        match (&self.resident, self.device) {
            (Some(_), _) => "pool on the device",
            (None, Device::Cuda(_)) => "pinned host batches",
            (None, _) => "host batches",
        }
    }

    /// The slices' indices on the device, for gathering from the resident pool. Uploaded
    /// without a wait: a plain upload from pageable memory makes the host wait until the GPU
    /// has run everything queued, at every batch, so it could never queue the next step ahead.
    fn index(&self, slices: &[usize]) -> Tensor {
        let idx: Vec<i64> = slices.iter().map(|&s| s as i64).collect();
        to_device_async(Tensor::from_slice(&idx), self.device)
    }

    /// Images and masks of the same slices (`images` and `masks`; on the resident pool with
    /// one index upload for both).
    pub fn batch(&self, ds: &Dataset, slices: &[usize]) -> (Tensor, Tensor) {
        match &self.resident {
            Some((images, masks)) => {
                let idx = self.index(slices);
                (
                    images.index_select(0, &idx).to_kind(Kind::Float),
                    masks.index_select(0, &idx).to_kind(Kind::Float),
                )
            }
            None => (self.images(ds, slices), self.masks(ds, slices)),
        }
    }

    /// Images `(N, C, S, S)`, float32, on the device.
    pub fn images(&self, ds: &Dataset, slices: &[usize]) -> Tensor {
        match (&self.resident, self.device) {
            (Some((images, _)), _) => images
                .index_select(0, &self.index(slices))
                .to_kind(Kind::Float),
            (None, Device::Cuda(_)) => with_half_batch(ds, slices, |half| {
                to_device_async(half.shallow_clone(), self.device)
            })
            .to_kind(Kind::Float),
            (None, _) => images(ds, slices, self.device),
        }
    }

    /// Masks `(N, 1, S, S)`, float32, on the device.
    pub fn masks(&self, ds: &Dataset, slices: &[usize]) -> Tensor {
        match &self.resident {
            Some((_, masks)) => masks
                .index_select(0, &self.index(slices))
                .to_kind(Kind::Float),
            None => masks(ds, slices, self.device),
        }
    }
}

/// A host tensor on `device` without making the host wait: on a GPU through pinned memory
/// with an asynchronous copy (a plain copy from pageable memory would wait for the GPU to
/// finish all queued work first); elsewhere the tensor itself.
pub fn to_device_async(t: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => {
            let kind = t.kind();
            t.pin_memory(device).to_device_(device, kind, true, false)
        }
        _ => t,
    }
}

/// The bytes of an f16 slice (plain old data, native endianness, as libtorch reads it).
fn half_bytes(v: &[half::f16]) -> &[u8] {
    bytemuck::cast_slice(v)
}
