//! Finding the cases of a data set as it comes out of its archive, and what each layout means.
//!
//! Three layouts are recognised (`LayoutKind`): BraTS 2019-2021, BraTS 2023 and later, and the
//! Medical Segmentation Decathlon's Task01_BrainTumour. Discovery only records what exists;
//! whether a case has what a load asks for is checked by the loader, so a data set that ships
//! some modalities still works.

mod brats;
mod msd;
mod sites;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DataError, Modality};

pub use brats::site_from_id;

/// Which release's layout a folder has: it decides the file names and the label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutKind {
    /// BraTS 2019, 2020, 2021: `[HGG|LGG/]<ID>/<ID>_{flair,t1,t1ce,t2,seg}.nii[.gz]`; labels
    /// 1 necrotic and non-enhancing core, 2 edema, 4 enhancing.
    Brats,
    /// BraTS 2023 (GLI, MEN, MET, PED, SSA): `<ID>/<ID>-{t2f,t1n,t1c,t2w,seg}.nii.gz`; labels 1
    /// necrotic core, 2 edema, 3 enhancing.
    Brats2023,
    /// Decathlon Task01_BrainTumour: `dataset.json`, 4D `imagesTr/<ID>.nii.gz`, `labelsTr/`
    /// (1 edema, 2 non-enhancing, 3 enhancing) and unlabelled `imagesTs/`.
    Msd,
}

impl LayoutKind {
    pub fn describe(self) -> &'static str {
        match self {
            LayoutKind::Brats => "BraTS 2019-2021",
            LayoutKind::Brats2023 => "BraTS 2023",
            LayoutKind::Msd => "MSD Task01_BrainTumour",
        }
    }

    /// A label value as this layout's files hold it → the BraTS 2019 value the rest of the
    /// program uses (1 necrotic / non-enhancing core, 2 edema, 4 enhancing); `None` for a value
    /// the layout does not have.
    pub fn canonical_label(self, label: u8) -> Option<u8> {
        match (self, label) {
            (_, 0) => Some(0),
            (LayoutKind::Brats, 1 | 2 | 4) => Some(label),
            (LayoutKind::Brats2023, 1 | 2) => Some(label),
            (LayoutKind::Brats2023, 3) => Some(4),
            (LayoutKind::Msd, 1) => Some(2),
            (LayoutKind::Msd, 2) => Some(1),
            (LayoutKind::Msd, 3) => Some(4),
            _ => None,
        }
    }

    /// The label values of this layout, for messages.
    pub fn label_values(self) -> &'static str {
        match self {
            LayoutKind::Brats => "0, 1, 2, 4",
            LayoutKind::Brats2023 | LayoutKind::Msd => "0, 1, 2, 3",
        }
    }
}

/// Where one modality of a case is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    /// Position along the fourth dimension of a 4D file (the Decathlon stores all channels in
    /// one); `None`: a 3D file.
    pub channel: Option<usize>,
}

/// The files of one case.
#[derive(Debug, Clone)]
pub struct PatientFiles {
    pub id: String,
    pub dir: PathBuf,
    pub kind: LayoutKind,
    /// `HGG` / `LGG` from the parent folder or name_mapping.csv.
    pub grade: Option<String>,
    /// Acquisition site (`CBICA`, `TCIA`, `2013`, `TMC`, …, or from `--sites`), or `unknown`.
    pub site: String,
    pub images: BTreeMap<Modality, ImageFile>,
    /// Channels of the 4D image as `dataset.json` lists them (Decathlon only).
    pub channels: Option<Vec<String>>,
    pub seg: Option<PathBuf>,
    /// The segmentation was found under a name that is not the layout's (BraTS 2020 case 355
    /// ships `W39_1998.09.19_Segm.nii`): the one NIfTI file of the folder that is no modality.
    pub odd_seg_name: bool,
}

impl PatientFiles {
    /// The path a modality (`None`: the segmentation) is expected at, for messages when it is
    /// missing.
    pub fn expected_path(&self, modality: Option<Modality>) -> PathBuf {
        match (self.kind, modality) {
            (LayoutKind::Msd, None) => msd::label_path(&self.dir, &self.id),
            (LayoutKind::Msd, Some(_)) => msd::image_path(&self.dir, &self.id),
            (LayoutKind::Brats, m) => self.dir.join(format!(
                "{}_{}.nii.gz",
                self.id,
                m.map_or("seg", Modality::suffix)
            )),
            (LayoutKind::Brats2023, m) => self.dir.join(format!(
                "{}-{}.nii.gz",
                self.id,
                m.map_or("seg", Modality::suffix_2023)
            )),
        }
    }

    /// Why a modality is missing, in the layout's words.
    pub fn missing_message(&self, modality: Option<Modality>) -> String {
        match (self.kind, modality, &self.channels) {
            (LayoutKind::Msd, None, _) => "missing label file in labelsTr/".into(),
            (LayoutKind::Msd, Some(m), Some(listed)) => {
                format!("no {m} channel: dataset.json lists {}", listed.join(", "))
            }
            (LayoutKind::Brats2023, Some(m), _) => format!("missing {} file", m.suffix_2023()),
            (_, m, _) => format!("missing {} file", m.map_or("seg", Modality::suffix)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatasetLayout {
    pub root: PathBuf,
    pub kind: LayoutKind,
    pub patients: Vec<PatientFiles>,
    /// Cases that ship without a segmentation by design (the Decathlon's `imagesTs/`): counted
    /// by every load, loaded only by one that reads no segmentations (`Segmentations::Ignore`).
    pub unlabelled: Vec<PatientFiles>,
    pub name_mapping: Option<PathBuf>,
}

impl DatasetLayout {
    /// A case's files, labelled or not.
    pub fn case(&self, id: &str) -> Option<&PatientFiles> {
        self.patients
            .iter()
            .chain(&self.unlabelled)
            .find(|p| p.id == id)
    }

    /// Sets every case's site from a sites file (`case ID, site` rows); a labelled case it does
    /// not list is an error that names it.
    pub fn apply_sites(&mut self, file: &Path) -> Result<(), DataError> {
        let sites = sites::read_sites(file)?;
        // The Decathlon's imagesTs/ cases need no row: the site files in use list imagesTr/.
        for p in &mut self.unlabelled {
            if let Some(site) = sites.get(&p.id) {
                p.site = site.clone();
            }
        }
        for p in &mut self.patients {
            match sites.get(&p.id) {
                Some(site) => p.site = site.clone(),
                None => {
                    return Err(DataError::Folder {
                        path: file.to_path_buf(),
                        msg: format!(
                            "no site for case {} ({} cases listed; every case of the data set \
                             needs a row `{},SITE`)",
                            p.id,
                            sites.len(),
                            p.id
                        ),
                    })
                }
            }
        }
        Ok(())
    }
}

const NIFTI_EXTS: [&str; 2] = [".nii.gz", ".nii"];

/// `name.nii.gz` → `Some("name")`; files that are not NIfTI, and macOS's `._name` AppleDouble
/// companions (which archives made on a Mac carry beside every file), give `None`.
fn nifti_stem(file_name: &str) -> Option<&str> {
    if file_name.starts_with("._") {
        return None;
    }
    NIFTI_EXTS
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
}

/// The names of the files (not folders) in `dir`, sorted: as text for parsing, and as the file
/// system has them for the path (a name that is not UTF-8 would otherwise lead to a file that
/// does not exist).
fn file_names(dir: &Path) -> Result<Vec<(String, std::ffi::OsString)>, DataError> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::Folder {
        path: dir.to_path_buf(),
        msg: format!("cannot read folder: {e}"),
    })?;
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.file_name()))
        .collect();
    names.sort();
    Ok(names)
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

/// Finds the cases under `root`, with grade and site where they can be known.
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
    let mut layout = if msd::looks_like(root) {
        msd::discover(root)?
    } else {
        brats::discover(root)?
    };
    // Folder order would group by grade; ID order is what people expect in listings.
    layout.patients.sort_by(|a, b| a.id.cmp(&b.id));
    layout.unlabelled.sort_by(|a, b| a.id.cmp(&b.id));
    let mut ids = HashMap::new();
    for p in layout.patients.iter().chain(&layout.unlabelled) {
        // IDs name cache entries and files, and go into work packages' scripts and onto the
        // terminal.
        crate::untrusted::check_name("case ID", &p.id).map_err(|msg| DataError::Folder {
            path: p.dir.clone(),
            msg,
        })?;
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
    Ok(layout)
}

/// The case at `path` on its own, as `preview` takes it: a BraTS case folder (either
/// generation), or a Decathlon image (`imagesTr/<ID>.nii.gz` beside the task's `dataset.json`).
/// `None`: neither (a plain volume file, or a folder without BraTS files).
pub fn find_case(path: &Path) -> Result<Option<PatientFiles>, DataError> {
    if path.is_dir() {
        return brats::case_at(path);
    }
    msd::case_at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_map_to_the_brats_2019_values() {
        // Enhancing tumour is 4 in BraTS 2019, 3 in BraTS 2023 and the Decathlon; the
        // Decathlon swaps edema (1) and the non-enhancing core (2).
        assert_eq!(LayoutKind::Brats2023.canonical_label(3), Some(4));
        assert_eq!(LayoutKind::Brats2023.canonical_label(4), None);
        assert_eq!(LayoutKind::Msd.canonical_label(1), Some(2));
        assert_eq!(LayoutKind::Msd.canonical_label(2), Some(1));
        assert_eq!(LayoutKind::Brats.canonical_label(3), None);
        assert_eq!(LayoutKind::Brats.canonical_label(4), Some(4));
    }

    #[test]
    fn nifti_stems_skip_apple_double_files() {
        assert_eq!(nifti_stem("BRATS_001.nii.gz"), Some("BRATS_001"));
        assert_eq!(nifti_stem("x_seg.nii"), Some("x_seg"));
        assert_eq!(nifti_stem("._BRATS_001.nii.gz"), None);
        assert_eq!(nifti_stem("notes.txt"), None);
    }
}
