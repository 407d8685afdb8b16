//! The session commands: `new`, `run`, `status`, `report`, `export`, `tui` and `demo`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{loading_bar, run_phantom, stderr_is_terminal};
use suggestive::session::events::Event;
use suggestive::session::run::{Control, Outcome, Runner};
use suggestive::session::{self, Session};
use suggestive::{paths, phantom};

#[derive(Args)]
pub struct SessionsDir {
    /// Folder of named sessions [env: SUGGESTIVE_SESSIONS_DIR; default ~/.local/share/suggestive/sessions]
    #[arg(long, global = true)]
    pub sessions_dir: Option<PathBuf>,
}

impl SessionsDir {
    fn dir(&self) -> PathBuf {
        self.sessions_dir
            .clone()
            .unwrap_or_else(session::default_sessions_dir)
    }

    pub fn resolve(&self, session: &str) -> PathBuf {
        session::resolve(session, &self.dir())
    }
}

#[derive(Args)]
pub struct NewArgs {
    /// Session name (a folder in the sessions folder) or a path.
    pub name: String,
    #[arg(long, default_value = "demo")]
    pub preset: String,
    /// The BraTS folder (required by the brats-* presets).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Override a setting, e.g. --set experiment.repeats=3 --set unet.norm=instance
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

#[derive(Args)]
pub struct RunArgs {
    /// Session name or path.
    pub session: String,
    /// One JSON event per line on stdout instead of progress output.
    #[arg(long)]
    pub jsonl: bool,
    /// cpu, cuda, cuda:N or auto; overrides the session's experiment.device for this run.
    #[arg(long, conflicts_with = "devices")]
    pub device: Option<String>,
    /// Several devices, e.g. cuda:0,cuda:1: the arms of each round train concurrently, one
    /// device per arm (arms beyond the device count share). The shared steps run on the first.
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    pub devices: Vec<String>,
    /// Only these repeats (from 1), e.g. 3,4 or 1-5: processes that run different repeats of
    /// one session run side by side (each repeat has its own files and lock).
    #[arg(long, value_name = "N,...")]
    pub repeats: Option<String>,
    /// Labelled by people: when a round waits for annotations, watch its inbox and go on once
    /// they are all in (without it the run ends with exit status 3).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

/// `3,4` or `1-5,8` (repeats from 1) → 0-based repeat indices.
fn parse_repeats(list: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |t: &str| -> Result<usize> {
            match t.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n - 1),
                _ => bail!("--repeats {list}: '{t}' is not a repeat number (repeats count from 1)"),
            }
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    bail!("--repeats {list}: the range {part} runs backwards");
                }
                out.extend(a..=b);
            }
            None => out.push(number(part)?),
        }
    }
    if out.is_empty() {
        bail!("--repeats {list}: no repeat given");
    }
    Ok(out)
}

#[derive(Args)]
pub struct StatusArgs {
    pub session: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

#[derive(Args)]
pub struct UiArgs {
    /// Colour theme: dark, light, high-contrast, colorblind, a user theme in
    /// ~/.config/suggestive/themes, or a TOML file.
    #[arg(long, default_value = "dark")]
    pub theme: String,
    /// How images are drawn: auto asks the terminal (kitty, sixel, iTerm2), else half-blocks.
    #[arg(long, value_enum, default_value_t = suggestive::tui::ImageProtocol::Auto)]
    pub images: suggestive::tui::ImageProtocol,
    /// cpu, cuda, cuda:N or auto; overrides the session's device.
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Args)]
pub struct TuiArgs {
    /// Session name or path (without: the session browser).
    pub session: Option<String>,
    /// Only watch: follow the session's files and run nothing, even where nothing seems to
    /// run it elsewhere. (The dashboard attaches by itself when a repeat's lock is held by a
    /// live process or its Slurm task is queued or running.)
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub ui: UiArgs,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

#[derive(Args)]
pub struct ReportArgs {
    pub session: String,
    /// Output folder (default: SESSION/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare every arm with this one too, paired by repeat (random always).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "ARM,...")]
    pub versus: Vec<session::config::Arm>,
    /// The headline: the smallest budget whose mean Dice is within DELTA of the full-data
    /// reference's.
    #[arg(long, default_value_t = session::report::DEFAULT_DELTA, value_parser = parse_delta)]
    pub delta: f64,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

fn parse_delta(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(d) if d.is_finite() && d >= 0.0 => Ok(d),
        _ => Err(format!(
            "--delta {v}: expected a Dice difference of 0 or more, such as 0.01"
        )),
    }
}

#[derive(Args)]
pub struct ExportArgs {
    pub session: String,
    #[arg(long, value_enum)]
    pub arm: Option<session::config::Arm>,
    /// Only this round (1-based).
    #[arg(long)]
    pub round: Option<usize>,
    /// FILE.csv or FILE.json
    #[arg(long, required_unless_present = "labels")]
    pub out: Option<PathBuf>,
    /// A session labelled by people: write its counted segmentations into DIR in the data
    /// set's own layout and naming (for nnU-Net or MONAI).
    #[arg(long, value_name = "DIR")]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

pub fn cmd_tui(a: TuiArgs) -> Result<()> {
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
        watch: a.watch,
    })
}

pub fn cmd_demo(headless: bool, ui: UiArgs, dirs: SessionsDir) -> Result<()> {
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
            watch: false,
            ui,
            dirs,
        });
    }
    cmd_run(RunArgs {
        session: dir.display().to_string(),
        jsonl: false,
        device: ui.device,
        devices: Vec::new(),
        repeats: None,
        wait: false,
        dirs: SessionsDir { sessions_dir: None },
    })?;
    cmd_report(ReportArgs {
        session: dir.display().to_string(),
        out: None,
        versus: Vec::new(),
        delta: session::report::DEFAULT_DELTA,
        dirs: SessionsDir { sessions_dir: None },
    })
}

pub fn cmd_new(a: NewArgs) -> Result<()> {
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
pub struct Progress {
    pub bar: Option<ProgressBar>,
    pub terminal: bool,
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
            Event::EpochDone { epoch, epochs, loss, validation, .. } => {
                // The VAE's validation: the share of its held-out slices' variance explained.
                let validation = validation.map_or(String::new(), |v| {
                    format!(", validation {:.0} % of the variance explained", 100.0 * v.variance_explained)
                });
                if self.terminal {
                    let b = self.bar.get_or_insert_with(|| {
                        let b = ProgressBar::new(*epochs as u64);
                        b.set_style(ProgressStyle::with_template("    epochs {bar:30.cyan/blue} {pos}/{len}  {msg}  (eta {eta})").expect("valid template"));
                        b
                    });
                    b.set_position(*epoch as u64);
                    b.set_message(format!("loss {loss:.4}{validation}"));
                } else {
                    say!("    epoch {epoch}/{epochs} loss {loss:.4}{validation}");
                }
            }
            Event::PicksMade { arm, round, picks, fallbacks, tumour_picks, .. } => {
                say!("    {arm} round {round}: {}", suggestive::session::events::picks_summary(picks, *tumour_picks, *fallbacks));
            }
            Event::Evaluated { arm, round, annotated, dice_mean, dice_sd, collapsed, .. } => {
                say!("    {arm} round {round}: {annotated} annotated, test Dice {dice_mean:.3} ± {dice_sd:.3}{}", if *collapsed { " (collapsed: predicts no tumour)" } else { "" });
            }
            Event::Manifold { repeat, stats, warning } => {
                say!("    repeat {}: {}", repeat + 1, stats.line());
                if let Some(w) = warning {
                    say!("    repeat {}: warning: {w}", repeat + 1);
                }
            }
            Event::Split { repeat, pool_cases, test_cases } => say!("    {}", suggestive::session::events::split_summary(*repeat, *pool_cases, *test_cases)),
            Event::Stopped { steps_done, steps_total } => say!("stopped at a safe point: {steps_done}/{steps_total} steps done; run again to resume"),
            Event::Finished { steps_total } => say!("finished: {steps_total} steps"),
            Event::Annotation { counted: true, text, .. } => say!("{text}"),
            Event::Annotation { counted: false, text, .. } => eprintln!("{text}"),
            Event::AwaitingLabels { round, received, needed, inbox, .. } => {
                say!("round {round}: {received} of {needed} annotations in {inbox}");
                say!("  the worklist and open.sh are beside it; `suggestive import SESSION FILE...` takes files from elsewhere");
            }
            Event::Error { message } => eprintln!("error in the run: {message}"),
            // Timing for the report; the step's own lines say enough on the terminal.
            Event::StepDone { .. } => {}
        }
    }
}

pub fn cmd_run(a: RunArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    let terminal = stderr_is_terminal() && !a.jsonl;
    let device = a
        .device
        .as_deref()
        .or(a.devices.first().map(String::as_str));
    let repeats = a.repeats.as_deref().map(parse_repeats).transpose()?;
    let mut runner = Runner::open_repeats(
        s,
        repeats.as_deref(),
        loading_bar(),
        &paths::dataset_cache_root(),
        device,
    )?;
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
    // Slurm's warning before a time limit (`--signal=USR1@SECONDS`): stop the same way.
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, control.stop.clone())?;
    let mut p = Progress {
        bar: None,
        terminal,
    };
    let outcome = loop {
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
            runner.run(&control, &mut |ev| p.on(ev))?
        };
        match outcome {
            Outcome::Waiting { round, .. } if a.wait => {
                let inbox = runner.session().files().inbox(round);
                if !wait_for_files(&inbox, &control)? {
                    break Outcome::Stopped;
                }
            }
            other => break other,
        }
    };
    // `exit` runs no destructors: let go of the session's lock first.
    match outcome {
        Outcome::Stopped => {
            drop(runner);
            std::process::exit(130);
        }
        Outcome::Waiting { .. } => {
            drop(runner);
            std::process::exit(3);
        }
        Outcome::Finished => Ok(()),
    }
}

/// Waits until a file arrives in `dir`; false when stopped first.
fn wait_for_files(dir: &Path, control: &Control) -> Result<bool> {
    let mut watch = session::annotations::InboxWatch::new(dir);
    while !control.stop.load(std::sync::atomic::Ordering::Relaxed) {
        if watch.wait(std::time::Duration::from_millis(500)) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub fn cmd_status(a: StatusArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    let plan = session::plan::plan(&s.config);
    let (state, holder) = s.status();
    // Where each repeat stands in Slurm, for sessions submitted with `suggestive slurm`.
    let places = suggestive::cluster::placements(&s)?;
    if a.json {
        let v = serde_json::json!({
            "session": s.name(),
            "state": state,
            "steps_done": s.state.done,
            "steps_total": plan.len(),
            "next_step": s.next_step().map(|(st, _)| st.describe()),
            "partial_epochs": s.state.partial_epochs,
            "repeats": (0..s.config.experiment.repeats)
                .map(|r| {
                    let p = s.state.progress_of(r);
                    serde_json::json!({
                        "repeat": r + 1,
                        "steps_done": p.done,
                        "steps_total": s.steps_per_repeat(),
                        "partial_epochs": p.partial_epochs,
                        "pid": places[r].pid,
                        "host": places[r].host,
                        "slurm": places[r].slurm,
                    })
                })
                .collect::<Vec<_>>(),
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
    println!("setting   {}", e.describe());
    println!(
        "progress  {}/{} steps{}",
        s.state.done,
        plan.len(),
        s.next_step()
            .map(|(st, epochs)| format!(
                "; next: {}{}",
                st.describe(),
                if epochs > 0 {
                    format!(" (epoch {epochs} done)")
                } else {
                    String::new()
                }
            ))
            .unwrap_or_default()
    );
    if let Some(d) = &s.state.device {
        println!("device    {d}");
    }
    let per = s.steps_per_repeat();
    for (r, place) in places.iter().enumerate() {
        let p = s.state.progress_of(r);
        let how = if p.done >= per {
            "finished".to_string()
        } else if let Some(pid) = place.pid {
            match &place.host {
                Some(host) => format!("running, pid {pid} on {host}"),
                None => format!("running, pid {pid}"),
            }
        } else if p.done == 0 && !p.in_step() {
            "not started".to_string()
        } else {
            "paused".to_string()
        };
        let slurm = place
            .slurm
            .as_ref()
            .map(|j| format!(" · {} · log {}", j.describe(), j.log.display()))
            .unwrap_or_default();
        println!("repeat {:<3}{}/{per} steps ({how}){slurm}", r + 1, p.done);
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

pub fn cmd_report(a: ReportArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    let annotated = s.state.repeats.iter().any(|d| !d.annotations.is_empty());
    if s.state.results.is_empty() && !annotated {
        bail!("session {} has no results yet; run it first", s.name());
    }
    if a.versus.contains(&session::config::Arm::Full) {
        bail!("--versus full: the full-data reference is one model per repeat, not a curve; the report compares every arm with it in its budget-to-full table (--delta)");
    }
    let report = session::report::Report::new(&s.config, &s.state)
        .versus(&s.config, &a.versus)
        .with_delta(&s.config, a.delta)
        .with_timings(&s.files().event_logs());
    let out = a.out.unwrap_or_else(|| dir.join("report"));
    let about = format!(
        "suggestive report: session {}, on {} ({})",
        s.name(),
        s.state.device.as_deref().unwrap_or("an unknown device"),
        machine()
    );
    let files = report.write(&s.config, &out, &about)?;
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

/// This machine in a few words: its processor and cores.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores")
}

pub fn cmd_export(a: ExportArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let s = Session::open(&dir)?;
    // Names and geometry only: the masks are not exported.
    let ds = s.load_cases(None, &paths::dataset_cache_root())?;
    if let Some(out) = &a.labels {
        let written = session::annotations::export_labels(&s, &ds, 0, out)?;
        if written.is_empty() {
            bail!("session {} has no counted segmentations", s.name());
        }
        println!(
            "wrote {} segmentations to {} in the data set's layout",
            written.len(),
            out.display()
        );
    }
    let Some(out) = &a.out else {
        return Ok(());
    };
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
    session::export::write(&rows, out)?;
    println!("wrote {} picks to {}", rows.len(), out.display());
    Ok(())
}
