//! Loading a data set: discovery → (cache hit | parallel decode + preprocess + cache build) →
//! memory-mapped slices.

use std::path::{Path, PathBuf};
use std::time::Instant;

use half::f16;
use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;
use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use super::build::{build_cache, read_case_labels};
use super::cache::{
    self, CacheIndex, CacheStatus, PatientInfo, SkippedPatient, CACHE_FORMAT_VERSION,
};
use super::layout::{discover, DatasetLayout, PatientFiles};
use super::{DataError, Preprocessing};

/// Told after each patient a cache build has decoded: (patients done, patients in all). Called
/// from the decoding threads; the caller draws what it likes (the CLI: a progress bar).
pub type LoadProgress = std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>;

#[derive(Clone)]
pub struct LoadOptions {
    pub preprocessing: Preprocessing,
    /// Folder holding the caches of all data sets.
    pub cache_root: PathBuf,
    /// Load the good patients and list the bad ones, instead of failing on the first.
    pub skip_bad: bool,
    /// Ignore an existing cache and build it again.
    pub rebuild: bool,
    /// Told of each decoded patient while a cache is built.
    pub progress: Option<LoadProgress>,
    /// Worker threads for decoding; `None`: one per core.
    pub threads: Option<usize>,
    /// A CSV of `case ID, site` rows, for data sets whose IDs carry no site.
    pub sites: Option<PathBuf>,
    /// Whether the cache holds the data set's segmentations.
    pub segmentations: Segmentations,
}

/// Whether a load reads the data set's segmentation files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Segmentations {
    /// Every case needs one, and its whole-tumour masks go into the cache.
    #[default]
    Read,
    /// None is opened, and every case loads with empty masks, whether or not it has a file:
    /// the Decathlon's `imagesTs/` and folders of scans without labels included. For a session
    /// labelled by people, which reads the segmentations of its test cases only
    /// (`Dataset::dataset_masks`). A cache of its own: the masks differ.
    Ignore,
}

impl LoadOptions {
    pub fn new(cache_root: impl Into<PathBuf>) -> Self {
        LoadOptions {
            preprocessing: Preprocessing::default(),
            cache_root: cache_root.into(),
            skip_bad: false,
            rebuild: false,
            progress: None,
            threads: None,
            sites: None,
            segmentations: Segmentations::Read,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub status: CacheStatus,
    pub seconds: f64,
    pub cache_dir: PathBuf,
}

/// A preprocessed data set: patients × slices, each slice `channels × size × size` half floats
/// and a `size × size` whole-tumour mask, memory-mapped from the cache.
pub struct Dataset {
    index: CacheIndex,
    /// Shared: a data set with other masks (`with_masks`) maps the same images.
    images: std::sync::Arc<Mmap>,
    masks: Masks,
    cache_dir: PathBuf,
    /// Per slice of the data set: blank (see `PatientInfo::blank_slices`).
    blank: Vec<bool>,
    /// The folder's cases and files as found by this load.
    layout: DatasetLayout,
    /// Whether the masks came from the data set's segmentations (else they start empty).
    segmentations: Segmentations,
}

/// The whole-tumour masks: the cache's, mapped, or a copy in memory in which some cases hold
/// other labels than the data set's (`Dataset::with_masks`).
enum Masks {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Masks {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Masks::Mapped(m) => m,
            Masks::Owned(v) => v,
        }
    }
}

impl Dataset {
    /// Loads `root`, from the cache when it is up to date.
    pub fn load(root: &Path, opts: &LoadOptions) -> Result<(Dataset, LoadReport), DataError> {
        let start = Instant::now();
        opts.preprocessing.validate()?;
        let mut layout = discover(root)?;
        let segs = opts.segmentations;
        let cases = cases_to_load(&layout, segs)?;
        // Before the sites file: sites come from it at every load (`open`), so one cache
        // serves loads with and without it, and a changed row rebuilds nothing.
        let fingerprint = fingerprint(&cases, &opts.preprocessing, segs);
        if let Some(file) = &opts.sites {
            layout.apply_sites(file)?;
        }
        let dir = cache::cache_dir_for(
            &opts.cache_root,
            root,
            &opts.preprocessing,
            segs == Segmentations::Ignore,
        );

        let mut status = CacheStatus::Built;
        if !opts.rebuild {
            match cache::read_index(&dir) {
                Ok(Some(index)) if index.inputs_fingerprint == fingerprint => {
                    refuse_skipped(&index.skipped, opts.skip_bad)?;
                    let ds = Dataset::open(&dir, index, layout, segs)?;
                    let report = LoadReport {
                        status: CacheStatus::Hit,
                        seconds: start.elapsed().as_secs_f64(),
                        cache_dir: dir,
                    };
                    return Ok((ds, report));
                }
                Ok(Some(_)) => status = CacheStatus::Rebuilt("input files changed".into()),
                Ok(None) => {}
                Err(reason) => status = CacheStatus::Rebuilt(reason),
            }
        } else if dir.exists() {
            status = CacheStatus::Rebuilt("rebuild requested".into());
        }

        let build = || build_cache(root, &cases, opts, &dir, fingerprint.clone());
        let index = match opts.threads {
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build()
                .map_err(|e| DataError::Config(format!("cannot start {n} threads: {e}")))?
                .install(build)?,
            None => build()?,
        };
        let ds = Dataset::open(&dir, index, layout, segs)?;
        let report = LoadReport {
            status,
            seconds: start.elapsed().as_secs_f64(),
            cache_dir: dir,
        };
        Ok((ds, report))
    }

    fn open(
        dir: &Path,
        mut index: CacheIndex,
        layout: DatasetLayout,
        segmentations: Segmentations,
    ) -> Result<Dataset, DataError> {
        // Sites as this load found them (its sites file may differ from the cache build's).
        for p in &mut index.patients {
            if let Some(f) = layout.case(&p.id) {
                p.site = f.site.clone();
            }
        }
        let map = |name: &str| -> Result<Mmap, DataError> {
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(|e| DataError::cache(&path, e))?;
            // SAFETY: cache files are written once into a temporary folder and renamed into
            // place; they are never modified afterwards, only replaced by a new folder.
            unsafe { Mmap::map(&file) }.map_err(|e| DataError::cache(&path, e))
        };
        let mut blank = vec![false; index.slices];
        for p in &index.patients {
            for &s in &p.blank_slices {
                if let Some(b) = blank.get_mut(p.first_slice + s) {
                    *b = true;
                }
            }
        }
        Ok(Dataset {
            images: std::sync::Arc::new(map(cache::IMAGES_FILE)?),
            masks: Masks::Mapped(map(cache::MASKS_FILE)?),
            index,
            cache_dir: dir.to_path_buf(),
            blank,
            layout,
            segmentations,
        })
    }

    /// The cases and files of the folder, as found by this load (unlabelled cases included).
    pub fn layout(&self) -> &DatasetLayout {
        &self.layout
    }
    /// The files of a loaded patient.
    pub fn files_of(&self, id: &str) -> Option<&PatientFiles> {
        self.layout.case(id)
    }
    /// Whether the masks came from the data set's segmentations (else they start empty).
    pub fn segmentations(&self) -> Segmentations {
        self.segmentations
    }
    /// Whether a loaded patient has a segmentation file in the data set (read or not).
    pub fn has_segmentation(&self, patient: usize) -> bool {
        self.files_of(&self.index.patients[patient].id)
            .is_some_and(|f| f.seg.is_some())
    }

    /// The whole-tumour masks of a patient's segmentation file, read now and preprocessed as
    /// the cache's are: the test cases of a load that ignored segmentations.
    pub fn dataset_masks(&self, patient: usize) -> Result<Vec<u8>, DataError> {
        let info = &self.index.patients[patient];
        let files = self.files_of(&info.id).ok_or_else(|| DataError::Patient {
            patient: info.id.clone(),
            msg: "no longer in the data set folder".into(),
        })?;
        let labels = read_case_labels(files, info.dims)?;
        Ok(super::preprocess_labels(
            self.preprocessing(),
            self.geometry(),
            info.dims,
            &labels,
        ))
    }
    pub fn root(&self) -> &Path {
        &self.index.root
    }
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.index.preprocessing
    }
    pub fn patients(&self) -> &[PatientInfo] {
        &self.index.patients
    }
    pub fn skipped(&self) -> &[SkippedPatient] {
        &self.index.skipped
    }
    pub fn num_slices(&self) -> usize {
        self.index.slices
    }
    pub fn channels(&self) -> usize {
        self.index.channels
    }
    /// Side of the square slices.
    pub fn size(&self) -> usize {
        self.index.size
    }
    /// Fingerprint of the input files the cache was built from.
    pub fn fingerprint(&self) -> &str {
        &self.index.inputs_fingerprint
    }
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }
    pub fn cache_bytes(&self) -> u64 {
        (self.images.len() + self.masks.len()) as u64
    }
    /// All slices' images, `[slice][channel][row][col]`.
    pub fn images(&self) -> &[f16] {
        bytemuck::cast_slice(&self.images[..])
    }
    /// All slices' whole-tumour masks, `[slice][row][col]`.
    pub fn masks(&self) -> &[u8] {
        &self.masks[..]
    }
    /// Unmaps the pages behind `slices` from this process; they stay in the page cache, and the
    /// next read faults them back in. For data copied elsewhere (the pool uploaded to a GPU):
    /// otherwise every page read once for the upload counts as resident memory (30 GB at
    /// BraTS scale on an H200), which is what schedulers and `top` see.
    pub fn release_pages(&self, slices: std::ops::Range<usize>) {
        let image_bytes = self.index.image_elems_per_slice() * std::mem::size_of::<f16>();
        let mask_bytes = self.index.mask_elems_per_slice();
        let len = slices.end.saturating_sub(slices.start);
        // SAFETY: both maps are shared, read-only mappings of cache files; MADV_DONTNEED only
        // drops the page-table entries, and the file's contents come back on the next access.
        // Failure (e.g. a range outside the map) just leaves the pages mapped.
        unsafe {
            let _ = self.images.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                slices.start * image_bytes,
                len * image_bytes,
            );
            if let Masks::Mapped(masks) = &self.masks {
                let _ = masks.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    slices.start * mask_bytes,
                    len * mask_bytes,
                );
            }
        }
    }
    /// This data set with the masks of `patients` (indices) replaced by what `mask_of` gives
    /// for each: its preprocessed masks (`preprocess::preprocess_labels`), or `None` for
    /// background only. A session labelled by people trains on its annotators' labels, not the
    /// data set's. The masks become a copy in memory (one byte per pixel of every slice).
    pub fn with_masks(
        &self,
        patients: &[usize],
        mut mask_of: impl FnMut(usize) -> Result<Option<Vec<u8>>, DataError>,
    ) -> Result<Dataset, DataError> {
        let mut masks = self.masks.to_vec();
        let per = self.index.mask_elems_per_slice();
        for &p in patients {
            let info = &self.index.patients[p];
            let range = info.first_slice * per..(info.first_slice + info.slices) * per;
            match mask_of(p)? {
                Some(m) if m.len() == range.len() => masks[range].copy_from_slice(&m),
                Some(m) => {
                    return Err(DataError::Patient {
                        patient: info.id.clone(),
                        msg: format!(
                            "{} mask values for {} expected (a label of another geometry)",
                            m.len(),
                            range.len()
                        ),
                    })
                }
                None => masks[range].fill(0),
            }
        }
        Ok(Dataset {
            index: self.index.clone(),
            images: self.images.clone(),
            masks: Masks::Owned(masks),
            cache_dir: self.cache_dir.clone(),
            blank: self.blank.clone(),
            layout: self.layout.clone(),
            segmentations: self.segmentations,
        })
    }

    /// The in-plane geometry of the preprocessing that made the cache.
    pub fn geometry(&self) -> super::preprocess::Geometry {
        let factor = self.preprocessing().downsample;
        super::preprocess::Geometry {
            padded: self.size() * factor,
            factor,
        }
    }

    pub fn image(&self, slice: usize) -> &[f16] {
        let n = self.index.image_elems_per_slice();
        &self.images()[slice * n..(slice + 1) * n]
    }
    pub fn mask(&self, slice: usize) -> &[u8] {
        let n = self.index.mask_elems_per_slice();
        &self.masks[slice * n..(slice + 1) * n]
    }
    /// Whether a slice's image is zero in every channel (see `PatientInfo::blank_slices`).
    pub fn is_blank(&self, slice: usize) -> bool {
        self.blank.get(slice).copied().unwrap_or(false)
    }
    /// The patient a slice belongs to.
    pub fn patient_of(&self, slice: usize) -> &PatientInfo {
        &self.index.patients[self.patient_index(slice)]
    }

    /// The index (into `patients()`) of the patient a slice belongs to.
    pub fn patient_index(&self, slice: usize) -> usize {
        self.index
            .patients
            .partition_point(|p| p.first_slice + p.slices <= slice)
    }

    /// Recomputes every patient's checksum over the cached bytes (reads the whole cache).
    pub fn verify(&self) -> Result<(), DataError> {
        let (ni, nm) = (
            self.index.image_elems_per_slice() * 2,
            self.index.mask_elems_per_slice(),
        );
        self.index.patients.par_iter().try_for_each(|p| {
            let r = p.slice_range();
            let sum = checksum(&self.images[r.start * ni..r.end * ni], &self.masks[r.start * nm..r.end * nm]);
            if sum == p.checksum {
                Ok(())
            } else {
                Err(DataError::cache(
                    &self.cache_dir,
                    format!("patient {}: cached data does not match its checksum; rebuild with --rebuild-cache", p.id),
                ))
            }
        })
    }
}

/// The cases a load reads: the labelled ones, or with `Ignore` every case found.
fn cases_to_load(
    layout: &DatasetLayout,
    segs: Segmentations,
) -> Result<Vec<PatientFiles>, DataError> {
    let labelled = layout.patients.iter().filter(|p| p.seg.is_some()).count();
    match segs {
        // A folder of scans to annotate: say where it can be used rather than list every
        // missing file.
        Segmentations::Read if labelled == 0 => Err(DataError::Folder {
            path: layout.root.clone(),
            msg: format!(
                "no labelled cases, only {} without segmentation; cases without labels are \
                 loaded by a session labelled by people (experiment.labels = \"human\"), and \
                 summarised as such by `dataset --images-only`",
                layout.patients.len() + layout.unlabelled.len()
            ),
        }),
        Segmentations::Read => Ok(layout.patients.clone()),
        Segmentations::Ignore => {
            let mut all: Vec<PatientFiles> = layout
                .patients
                .iter()
                .chain(&layout.unlabelled)
                .cloned()
                .collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(all)
        }
    }
}

fn refuse_skipped(skipped: &[SkippedPatient], skip_bad: bool) -> Result<(), DataError> {
    match skipped.first() {
        Some(s) if !skip_bad => Err(DataError::Config(format!(
            "{} (and {} more bad patients; --skip-bad loads the rest)",
            s.reason,
            skipped.len() - 1
        ))),
        _ => Ok(()),
    }
}

pub(super) fn checksum(images: &[u8], masks: &[u8]) -> String {
    let mut h = Xxh3::new();
    h.update(images);
    h.update(masks);
    format!("{:016x}", h.digest())
}

/// Fingerprint of the inputs a load reads: any added, removed or rewritten file changes it.
/// A load that ignores segmentations reads none, so they do not count.
fn fingerprint(patients: &[PatientFiles], prep: &Preprocessing, segs: Segmentations) -> String {
    let mut h = Xxh3::new();
    h.update(&CACHE_FORMAT_VERSION.to_le_bytes());
    if segs == Segmentations::Ignore {
        h.update(b"segmentations ignored");
    }
    for p in patients {
        h.update(p.id.as_bytes());
        h.update(p.site.as_bytes());
        h.update(p.grade.as_deref().unwrap_or("-").as_bytes());
        let channels = prep.modalities.iter().map(|m| p.images.get(m));
        // The channel order of a 4D file comes from dataset.json, not from the file. Only 4D
        // channels add bytes: the fingerprints of 3D layouts stay what sessions recorded.
        for c in channels.clone().flatten() {
            if let Some(channel) = c.channel {
                h.update(&(channel as u64).to_le_bytes());
            }
        }
        let seg = (segs == Segmentations::Read).then_some(p.seg.as_ref());
        let files = channels.map(|c| c.map(|c| &c.path)).chain(seg);
        for f in files {
            match f.and_then(|f| std::fs::metadata(f).ok().map(|m| (f, m))) {
                Some((f, m)) => {
                    h.update(f.as_os_str().as_encoded_bytes());
                    h.update(&m.len().to_le_bytes());
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    h.update(&mtime.to_le_bytes());
                }
                None => h.update(b"<missing>"),
            }
        }
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ImageFile, LayoutKind, Modality};

    /// Sessions record this fingerprint and refuse to resume on another: the bytes it hashes
    /// for BraTS-style (3D) cases must not change. (Missing files hash as such: the value
    /// depends on nothing on disk.)
    #[test]
    fn the_fingerprint_of_3d_cases_is_stable() {
        let image = |m: &str| ImageFile {
            path: format!("/nowhere/P1/P1_{m}.nii.gz").into(),
            channel: None,
        };
        let p = PatientFiles {
            id: "P1".into(),
            dir: "/nowhere/P1".into(),
            kind: LayoutKind::Brats,
            grade: Some("HGG".into()),
            site: "CBICA".into(),
            images: Modality::ALL
                .into_iter()
                .map(|m| (m, image(m.suffix())))
                .collect(),
            channels: None,
            seg: Some("/nowhere/P1/P1_seg.nii.gz".into()),
            odd_seg_name: false,
        };
        // xxh3 of: format version 2 (u32 LE), "P1", "CBICA", "HGG", "<missing>" × 5 files.
        assert_eq!(
            fingerprint(&[p], &Preprocessing::default(), Segmentations::Read),
            "2b2c778a921cb976"
        );
    }
}
