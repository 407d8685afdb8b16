//! The `suggestive` command line. Each subcommand is a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use suggestive::data::{parse_modalities, Dataset, LoadOptions, Modality, Preprocessing, Summary};
use suggestive::phantom::{self, PhantomConfig, PhantomLayout};
use suggestive::preview::{self, Protocol};
use suggestive::session::events::Event;
use suggestive::session::run::{Control, Outcome, Runner};
use suggestive::session::{self, Session};
use suggestive::{paths, torch_info};

#[derive(Parser)]
#[command(
    name = "suggestive",
    version,
    about = "Gradient-guided suggestive annotation for brain-tumour MRI segmentation",
    long_about = "Gradient-guided suggestive annotation for brain-tumour MRI segmentation.\n\n\
        Reads BraTS-layout NIfTI folders, generates a synthetic BraTS-like phantom (the embedded \
        default data), and previews slices in the terminal."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a BraTS folder (through the preprocessed cache) and print a summary.
    Dataset(DatasetArgs),
    /// Write a synthetic BraTS-layout data set (four modalities, segmentation, name_mapping.csv).
    Phantom(PhantomArgs),
    /// Print one slice of a volume inline in the terminal, with the tumour outline.
    Preview(PreviewArgs),
    /// Show the libtorch this binary runs on (CUDA, cuDNN, threads) and where data is kept.
    Info {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a session from a preset (demo, brats-patient, brats-image, brats-transfer-patient,
    /// brats-transfer-image, or a path to a session.toml).
    New(NewArgs),
    /// Run or resume a session headless; Ctrl-C stops at the next safe point.
    Run(RunArgs),
    /// Where a session stands, per arm and round.
    Status(StatusArgs),
    /// Results as CSV and JSON, and a plot of test Dice against the annotation budget.
    Report(ReportArgs),
    /// The suggested samples (patient, slice, context slices, distance, angle) as CSV or JSON.
    Export(ExportArgs),
    /// The interactive interface: a session browser, or SESSION's live dashboard.
    Tui(TuiArgs),
    /// The demo on the embedded default data: generates the phantom if missing, creates (or
    /// reopens) the `demo` session and opens it in the TUI (`--headless`: runs it and writes its
    /// report).
    Demo {
        /// Run and report without the interactive interface.
        #[arg(long)]
        headless: bool,
        #[command(flatten)]
        ui: UiArgs,
        #[command(flatten)]
        dirs: SessionsDir,
    },
}

#[derive(Args)]
struct SessionsDir {
    /// Folder of named sessions [env: SUGGESTIVE_SESSIONS_DIR; default ~/.local/share/suggestive/sessions]
    #[arg(long, global = true)]
    sessions_dir: Option<PathBuf>,
}

impl SessionsDir {
    fn dir(&self) -> PathBuf {
        self.sessions_dir
            .clone()
            .unwrap_or_else(session::default_sessions_dir)
    }

    fn resolve(&self, session: &str) -> PathBuf {
        session::resolve(session, &self.dir())
    }
}

#[derive(Args)]
struct NewArgs {
    /// Session name (a folder in the sessions folder) or a path.
    name: String,
    #[arg(long, default_value = "demo")]
    preset: String,
    /// The BraTS folder (required by the brats-* presets).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Override a setting, e.g. --set experiment.repeats=3 --set unet.norm=instance
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    dirs: SessionsDir,
}

#[derive(Args)]
struct RunArgs {
    /// Session name or path.
    session: String,
    /// One JSON event per line on stdout instead of progress output.
    #[arg(long)]
    jsonl: bool,
    /// cpu, cuda, cuda:N or auto; overrides the session's experiment.device for this run.
    #[arg(long, conflicts_with = "devices")]
    device: Option<String>,
    /// Several devices, e.g. cuda:0,cuda:1: the arms of each round train concurrently, one
    /// device per arm (arms beyond the device count share). The shared steps run on the first.
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    devices: Vec<String>,
    #[command(flatten)]
    dirs: SessionsDir,
}

#[derive(Args)]
struct StatusArgs {
    session: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dirs: SessionsDir,
}

#[derive(Args)]
struct UiArgs {
    /// Colour theme: dark, light, high-contrast, colorblind, a user theme in
    /// ~/.config/suggestive/themes, or a TOML file.
    #[arg(long, default_value = "dark")]
    theme: String,
    /// How images are drawn: auto asks the terminal (kitty, sixel, iTerm2), else half-blocks.
    #[arg(long, value_enum, default_value_t = suggestive::tui::ImageProtocol::Auto)]
    images: suggestive::tui::ImageProtocol,
    /// cpu, cuda, cuda:N or auto; overrides the session's device.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args)]
struct TuiArgs {
    /// Session name or path (without: the session browser).
    session: Option<String>,
    #[command(flatten)]
    ui: UiArgs,
    #[command(flatten)]
    dirs: SessionsDir,
}

#[derive(Args)]
struct ReportArgs {
    session: String,
    /// Output folder (default: SESSION/report).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    dirs: SessionsDir,
}

#[derive(Args)]
struct ExportArgs {
    session: String,
    #[arg(long, value_enum)]
    arm: Option<session::config::Arm>,
    /// Only this round (1-based).
    #[arg(long)]
    round: Option<usize>,
    /// FILE.csv or FILE.json
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    dirs: SessionsDir,
}

#[derive(Args)]
struct PrepArgs {
    /// Channels, in order: any of flair,t1,t1ce,t2.
    #[arg(long, default_value = "flair,t1,t1ce,t2")]
    modalities: String,
    /// In-plane down-sampling factor for CPU runs: 1, 2 or 4.
    #[arg(long, default_value_t = 1)]
    downsample: usize,
    /// Zero-pad slices to this square size (default: next multiple of 32; 240 → 256).
    #[arg(long)]
    pad_to: Option<usize>,
    /// Axial slices dropped at the bottom.
    #[arg(long, default_value_t = 2)]
    drop_first: usize,
    /// Axial slices dropped at the top.
    #[arg(long, default_value_t = 3)]
    drop_last: usize,
    /// Keep raw intensities instead of z-scoring each modality over the brain.
    #[arg(long)]
    no_zscore: bool,
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
struct DatasetArgs {
    /// Data set folder as downloaded: BraTS 2019-2021 ([HGG|LGG/]<ID>/<ID>_flair.nii.gz …),
    /// BraTS 2023+ (<ID>/<ID>-t2f.nii.gz …) or a Decathlon task (dataset.json, imagesTr/, labelsTr/)
    dir: PathBuf,
    /// CSV of `case ID,site` rows (optional header `case,site`): sites for data sets whose IDs
    /// carry none (BraTS 2021, 2023, the Decathlon). Every case must be listed.
    #[arg(long, value_name = "FILE.csv")]
    sites: Option<PathBuf>,
    #[command(flatten)]
    prep: PrepArgs,
    /// Load the good patients and list the bad ones instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Build the cache again even if it is up to date.
    #[arg(long)]
    rebuild_cache: bool,
    /// Folder for preprocessed caches [env: SUGGESTIVE_CACHE_DIR; default ~/.cache/suggestive/datasets]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Decoding threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Re-read the whole cache and check it against its checksums.
    #[arg(long)]
    verify: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PhantomArgs {
    /// Output folder (created; an existing phantom there is overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Number of patients, split evenly over CBICA and TCIA (or must match --sites).
    #[arg(long)]
    patients: Option<usize>,
    /// Patients per site, e.g. CBICA=20,TCIA=20. Sites differ in acquisition.
    #[arg(long)]
    sites: Option<String>,
    /// Volume size X,Y,Z in voxels (BraTS: 240,240,155; tests: 64,64,24).
    #[arg(long, default_value = "240,240,155")]
    shape: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder layout: brats2019 (HGG/LGG folders, site in the ID), brats2020 (flat, site and
    /// grade only in name_mapping.csv), brats2023 (<ID>-t2f.nii.gz …, labels 1/2/3) or msd (the
    /// Decathlon's Task01: dataset.json, 4D imagesTr/, labelsTr/, imagesTs/). Layouts whose IDs
    /// carry no site get a sites.csv for `dataset --sites`.
    #[arg(long, value_enum, default_value_t = PhantomLayout::Brats2019)]
    layout: PhantomLayout,
    /// Cases without a segmentation, written after the others into imagesTs/ (msd only).
    #[arg(long, default_value_t = 0)]
    unlabelled: usize,
    /// Share of hard cases (small, low-contrast, multifocal, near the ventricles).
    #[arg(long, default_value_t = 0.25)]
    hard_fraction: f64,
}

#[derive(Args)]
struct PreviewArgs {
    /// A case folder (BraTS 2019-2021 or 2023+), a Decathlon image (imagesTr/<ID>.nii.gz), or
    /// a NIfTI volume.
    target: PathBuf,
    /// Axial slice (default: the one with the most tumour).
    #[arg(long)]
    slice: Option<usize>,
    #[arg(long, default_value = "flair")]
    modality: String,
    /// Require the tumour outline (an error when no segmentation is found). By default it is
    /// drawn whenever a segmentation exists.
    #[arg(long, conflicts_with = "no_overlay")]
    overlay: bool,
    /// Do not draw the tumour outline.
    #[arg(long)]
    no_overlay: bool,
    /// Width in terminal cells.
    #[arg(long, default_value_t = 60)]
    width: u32,
    /// Terminal graphics protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Auto)]
    protocol: Protocol,
    /// Also save the preview as a PNG file.
    #[arg(long)]
    save: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Before any thread allocates: libtorch's CPU tensors reuse freed heap blocks instead of
    // faulting fresh pages in at every step (engine::host_memory).
    suggestive::engine::host_memory::keep_freed_blocks();
    let cli = Cli::parse();
    // Output into a closed pipe (`suggestive status S | head -3`) ends a reporting command
    // quietly, as it does other command-line tools, instead of a panic in println!. Not a
    // run, the TUI or the demo: `run --jsonl | head` must not end the training (their writes
    // to a closed pipe fail and are ignored).
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Tui(_) | Command::Demo { .. }
    ) {
        // SAFETY: called before any thread starts; restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Dataset(a) => cmd_dataset(a),
        Command::Phantom(a) => cmd_phantom(a),
        Command::Preview(a) => cmd_preview(a),
        Command::Info { json } => cmd_info(json),
        Command::New(a) => cmd_new(a),
        Command::Run(a) => cmd_run(a),
        Command::Status(a) => cmd_status(a),
        Command::Report(a) => cmd_report(a),
        Command::Export(a) => cmd_export(a),
        Command::Tui(a) => cmd_tui(a),
        Command::Demo { headless, ui, dirs } => cmd_demo(headless, ui, dirs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A progress bar on stderr for a cache build, when stderr is a terminal.
fn loading_bar() -> Option<suggestive::data::LoadProgress> {
    if !stderr_is_terminal() {
        return None;
    }
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(
            "loading {bar:30.cyan/blue} {pos}/{len} patients  {elapsed_precise} (eta {eta})",
        )
        .expect("valid template"),
    );
    Some(std::sync::Arc::new(move |done, total| {
        if bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total as u64);
        }
        bar.set_position(done as u64);
        if done == total {
            bar.finish_and_clear();
        }
    }))
}

fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
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
    };
    // One spelling of the folder (`data`, `./data/`, links to it): the cache's fingerprint
    // holds the input files' paths, which would otherwise differ with it and rebuild the cache
    // for nothing. (Not inside Dataset::load: sessions store the path they were created with,
    // canonical since `new` makes it so, and their recorded fingerprints must stay valid.)
    let dir = a.dir.canonicalize().unwrap_or_else(|_| a.dir.clone());
    Ok(Dataset::load(&dir, &opts)?)
}

fn cmd_dataset(a: DatasetArgs) -> Result<()> {
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

fn run_phantom(cfg: &PhantomConfig, out: &Path) -> Result<()> {
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

fn cmd_phantom(a: PhantomArgs) -> Result<()> {
    let cfg = phantom_config(&a)?;
    run_phantom(&cfg, &a.out)
}

fn cmd_preview(a: PreviewArgs) -> Result<()> {
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

fn cmd_info(json: bool) -> Result<()> {
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

fn cmd_tui(a: TuiArgs) -> Result<()> {
    let sessions_dir = a
        .dirs
        .sessions_dir
        .clone()
        .unwrap_or_else(session::default_sessions_dir);
    let session = a.session.as_deref().map(|s| a.dirs.resolve(s));
    if let Some(s) = &session {
        Session::open(s)?; // a clear error before the terminal is taken over
    }
    suggestive::tui::run(suggestive::tui::TuiOptions {
        session,
        sessions_dir,
        cache_root: paths::dataset_cache_root(),
        theme: a.ui.theme,
        images: a.ui.images,
        device: a.ui.device,
    })
}

fn cmd_demo(headless: bool, ui: UiArgs, dirs: SessionsDir) -> Result<()> {
    let data = paths::data_dir().join("demo-phantom");
    if !data.join(phantom::MANIFEST).exists() {
        eprintln!("generating the demo phantom in {}", data.display());
        run_phantom(&phantom::demo_config(), &data)?;
    }
    // Always the sessions folder's: a folder called demo where the command runs is not it.
    let dir = dirs.dir().join("demo");
    if !dir.exists() {
        let s = Session::create(&dir, session::preset("demo")?)?;
        println!("created session {} at {}", s.name(), dir.display());
    }
    if !headless {
        return cmd_tui(TuiArgs {
            session: Some(dir.display().to_string()),
            ui,
            dirs,
        });
    }
    cmd_run(RunArgs {
        session: dir.display().to_string(),
        jsonl: false,
        device: ui.device,
        devices: Vec::new(),
        dirs: SessionsDir { sessions_dir: None },
    })?;
    cmd_report(ReportArgs {
        session: dir.display().to_string(),
        out: None,
        dirs: SessionsDir { sessions_dir: None },
    })
}

fn cmd_new(a: NewArgs) -> Result<()> {
    let new = session::NewSession {
        preset: &a.preset,
        sets: &a.sets,
        dataset: a.dataset.as_deref(),
    };
    let dir = a.dirs.resolve(&a.name);
    let s = new.create(&dir)?;
    let steps = session::plan::plan(&s.config).len();
    println!(
        "created session {} ({steps} steps) at {}",
        s.name(),
        dir.display()
    );
    println!("run it with: suggestive run {}", dir.display());
    Ok(())
}

/// Human-readable progress for a headless run: a bar per training step on a terminal, plain
/// lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    terminal: bool,
}

/// A line of a run's progress on stdout; a failed write (stdout closed, as by `| head`) is
/// ignored: the run goes on.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

impl Progress {
    fn on(&mut self, ev: &Event) {
        match ev {
            Event::Started { session, device, steps_done, steps_total, .. } => {
                say!("session {session} on {device}: {steps_done}/{steps_total} steps done");
            }
            Event::StepStarted { index, total, description, .. } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                say!("[{}/{total}] {description}", index + 1);
            }
            Event::EpochDone { epoch, epochs, loss, .. } => {
                if self.terminal {
                    let b = self.bar.get_or_insert_with(|| {
                        let b = ProgressBar::new(*epochs as u64);
                        b.set_style(ProgressStyle::with_template("    epochs {bar:30.cyan/blue} {pos}/{len}  {msg}  (eta {eta})").expect("valid template"));
                        b
                    });
                    b.set_position(*epoch as u64);
                    b.set_message(format!("loss {loss:.4}"));
                } else {
                    say!("    epoch {epoch}/{epochs} loss {loss:.4}");
                }
            }
            Event::PicksMade { arm, round, picks, fallbacks, tumour_picks, .. } => {
                let names: Vec<String> = picks.iter().map(|p| match p.slice {
                    Some(s) => format!("{}#{s}", p.patient),
                    None => p.patient.clone(),
                }).collect();
                say!("    {arm} round {round}: {} ({} with tumour, {fallbacks} fallbacks)", names.join(", "), tumour_picks);
            }
            Event::Evaluated { arm, round, annotated, dice_mean, dice_sd, collapsed, .. } => {
                say!("    {arm} round {round}: {annotated} annotated, test Dice {dice_mean:.3} ± {dice_sd:.3}{}", if *collapsed { " (collapsed: predicts no tumour)" } else { "" });
            }
            Event::Stopped { steps_done, steps_total } => say!("stopped at a safe point: {steps_done}/{steps_total} steps done; run again to resume"),
            Event::Finished { steps_total } => say!("finished: {steps_total} steps"),
            Event::Error { message } => eprintln!("error in the run: {message}"),
            // Timing for the report; the step's own lines say enough on the terminal.
            Event::StepDone { .. } => {}
        }
    }
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    let terminal = stderr_is_terminal() && !a.jsonl;
    let device = a
        .device
        .as_deref()
        .or(a.devices.first().map(String::as_str));
    let mut runner = Runner::open(s, loading_bar(), &paths::dataset_cache_root(), device)?;
    if a.devices.len() > 1 {
        let devices = a
            .devices
            .iter()
            .map(|d| suggestive::engine::device::parse_device(d))
            .collect::<Result<Vec<_>>>()?;
        runner.set_lanes(devices)?;
    }
    let control = Control::default();
    signal_hook::flag::register(signal_hook::consts::SIGINT, control.stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, control.stop.clone())?;
    let outcome = if a.jsonl {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        runner.run(&control, &mut |ev| {
            if let Ok(line) = serde_json::to_string(ev) {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        })?
    } else {
        let mut p = Progress {
            bar: None,
            terminal,
        };
        runner.run(&control, &mut |ev| p.on(ev))?
    };
    if outcome == Outcome::Stopped {
        // `exit` runs no destructors: let go of the session's lock first.
        drop(runner);
        std::process::exit(130);
    }
    Ok(())
}

fn cmd_status(a: StatusArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    let plan = session::plan::plan(&s.config);
    let (state, holder) = s.status();
    if a.json {
        let v = serde_json::json!({
            "session": s.name(),
            "state": state,
            "steps_done": s.state.done,
            "steps_total": plan.len(),
            "next_step": plan.get(s.state.done).map(|st| st.describe()),
            "partial_epochs": s.state.partial_epochs,
            "device": s.state.device,
            "results": s.state.results,
            "picks": s.state.picks,
        });
        println!("{v}");
        return Ok(());
    }
    let e = &s.config.experiment;
    println!(
        "session   {} ({state}{})",
        s.name(),
        holder.map(|p| format!(", pid {p}")).unwrap_or_default()
    );
    println!(
        "setting   {} / {} / {}, arms {}, {} repeat(s)",
        e.scenario,
        e.granularity,
        e.protocol,
        e.arms
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(","),
        e.repeats
    );
    println!(
        "progress  {}/{} steps{}",
        s.state.done,
        plan.len(),
        plan.get(s.state.done)
            .map(|st| format!(
                "; next: {}{}",
                st.describe(),
                if s.state.partial_epochs > 0 {
                    format!(" (epoch {} done)", s.state.partial_epochs)
                } else {
                    String::new()
                }
            ))
            .unwrap_or_default()
    );
    if let Some(d) = &s.state.device {
        println!("device    {d}");
    }
    if !s.state.results.is_empty() {
        println!(
            "\n{:>6} {:>5} {:>9} {:>5} {:>9} {:>7}  test Dice",
            "repeat", "stage", "arm", "round", "annotated", "viewed"
        );
        for r in &s.state.results {
            println!(
                "{:>6} {:>5} {:>9} {:>5} {:>9} {:>7}  {:.3} ± {:.3}{}",
                r.repeat + 1,
                r.stage + 1,
                r.arm.name(),
                r.round,
                r.annotated,
                r.viewed,
                r.dice_mean,
                r.dice_sd,
                if r.collapsed { " collapsed" } else { "" }
            );
        }
    }
    Ok(())
}

fn cmd_report(a: ReportArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    if s.state.results.is_empty() {
        bail!("session {} has no results yet; run it first", s.name());
    }
    let report =
        session::report::Report::new(&s.config, &s.state).with_timings(&dir.join("events.jsonl"));
    let out = a.out.unwrap_or_else(|| dir.join("report"));
    let files = report.write(&s.config, &out)?;
    print!("{}", report.markdown());
    if !report.selection.is_empty() {
        print!("\n{}", report.selection_text());
    }
    if !report.timings.is_empty() {
        print!("\n{}", report.timings_text());
    }
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    let ds = s.load_dataset(None, &paths::dataset_cache_root())?;
    let rows = session::export::rows(&s, &ds, a.arm, a.round);
    if rows.is_empty() {
        bail!(
            "session {} has no picks{}",
            s.name(),
            if a.arm.is_some() || a.round.is_some() {
                " matching --arm/--round"
            } else {
                " yet"
            }
        );
    }
    session::export::write(&rows, &a.out)?;
    println!("wrote {} picks to {}", rows.len(), a.out.display());
    Ok(())
}
