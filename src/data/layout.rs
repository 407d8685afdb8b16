//! Finding patients in a BraTS-layout folder.
//!
//! BraTS 2019: `ROOT/{HGG,LGG}/<ID>/<ID>_{flair,t1,t1ce,t2,seg}.nii.gz`; BraTS 2020/2021: the same
//! without the grade level, with `name_mapping.csv` beside the patients (grade and the older IDs,
//! which carry the site). Discovery only records what exists; whether a patient has what a load
//! asks for is checked by the loader, so a data set that ships some modalities still works.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::{DataError, Modality};

/// The files of one patient.
#[derive(Debug, Clone)]
pub struct PatientFiles {
    pub id: String,
    pub dir: PathBuf,
    /// `HGG` / `LGG` from the parent folder or name_mapping.csv.
    pub grade: Option<String>,
    /// Acquisition site (`CBICA`, `TCIA`, `2013`, `TMC`, …) or `unknown`.
    pub site: String,
    pub images: BTreeMap<Modality, PathBuf>,
    pub seg: Option<PathBuf>,
}

impl PatientFiles {
    /// The path a modality is expected at, for error messages when it is missing.
    pub fn expected_path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}_{suffix}.nii.gz", self.id))
    }
}

#[derive(Debug, Clone)]
pub struct DatasetLayout {
    pub root: PathBuf,
    pub patients: Vec<PatientFiles>,
    pub name_mapping: Option<PathBuf>,
}

const NIFTI_EXTS: [&str; 2] = [".nii.gz", ".nii"];

/// `name_flair.nii.gz` → `Some(("name", "flair"))`.
fn split_nifti_name(file_name: &str) -> Option<(&str, &str)> {
    let stem = NIFTI_EXTS
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    let (id, suffix) = stem.rsplit_once('_')?;
    Some((id, suffix))
}

/// Looks at one folder; `Some` when it holds BraTS files.
fn scan_patient_dir(dir: &Path) -> Result<Option<PatientFiles>, DataError> {
    let dir_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut images = BTreeMap::new();
    let mut seg = None;
    let mut file_id: Option<String> = None;
    let entries = fs::read_dir(dir).map_err(|e| DataError::Folder {
        path: dir.to_path_buf(),
        msg: format!("cannot read folder: {e}"),
    })?;
    // The name as text for parsing, and as the file system has it for the path (a name that
    // is not UTF-8 would otherwise lead to a file that does not exist).
    let mut names: Vec<(String, std::ffi::OsString)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.file_name()))
        .collect();
    names.sort();
    for (name, os_name) in &names {
        let Some((id, suffix)) = split_nifti_name(name) else {
            continue;
        };
        // Prefer files named after the folder; accept others (renamed copies) only once.
        let path = dir.join(os_name);
        if suffix.eq_ignore_ascii_case("seg") {
            if seg.is_none() || id == dir_id {
                seg = Some(path);
            }
        } else if let Some(m) = Modality::parse(suffix) {
            if !images.contains_key(&m) || id == dir_id {
                images.insert(m, path);
            }
        } else {
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
    Ok(Some(PatientFiles {
        site: site_from_id(&id).unwrap_or_else(|| "unknown".into()),
        id,
        dir: dir.to_path_buf(),
        grade: None,
        images,
        seg,
    }))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::Folder {
        path: dir.to_path_buf(),
        msg: format!("cannot read folder: {e}"),
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// Finds the patients under `root`, with grade and site where they can be known.
pub fn discover(root: &Path) -> Result<DatasetLayout, DataError> {
    if !root.is_dir() {
        return Err(DataError::Folder {
            path: root.to_path_buf(),
            msg: if root.exists() {
                "not a folder".into()
            } else {
                "no such folder".into()
            },
        });
    }
    let mut patients = Vec::new();
    for dir in subdirs(root)? {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_uppercase())
            .unwrap_or_default();
        if name == "HGG" || name == "LGG" {
            for pdir in subdirs(&dir)? {
                if let Some(mut p) = scan_patient_dir(&pdir)? {
                    p.grade = Some(name.clone());
                    patients.push(p);
                }
            }
        } else if let Some(p) = scan_patient_dir(&dir)? {
            patients.push(p);
        }
    }
    if patients.is_empty() {
        let empty = fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        return Err(DataError::Folder {
            path: root.to_path_buf(),
            msg: if empty {
                "the folder is empty; expected BraTS patient folders <ID>/<ID>_flair.nii.gz …"
                    .into()
            } else {
                "no BraTS patient folders found; expected [HGG|LGG/]<ID>/<ID>_{flair,t1,t1ce,t2,seg}.nii[.gz]".into()
            },
        });
    }
    // Folder order would group by grade; ID order is what people expect in listings.
    patients.sort_by(|a, b| a.id.cmp(&b.id));
    let mut ids = HashMap::new();
    for p in &patients {
        if let Some(first) = ids.insert(p.id.clone(), p.dir.clone()) {
            return Err(DataError::Folder {
                path: root.to_path_buf(),
                msg: format!(
                    "patient ID {} appears twice: {} and {}",
                    p.id,
                    first.display(),
                    p.dir.display()
                ),
            });
        }
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
        patients,
        name_mapping,
    })
}

/// The site encoded in a BraTS ID: `BraTS19_CBICA_AAB_1` → `CBICA`, `BraTS19_TCIA01_131_1` →
/// `TCIA`, `BraTS19_2013_2_1` → `2013`, `BraTS19_TMC_06290_1` → `TMC`. IDs without a site
/// (`BraTS20_Training_001`, `BraTS2021_00000`) give `None`.
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
    let text = fs::read_to_string(path).map_err(|e| DataError::Folder {
        path: path.to_path_buf(),
        msg: format!("cannot read: {e}"),
    })?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Ok(());
    };
    let header: Vec<String> = header
        .split(',')
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let grade_col = header.iter().position(|h| h == "grade");
    let site_col = header.iter().position(|h| h == "site");
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for (n, line) in lines.enumerate() {
        let row: Vec<String> = line.split(',').map(|c| c.trim().to_string()).collect();
        if row.len() != header.len() {
            return Err(DataError::Folder {
                path: path.to_path_buf(),
                msg: format!(
                    "row {} has {} columns, the header has {}",
                    n + 2,
                    row.len(),
                    header.len()
                ),
            });
        }
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
        assert_eq!(site_from_id("patient7"), None);
    }

    #[test]
    fn nifti_names_split() {
        assert_eq!(split_nifti_name("X_1_t1ce.nii.gz"), Some(("X_1", "t1ce")));
        assert_eq!(split_nifti_name("X_1_seg.nii"), Some(("X_1", "seg")));
        assert_eq!(split_nifti_name("notes.txt"), None);
    }
}
