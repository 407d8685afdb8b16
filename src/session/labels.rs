//! The counted segmentations put to use: the pool's masks as annotators gave them, the data
//! set as a session labelled by people trains on, and the labels exported as NIfTI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::annotations::{case_files, reference_image, write_labels_like};
use super::Session;
use crate::data::{read_dims, read_seg, Dataset, Expect};

/// The pool's masks as the annotators gave them: for each pool patient of `repeat`, the
/// union of its counted segmentations (image-wise, each on the slices it was asked for),
/// preprocessed as the data set's are; background where there is none. The data set's own
/// segmentations of the pool are not used.
pub fn annotated_dataset(session: &Session, ds: &Dataset, repeat: usize) -> Result<Dataset> {
    Ok(overlay_labels(session, ds, repeat, false)?.0)
}

/// `ds`, loaded without segmentations, as a session labelled by people trains and measures
/// on: the data set's own segmentations of `repeat`'s test and source cases, and the
/// annotators' of its pool (`annotated_dataset`). With the checksums of the former, by case
/// (`RepeatData::dataset_labels`).
pub fn labelled_dataset(
    session: &Session,
    ds: &Dataset,
    repeat: usize,
) -> Result<(Dataset, BTreeMap<String, String>)> {
    overlay_labels(session, ds, repeat, true)
}

/// One copy of the masks for both (they are a byte per pixel of the whole data set).
fn overlay_labels(
    session: &Session,
    ds: &Dataset,
    repeat: usize,
    with_dataset_labels: bool,
) -> Result<(Dataset, BTreeMap<String, String>)> {
    let data = session
        .state
        .repeats
        .get(repeat)
        .context("the pool is known once the repeat is split")?;
    let files = session.files();
    let prep = ds.preprocessing().clone();
    let geom = ds.geometry();
    // Read every label file first (errors name the file), then lay them over the pool.
    let mut by_patient: BTreeMap<usize, Vec<u8>> = Default::default();
    for a in &data.annotations {
        let Some(p) = ds.patients().iter().position(|p| p.id == a.case) else {
            bail!(
                "{}: case {} is not in the data set",
                files.labels_dir().join(&a.file).display(),
                a.case
            );
        };
        let case = case_files(ds, &a.case)?;
        let path = files.labels_dir().join(&a.file);
        let (dims, _, _) = read_dims(&a.case, &reference_image(&case)?)?;
        let (seg, labels) = read_seg(&a.case, &path, case.kind, Expect::dims(dims))?;
        let masks = crate::data::preprocess_labels(&prep, geom, seg.dims, &labels);
        let wanted = &a.slices;
        let plane = ds.size() * ds.size();
        let entry = by_patient
            .entry(p)
            .or_insert_with(|| vec![0u8; masks.len()]);
        for (s, z) in prep.kept_slices(seg.dims[2]).enumerate() {
            if wanted.is_empty() || wanted.contains(&z) {
                entry[s * plane..(s + 1) * plane]
                    .copy_from_slice(&masks[s * plane..(s + 1) * plane]);
            }
        }
    }
    let mut patients = data.train.clone();
    let from_dataset: Vec<usize> = if with_dataset_labels {
        data.test.iter().chain(&data.source).copied().collect()
    } else {
        Vec::new()
    };
    patients.extend(&from_dataset);
    let mut checksums = BTreeMap::new();
    let labelled = ds.with_masks(&patients, |p| {
        if from_dataset.contains(&p) {
            let masks = ds.dataset_masks(p)?;
            let sum = xxhash_rust::xxh3::xxh3_64(&masks);
            checksums.insert(ds.patients()[p].id.clone(), format!("{sum:016x}"));
            Ok(Some(masks))
        } else {
            Ok(by_patient.remove(&p))
        }
    })?;
    Ok((labelled, checksums))
}

/// Writes every counted segmentation of `repeat` into `out` in the data set's own layout and
/// naming (`CASE/CASE_seg.nii.gz`, `CASE/CASE-seg.nii.gz`, `labelsTr/CASE.nii.gz`), with the
/// data set's own label values, so that the annotated cases go straight into nnU-Net or MONAI.
/// A case annotated in several rounds (image-wise) gets each round's requested slices.
/// Returns the files written.
pub fn export_labels(
    session: &Session,
    ds: &Dataset,
    repeat: usize,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let files = session.files();
    let annotations = session.state.annotations(repeat);
    let mut cases: Vec<&str> = annotations.iter().map(|a| a.case.as_str()).collect();
    cases.sort_unstable();
    cases.dedup();
    let mut written = Vec::new();
    for case_id in cases {
        let case = case_files(ds, case_id)?;
        let (dims, _, _) = read_dims(case_id, &reference_image(&case)?)?;
        let mut merged: Option<Vec<u8>> = None;
        for a in annotations.iter().filter(|a| a.case == case_id) {
            let path = files.labels_dir().join(&a.file);
            let (vol, labels) = crate::data::read_labels(case_id, &path, Expect::dims(dims))?;
            let wanted = &a.slices;
            let plane = vol.dims[0] * vol.dims[1];
            let m = merged.get_or_insert_with(|| vec![0u8; labels.len()]);
            for z in 0..vol.dims[2] {
                if wanted.is_empty() || wanted.contains(&z) {
                    m[z * plane..(z + 1) * plane]
                        .copy_from_slice(&labels[z * plane..(z + 1) * plane]);
                }
            }
        }
        let Some(labels) = merged else { continue };
        let own = case.expected_path(None);
        let relative = own.strip_prefix(ds.root()).unwrap_or(&own);
        let target = out.join(relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_labels_like(&target, &case, &labels)?;
        written.push(target);
    }
    Ok(written)
}
