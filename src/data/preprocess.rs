//! The paper's preprocessing, configurable: z-score per patient and modality over brain voxels
//! (background stays 0), drop the first and last slices (155 → 150), zero-pad in-plane to a
//! square (240 → 256), and an optional down-sampling factor for CPU runs.

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use super::{DataError, Modality, Volume};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Channels, in this order.
    pub modalities: Vec<Modality>,
    /// Axial slices dropped at the bottom and the top (BraTS: 2 + 3, so 155 → 150).
    pub drop_first: usize,
    pub drop_last: usize,
    /// In-plane size after zero padding; `None`: the next multiple of 32 (240 → 256, as in the
    /// paper; 64 → 64).
    pub pad_to: Option<usize>,
    /// In-plane down-sampling factor (1, 2 or 4): images by block mean, masks by majority.
    pub downsample: usize,
    /// Z-score each modality over the brain (non-zero voxels).
    pub zscore: bool,
}

impl Default for Preprocessing {
    fn default() -> Self {
        Preprocessing {
            modalities: Modality::ALL.to_vec(),
            drop_first: 2,
            drop_last: 3,
            pad_to: None,
            downsample: 1,
            zscore: true,
        }
    }
}

/// What the preprocessing does to volumes of a given in-plane size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Padded square side, before down-sampling.
    pub padded: usize,
    pub factor: usize,
}

impl Geometry {
    /// Side of the output slices.
    pub fn size(&self) -> usize {
        self.padded / self.factor
    }
}

impl Preprocessing {
    pub fn validate(&self) -> Result<(), DataError> {
        if self.modalities.is_empty() {
            return Err(DataError::Config("no modality selected".into()));
        }
        if ![1, 2, 4].contains(&self.downsample) {
            return Err(DataError::Config(format!(
                "down-sampling factor {} is not supported (use 1, 2 or 4)",
                self.downsample
            )));
        }
        Ok(())
    }

    /// The output geometry for a data set whose largest in-plane side is `max_side`.
    pub fn geometry(&self, max_side: usize) -> Result<Geometry, DataError> {
        let padded = match self.pad_to {
            Some(p) if p < max_side => {
                return Err(DataError::Config(format!(
                    "--pad-to {p} is smaller than the volumes' in-plane size {max_side}"
                )))
            }
            // Beyond a few times the volume it is a typo, and each slice's buffers grow with
            // its square (200000 asked for terabytes).
            Some(p) if p > 4 * max_side.max(64) => {
                return Err(DataError::Config(format!(
                    "--pad-to {p} is more than 4 times the volumes' in-plane size {max_side}"
                )))
            }
            Some(p) => p,
            None => max_side.div_ceil(32) * 32,
        };
        if padded % self.downsample != 0 {
            return Err(DataError::Config(format!(
                "padded size {padded} is not divisible by the down-sampling factor {}",
                self.downsample
            )));
        }
        Ok(Geometry {
            padded,
            factor: self.downsample,
        })
    }

    /// Axial slices kept for a volume with `z` slices: `drop_first .. z - drop_last`.
    pub fn kept_slices(&self, z: usize) -> std::ops::Range<usize> {
        let end = z.saturating_sub(self.drop_last);
        self.drop_first.min(end)..end
    }
}

/// Per-patient statistics gathered while preprocessing (on the original volumes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PatientStats {
    pub brain_voxels: u64,
    pub tumour_voxels: u64,
    /// Voxels of label 1 (necrotic / non-enhancing core), 2 (edema), 4 (enhancing).
    pub label_voxels: [u64; 3],
    /// Kept slices with any tumour (before down-sampling).
    pub tumour_slices: usize,
}

/// One patient after preprocessing: `images` is `[slice][channel][row][col]`, `masks`
/// `[slice][row][col]` with 1 for whole tumour (labels 1, 2, 4).
pub struct Prepared {
    pub slices: usize,
    pub images: Vec<f16>,
    pub masks: Vec<u8>,
    pub stats: PatientStats,
}

/// Z-score statistics of one modality over its non-zero voxels. Zeros add nothing to the sums,
/// so only the count needs the test; chunked f32 partial sums keep it vectorised and f64 totals
/// keep it exact enough.
fn brain_mean_std(data: &[f32]) -> Option<(f32, f32, u64)> {
    let (mut n, mut sum, mut sq) = (0u64, 0f64, 0f64);
    for chunk in data.chunks(4096) {
        // Eight independent lanes: float addition is not associative, so the compiler only
        // vectorises sums that are written in lanes.
        let (mut c, mut s1, mut s2) = ([0u32; 8], [0f32; 8], [0f32; 8]);
        let lanes = chunk.chunks_exact(8);
        let rest = lanes.remainder();
        for v8 in lanes {
            for k in 0..8 {
                c[k] += (v8[k] != 0.0) as u32;
                s1[k] += v8[k];
                s2[k] += v8[k] * v8[k];
            }
        }
        for &v in rest {
            c[0] += (v != 0.0) as u32;
            s1[0] += v;
            s2[0] += v * v;
        }
        n += c.iter().map(|&x| x as u64).sum::<u64>();
        sum += s1.iter().map(|&x| x as f64).sum::<f64>();
        sq += s2.iter().map(|&x| x as f64).sum::<f64>();
    }
    if n == 0 {
        return None;
    }
    let mean = sum / n as f64;
    let var = (sq / n as f64 - mean * mean).max(0.0);
    Some((mean as f32, var.sqrt() as f32, n))
}

/// Preprocesses one patient. `volumes` are in `prep.modalities` order, all of `labels`' shape.
pub fn preprocess(
    patient: &str,
    prep: &Preprocessing,
    geom: Geometry,
    volumes: &[Volume],
    labels: &[u8],
) -> Result<Prepared, DataError> {
    let dims = volumes[0].dims;
    let [nx, ny, nz] = dims;
    let plane = nx * ny;
    let kept = prep.kept_slices(nz);
    if kept.is_empty() {
        return Err(DataError::Patient {
            patient: patient.into(),
            msg: format!(
                "{nz} slices leave none after dropping {} + {}",
                prep.drop_first, prep.drop_last
            ),
        });
    }
    let mut norm = Vec::with_capacity(volumes.len());
    let mut brain_voxels = 0;
    for (m, vol) in prep.modalities.iter().zip(volumes) {
        let Some((mean, std, n)) = brain_mean_std(&vol.data) else {
            return Err(DataError::Patient {
                patient: patient.into(),
                msg: format!("empty brain: every {m} voxel is 0"),
            });
        };
        brain_voxels = brain_voxels.max(n);
        if prep.zscore {
            // Also catches a NaN std.
            if std.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return Err(DataError::Patient {
                    patient: patient.into(),
                    msg: format!("{m} is constant ({mean}) over the brain; cannot z-score"),
                });
            }
            norm.push((mean, 1.0 / std));
        } else {
            // Raw intensities go into the half-precision cache as they are: beyond its range
            // they would become infinite there, silently.
            let limit = f16::MAX.to_f32();
            if let Some(v) = vol.data.iter().find(|v| v.abs() > limit) {
                return Err(DataError::Patient {
                    patient: patient.into(),
                    msg: format!(
                        "{m} holds the value {v}, beyond half precision's range (±{limit}) in which the cache stores images; z-scoring (the default) keeps values small"
                    ),
                });
            }
            norm.push((0.0, 1.0));
        }
    }

    let mut stats = PatientStats {
        brain_voxels,
        ..Default::default()
    };
    for &l in labels {
        match l {
            1 => stats.label_voxels[0] += 1,
            2 => stats.label_voxels[1] += 1,
            4 => stats.label_voxels[2] += 1,
            _ => {}
        }
    }
    stats.tumour_voxels = stats.label_voxels.iter().sum();

    let (p, f) = (geom.padded, geom.factor);
    let side = geom.size();
    let (off_x, off_y) = ((p - nx) / 2, (p - ny) / 2);
    let c = volumes.len();
    let slices = kept.len();
    let mut images = vec![f16::ZERO; slices * c * side * side];
    let mut masks = vec![0u8; slices * side * side];
    // Work buffers of the down-sampling path only.
    let (mut padded, mut out) = if f == 1 {
        (Vec::new(), Vec::new())
    } else {
        (vec![0f32; p * p], vec![0f32; side * side])
    };
    let inv_area = 1.0 / (f * f) as f32;

    let mut row_buf = vec![0f32; nx];
    for (s, z) in kept.enumerate() {
        for (ch, (vol, &(mean, inv_std))) in volumes.iter().zip(&norm).enumerate() {
            let src = &vol.data[z * plane..(z + 1) * plane];
            let base = (s * c + ch) * side * side;
            let normalise = |row: &[f32], out: &mut [f32]| {
                for (d, &v) in out.iter_mut().zip(row) {
                    *d = if v != 0.0 { (v - mean) * inv_std } else { 0.0 };
                }
            };
            if f == 1 {
                // Straight into the (zero-initialised) output: padding is never written.
                for y in 0..ny {
                    normalise(&src[y * nx..(y + 1) * nx], &mut row_buf);
                    let at = base + (y + off_y) * p + off_x;
                    images[at..at + nx].convert_from_f32_slice(&row_buf);
                }
            } else {
                padded.fill(0.0);
                for y in 0..ny {
                    let at = (y + off_y) * p + off_x;
                    normalise(&src[y * nx..(y + 1) * nx], &mut padded[at..at + nx]);
                }
                block_mean(&padded, p, f, &mut out, inv_area);
                images[base..base + side * side].convert_from_f32_slice(&out);
            }
        }
        let lab = &labels[z * plane..(z + 1) * plane];
        if lab.iter().any(|&l| l != 0) {
            stats.tumour_slices += 1;
        }
        mask_slice(
            lab,
            nx,
            ny,
            geom,
            &mut masks[s * side * side..(s + 1) * side * side],
        );
    }
    Ok(Prepared {
        slices,
        images,
        masks,
        stats,
    })
}

/// The whole-tumour masks of a label volume of `dims`, preprocessed as `preprocess` does its
/// segmentation: for labels that come from elsewhere than the data set (an annotator's).
pub fn preprocess_labels(
    prep: &Preprocessing,
    geom: Geometry,
    dims: [usize; 3],
    labels: &[u8],
) -> Vec<u8> {
    let [nx, ny, nz] = dims;
    let side = geom.size();
    let kept = prep.kept_slices(nz);
    let mut masks = vec![0u8; kept.len() * side * side];
    for (s, z) in kept.enumerate() {
        let lab = &labels[z * nx * ny..(z + 1) * nx * ny];
        mask_slice(
            lab,
            nx,
            ny,
            geom,
            &mut masks[s * side * side..(s + 1) * side * side],
        );
    }
    masks
}

/// The inverse of `preprocess_labels`: preprocessed masks (kept slices × size²) back in the
/// original volume of `dims` (x fastest), each voxel taking the value of the down-sampled
/// pixel it fell in; dropped slices and the padding's margin are background.
pub fn labels_to_original(
    prep: &Preprocessing,
    geom: Geometry,
    dims: [usize; 3],
    masks: &[u8],
) -> Vec<u8> {
    let [nx, ny, nz] = dims;
    let (p, f, side) = (geom.padded, geom.factor, geom.size());
    let (off_x, off_y) = ((p - nx) / 2, (p - ny) / 2);
    let mut out = vec![0u8; nx * ny * nz];
    for (s, z) in prep.kept_slices(nz).enumerate() {
        let Some(mask) = masks.get(s * side * side..(s + 1) * side * side) else {
            break;
        };
        for y in 0..ny {
            let row = &mask[((y + off_y) / f) * side..][..side];
            for x in 0..nx {
                out[(z * ny + y) * nx + x] = row[(x + off_x) / f];
            }
        }
    }
    out
}

/// One slice of labels (`nx × ny`) as a padded, down-sampled whole-tumour mask.
fn mask_slice(lab: &[u8], nx: usize, ny: usize, geom: Geometry, mask: &mut [u8]) {
    let (p, f) = (geom.padded, geom.factor);
    let side = geom.size();
    let (off_x, off_y) = ((p - nx) / 2, (p - ny) / 2);
    if f == 1 {
        for y in 0..ny {
            let at = (y + off_y) * p + off_x;
            for (m, &l) in mask[at..at + nx].iter_mut().zip(&lab[y * nx..(y + 1) * nx]) {
                *m = (l != 0) as u8;
            }
        }
        return;
    }
    for oy in 0..side {
        for ox in 0..side {
            let mut count = 0;
            for dy in 0..f {
                for dx in 0..f {
                    let (py, px) = (oy * f + dy, ox * f + dx);
                    if py >= off_y && py < off_y + ny && px >= off_x && px < off_x + nx {
                        count += (lab[(py - off_y) * nx + (px - off_x)] != 0) as usize;
                    }
                }
            }
            // Majority vote; a tie counts as tumour so small lesions survive.
            mask[oy * side + ox] = (2 * count >= f * f && count > 0) as u8;
        }
    }
}

fn block_mean(src: &[f32], p: usize, f: usize, out: &mut [f32], inv_area: f32) {
    let side = p / f;
    out.fill(0.0);
    for y in 0..p {
        let orow = &mut out[(y / f) * side..(y / f + 1) * side];
        for (x, &v) in src[y * p..(y + 1) * p].iter().enumerate() {
            orow[x / f] += v;
        }
    }
    out.iter_mut().for_each(|v| *v *= inv_area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_go_back_to_the_original_geometry() {
        let prep = Preprocessing {
            drop_first: 1,
            drop_last: 1,
            ..Default::default()
        };
        let dims = [6, 4, 5];
        // A blob in the kept slices (z 1..4), on whole 2×2 blocks once padded (8×8: x + 1,
        // y + 2), and a voxel in a dropped slice.
        let mut labels = vec![0u8; 6 * 4 * 5];
        for z in 1..4 {
            for y in 0..4 {
                for x in 1..5 {
                    labels[(z * 4 + y) * 6 + x] = 2;
                }
            }
        }
        labels[0] = 1;
        for factor in [1, 2] {
            let geom = Geometry { padded: 8, factor };
            let masks = preprocess_labels(&prep, geom, dims, &labels);
            assert_eq!(masks.len(), 3 * (8 / factor) * (8 / factor));
            let back = labels_to_original(&prep, geom, dims, &masks);
            // Whole tumour, exactly, but for the dropped slice's voxel.
            let mut expected: Vec<u8> = labels.iter().map(|&l| (l != 0) as u8).collect();
            expected[0] = 0;
            assert_eq!(back, expected, "factor {factor}");
        }
    }

    fn vol(dims: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        let mut data = vec![0.0; dims[0] * dims[1] * dims[2]];
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    data[(z * dims[1] + y) * dims[0] + x] = f(x, y, z);
                }
            }
        }
        Volume {
            dims,
            pixdim: [1.0; 3],
            data,
        }
    }

    #[test]
    fn zscore_pads_and_keeps_background_zero() {
        let prep = Preprocessing {
            modalities: vec![Modality::Flair],
            drop_first: 1,
            drop_last: 1,
            ..Default::default()
        };
        let dims = [20, 10, 5];
        let v = vol(dims, |x, _, _| {
            if x < 10 {
                0.0
            } else {
                (x % 2) as f32 * 2.0 + 1.0
            }
        });
        let labels = vec![0u8; 1000];
        let geom = prep.geometry(20).unwrap();
        assert_eq!(geom.size(), 32);
        let out = preprocess("p", &prep, geom, &[v], &labels).unwrap();
        assert_eq!(out.slices, 3);
        let img: Vec<f32> = out.images[..32 * 32].iter().map(|v| v.to_f32()).collect();
        // Brain values alternate 1 and 3: z-scored to -1 and +1; background and padding 0.
        let (ox, oy) = (6, 11);
        assert_eq!(img[oy * 32 + ox], 0.0);
        assert!((img[oy * 32 + ox + 10] + 1.0).abs() < 1e-3);
        assert!((img[oy * 32 + ox + 11] - 1.0).abs() < 1e-3);
        assert_eq!(img[0], 0.0);
    }

    #[test]
    fn downsampling_averages_images_and_votes_masks() {
        let prep = Preprocessing {
            modalities: vec![Modality::T1],
            drop_first: 0,
            drop_last: 0,
            pad_to: Some(4),
            downsample: 2,
            ..Default::default()
        };
        let v = vol([4, 4, 1], |x, y, _| 1.0 + (x + 4 * y) as f32);
        let mut labels = vec![0u8; 16];
        labels[0] = 1; // 1 of 4 in the first block: background
        labels[2] = 2;
        labels[3] = 4; // 2 of 4 in the second block: tumour
        let geom = prep.geometry(4).unwrap();
        let out = preprocess("p", &prep, geom, &[v], &labels).unwrap();
        assert_eq!(out.masks, vec![0, 1, 0, 0]);
        assert_eq!(out.stats.label_voxels, [1, 1, 1]);
        assert_eq!(out.stats.tumour_voxels, 3);
        assert_eq!(out.images.len(), 4);
    }

    #[test]
    fn empty_brain_and_constant_brain_are_errors() {
        let prep = Preprocessing {
            modalities: vec![Modality::T2],
            drop_first: 0,
            drop_last: 0,
            ..Default::default()
        };
        let geom = prep.geometry(4).unwrap();
        let empty = vol([4, 4, 2], |_, _, _| 0.0);
        let e = preprocess("P7", &prep, geom, &[empty], &[0; 32])
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("P7") && e.to_string().contains("empty brain"),
            "{e}"
        );
        let flat = vol([4, 4, 2], |_, _, _| 5.0);
        let e = preprocess("P7", &prep, geom, &[flat], &[0; 32])
            .err()
            .unwrap();
        assert!(e.to_string().contains("constant"), "{e}");
    }

    #[test]
    fn geometry_defaults_match_the_paper() {
        let prep = Preprocessing::default();
        assert_eq!(prep.geometry(240).unwrap().size(), 256);
        assert_eq!(prep.kept_slices(155).len(), 150);
        assert!(Preprocessing {
            pad_to: Some(200),
            ..prep.clone()
        }
        .geometry(240)
        .is_err());
        assert!(Preprocessing {
            downsample: 3,
            ..prep
        }
        .validate()
        .is_err());
    }
}
