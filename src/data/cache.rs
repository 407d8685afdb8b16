//! The preprocessed cache: one folder per (data set, preprocessing), holding
//! `images.f16` (`[slice][channel][row][col]`, little-endian half floats), `masks.u8`
//! (`[slice][row][col]`) and `index.json`. Both binary files are memory-mapped on load.
//!
//! A cache is built in a temporary sibling folder and renamed into place, so a crash or a bad
//! input never leaves a half-written cache behind. The index records a fingerprint of the input
//! files (path, size, modification time): a changed input invalidates the cache.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::preprocess::PatientStats;
use super::{DataError, Preprocessing};
use crate::staged_dir::StagedDir;

/// One loaded patient, as recorded in the cache index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientInfo {
    pub id: String,
    pub site: String,
    pub grade: Option<String>,
    /// Index of this patient's first slice in the data set.
    pub first_slice: usize,
    pub slices: usize,
    /// Original (x, y, z) size and voxel size in mm.
    pub dims: [usize; 3],
    pub voxel_mm: [f32; 3],
    pub stats: PatientStats,
    /// xxh3 of this patient's cached image and mask bytes, for `--verify`.
    pub checksum: String,
    /// Slices (offsets within this patient) whose image is zero in every channel: outside the
    /// head. A network gives all of them the same output, so evaluation computes it once.
    pub blank_slices: Vec<usize>,
}

impl PatientInfo {
    pub fn slice_range(&self) -> std::ops::Range<usize> {
        self.first_slice..self.first_slice + self.slices
    }
    /// Whole-tumour volume in millilitres.
    pub fn tumour_ml(&self) -> f64 {
        let v: f32 = self.voxel_mm.iter().product();
        self.stats.tumour_voxels as f64 * v as f64 / 1000.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedPatient {
    pub id: String,
    pub reason: String,
}

/// Bumped whenever the layout of the cache files changes; older caches are rebuilt.
/// 2: patients record their blank slices.
pub const CACHE_FORMAT_VERSION: u32 = 2;

pub const IMAGES_FILE: &str = "images.f16";
pub const MASKS_FILE: &str = "masks.u8";
pub const INDEX_FILE: &str = "index.json";

/// How a load met its cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum CacheStatus {
    /// Read from an up-to-date cache.
    Hit,
    /// No cache existed; built one.
    Built,
    /// A cache existed but was stale or damaged (the reason); rebuilt.
    Rebuilt(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheIndex {
    pub format_version: u32,
    pub root: PathBuf,
    pub preprocessing: Preprocessing,
    pub inputs_fingerprint: String,
    pub channels: usize,
    /// Side of the square slices.
    pub size: usize,
    pub slices: usize,
    pub patients: Vec<PatientInfo>,
    pub skipped: Vec<SkippedPatient>,
}

impl CacheIndex {
    pub fn image_elems_per_slice(&self) -> usize {
        self.channels * self.size * self.size
    }
    pub fn mask_elems_per_slice(&self) -> usize {
        self.size * self.size
    }
}

/// The folder for a data set + preprocessing under `cache_root`.
/// `images_only`: a cache without the data set's segmentations (`Segmentations::Ignore`).
pub fn cache_dir_for(
    cache_root: &Path,
    root: &Path,
    prep: &Preprocessing,
    images_only: bool,
) -> PathBuf {
    let canon = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut key = format!(
        "{}\n{}",
        canon.display(),
        serde_json::to_string(prep).expect("preprocessing serialises")
    );
    if images_only {
        key.push_str("\nimages only");
    }
    let name: String = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    cache_root.join(format!(
        "{name}-{:016x}",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    ))
}

/// Reads and checks an existing cache's index. `Ok(None)`: there is none.
/// `Err(reason)`: there is one, but it cannot be used (the reason says why).
pub fn read_index(dir: &Path) -> Result<Option<CacheIndex>, String> {
    let path = dir.join(INDEX_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    // The version first: an older format's index may lack fields this one has, and should
    // say so rather than look damaged.
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let damaged = |e: serde_json::Error| format!("damaged index ({e})");
    let version = serde_json::from_str::<Version>(&text).map_err(damaged)?;
    if version.format_version != CACHE_FORMAT_VERSION {
        return Err(format!(
            "cache format {} (this version writes {CACHE_FORMAT_VERSION})",
            version.format_version
        ));
    }
    let index: CacheIndex = serde_json::from_str(&text).map_err(damaged)?;
    let want = [
        (
            IMAGES_FILE,
            index.slices * index.image_elems_per_slice() * 2,
        ),
        (MASKS_FILE, index.slices * index.mask_elems_per_slice()),
    ];
    for (file, bytes) in want {
        let len = fs::metadata(dir.join(file)).map(|m| m.len()).unwrap_or(0);
        if len != bytes as u64 {
            return Err(format!("{file} has {len} bytes, {bytes} expected"));
        }
    }
    Ok(Some(index))
}

/// A cache under construction, in a temporary folder next to its final place.
pub struct CacheBuilder {
    dir: StagedDir,
    pub images: File,
    pub masks: File,
}

impl CacheBuilder {
    pub fn create(dest: &Path) -> Result<Self, DataError> {
        let dir = StagedDir::create(dest).map_err(|e| DataError::cache(dest, e))?;
        let tmp = dir.path().to_path_buf();
        let open = |name: &str| {
            File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(tmp.join(name))
                .map_err(|e| DataError::cache(tmp.join(name), e))
        };
        Ok(CacheBuilder {
            images: open(IMAGES_FILE)?,
            masks: open(MASKS_FILE)?,
            dir,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `images` and `masks` at slice offset `first_slice`.
    pub fn write_at(
        &self,
        index_shape: (usize, usize),
        first_slice: usize,
        images: &[u8],
        masks: &[u8],
    ) -> std::io::Result<()> {
        let (img_elems, mask_elems) = index_shape;
        self.images
            .write_all_at(images, (first_slice * img_elems * 2) as u64)?;
        self.masks
            .write_all_at(masks, (first_slice * mask_elems) as u64)
    }

    /// Moves slices `[from, from + n)` down to `to` (used when a patient failed mid-load and was
    /// skipped, to keep the files contiguous).
    pub fn move_slices(
        &self,
        index_shape: (usize, usize),
        from: usize,
        to: usize,
        n: usize,
    ) -> std::io::Result<()> {
        for (file, elem_bytes) in [
            (&self.images, index_shape.0 * 2),
            (&self.masks, index_shape.1),
        ] {
            let mut buf = vec![0u8; elem_bytes];
            for s in 0..n {
                file.read_exact_at(&mut buf, ((from + s) * elem_bytes) as u64)?;
                file.write_all_at(&buf, ((to + s) * elem_bytes) as u64)?;
            }
        }
        Ok(())
    }

    /// Sizes the files, syncs everything, writes the index and renames the folder into place.
    pub fn finish(self, index: &CacheIndex) -> Result<PathBuf, DataError> {
        let tmp = self.dir.path().to_path_buf();
        let err = |e: std::io::Error| DataError::cache(&tmp, e);
        self.images
            .set_len((index.slices * index.image_elems_per_slice() * 2) as u64)
            .map_err(err)?;
        self.masks
            .set_len((index.slices * index.mask_elems_per_slice()) as u64)
            .map_err(err)?;
        self.images.sync_all().map_err(err)?;
        self.masks.sync_all().map_err(err)?;
        let mut f = File::create(tmp.join(INDEX_FILE)).map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(index).expect("index serialises"))
            .map_err(err)?;
        f.sync_all().map_err(err)?;
        File::open(&tmp).and_then(|d| d.sync_all()).map_err(err)?;
        self.dir.commit().map_err(err)
    }
}
