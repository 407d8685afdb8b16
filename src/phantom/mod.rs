//! The phantom generator: a synthetic BraTS-layout data set, the embedded default of
//! `suggestive`. Same seed, same bytes.
//!
//! Each case has brain anatomy (CSF, grey and white matter, deep grey nuclei, ventricles), one or
//! more tumours with necrotic core, enhancing rim and edema (or a non-enhancing core for low
//! grade), sizes from small to large, a minority of hard cases (small, low-contrast, multifocal,
//! next to the ventricles), and vessel-like enhancing distractors. Sites differ in acquisition
//! (see [`site`]), so a model trained on one site loses accuracy on the other.

mod case;
mod noise;
pub mod site;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::{Array3, ShapeBuilder};
use nifti::writer::WriterOptions;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

pub use case::{CaseSpec, Hardness};
use site::Acquisition;

use crate::staged_dir::StagedDir;

/// Folder layout to write, as the BraTS releases did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum PhantomLayout {
    /// `HGG|LGG/BraTS19_<SITE>_<N>_1/…`: grade and site in the path.
    Brats2019,
    /// `BraTS20_Training_<N>/…` with grade and site only in name_mapping.csv.
    Brats2020,
    /// `BraTS-GLI-<N>-000/BraTS-GLI-<N>-000-{t2f,t1n,t1c,t2w,seg}.nii.gz`, labels 1, 2, 3; sites
    /// only in `sites.csv`.
    Brats2023,
    /// The Decathlon's Task01_BrainTumour: `dataset.json`, 4D `imagesTr/BRATS_<N>.nii.gz`,
    /// `labelsTr/` (1 edema, 2 non-enhancing, 3 enhancing), `imagesTs/` for the unlabelled cases,
    /// and the `._*` files of an archive made on a Mac; sites only in `sites.csv`.
    Msd,
}

impl PhantomLayout {
    /// Whether patient IDs carry the site (else `sites.csv` does).
    fn site_in_id(self) -> bool {
        matches!(self, PhantomLayout::Brats2019)
    }
}

#[derive(Debug, Clone)]
pub struct PhantomConfig {
    /// (site, patients) in order.
    pub sites: Vec<(String, usize)>,
    /// (x, y, z) voxels.
    pub shape: [usize; 3],
    pub seed: u64,
    pub layout: PhantomLayout,
    pub hard_fraction: f64,
    pub hgg_fraction: f64,
    /// Cases written without a segmentation, after the others (the Decathlon's `imagesTs/`).
    pub unlabelled: usize,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        PhantomConfig {
            sites: vec![("CBICA".into(), 20), ("TCIA".into(), 20)],
            shape: [240, 240, 155],
            seed: 0,
            layout: PhantomLayout::Brats2019,
            hard_fraction: 0.25,
            hgg_fraction: 0.75,
            unlabelled: 0,
        }
    }
}

/// `CBICA=20,TCIA=20` → sites.
pub fn parse_sites(s: &str) -> Result<Vec<(String, usize)>> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, n) = part
            .split_once('=')
            .with_context(|| format!("site '{part}' should look like NAME=COUNT, e.g. CBICA=20"))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("site name '{name}' must be letters and digits (it becomes part of patient IDs)");
        }
        // The loader reads the site from the ID as BraTS names it: upper-case letters, with
        // trailing digits dropped (BraTS19_TCIA01_… is TCIA). A name it would read differently
        // would merge sites that were generated apart.
        if name.ends_with(|c: char| c.is_ascii_digit()) || name.to_ascii_uppercase() != name {
            bail!(
                "site name '{name}' must be upper-case and not end in a digit (the loader reads \
                 the site from patient IDs, BraTS19_TCIA01_… as TCIA); e.g. {}",
                name.trim_end_matches(|c: char| c.is_ascii_digit())
                    .to_ascii_uppercase()
            );
        }
        let n: usize = n.trim().parse().with_context(|| {
            format!(
                "patient count '{}' of site {name} is not a number",
                n.trim()
            )
        })?;
        if out.iter().any(|(s, _)| s == name) {
            bail!("site {name} given twice");
        }
        out.push((name.to_string(), n));
    }
    if out.iter().map(|(_, n)| n).sum::<usize>() == 0 {
        bail!("no patients: give at least one site with a count above 0");
    }
    Ok(out)
}

/// `240,240,155` → shape.
pub fn parse_shape(s: &str) -> Result<[usize; 3]> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("shape '{s}' should be three numbers X,Y,Z, e.g. 240,240,155"))?;
    match v[..] {
        [x, y, z] if x >= 16 && y >= 16 && z >= 8 && x <= 1024 && y <= 1024 && z <= 1024 => {
            Ok([x, y, z])
        }
        [_, _, _] => bail!("shape {s} out of range: X and Y from 16 to 1024, Z from 8 to 1024"),
        _ => bail!("shape '{s}' should be three numbers X,Y,Z, e.g. 240,240,155"),
    }
}

/// One case's entry in phantom.json.
#[derive(Serialize)]
struct ManifestCase<'a> {
    #[serde(flatten)]
    spec: &'a CaseSpec,
    path: String,
}

#[derive(Serialize)]
struct Manifest<'a> {
    generator: &'static str,
    seed: u64,
    shape: [usize; 3],
    layout: PhantomLayout,
    sites: Vec<(&'a str, Acquisition)>,
    cases: Vec<ManifestCase<'a>>,
}

pub const MANIFEST: &str = "phantom.json";
/// `case,site` rows, written for the layouts whose IDs carry no site.
pub const SITES_FILE: &str = "sites.csv";

/// The demo phantom: CPU-sized, large enough to be interesting (40 patients, two sites).
pub fn demo_config() -> PhantomConfig {
    PhantomConfig {
        shape: [96, 96, 48],
        seed: 2020,
        ..Default::default()
    }
}

/// Draws the cases (cheap; no voxels yet).
/// Draws the cases (cheap; no voxels yet): each site's, then `cfg.unlabelled` more of the last
/// site. A case's draw depends on its number alone, so a phantom in another layout, or with
/// unlabelled cases added, has the same labelled cases.
pub fn draw_cases(cfg: &PhantomConfig) -> Vec<CaseSpec> {
    let mut cases = Vec::new();
    let mut n = 0u64;
    let last_site = cfg.sites.last().map(|(s, _)| s.clone()).unwrap_or_default();
    let extra = std::iter::once((last_site, cfg.unlabelled));
    for (site, count) in cfg.sites.iter().cloned().chain(extra) {
        for _ in 0..count {
            n += 1;
            let id = match cfg.layout {
                PhantomLayout::Brats2019 => {
                    // TCIA IDs carry a collection number, as in BraTS: BraTS19_TCIA01_…
                    let tag = if site == "TCIA" { "01" } else { "" };
                    format!("BraTS19_{site}{tag}_P{n:03}_1")
                }
                PhantomLayout::Brats2020 => format!("BraTS20_Training_{n:03}"),
                PhantomLayout::Brats2023 => format!("BraTS-GLI-{n:05}-000"),
                PhantomLayout::Msd => format!("BRATS_{n:03}"),
            };
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            rng.set_stream(n);
            cases.push(CaseSpec::draw(
                id,
                site.clone(),
                &mut rng,
                cfg.hard_fraction,
                cfg.hgg_fraction,
            ));
        }
    }
    cases
}

fn case_dir(cfg: &PhantomConfig, c: &CaseSpec) -> PathBuf {
    match cfg.layout {
        PhantomLayout::Brats2019 => PathBuf::from(c.grade).join(&c.id),
        PhantomLayout::Brats2020 | PhantomLayout::Brats2023 => PathBuf::from(&c.id),
        PhantomLayout::Msd => PathBuf::from(MSD_IMAGES),
    }
}

const MSD_IMAGES: &str = "imagesTr";
const MSD_LABELS: &str = "labelsTr";
const MSD_UNLABELLED: &str = "imagesTs";

/// The Decathlon's channel order and label names (Task01_BrainTumour's dataset.json).
const MSD_DESCRIPTION: &str = r#"{
  "name": "BRATS",
  "description": "suggestive phantom in the layout of the Medical Segmentation Decathlon's Task01_BrainTumour",
  "tensorImageSize": "4D",
  "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
  "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
}
"#;

/// BraTS 2019 labels (1 core, 2 edema, 4 enhancing) as a layout writes them.
fn layout_label(layout: PhantomLayout, label: u8) -> u8 {
    match (layout, label) {
        (PhantomLayout::Brats2023, 4) => 3,
        (PhantomLayout::Msd, 1) => 2,
        (PhantomLayout::Msd, 2) => 1,
        (PhantomLayout::Msd, 4) => 3,
        _ => label,
    }
}

/// Writes one case's images (and segmentation, when `labelled`) in the layout.
fn write_case(cfg: &PhantomConfig, out: &Path, c: &CaseSpec, labelled: bool) -> Result<()> {
    let r = case::render(c, cfg.shape, &Acquisition::for_site(&c.site));
    let [x, y, z] = cfg.shape;
    let seg: Vec<u8> = r.seg.iter().map(|&l| layout_label(cfg.layout, l)).collect();
    let seg = Array3::from_shape_vec((x, y, z).f(), seg).expect("shape matches");
    if cfg.layout == PhantomLayout::Msd {
        // One 4D file of the four channels (FLAIR, T1w, t1gd, T2w: the phantom's own order).
        let images_dir = out.join(if labelled { MSD_IMAGES } else { MSD_UNLABELLED });
        let data: Vec<i16> = r.images.concat();
        let a = ndarray::Array4::from_shape_vec((x, y, z, 4).f(), data).expect("shape matches");
        write_nifti_at(&images_dir.join(format!("{}.nii.gz", c.id)), &a)?;
        // What macOS's archiver adds beside each file: not an image.
        write_file(
            &images_dir.join(format!("._{}.nii.gz", c.id)),
            b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",
        )?;
        if labelled {
            write_nifti_at(&out.join(MSD_LABELS).join(format!("{}.nii.gz", c.id)), &seg)?;
        }
        return Ok(());
    }
    let dir = out.join(case_dir(cfg, c));
    let (sep, suffixes) = match cfg.layout {
        PhantomLayout::Brats2023 => ("-", ["t2f", "t1n", "t1c", "t2w"]),
        _ => ("_", ["flair", "t1", "t1ce", "t2"]),
    };
    for (suffix, data) in suffixes.iter().zip(r.images) {
        let a = Array3::from_shape_vec((x, y, z).f(), data).expect("shape matches");
        write_nifti_at(&dir.join(format!("{}{sep}{suffix}.nii.gz", c.id)), &a)?;
    }
    if labelled {
        write_nifti_at(&dir.join(format!("{}{sep}seg.nii.gz", c.id)), &seg)?;
    }
    Ok(())
}

/// Writes the data set into `out` (created if needed). `progress` is called after each case.
pub fn generate(
    cfg: &PhantomConfig,
    out: &Path,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<CaseSpec>> {
    // The folder itself, where it exists: a link is followed (its target is replaced, not the
    // link), and `.` gets a name.
    let canonical = out.canonicalize();
    let out = canonical.as_deref().unwrap_or(out);
    if out.exists() {
        let non_empty = fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some();
        if non_empty && !out.join(MANIFEST).exists() {
            bail!(
                "{} is not empty and holds no phantom ({MANIFEST}); choose an empty or new folder",
                out.display()
            );
        }
        let foreign = foreign_entries(out)?;
        if !foreign.is_empty() {
            bail!(
                "{} holds a phantom and other files ({}), which a new phantom would remove; move them or choose another folder",
                out.display(),
                foreign.join(", ")
            );
        }
    }
    // Written into a temporary folder beside `out` and moved into place when complete: an
    // interrupted run (Ctrl-C during the demo's first start) leaves no half data set that
    // later runs would refuse, and a new phantom replaces an old one whole (cases of the old
    // one no longer there).
    let staged =
        StagedDir::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cases = write_phantom(cfg, staged.path(), progress)?;
    staged
        .commit()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(cases)
}

/// What a phantom folder holds besides the phantom its manifest lists (none for an empty or
/// new folder).
fn foreign_entries(out: &Path) -> Result<Vec<String>> {
    let manifest = out.join(MANIFEST);
    if !manifest.exists() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: damaged", manifest.display()))?;
    let mut ours: std::collections::HashSet<String> = [
        MANIFEST,
        "name_mapping.csv",
        SITES_FILE,
        "dataset.json",
        MSD_IMAGES,
        MSD_LABELS,
        MSD_UNLABELLED,
    ]
    .map(String::from)
    .into();
    for c in v["cases"].as_array().into_iter().flatten() {
        if let Some(first) = c["path"].as_str().and_then(|p| Path::new(p).iter().next()) {
            ours.insert(first.to_string_lossy().into_owned());
        }
    }
    let mut foreign: Vec<String> = fs::read_dir(out)
        .with_context(|| format!("cannot read {}", out.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !ours.contains(n))
        .collect();
    foreign.sort();
    Ok(foreign)
}

fn write_phantom(
    cfg: &PhantomConfig,
    out: &Path,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<CaseSpec>> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cases = draw_cases(cfg);
    if cfg.unlabelled > 0 && cfg.layout != PhantomLayout::Msd {
        bail!("unlabelled cases are written only in the msd layout (its imagesTs/ folder)");
    }
    let unlabelled = cases.split_off(cases.len() - cfg.unlabelled.min(cases.len()));
    if cfg.layout == PhantomLayout::Msd {
        for d in [MSD_IMAGES, MSD_LABELS, MSD_UNLABELLED] {
            fs::create_dir_all(out.join(d))
                .with_context(|| format!("cannot create {}", out.join(d).display()))?;
        }
        write_file(&out.join("dataset.json"), MSD_DESCRIPTION.as_bytes())?;
    }
    let all: Vec<(&CaseSpec, bool)> = cases
        .iter()
        .map(|c| (c, true))
        .chain(unlabelled.iter().map(|c| (c, false)))
        .collect();
    all.par_iter()
        .try_for_each(|&(c, labelled)| -> Result<()> {
            write_case(cfg, out, c, labelled)?;
            progress();
            Ok(())
        })?;

    if !cfg.layout.site_in_id() {
        let mut csv = String::from("case,site\n");
        for c in &cases {
            csv += &format!("{},{}\n", c.id, c.site);
        }
        write_file(&out.join(SITES_FILE), csv.as_bytes())?;
    }
    let mut csv = String::from(match cfg.layout {
        PhantomLayout::Brats2020 => "Grade,BraTS_2019_subject_ID,BraTS_2020_subject_ID\n",
        _ => "Grade,BraTS_2019_subject_ID\n",
    });
    for (i, c) in cases.iter().enumerate() {
        match cfg.layout {
            PhantomLayout::Brats2019 => csv += &format!("{},{}\n", c.grade, c.id),
            PhantomLayout::Brats2020 => {
                let tag = if c.site == "TCIA" { "01" } else { "" };
                csv += &format!(
                    "{},BraTS19_{}{tag}_P{:03}_1,{}\n",
                    c.grade,
                    c.site,
                    i + 1,
                    c.id
                )
            }
            PhantomLayout::Brats2023 | PhantomLayout::Msd => {}
        }
    }
    if matches!(
        cfg.layout,
        PhantomLayout::Brats2019 | PhantomLayout::Brats2020
    ) {
        write_file(&out.join("name_mapping.csv"), csv.as_bytes())?;
    }
    let manifest = Manifest {
        generator: concat!("suggestive ", env!("CARGO_PKG_VERSION")),
        seed: cfg.seed,
        shape: cfg.shape,
        layout: cfg.layout,
        sites: cfg
            .sites
            .iter()
            .map(|(s, _)| (s.as_str(), Acquisition::for_site(s)))
            .collect(),
        cases: cases
            .iter()
            .map(|c| ManifestCase {
                spec: c,
                path: case_path(cfg, c).display().to_string(),
            })
            .collect(),
    };
    write_file(&out.join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
    Ok(cases)
}

/// Where a case is, relative to the data set's folder: its folder, or its 4D image file.
fn case_path(cfg: &PhantomConfig, c: &CaseSpec) -> PathBuf {
    match cfg.layout {
        PhantomLayout::Msd => case_dir(cfg, c).join(format!("{}.nii.gz", c.id)),
        _ => case_dir(cfg, c),
    }
}

fn write_nifti_at<A, D>(path: &Path, a: &ndarray::ArrayBase<A, D>) -> Result<()>
where
    A: ndarray::Data,
    A::Elem: nifti::DataElement + bytemuck::Pod,
    D: ndarray::Dimension + ndarray::RemoveAxis,
{
    // Plain writes: the whole folder is staged (`generate`), so no file needs its own swap.
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    WriterOptions::new(path)
        .write_nifti(a)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
