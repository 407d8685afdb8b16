//! A session labelled by people: each round's work package (what to annotate, in which order,
//! with the model's prediction to start from), the checks a returned segmentation must pass,
//! and its import, counted at once with the repeat's state.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::files::{write_atomic, SessionFiles};
use super::state::{Annotation, Effort};
use super::Session;
use crate::data::{
    affine_difference, read_affine, read_dims, read_file_bytes, read_seg, Dataset, Expect,
    PatientFiles,
};
use crate::untrusted::{escaped, python_string, shell_quote};

pub const WORKLIST: &str = "worklist.csv";
pub const INBOX: &str = "inbox";
pub const REJECTED: &str = "rejected";
pub const OPEN_SCRIPT: &str = "open.sh";
pub use crate::data::AFFINE_TOLERANCE;

/// One case of a round's worklist (a row of `worklist.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The order to annotate in, from 1.
    pub order: usize,
    pub case: String,
    /// The case's image files, `;` between them.
    pub images: String,
    /// Image-wise: the axial slices to annotate, as z of the original NIfTI, space-separated;
    /// empty: the whole case.
    pub slices: String,
    /// What picked it: the strategy, and for `proposed` the labelled case whose gradient led
    /// here with the latent distance and angle.
    pub strategy: String,
    pub source: String,
    pub distance: String,
    pub angle_deg: String,
    /// The model's prediction in the package, to correct (empty in round 0: no model yet).
    pub prediction: String,
    /// The name the segmentation goes back under, in `inbox/`.
    pub segmentation: String,
}

impl WorkItem {
    /// The requested slices (z of the original volume); empty: all of them.
    pub fn slice_list(&self) -> Vec<usize> {
        self.slices
            .split_whitespace()
            .filter_map(|z| z.parse().ok())
            .collect()
    }

    pub fn image_paths(&self) -> Vec<PathBuf> {
        self.images
            .split(';')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// Round `round`'s worklist, or `None` when no package was written for it.
pub fn worklist(files: &SessionFiles, round: usize) -> Result<Option<Vec<WorkItem>>> {
    let path = files.package(round).join(WORKLIST);
    if !path.exists() {
        return Ok(None);
    }
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let items = reader
        .deserialize()
        .collect::<Result<Vec<WorkItem>, _>>()
        .with_context(|| format!("{} is not a worklist", path.display()))?;
    Ok(Some(items))
}

/// The newest round with a work package, if any.
pub fn latest_round(files: &SessionFiles) -> Option<usize> {
    let dir = files.package(0);
    let parent = dir.parent()?;
    std::fs::read_dir(parent)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("round-")?
                .parse::<usize>()
                .ok()
        })
        .filter(|&r| files.package(r).join(WORKLIST).exists())
        .max()
}

/// A prediction to put in a package: the case and its labels (0/1) in the geometry of the
/// case's first image.
pub struct Prediction {
    pub case: String,
    pub labels: Vec<u8>,
}

/// Writes round `round`'s package: `worklist.csv`, each prediction as a NIfTI with its image's
/// geometry, `open.sh`, and an empty `inbox/`. The worklist is written last, so a package is
/// there only once whole.
pub fn write_package(
    files: &SessionFiles,
    ds: &Dataset,
    round: usize,
    items: &[WorkItem],
    predictions: &[Prediction],
) -> Result<()> {
    let dir = files.package(round);
    std::fs::create_dir_all(dir.join(INBOX))
        .with_context(|| format!("cannot create {}", dir.join(INBOX).display()))?;
    for p in predictions {
        let item = items
            .iter()
            .find(|i| i.case == p.case)
            .context("a prediction of a case not in the worklist")?;
        let case = case_files(ds, &p.case)?;
        write_labels_like(&dir.join(&item.prediction), &case, &p.labels)?;
        let kept = dir.join(KEPT_PREDICTIONS);
        std::fs::create_dir_all(&kept)
            .with_context(|| format!("cannot create {}", kept.display()))?;
        write_labels_like(&kept.join(&item.prediction), &case, &p.labels)?;
    }
    // Every value below comes from the data set or its paths: quoted as one shell word on code
    // lines, escaped on comment lines (a newline there would start a line of code).
    let mut script = String::from(
        "#!/bin/sh\n# Opens each case of this round with the model's prediction to correct, in the order\n# to annotate. Save the segmentation into inbox/ under the name the worklist gives.\n",
    );
    for item in items {
        let images = item.image_paths();
        let (first, rest) = images.split_first().context("a work item without images")?;
        let q = |p: &Path| shell_quote(&p.display().to_string());
        let mut line = format!("itksnap -g {}", q(first));
        if !rest.is_empty() {
            let others: Vec<String> = rest.iter().map(|p| q(p)).collect();
            line += &format!(" -o {}", others.join(" "));
        }
        let seg = if item.prediction.is_empty() {
            None
        } else {
            Some(dir.join(&item.prediction))
        };
        if let Some(s) = &seg {
            line += &format!(" -s {}", q(s));
        }
        script += &format!(
            "\n# {} {}: {}\n{line}\n",
            item.order,
            escaped(&item.case),
            escaped(&describe(item))
        );
        let mut python = format!(
            "slicer.util.loadVolume({})",
            python_string(&first.display().to_string())
        );
        if let Some(s) = &seg {
            python += &format!(
                "; slicer.util.loadSegmentation({})",
                python_string(&s.display().to_string())
            );
        }
        script += &format!("# Slicer --python-code {}\n", shell_quote(&python));
    }
    write_atomic(&dir.join(OPEN_SCRIPT), script.as_bytes())?;
    let mut out = csv::Writer::from_writer(Vec::new());
    for item in items {
        out.serialize(item)?;
    }
    let bytes = out.into_inner().context("cannot write the worklist")?;
    write_atomic(&dir.join(WORKLIST), &bytes)
}

/// Why a case is on the list, for people.
fn describe(item: &WorkItem) -> String {
    let mut s = format!("picked by {}", item.strategy);
    if !item.source.is_empty() {
        s += &format!(" from {}", item.source);
    }
    if !item.slices.is_empty() {
        s += &format!("; slices z = {}", item.slices);
    }
    s
}

/// A case's files in the data set.
pub fn case_files(ds: &Dataset, case: &str) -> Result<PatientFiles> {
    ds.files_of(case)
        .cloned()
        .with_context(|| format!("case {case} is not in the data set"))
}

/// The file every segmentation of a case is checked against: its first image.
pub(super) fn reference_image(case: &PatientFiles) -> Result<PathBuf> {
    case.images
        .values()
        .next()
        .map(|f| f.path.clone())
        .with_context(|| format!("case {} has no image", case.id))
}

/// Writes `labels` (x fastest) as a uint8 NIfTI with the header of the case's first image
/// (its shape, voxel size and transforms), atomically.
pub(super) fn write_labels_like(path: &Path, case: &PatientFiles, labels: &[u8]) -> Result<()> {
    let reference = reference_image(case)?;
    let mut header = nifti::NiftiHeader::from_file(&reference)
        .with_context(|| format!("cannot read the header of {}", reference.display()))?;
    let (dims, _, _) = read_dims(&case.id, &reference)?;
    // Labels as they are: no intensity scaling, one volume.
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    header.cal_min = 0.0;
    header.cal_max = labels.iter().copied().max().unwrap_or(0).max(1) as f32;
    use ndarray::ShapeBuilder;
    let array = ndarray::Array::from_shape_vec(ndarray::IxDyn(&dims).f(), labels.to_vec())
        .context("the labels do not fill the image's shape")?;
    // The writer names its output after the path it is given (it would turn a temporary
    // `x.nii.gz.tmp` into `x.nii.gz`): write under the final name in a temporary folder
    // beside it, then move it into place.
    let dir = path.parent().context("a file in a folder")?;
    let staging = tempfile::Builder::new()
        .prefix(".writing")
        .tempdir_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let staged = staging
        .path()
        .join(path.file_name().context("a file name")?);
    nifti::writer::WriterOptions::new(&staged)
        .reference_header(&header)
        .write_nifti(&array)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(&staged).and_then(|f| f.sync_all())?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A segmentation that passed the checks: its labels (the layout's, as BraTS 2019 values) in
/// the case's geometry, and what the checks noted.
#[derive(Debug)]
pub struct Checked {
    pub labels: Vec<u8>,
    pub dims: [usize; 3],
    pub warnings: Vec<String>,
}

/// Checks `file` as the segmentation of `item`'s case: a readable NIfTI, of the image's shape
/// and voxel-to-world transform (within `AFFINE_TOLERANCE`), with the data set's labels only.
/// Image-wise only the requested slices are taken; labels elsewhere are dropped, with a
/// warning. `Err` says why it is refused.
pub fn check(case: &PatientFiles, item: &WorkItem, file: &Path) -> Result<Checked, String> {
    // The shapes are compared from the headers, before the file's voxels are read.
    let reference = reference_image(case).map_err(|e| e.to_string())?;
    let (dims, _, _) = read_dims(&case.id, &reference).map_err(|e| e.to_string())?;
    let (seg_dims, _, _) = read_dims(&case.id, file).map_err(|e| e.to_string())?;
    if seg_dims != dims {
        return Err(format!(
            "{}: shape {:?}, but the image {} is {:?}",
            file.display(),
            seg_dims,
            reference.display(),
            dims
        ));
    }
    let (_, mut labels) =
        read_seg(&case.id, file, case.kind, Expect::dims(dims)).map_err(|e| e.to_string())?;
    let (a, b) = (
        read_affine(&case.id, file).map_err(|e| e.to_string())?,
        read_affine(&case.id, &reference).map_err(|e| e.to_string())?,
    );
    let off = affine_difference(&a, &b);
    if off > AFFINE_TOLERANCE {
        return Err(format!(
            "{}: its voxel-to-world transform differs from the image's ({}) by up to {off:.4} (more than {AFFINE_TOLERANCE}); it was saved in another space",
            file.display(),
            reference.display()
        ));
    }
    let mut warnings = Vec::new();
    let wanted = item.slice_list();
    if !wanted.is_empty() {
        let plane = dims[0] * dims[1];
        let mut elsewhere = Vec::new();
        for z in 0..dims[2] {
            if wanted.contains(&z) {
                continue;
            }
            let slice = &mut labels[z * plane..(z + 1) * plane];
            if slice.iter().any(|&l| l != 0) {
                elsewhere.push(z);
                slice.fill(0);
            }
        }
        if !elsewhere.is_empty() {
            warnings.push(format!(
                "{}: labels on slices z = {} were not asked for and are not taken (asked: z = {})",
                file.display(),
                join(&elsewhere),
                item.slices
            ));
        }
    }
    Ok(Checked {
        labels,
        dims,
        warnings,
    })
}

fn join(zs: &[usize]) -> String {
    zs.iter()
        .map(|z| z.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The work item a file is for: its name is the case ID, then `_seg`, `-seg`, `_label`,
/// `_mask` or nothing, then `.nii.gz` or `.nii`. The longest matching ID wins (`P1` and `P10`).
pub fn item_for<'a>(items: &'a [WorkItem], file: &Path) -> Option<&'a WorkItem> {
    let name = file.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))?;
    items
        .iter()
        .filter(|i| {
            stem.strip_prefix(i.case.as_str())
                .is_some_and(|rest| ["", "_seg", "-seg", "_label", "_mask"].contains(&rest))
        })
        .max_by_key(|i| i.case.len())
}

/// What became of a file offered as a segmentation.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Checked and counted (with what the checks noted).
    Counted { case: String, warnings: Vec<String> },
    /// The same file was counted before.
    AlreadyCounted { case: String },
    /// Not counted, and why.
    Refused(String),
}

/// Offers `file` as a segmentation for round `round` of `session`'s repeat `repeat` (whose
/// lock the caller holds). A file that passes is copied into `labels/` and recorded in the
/// repeat's state: the state file's replacement is the one moment it counts, so a process
/// killed at any point leaves it either counted or not. A refusal changes nothing.
pub fn import(
    session: &mut Session,
    ds: &Dataset,
    repeat: usize,
    round: usize,
    file: &Path,
    replace: bool,
) -> Result<Verdict> {
    let files = session.files();
    let Some(items) = worklist(&files, round)? else {
        bail!(
            "round {round} has no work package in {}",
            files.package(round).display()
        );
    };
    let Some(item) = item_for(&items, file) else {
        let cases: Vec<&str> = items.iter().map(|i| i.case.as_str()).collect();
        return Ok(Verdict::Refused(format!(
            "{}: not a case of round {round}'s worklist (its cases: {}; name a file CASE_seg.nii.gz)",
            file.display(),
            cases.join(", ")
        )));
    };
    // The worklist is a file anyone can edit: the repeat's state says what this round asks
    // for, and an item that is not that (another case, or other slices) is not counted.
    let asked = recorded_cases(session, ds, repeat, round)?;
    let recorded = asked
        .iter()
        .find(|c| ds.patients()[c.patient].id == item.case);
    match recorded {
        None => {
            return Ok(Verdict::Refused(format!(
                "{}: case {} is in {} but not among round {round}'s recorded picks; the worklist was edited, and only the picks are counted",
                file.display(),
                escaped(&item.case),
                files.package(round).join(WORKLIST).display()
            )))
        }
        Some(c) if c.slices != item.slice_list() => {
            return Ok(Verdict::Refused(format!(
                "{}: {} asks for slices {} of case {}, but round {round} picked {}; the worklist was edited, and only the picks are counted",
                file.display(),
                files.package(round).join(WORKLIST).display(),
                escaped(&item.slices),
                escaped(&item.case),
                c.slices.iter().map(|z| z.to_string()).collect::<Vec<_>>().join(" ")
            )))
        }
        Some(_) => {}
    }
    let case = match case_files(ds, &item.case) {
        Ok(c) => c,
        Err(e) => return Ok(Verdict::Refused(format!("{}: {e:#}", file.display()))),
    };
    // Read once: the bytes checked are the bytes kept (a file still being copied cannot pass
    // the checks in one state and be stored in another). No more are read than a file of the
    // image's shape can hold, and only from a regular file.
    let image_dims = reference_image(&case).and_then(|r| Ok(read_dims(&case.id, &r)?.0));
    let bytes = match image_dims
        .and_then(|dims| Ok(read_file_bytes(&case.id, file, Expect::dims(dims))?))
    {
        Ok(b) => b,
        Err(e) => return Ok(Verdict::Refused(format!("{e:#}"))),
    };
    let checksum = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
    let data = session
        .state
        .repeats
        .get(repeat)
        .context("the repeat has no split yet")?;
    let previous = data
        .annotations
        .iter()
        .position(|a| a.case == item.case && a.round == round);
    if let Some(at) = previous {
        let old = &data.annotations[at];
        if old.checksum == checksum {
            return Ok(Verdict::AlreadyCounted {
                case: item.case.clone(),
            });
        }
        if !replace {
            return Ok(Verdict::Refused(format!(
                "{}: case {} already has a segmentation for round {round} ({}, from {}); --replace replaces it",
                file.display(),
                item.case,
                files.labels_dir().join(&old.file).display(),
                old.source
            )));
        }
    }
    // Compressed or not, as it came.
    let gz = if file.to_string_lossy().ends_with(".gz") {
        ".gz"
    } else {
        ""
    };
    let dir = files.labels_dir();
    // A full disk or a folder that cannot be written: the error names the file offered and
    // where its copy was to go; the staged copy is removed, and nothing is counted.
    let not_stored = || {
        format!(
            "{}: cannot store its copy in {}; nothing was counted",
            file.display(),
            dir.display()
        )
    };
    // A refusal or a failure leaves the session as it was found: `labels/` too, when this
    // import made it.
    let made_dir = !dir.exists();
    let staged_and_checked = (|| -> Result<Result<_, String>> {
        std::fs::create_dir_all(&dir).with_context(not_stored)?;
        let staged = tempfile::Builder::new()
            .prefix(".importing.")
            .suffix(&format!(".nii{gz}"))
            .tempfile_in(&dir)
            .with_context(not_stored)?;
        std::fs::write(staged.path(), &bytes).with_context(not_stored)?;
        Ok(match check(&case, item, staged.path()) {
            Ok(checked) => Ok((staged, checked)),
            // The checks name the file offered, not the staged copy.
            Err(why) => {
                let staged_name = staged.path().display().to_string();
                Err(why.replace(&staged_name, &file.display().to_string()))
            }
        })
    })();
    // Empty by then: the staged copy is removed when it is dropped.
    let remove_made_dir = || {
        if made_dir {
            let _ = std::fs::remove_dir(&dir);
        }
    };
    let (staged, checked) = match staged_and_checked {
        Ok(Ok(passed)) => passed,
        Ok(Err(why)) => {
            remove_made_dir();
            return Ok(Verdict::Refused(why));
        }
        Err(e) => {
            remove_made_dir();
            return Err(e);
        }
    };
    let effort = effort(&files.package(round), item, &case, &checked);
    let name = format!("{}.round-{round:02}.{}.nii{gz}", item.case, &checksum[..16]);
    std::fs::File::open(staged.path())
        .and_then(|f| f.sync_all())
        .with_context(not_stored)?;
    staged.persist(dir.join(&name)).with_context(not_stored)?;
    #[cfg(debug_assertions)]
    test_pause();
    let annotation = Annotation {
        case: item.case.clone(),
        round,
        file: name,
        checksum,
        source: file.display().to_string(),
        imported: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        slices: item.slice_list(),
        effort,
    };
    let annotations = &mut session.state.repeats[repeat].annotations;
    let replaced = match previous {
        Some(at) => Some(std::mem::replace(&mut annotations[at], annotation)),
        None => {
            annotations.push(annotation);
            None
        }
    };
    if let Err(e) = session.save_repeat(repeat) {
        // Not counted: the state on disk is as before; so is the one in memory.
        let annotations = &mut session.state.repeats[repeat].annotations;
        match (previous, replaced) {
            (Some(at), Some(old)) => annotations[at] = old,
            _ => {
                annotations.pop();
            }
        }
        return Err(e);
    }
    if let Some(old) = replaced {
        let _ = std::fs::remove_file(dir.join(old.file));
    }
    Ok(Verdict::Counted {
        case: item.case.clone(),
        warnings: checked.warnings,
    })
}

/// Debug builds only: `SUGGESTIVE_TEST_IMPORT_PAUSE=MS` waits that long between storing a
/// segmentation's copy and counting it, so that the tests can kill an import right there.
#[cfg(debug_assertions)]
fn test_pause() {
    if let Some(ms) = std::env::var("SUGGESTIVE_TEST_IMPORT_PAUSE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The package's own copy of the predictions, to measure the effort against: the copy beside
/// the worklist is the annotator's to open, and an editor may save over it.
pub const KEPT_PREDICTIONS: &str = ".predictions";

/// What the annotator changed of the package's prediction, over the requested voxels (none
/// when the package had no prediction, or its kept copy is gone or of another shape).
fn effort(
    package: &Path,
    item: &WorkItem,
    case: &PatientFiles,
    checked: &Checked,
) -> Option<Effort> {
    if item.prediction.is_empty() {
        return None;
    }
    let path = package.join(KEPT_PREDICTIONS).join(&item.prediction);
    let (vol, predicted) =
        crate::data::read_labels(&case.id, &path, Expect::dims(checked.dims)).ok()?;
    if vol.dims != checked.dims {
        return None;
    }
    let plane = checked.dims[0] * checked.dims[1];
    let wanted = item.slice_list();
    let (mut both, mut pred, mut ann, mut changed, mut voxels) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for z in 0..checked.dims[2] {
        if !wanted.is_empty() && !wanted.contains(&z) {
            continue;
        }
        let range = z * plane..(z + 1) * plane;
        for (&p, &a) in predicted[range.clone()].iter().zip(&checked.labels[range]) {
            let (p, a) = (p != 0, a != 0);
            both += (p && a) as u64;
            pred += p as u64;
            ann += a as u64;
            changed += (p != a) as u64;
            voxels += 1;
        }
    }
    let dice = if pred + ann == 0 {
        1.0
    } else {
        2.0 * both as f64 / (pred + ann) as f64
    };
    Some(Effort {
        dice,
        changed_voxels: changed,
        voxels,
    })
}

/// Where a case of a worklist stands.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseState {
    Waiting,
    /// A segmentation is counted.
    Received,
    /// The last file offered was refused, and why.
    Rejected(String),
}

/// One case of a round's worklist with where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkRow {
    pub item: WorkItem,
    pub state: CaseState,
}

/// Round `round`'s worklist with each case's state: received (counted), rejected (a refused
/// file in `rejected/`, and none counted since), or waiting.
pub fn work_rows(session: &Session, repeat: usize, round: usize) -> Result<Vec<WorkRow>> {
    let files = session.files();
    let items = worklist(&files, round)?.unwrap_or_default();
    let to_come = missing(session, repeat, round, &items);
    let rejected = files.package(round).join(REJECTED);
    let mut notes: Vec<(PathBuf, String)> = std::fs::read_dir(&rejected)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| !p.to_string_lossy().ends_with(".why.txt"))
                .map(|p| {
                    let mut note = p.clone().into_os_string();
                    note.push(".why.txt");
                    let why = std::fs::read_to_string(&note).unwrap_or_default();
                    (p, why.lines().next().unwrap_or("refused").to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    notes.sort();
    Ok(items
        .iter()
        .map(|item| {
            let state = if !to_come.iter().any(|m| m.case == item.case) {
                CaseState::Received
            } else if let Some((_, why)) = notes
                .iter()
                .rev()
                .find(|(p, _)| item_for(std::slice::from_ref(item), p).is_some())
            {
                CaseState::Rejected(why.clone())
            } else {
                CaseState::Waiting
            };
            WorkRow {
                item: item.clone(),
                state,
            }
        })
        .collect())
}

/// Round `round`'s cases still without a counted segmentation.
pub fn missing<'a>(
    session: &Session,
    repeat: usize,
    round: usize,
    items: &'a [WorkItem],
) -> Vec<&'a WorkItem> {
    let have = session.state.annotations(repeat);
    items
        .iter()
        .filter(|i| !have.iter().any(|a| a.case == i.case && a.round == round))
        .collect()
}

pub use super::inbox::{take_inbox, InboxWatch};
pub use super::labels::{annotated_dataset, export_labels, labelled_dataset};
pub use super::round_cases::{recorded_cases, RecordedCase};
