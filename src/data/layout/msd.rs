//! The Medical Segmentation Decathlon's Task01_BrainTumour: `dataset.json`, 4D
//! `imagesTr/BRATS_NNN.nii.gz` (the channels in the order of `dataset.json`'s `modality`),
//! `labelsTr/` and `imagesTs/` (no labels).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{file_names, nifti_stem, DatasetLayout, ImageFile, LayoutKind, PatientFiles};
use crate::data::{DataError, Modality};

const DESCRIPTION: &str = "dataset.json";
const IMAGES: &str = "imagesTr";
const LABELS: &str = "labelsTr";
const UNLABELLED: &str = "imagesTs";

pub(super) fn looks_like(root: &Path) -> bool {
    root.join(DESCRIPTION).is_file() || root.join(IMAGES).is_dir()
}

/// `imagesTr/<ID>.nii.gz` → `labelsTr/<ID>.nii.gz`.
pub(super) fn label_path(images_dir: &Path, id: &str) -> PathBuf {
    images_dir
        .parent()
        .unwrap_or(images_dir)
        .join(LABELS)
        .join(format!("{id}.nii.gz"))
}

pub(super) fn image_path(images_dir: &Path, id: &str) -> PathBuf {
    images_dir.join(format!("{id}.nii.gz"))
}

/// The channels `dataset.json` lists (`"modality": {"0": "FLAIR", "1": "T1w", …}`), in order,
/// as named there.
fn read_channels(root: &Path) -> Result<Vec<String>, DataError> {
    let path = root.join(DESCRIPTION);
    let err = |msg: String| DataError::Folder {
        path: path.clone(),
        msg,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(if e.kind() == std::io::ErrorKind::NotFound {
            "missing: a Decathlon task needs its dataset.json for the channel order".into()
        } else {
            format!("cannot read: {e}")
        })
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let listed = v
        .get("modality")
        .and_then(|m| m.as_object())
        .ok_or_else(|| err("no \"modality\" object (channel index → name)".into()))?;
    let mut channels = Vec::new();
    for (key, name) in listed {
        let index: usize = key
            .parse()
            .map_err(|_| err(format!("modality key '{key}' is not a channel number")))?;
        let name = name
            .as_str()
            .ok_or_else(|| err(format!("modality {key} is not a name")))?;
        channels.push((index, name.to_string()));
    }
    channels.sort();
    if channels.iter().enumerate().any(|(i, (k, _))| i != *k) {
        return Err(err(format!(
            "modality keys {:?} should number the channels 0, 1, 2, …",
            channels.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        )));
    }
    // Another Decathlon task (hippocampus, prostate, …) has other channels and labels.
    if let Some((_, name)) = channels.iter().find(|(_, n)| Modality::parse(n).is_none()) {
        return Err(err(format!(
            "modality '{name}' is not an MRI sequence of brain-tumour data (FLAIR, T1w, t1gd, \
             T2w); is this Task01_BrainTumour?"
        )));
    }
    if let Some(labels) = v.get("labels").and_then(|l| l.as_object()) {
        let edema = labels.get("1").and_then(|n| n.as_str()).unwrap_or("");
        if !edema.to_ascii_lowercase().contains("edema") {
            return Err(err(format!(
                "label 1 is '{edema}', not edema: the labels are not Task01_BrainTumour's \
                 (1 edema, 2 non-enhancing tumour, 3 enhancing tumour)"
            )));
        }
    }
    Ok(channels.into_iter().map(|(_, n)| n).collect())
}

/// The case IDs of the NIfTI files in `dir` (none when it does not exist), with their paths.
fn cases_in(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(file_names(dir)?
        .into_iter()
        .filter_map(|(name, os_name)| Some((nifti_stem(&name)?.to_string(), dir.join(os_name))))
        .collect())
}

/// A case of the task: its 4D image at `path` split by the channels `dataset.json` lists.
fn case(id: String, path: &Path, channels: &[String], seg: Option<PathBuf>) -> PatientFiles {
    let images = channels
        .iter()
        .enumerate()
        .filter_map(|(c, name)| {
            let m = Modality::parse(name)?;
            let file = ImageFile {
                path: path.to_path_buf(),
                channel: Some(c),
            };
            Some((m, file))
        })
        .collect();
    PatientFiles {
        seg,
        id,
        dir: path.parent().unwrap_or(path).to_path_buf(),
        kind: LayoutKind::Msd,
        grade: None,
        site: "unknown".into(),
        images,
        channels: Some(channels.to_vec()),
        odd_seg_name: false,
    }
}

/// The case of one image file of a task (`imagesTr/` or `imagesTs/`), if `path` is one.
pub(super) fn case_at(path: &Path) -> Result<Option<PatientFiles>, DataError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let (Some(id), Some(dir)) = (nifti_stem(&name), path.parent()) else {
        return Ok(None);
    };
    let in_task = [IMAGES, UNLABELLED]
        .iter()
        .any(|d| dir.file_name().is_some_and(|n| n == *d));
    let Some(root) = dir
        .parent()
        .filter(|r| in_task && r.join(DESCRIPTION).is_file())
    else {
        return Ok(None);
    };
    let channels = read_channels(root)?;
    let label = label_path(dir, id);
    let seg = label.is_file().then_some(label);
    Ok(Some(case(id.to_string(), path, &channels, seg)))
}

pub(super) fn discover(root: &Path) -> Result<DatasetLayout, DataError> {
    let channels = read_channels(root)?;
    let images_dir = root.join(IMAGES);
    let labels: BTreeMap<String, PathBuf> = cases_in(&root.join(LABELS))?.into_iter().collect();
    let mut patients = Vec::new();
    for (id, path) in cases_in(&images_dir)? {
        let seg = labels.get(&id).cloned();
        patients.push(case(id, &path, &channels, seg));
    }
    let unlabelled: Vec<PatientFiles> = cases_in(&root.join(UNLABELLED))?
        .into_iter()
        .map(|(id, path)| case(id, &path, &channels, None))
        .collect();
    // Only unlabelled cases is a data set for annotating (a load that reads segmentations
    // refuses it with its own message).
    if patients.is_empty() && unlabelled.is_empty() {
        return Err(DataError::Folder {
            path: root.to_path_buf(),
            msg: format!(
                "a Decathlon task without cases: {IMAGES}/ and {UNLABELLED}/ hold no .nii.gz files"
            ),
        });
    }
    Ok(DatasetLayout {
        root: root.to_path_buf(),
        kind: LayoutKind::Msd,
        patients,
        unlabelled,
        name_mapping: None,
    })
}
