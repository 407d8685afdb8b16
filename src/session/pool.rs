//! The pool of a repeat: which slices make up each annotation sample (a patient, or one slice),
//! and how a sample reads to a person.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::config::Granularity;
use super::events::PickView;
use super::state::RepeatData;
use crate::data::Dataset;
use crate::engine::select::Pick;

pub struct Pool<'a> {
    pub ds: &'a Dataset,
    pub repeat: &'a RepeatData,
    pub granularity: Granularity,
    /// Slices of the training patients, in pool order (image-wise samples index this).
    slices: Vec<usize>,
}

impl<'a> Pool<'a> {
    pub fn new(ds: &'a Dataset, repeat: &'a RepeatData, granularity: Granularity) -> Pool<'a> {
        let slices = repeat
            .train
            .iter()
            .flat_map(|&p| ds.patients()[p].slice_range())
            .collect();
        Pool {
            ds,
            repeat,
            granularity,
            slices,
        }
    }

    /// All slices of the pool.
    pub fn slices(&self) -> &[usize] {
        &self.slices
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        match self.granularity {
            Granularity::Patient => self.repeat.train.len(),
            Granularity::Image => self.slices.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slices of some samples.
    pub fn sample_slices(&self, samples: &[usize]) -> Vec<usize> {
        match self.granularity {
            Granularity::Patient => samples
                .iter()
                .flat_map(|&s| self.ds.patients()[self.repeat.train[s]].slice_range())
                .collect(),
            Granularity::Image => samples.iter().map(|&s| self.slices[s]).collect(),
        }
    }

    /// Whether a sample shows any brain (an image-wise slice may lie wholly outside it).
    pub fn has_brain(&self, sample: usize) -> bool {
        self.sample_slices(&[sample])
            .iter()
            .any(|&s| !self.ds.is_blank(s))
    }

    /// Whether a sample contains tumour.
    pub fn has_tumour(&self, sample: usize) -> bool {
        self.sample_slices(&[sample])
            .iter()
            .any(|&s| self.ds.mask(s).iter().any(|&m| m != 0))
    }

    /// Latent of every sample (image: the slice's; patient: the mean of its slices'), from
    /// the pool's latents file (`SessionFiles::latents`). The runner and the interface's
    /// preview worker read them through this.
    pub fn sample_latents(&self, path: &Path) -> Result<Vec<Vec<f64>>> {
        let t = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let z = &t
            .iter()
            .find(|(n, _)| n == "z")
            .context("latents file without 'z'")?
            .1;
        let (n, d) = match z.size()[..] {
            [n, d] if n >= 0 && d > 0 => (n as usize, d as usize),
            ref other => bail!(
                "{}: latents of shape {other:?}, expected (slices, latent)",
                path.display()
            ),
        };
        if n != self.slices.len() {
            bail!(
                "{}: latents of {n} slices, but the pool has {}",
                path.display(),
                self.slices.len()
            );
        }
        let flat: Vec<f64> = Vec::try_from(z.to_kind(Kind::Double).reshape([-1]))?;
        let rows: Vec<Vec<f64>> = flat.chunks(d).map(|c| c.to_vec()).collect();
        Ok(match self.granularity {
            Granularity::Image => rows,
            Granularity::Patient => {
                let mut out = Vec::new();
                let mut at = 0;
                for &p in &self.repeat.train {
                    let n = self.ds.patients()[p].slices;
                    let mut m = vec![0.0; d];
                    for r in &rows[at..at + n] {
                        m.iter_mut().zip(r).for_each(|(a, b)| *a += b / n as f64);
                    }
                    out.push(m);
                    at += n;
                }
                out
            }
        })
    }

    /// A pick as a person reads it: patient ID and, image-wise, the slice within the patient.
    pub fn pick_view(&self, p: &Pick) -> PickView {
        let (patient, slice) = match self.granularity {
            Granularity::Patient => (
                self.ds.patients()[self.repeat.train[p.sample]].id.clone(),
                None,
            ),
            Granularity::Image => {
                let global = self.slices[p.sample];
                let info = self.ds.patient_of(global);
                (info.id.clone(), Some(global - info.first_slice))
            }
        };
        PickView {
            sample: p.sample,
            source: p.source,
            patient,
            slice,
            distance: p.distance,
            angle_deg: p.angle_deg,
            fallback: p.fallback,
            dice: p.score,
        }
    }

    /// The context slices shown with an image-wise pick: its neighbours within the patient.
    pub fn context(&self, sample: usize) -> Vec<usize> {
        if self.granularity == Granularity::Patient {
            return Vec::new();
        }
        let s = self.slices[sample];
        let info = self.ds.patient_of(s);
        [s.wrapping_sub(1), s + 1]
            .into_iter()
            .filter(|n| info.slice_range().contains(n))
            .map(|n| n - info.first_slice)
            .collect()
    }

    /// Image-wise: the samples (pool positions) of a slice's neighbours in its patient, the
    /// context an annotator sees with it. Patient-wise: none.
    pub fn neighbours(&self, sample: usize) -> Vec<usize> {
        if self.granularity == Granularity::Patient {
            return Vec::new();
        }
        let patient = self.ds.patient_index(self.slices[sample]);
        [sample.wrapping_sub(1), sample + 1]
            .into_iter()
            .filter(|&n| {
                self.slices
                    .get(n)
                    .is_some_and(|&s| self.ds.patient_index(s) == patient)
            })
            .collect()
    }

    /// Slices an annotator looks at: image-wise each slice with its two neighbours (same
    /// patient), patient-wise every slice of each patient.
    pub fn viewed(&self, samples: &[usize]) -> usize {
        let slices = self.sample_slices(samples);
        if self.granularity == Granularity::Patient {
            return slices.len();
        }
        let mut seen = HashSet::new();
        for s in slices {
            let r = self.ds.patient_of(s).slice_range();
            for n in [s.wrapping_sub(1), s, s + 1] {
                if r.contains(&n) {
                    seen.insert(n);
                }
            }
        }
        seen.len()
    }
}
