//! Building a data set's cache: each case planned from its headers (shape, transforms), then
//! decoded, preprocessed and written into the cache in parallel.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use half::f16;
use rayon::prelude::*;

use super::cache::{CacheBuilder, CacheIndex, PatientInfo, SkippedPatient, CACHE_FORMAT_VERSION};
use super::dataset::{checksum, LoadOptions, Segmentations};
use super::layout::{ImageFile, PatientFiles};
use super::preprocess::preprocess;
use super::volume::{
    affine_difference, read_channels, read_dims, read_recorded_affine, read_seg, Affine, Expect,
    Volume, AFFINE_TOLERANCE,
};
use super::{DataError, Preprocessing};

/// What phase 1 learns about a patient from the headers.
pub(super) struct Planned<'a> {
    files: &'a PatientFiles,
    dims: [usize; 3],
    voxel_mm: [f32; 3],
}

/// Phase 1: every requested file exists, has a readable header with the channels the layout
/// says, and all share one shape.
pub(super) fn plan_patient<'a>(
    p: &'a PatientFiles,
    prep: &Preprocessing,
    segs: Segmentations,
) -> Result<Planned<'a>, DataError> {
    let mut first: Option<([usize; 3], [f32; 3], &Path)> = None;
    // The first transform a file of the case records, with that file.
    let mut placed: Option<(Affine, &Path)> = None;
    let images = prep.modalities.iter().map(|&m| {
        (
            Some(m),
            p.images.get(&m).map(|f: &ImageFile| (&f.path, f.channel)),
        )
    });
    let seg =
        (segs == Segmentations::Read).then(|| (None, p.seg.as_ref().map(|path| (path, None))));
    for (modality, file) in images.chain(seg) {
        let Some((path, channel)) = file else {
            return Err(DataError::file(
                &p.id,
                p.expected_path(modality),
                p.missing_message(modality),
            ));
        };
        let (dims, vox, channels) = read_dims(&p.id, path)?;
        if let Some(affine) = read_recorded_affine(&p.id, path)? {
            match placed {
                None => placed = Some((affine, path)),
                Some((a, other)) if affine_difference(&a, &affine) > AFFINE_TOLERANCE => {
                    return Err(DataError::file(
                        &p.id,
                        path,
                        format!(
                            "its voxel-to-world transform differs from {}'s by up to {:.4} mm (more than {AFFINE_TOLERANCE}): the case's files are not in one space",
                            other.file_name().unwrap_or_default().to_string_lossy(),
                            affine_difference(&a, &affine)
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        match (channel, &p.channels) {
            (Some(_), Some(listed)) if channels != listed.len() => {
                return Err(DataError::file(
                    &p.id,
                    path,
                    format!(
                        "a 4D image of {channels} channels, but dataset.json lists {} ({})",
                        listed.len(),
                        listed.join(", ")
                    ),
                ))
            }
            (None, _) if channels != 1 => {
                return Err(DataError::file(
                    &p.id,
                    path,
                    format!(
                        "expected a 3D volume, found dimensions {dims:?} × {channels} channels"
                    ),
                ))
            }
            _ => {}
        }
        match first {
            None => first = Some((dims, vox, path)),
            Some((d, _, other)) if d != dims => {
                return Err(DataError::file(
                    &p.id,
                    path,
                    format!(
                        "shape {dims:?} differs from {:?} of {}",
                        d,
                        other.file_name().unwrap_or_default().to_string_lossy()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let (dims, voxel_mm, _) = first.expect("at least one file");
    Ok(Planned {
        files: p,
        dims,
        voxel_mm,
    })
}

pub(super) fn build_cache(
    root: &Path,
    patients: &[PatientFiles],
    opts: &LoadOptions,
    dir: &Path,
    fingerprint: String,
) -> Result<CacheIndex, DataError> {
    let prep = &opts.preprocessing;
    let mut skipped = Vec::new();
    let mut planned = Vec::new();
    let segs = opts.segmentations;
    let plans: Vec<_> = patients
        .par_iter()
        .map(|p| plan_patient(p, prep, segs))
        .collect();
    for (p, plan) in patients.iter().zip(plans) {
        match plan {
            Ok(plan) if plan.dims[2] > prep.drop_first.saturating_add(prep.drop_last) => {
                planned.push(plan)
            }
            Ok(plan) => {
                let e = DataError::Patient {
                    patient: p.id.clone(),
                    msg: format!(
                        "{} slices leave none after dropping {} + {}",
                        plan.dims[2], prep.drop_first, prep.drop_last
                    ),
                };
                if !opts.skip_bad {
                    return Err(e);
                }
                skipped.push(SkippedPatient {
                    id: p.id.clone(),
                    reason: e.to_string(),
                });
            }
            Err(e) if opts.skip_bad => skipped.push(SkippedPatient {
                id: p.id.clone(),
                reason: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    if planned.is_empty() {
        return Err(DataError::Folder {
            path: root.to_path_buf(),
            msg: format!("no patient could be loaded ({} skipped)", skipped.len()),
        });
    }
    let max_side = planned
        .iter()
        .map(|p| p.dims[0].max(p.dims[1]))
        .max()
        .unwrap_or(0);
    let geom = prep.geometry(max_side)?;
    let (channels, size) = (prep.modalities.len(), geom.size());
    let shape = (channels * size * size, size * size);
    let mut offsets = Vec::with_capacity(planned.len());
    let mut total = 0;
    for p in &planned {
        offsets.push(total);
        total += prep.kept_slices(p.dims[2]).len();
    }

    let builder = CacheBuilder::create(dir)?;
    let done = std::sync::atomic::AtomicUsize::new(0);
    // Without --skip-bad the first failure stops the workers from starting new patients.
    let abort = AtomicBool::new(false);
    let results: Vec<Option<Result<PatientInfo, DataError>>> = planned
        .par_iter()
        .zip(offsets.par_iter())
        .map(|(plan, &first_slice)| {
            if abort.load(Ordering::Relaxed) {
                return None;
            }
            let r = load_patient(plan, opts, geom, first_slice, &builder, shape);
            if let Some(progress) = &opts.progress {
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, planned.len());
            }
            if r.is_err() {
                abort.store(!opts.skip_bad, Ordering::Relaxed);
            }
            Some(r)
        })
        .collect();
    if abort.load(Ordering::Relaxed) {
        // The first failing patient in folder order; `builder` removes the temporary folder.
        let err = results.into_iter().flatten().find_map(|r| r.err());
        return Err(err.expect("abort is set only on an error"));
    }

    // Keep the files contiguous when patients failed during decoding (only with skip_bad).
    let mut infos = Vec::with_capacity(planned.len());
    let mut write_pos = 0;
    for (plan, result) in planned.iter().zip(results) {
        match result.expect("no abort without an error") {
            Ok(mut info) => {
                if info.first_slice != write_pos {
                    builder
                        .move_slices(shape, info.first_slice, write_pos, info.slices)
                        .map_err(|e| DataError::cache(builder.path(), e))?;
                    info.first_slice = write_pos;
                }
                write_pos += info.slices;
                infos.push(info);
            }
            Err(e) => skipped.push(SkippedPatient {
                id: plan.files.id.clone(),
                reason: e.to_string(),
            }),
        }
    }
    if infos.is_empty() {
        return Err(DataError::Folder {
            path: root.to_path_buf(),
            msg: format!("no patient could be loaded ({} skipped)", skipped.len()),
        });
    }
    let order: Vec<&str> = patients.iter().map(|p| p.id.as_str()).collect();
    skipped.sort_by_key(|s| order.iter().position(|id| *id == s.id));
    let index = CacheIndex {
        format_version: CACHE_FORMAT_VERSION,
        root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
        preprocessing: prep.clone(),
        inputs_fingerprint: fingerprint,
        channels,
        size,
        slices: write_pos,
        patients: infos,
        skipped,
    };
    builder.finish(&index)?;
    Ok(index)
}

/// The slices of `images` (`slices` equal rows) that are ±0 everywhere.
pub(super) fn blank_slices(images: &[f16], slices: usize) -> Vec<usize> {
    let per = images.len() / slices.max(1);
    (0..slices)
        .filter(|&s| {
            images[s * per..(s + 1) * per]
                .iter()
                .all(|v| v.to_bits() & 0x7fff == 0)
        })
        .collect()
}

/// A case's segmentation file as BraTS 2019 labels, which must have the images' shape `dims`.
pub(super) fn read_case_labels(p: &PatientFiles, dims: [usize; 3]) -> Result<Vec<u8>, DataError> {
    let Some(path) = &p.seg else {
        return Err(DataError::file(
            &p.id,
            p.expected_path(None),
            p.missing_message(None),
        ));
    };
    let (seg, labels) = read_seg(&p.id, path, p.kind, Expect::dims(dims))?;
    if seg.dims != dims {
        return Err(DataError::file(
            &p.id,
            path,
            format!("shape {:?} differs from the images' {:?}", seg.dims, dims),
        ));
    }
    Ok(labels)
}

/// Phase 2 for one patient: decode, validate, preprocess, write into the cache.
pub(super) fn load_patient(
    plan: &Planned,
    opts: &LoadOptions,
    geom: super::preprocess::Geometry,
    first_slice: usize,
    builder: &CacheBuilder,
    shape: (usize, usize),
) -> Result<PatientInfo, DataError> {
    let prep = &opts.preprocessing;
    let p = plan.files;
    // A 4D file holds several modalities: each file is decoded once.
    let mut decoded: Vec<(&Path, Vec<Volume>)> = Vec::new();
    let mut volumes = Vec::with_capacity(prep.modalities.len());
    for m in &prep.modalities {
        let file = &p.images[m];
        let at = match decoded.iter().position(|(path, _)| *path == file.path) {
            Some(at) => at,
            None => {
                decoded.push((
                    &file.path,
                    read_channels(&p.id, &file.path, Expect::dims(plan.dims))?,
                ));
                decoded.len() - 1
            }
        };
        let channels = &mut decoded[at].1;
        let v = std::mem::take(&mut channels[file.channel.unwrap_or(0)]);
        if v.dims != plan.dims {
            return Err(DataError::file(
                &p.id,
                &file.path,
                format!(
                    "shape {:?} differs from its header's {:?}",
                    v.dims, plan.dims
                ),
            ));
        }
        volumes.push(v);
    }
    drop(decoded);
    let labels = match opts.segmentations {
        Segmentations::Ignore => vec![0u8; plan.dims.iter().product()],
        Segmentations::Read => read_case_labels(p, plan.dims)?,
    };
    let out = preprocess(&p.id, prep, geom, &volumes, &labels)?;
    drop(volumes);
    let image_bytes: &[u8] = bytemuck::cast_slice(&out.images);
    builder
        .write_at(shape, first_slice, image_bytes, &out.masks)
        .map_err(|e| DataError::cache(builder.path(), e))?;
    Ok(PatientInfo {
        id: p.id.clone(),
        site: p.site.clone(),
        grade: p.grade.clone(),
        first_slice,
        slices: out.slices,
        dims: plan.dims,
        voxel_mm: plan.voxel_mm,
        stats: out.stats,
        checksum: checksum(image_bytes, &out.masks),
        blank_slices: blank_slices(&out.images, out.slices),
    })
}
