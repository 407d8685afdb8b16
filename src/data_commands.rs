//! The data commands: `dataset`, `phantom`, `preview` and `info`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{loading_bar, stderr_is_terminal};
use suggestive::data::{
    parse_modalities, Dataset, LoadOptions, Modality, Preprocessing, Segmentations, Summary,
};
use suggestive::phantom::{self, PhantomConfig, PhantomLayout};
use suggestive::preview::{self, Protocol};
use suggestive::{paths, torch_info};

#[derive(Args)]
pub struct PrepArgs {
    /// Channels, in order: any of flair,t1,t1ce,t2.
    #[arg(long, default_value = "flair,t1,t1ce,t2")]
    pub modalities: String,
    /// In-plane down-sampling factor for CPU runs: 1, 2 or 4.
    #[arg(long, default_value_t = 1)]
    pub downsample: usize,
    /// Zero-pad slices to this square size (default: next multiple of 32; 240 → 256).
    #[arg(long)]
    pub pad_to: Option<usize>,
    /// Axial slices dropped at the bottom.
    #[arg(long, default_value_t = 2)]
    pub drop_first: usize,
    /// Axial slices dropped at the top.
    #[arg(long, default_value_t = 3)]
    pub drop_last: usize,
    /// Keep raw intensities instead of z-scoring each modality over the brain.
    #[arg(long)]
    pub no_zscore: bool,
}

impl PrepArgs {
    fn preprocessing(&self) -> Result<Preprocessing> {
        Ok(Preprocessing {
            modalities: parse_modalities(&self.modalities)?,
            drop_first: self.drop_first,
            drop_last: self.drop_last,
            pad_to: self.pad_to,
            downsample: self.downsample,
            zscore: !self.no_zscore,
        })
    }
}

#[derive(Args)]
pub struct DatasetArgs {
    /// Data set folder as downloaded: BraTS 2019-2021 ([HGG|LGG/]<ID>/<ID>_flair.nii.gz …),
    /// BraTS 2023 (<ID>/<ID>-t2f.nii.gz …) or a Decathlon task (dataset.json, imagesTr/, labelsTr/)
    pub dir: PathBuf,
    /// CSV of `case ID,site` rows (optional header `case,site`): sites for data sets whose IDs
    /// carry none (BraTS 2021, 2023, the Decathlon). Every case must be listed.
    #[arg(long, value_name = "FILE.csv")]
    pub sites: Option<PathBuf>,
    #[command(flatten)]
    pub prep: PrepArgs,
    /// Load the good patients and list the bad ones instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Build the cache again even if it is up to date.
    #[arg(long)]
    pub rebuild_cache: bool,
    /// Folder for preprocessed caches [env: SUGGESTIVE_CACHE_DIR; default ~/.cache/suggestive/datasets]
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Decoding threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Re-read the whole cache and check it against its checksums.
    #[arg(long)]
    pub verify: bool,
    /// Load as a session labelled by people does: open no segmentation file, and load the
    /// cases without one too (the Decathlon's imagesTs/, case folders of scans only). Builds
    /// that session's cache.
    #[arg(long)]
    pub images_only: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PhantomArgs {
    /// Output folder (created; an existing phantom there is overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of patients, split evenly over CBICA and TCIA (or must match --sites).
    #[arg(long)]
    pub patients: Option<usize>,
    /// Patients per site, e.g. CBICA=20,TCIA=20. Sites differ in acquisition.
    #[arg(long)]
    pub sites: Option<String>,
    /// Volume size X,Y,Z in voxels (BraTS: 240,240,155; tests: 64,64,24).
    #[arg(long, default_value = "240,240,155")]
    pub shape: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder layout: brats2019 (HGG/LGG folders, site in the ID), brats2020 (flat, site and
    /// grade only in name_mapping.csv), brats2023 (<ID>-t2f.nii.gz …, labels 1/2/3) or msd (the
    /// Decathlon's Task01: dataset.json, 4D imagesTr/, labelsTr/, imagesTs/). Layouts whose IDs
    /// carry no site get a sites.csv for `dataset --sites`.
    #[arg(long, value_enum, default_value_t = PhantomLayout::Brats2019)]
    pub layout: PhantomLayout,
    /// Cases without a segmentation, written after the others into imagesTs/ (msd only).
    #[arg(long, default_value_t = 0)]
    pub unlabelled: usize,
    /// Share of hard cases (small, low-contrast, multifocal, near the ventricles).
    #[arg(long, default_value_t = 0.25)]
    pub hard_fraction: f64,
}

#[derive(Args)]
pub struct PreviewArgs {
    /// A case folder (BraTS 2019-2021 or 2023), a Decathlon image (imagesTr/<ID>.nii.gz), or
    /// a NIfTI volume.
    pub target: PathBuf,
    /// Axial slice (default: the one with the most tumour).
    #[arg(long)]
    pub slice: Option<usize>,
    #[arg(long, default_value = "flair")]
    pub modality: String,
    /// Require the tumour outline (an error when no segmentation is found). By default it is
    /// drawn whenever a segmentation exists.
    #[arg(long, conflicts_with = "no_overlay")]
    pub overlay: bool,
    /// Do not draw the tumour outline.
    #[arg(long)]
    pub no_overlay: bool,
    /// Width in terminal cells.
    #[arg(long, default_value_t = 60)]
    pub width: u32,
    /// Terminal graphics protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Auto)]
    pub protocol: Protocol,
    /// Also save the preview as a PNG file.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

fn load_dataset(a: &DatasetArgs) -> Result<(Dataset, suggestive::data::LoadReport)> {
    let opts = LoadOptions {
        preprocessing: a.prep.preprocessing()?,
        cache_root: a
            .cache_dir
            .clone()
            .unwrap_or_else(paths::dataset_cache_root),
        skip_bad: a.skip_bad,
        rebuild: a.rebuild_cache,
        progress: if a.json { None } else { loading_bar() },
        threads: a.threads,
        sites: a.sites.clone(),
        segmentations: if a.images_only {
            Segmentations::Ignore
        } else {
            Segmentations::Read
        },
    };
    // One spelling of the folder (`data`, `./data/`, links to it): the cache's fingerprint
    // holds the input files' paths, which would otherwise differ with it and rebuild the cache
    // for nothing. (Not inside Dataset::load: sessions store the path they were created with,
    // canonical since `new` makes it so, and their recorded fingerprints must stay valid.)
    let dir = a.dir.canonicalize().unwrap_or_else(|_| a.dir.clone());
    Ok(Dataset::load(&dir, &opts)?)
}

pub fn cmd_dataset(a: DatasetArgs) -> Result<()> {
    let (ds, report) = load_dataset(&a)?;
    let verified = if a.verify {
        let t = std::time::Instant::now();
        ds.verify()?;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    let summary = Summary::new(&ds, &report, a.sites.as_deref());
    if a.json {
        let mut v = serde_json::to_value(&summary)?;
        if let Some(s) = verified {
            v["verify_seconds"] = s.into();
        }
        v["peak_rss_bytes"] = peak_rss_bytes().into();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", summary.to_text());
        if let Some(s) = verified {
            println!(
                "verify    all {} patients match their checksums ({s:.2} s)",
                ds.patients().len()
            );
        }
    }
    Ok(())
}

/// Peak resident memory of this process (VmHWM), for the benchmark.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn phantom_config(a: &PhantomArgs) -> Result<PhantomConfig> {
    let sites = match (&a.sites, a.patients) {
        (Some(s), n) => {
            let sites = phantom::parse_sites(s)?;
            let total: usize = sites.iter().map(|(_, c)| c).sum();
            if let Some(n) = n.filter(|&n| n != total) {
                bail!("--patients {n} does not match --sites {s} ({total} patients)");
            }
            sites
        }
        (None, Some(0)) => bail!("--patients must be at least 1"),
        (None, Some(n)) => vec![("CBICA".into(), n - n / 2), ("TCIA".into(), n / 2)],
        (None, None) => PhantomConfig::default().sites,
    };
    if !(0.0..=1.0).contains(&a.hard_fraction) {
        bail!(
            "--hard-fraction {} must be between 0 and 1",
            a.hard_fraction
        );
    }
    Ok(PhantomConfig {
        sites,
        shape: phantom::parse_shape(&a.shape)?,
        seed: a.seed,
        layout: a.layout,
        hard_fraction: a.hard_fraction,
        unlabelled: a.unlabelled,
        ..Default::default()
    })
}

pub fn run_phantom(cfg: &PhantomConfig, out: &Path) -> Result<()> {
    let n: usize = cfg.sites.iter().map(|(_, c)| c).sum();
    let bar = if stderr_is_terminal() {
        ProgressBar::new((n + cfg.unlabelled) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "phantom {bar:30.cyan/blue} {pos}/{len} patients  {elapsed_precise} (eta {eta})",
        )
        .expect("valid template"),
    );
    let cases = phantom::generate(cfg, out, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let hard = cases
        .iter()
        .filter(|c| c.hardness != phantom::Hardness::Normal)
        .count();
    let sites: Vec<String> = cfg.sites.iter().map(|(s, c)| format!("{s} {c}")).collect();
    let [x, y, z] = cfg.shape;
    let unlabelled = match cfg.unlabelled {
        0 => String::new(),
        u => format!(" and {u} unlabelled cases"),
    };
    eprintln!(
        "wrote {n} patients ({}; {hard} hard cases){unlabelled} of {x}×{y}×{z} to {}",
        sites.join(", "),
        out.display()
    );
    Ok(())
}

pub fn cmd_phantom(a: PhantomArgs) -> Result<()> {
    let cfg = phantom_config(&a)?;
    run_phantom(&cfg, &a.out)
}

pub fn cmd_preview(a: PreviewArgs) -> Result<()> {
    let modality = Modality::parse(&a.modality).with_context(|| {
        format!(
            "unknown modality '{}' (flair, t1, t1ce, t2, or t2f, t1n, t1c, t2w)",
            a.modality
        )
    })?;
    let src = preview::load(&a.target, modality)?;
    if a.overlay && src.labels.is_none() {
        bail!(
            "{}: --overlay asked for, but no segmentation was found for it",
            a.target.display()
        );
    }
    let nz = src.image.dims[2];
    let z = match a.slice {
        Some(z) if z >= nz => bail!(
            "--slice {z} is out of range: the volume has {nz} slices (0..{})",
            nz - 1
        ),
        Some(z) => z,
        None => preview::default_slice(src.image.dims, src.labels.as_deref()),
    };
    let labels = if a.no_overlay {
        None
    } else {
        src.labels.as_deref()
    };
    let img = preview::render_slice(&src.image, labels, z);
    if let Some(path) = &a.save {
        img.save(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let plane = src.image.dims[0] * src.image.dims[1];
    let tumour = src.labels.as_ref().map(|l| {
        l[z * plane..(z + 1) * plane]
            .iter()
            .filter(|&&v| v != 0)
            .count()
    });
    println!(
        "{}  slice {z} of {nz}{}",
        src.name,
        tumour
            .map(|t| format!(", {t} tumour voxels"))
            .unwrap_or_default()
    );
    preview::print(&img, a.width, a.protocol)
}

pub fn cmd_info(json: bool) -> Result<()> {
    let t = torch_info::torch_info();
    let cache = paths::dataset_cache_root();
    let data = paths::data_dir();
    if json {
        let mut v = serde_json::to_value(&t)?;
        v["version"] = env!("CARGO_PKG_VERSION").into();
        v["dataset_cache"] = cache.display().to_string().into();
        v["data_dir"] = data.display().to_string().into();
        println!("{v}");
    } else {
        println!("suggestive {}", env!("CARGO_PKG_VERSION"));
        println!("libtorch   {}", t.libtorch_lib);
        println!(
            "cuda       {}",
            if t.cuda_available {
                format!("{} device(s), cuDNN {}", t.cuda_devices, t.cudnn_available)
            } else {
                "not available (CPU only)".into()
            }
        );
        println!("threads    {}", t.threads);
        println!("allocator  {}", t.host_allocator);
        println!("smoke test {}", if t.smoke_test { "ok" } else { "FAILED" });
        println!("caches     {}", cache.display());
        println!("data       {}", data.display());
    }
    if !t.smoke_test {
        bail!("libtorch computed a wrong matrix product");
    }
    Ok(())
}
