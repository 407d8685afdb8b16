//! BraTS folders: 2019-2021 (`<ID>_t1ce.nii.gz`, grade folders or `name_mapping.csv`) and 2023
//! and later (`<ID>-t1c.nii.gz`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{file_names, nifti_stem, subdirs, DatasetLayout, ImageFile, LayoutKind, PatientFiles};
use crate::data::{DataError, Modality};

/// `BraTS19_X_1_t1ce` → `("BraTS19_X_1", "t1ce")`, `BraTS-GLI-00000-000-t1c` →
/// `("BraTS-GLI-00000-000", "t1c")`: the suffix follows the last `_` or `-`.
fn split_case_name(stem: &str) -> Option<(&str, &str)> {
    let at = stem.rfind(['_', '-'])?;
    Some((&stem[..at], &stem[at + 1..]))
}

/// A modality by its BraTS file suffix, and whether it is the 2023 spelling.
fn modality_of_suffix(suffix: &str) -> Option<(Modality, bool)> {
    Modality::ALL.into_iter().find_map(|m| {
        if m.suffix().eq_ignore_ascii_case(suffix) {
            Some((m, false))
        } else if m.suffix_2023().eq_ignore_ascii_case(suffix) {
            Some((m, true))
        } else {
            None
        }
    })
}

/// One case folder, and whether its files use the 2023 spellings.
struct Scanned {
    files: PatientFiles,
    style_2023: Option<bool>,
}

/// Looks at one folder; `Some` when it holds BraTS files.
fn scan_case_dir(dir: &Path) -> Result<Option<Scanned>, DataError> {
    let dir_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut images = BTreeMap::new();
    let mut seg = None;
    let mut others = Vec::new();
    let mut file_id: Option<String> = None;
    let mut style_2023 = None;
    for (name, os_name) in file_names(dir)? {
        let Some(stem) = nifti_stem(&name) else {
            continue;
        };
        let path = dir.join(&os_name);
        let Some((id, suffix)) = split_case_name(stem) else {
            others.push((path, None));
            continue;
        };
        // Prefer files named after the folder; accept others (renamed copies) only once.
        if suffix.eq_ignore_ascii_case("seg") {
            if seg.is_none() || id == dir_id {
                seg = Some(path);
            }
        } else if let Some((m, is_2023)) = modality_of_suffix(suffix) {
            style_2023.get_or_insert(is_2023);
            if !images.contains_key(&m) || id == dir_id {
                images.insert(
                    m,
                    ImageFile {
                        path,
                        channel: None,
                    },
                );
            }
        } else {
            others.push((path, Some(id.to_string())));
            continue;
        }
        if file_id.is_none() || id == dir_id {
            file_id = Some(id.to_string());
        }
    }
    if images.is_empty() && seg.is_none() {
        return Ok(None);
    }
    let id = file_id.unwrap_or(dir_id);
    // The one NIfTI file that is no modality is the segmentation, whatever its name; but not a
    // file named after the case with another suffix (`<ID>_brainmask`, a saved prediction).
    let candidates: Vec<PathBuf> = others
        .into_iter()
        .filter(|(_, of)| of.as_deref() != Some(id.as_str()))
        .map(|(path, _)| path)
        .collect();
    let odd_seg_name = seg.is_none() && !images.is_empty() && candidates.len() == 1;
    if odd_seg_name {
        seg = candidates.into_iter().next();
    }
    let kind = if style_2023 == Some(true) {
        LayoutKind::Brats2023
    } else {
        LayoutKind::Brats
    };
    Ok(Some(Scanned {
        files: PatientFiles {
            site: site_from_id(&id).unwrap_or_else(|| "unknown".into()),
            id,
            dir: dir.to_path_buf(),
            kind,
            grade: None,
            images,
            channels: None,
            seg,
            odd_seg_name,
        },
        style_2023,
    }))
}

/// One case folder on its own.
pub(super) fn case_at(dir: &Path) -> Result<Option<PatientFiles>, DataError> {
    Ok(scan_case_dir(dir)?.map(|c| c.files))
}

pub(super) fn discover(root: &Path) -> Result<DatasetLayout, DataError> {
    let mut found = Vec::new();
    for dir in subdirs(root)? {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_uppercase())
            .unwrap_or_default();
        if name == "HGG" || name == "LGG" {
            for case_dir in subdirs(&dir)? {
                if let Some(mut c) = scan_case_dir(&case_dir)? {
                    c.files.grade = Some(name.clone());
                    found.push(c);
                }
            }
        } else if let Some(c) = scan_case_dir(&dir)? {
            found.push(c);
        }
    }
    if found.is_empty() {
        let empty = std::fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        return Err(DataError::Folder {
            path: root.to_path_buf(),
            msg: if empty {
                "the folder is empty; expected BraTS case folders (<ID>/<ID>_flair.nii.gz, \
                 <ID>/<ID>-t2f.nii.gz) or a Decathlon task (dataset.json, imagesTr/)"
                    .into()
            } else {
                "no BraTS case folders found; expected [HGG|LGG/]<ID>/<ID>_{flair,t1,t1ce,t2,seg}.nii[.gz] \
                 (BraTS 2019-2021), <ID>/<ID>-{t2f,t1n,t1c,t2w,seg}.nii.gz (BraTS 2023) or a \
                 Decathlon task (dataset.json, imagesTr/, labelsTr/)"
                    .into()
            },
        });
    }
    // Labels mean different things in the two generations: one data set has one of them.
    let old = found.iter().find(|c| c.style_2023 == Some(false));
    let new = found.iter().find(|c| c.style_2023 == Some(true));
    if let (Some(old), Some(new)) = (old, new) {
        return Err(DataError::Folder {
            path: root.to_path_buf(),
            msg: format!(
                "mixes BraTS 2019-2021 file names ({}) with BraTS 2023 ones ({}), whose labels \
                 differ (enhancing tumour is 4 in one, 3 in the other); keep one generation per folder",
                old.files.dir.display(),
                new.files.dir.display()
            ),
        });
    }
    let kind = if new.is_some() {
        LayoutKind::Brats2023
    } else {
        LayoutKind::Brats
    };
    let mut patients: Vec<PatientFiles> = found.into_iter().map(|c| c.files).collect();
    for p in &mut patients {
        p.kind = kind;
    }
    let mapping_path = root.join("name_mapping.csv");
    let name_mapping = if mapping_path.is_file() {
        apply_name_mapping(&mapping_path, &mut patients)?;
        Some(mapping_path)
    } else {
        None
    };
    Ok(DatasetLayout {
        root: root.to_path_buf(),
        kind,
        patients,
        unlabelled: Vec::new(),
        name_mapping,
    })
}

/// The site encoded in a BraTS ID: `BraTS19_CBICA_AAB_1` → `CBICA`, `BraTS19_TCIA01_131_1` →
/// `TCIA`, `BraTS19_2013_2_1` → `2013`, `BraTS19_TMC_06290_1` → `TMC`. IDs without a site
/// (`BraTS20_Training_001`, `BraTS2021_00000`, `BraTS-GLI-00000-000`) give `None`.
pub fn site_from_id(id: &str) -> Option<String> {
    let mut parts = id.split('_');
    let first = parts.next()?;
    if !first.to_ascii_lowercase().starts_with("brats") {
        return None;
    }
    let candidate = parts.next()?;
    parts.next()?; // a site is always followed by a case number
    let lower = candidate.to_ascii_lowercase();
    if candidate.is_empty() || ["training", "validation", "testing"].contains(&lower.as_str()) {
        return None;
    }
    if candidate.chars().all(|c| c.is_ascii_digit()) {
        return Some(candidate.to_string());
    }
    let letters = candidate.trim_end_matches(|c: char| c.is_ascii_digit());
    Some(letters.to_ascii_uppercase())
}

/// Fills grade and site from BraTS 2020's `name_mapping.csv` (`Grade, BraTS_2017_subject_ID, …,
/// BraTS_2020_subject_ID`): the row of a patient is the one where some column equals its ID; the
/// site comes from a `Site` column when there is one, else from an older ID in the row.
fn apply_name_mapping(path: &Path, patients: &mut [PatientFiles]) -> Result<(), DataError> {
    let err = |msg: String| DataError::Folder {
        path: path.to_path_buf(),
        msg,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| err(format!("cannot read the header: {e}")))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let grade_col = header.iter().position(|h| h == "grade");
    let site_col = header.iter().position(|h| h == "site");
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| match e.kind() {
            csv::ErrorKind::UnequalLengths {
                pos,
                expected_len,
                len,
                ..
            } => err(format!(
                "row {} has {len} columns, the header has {expected_len}",
                pos.as_ref().map_or(0, |p| p.line())
            )),
            _ => err(format!("cannot read: {e}")),
        })?;
        let row: Vec<String> = record.iter().map(String::from).collect();
        for cell in &row {
            if !cell.is_empty() && cell != "NA" {
                by_id.insert(cell.clone(), row.clone());
            }
        }
    }
    for p in patients.iter_mut() {
        let Some(row) = by_id.get(&p.id) else {
            continue;
        };
        if p.grade.is_none() {
            if let Some(g) = grade_col.map(|c| row[c].to_ascii_uppercase()) {
                if !g.is_empty() && g != "NA" {
                    p.grade = Some(g);
                }
            }
        }
        if let Some(site) = site_col.map(|c| row[c].clone()).filter(|s| !s.is_empty()) {
            p.site = site;
        } else if p.site == "unknown" {
            if let Some(site) = row.iter().find_map(|cell| site_from_id(cell)) {
                p.site = site;
            } else if row.iter().any(|c| c.starts_with("TCGA-")) {
                p.site = "TCIA".into();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_from_brats_ids() {
        assert_eq!(
            site_from_id("BraTS19_CBICA_AAB_1").as_deref(),
            Some("CBICA")
        );
        assert_eq!(
            site_from_id("BraTS19_TCIA01_131_1").as_deref(),
            Some("TCIA")
        );
        assert_eq!(site_from_id("BraTS19_2013_2_1").as_deref(), Some("2013"));
        assert_eq!(site_from_id("BraTS19_TMC_06290_1").as_deref(), Some("TMC"));
        assert_eq!(site_from_id("BraTS20_Training_001"), None);
        assert_eq!(site_from_id("BraTS2021_00000"), None);
        assert_eq!(site_from_id("BraTS-GLI-00000-000"), None);
        assert_eq!(site_from_id("patient7"), None);
    }

    #[test]
    fn case_names_split_in_both_generations() {
        assert_eq!(split_case_name("X_1_t1ce"), Some(("X_1", "t1ce")));
        assert_eq!(split_case_name("X_1_seg"), Some(("X_1", "seg")));
        assert_eq!(
            split_case_name("BraTS-GLI-00000-000-t1c"),
            Some(("BraTS-GLI-00000-000", "t1c"))
        );
        assert_eq!(modality_of_suffix("t2f"), Some((Modality::Flair, true)));
        assert_eq!(modality_of_suffix("t1"), Some((Modality::T1, false)));
        assert_eq!(modality_of_suffix("t1gd"), None);
    }
}
