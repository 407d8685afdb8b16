//! Sessions: a folder that holds one active-learning experiment and everything needed to
//! reproduce and resume it (its layout: `files.rs`). This module creates, opens, checks and
//! describes sessions; `run` executes them.

pub mod annotations;
pub mod compare;
pub mod config;
pub mod convert;
pub mod events;
pub mod export;
pub mod files;
pub mod follow;
pub mod inbox;
pub mod labels;
pub mod plan;
pub mod pool;
pub mod report;
pub mod round_cases;
pub mod run;
pub mod state;
pub mod store;
pub mod strategy;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::data::{Dataset, LoadOptions, LoadProgress};
use config::SessionConfig;
pub use files::{Layout, SessionFiles};
use state::{RepeatProgress, RepeatState, SessionState, FLAT_FORMAT_VERSION, STATE_FORMAT_VERSION};

/// Presets shipped in the top-level `sessions/` folder, embedded so an installed binary has them.
pub const PRESETS: [(&str, &str); 6] = [
    ("demo", include_str!("../../sessions/demo.toml")),
    (
        "brats-patient",
        include_str!("../../sessions/brats-patient.toml"),
    ),
    (
        "brats-image",
        include_str!("../../sessions/brats-image.toml"),
    ),
    (
        "brats-transfer-patient",
        include_str!("../../sessions/brats-transfer-patient.toml"),
    ),
    (
        "brats-transfer-image",
        include_str!("../../sessions/brats-transfer-image.toml"),
    ),
    ("annotate", include_str!("../../sessions/annotate.toml")),
];

pub fn preset(name: &str) -> Result<SessionConfig> {
    if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) {
        return SessionConfig::from_toml(text, &format!("preset {name}"));
    }
    let path = Path::new(name);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return SessionConfig::from_toml(&text, &path.display().to_string());
    }
    let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
    bail!(
        "unknown preset '{name}' (presets: {}; or a path to a session.toml)",
        names.join(", ")
    )
}

/// Default folder for sessions: `$SUGGESTIVE_SESSIONS_DIR` or `~/.local/share/suggestive/sessions`.
pub fn default_sessions_dir() -> PathBuf {
    std::env::var_os("SUGGESTIVE_SESSIONS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::paths::data_dir().join("sessions"))
}

/// `SESSION` on the command line: a path when it contains a `/` (or is `.` or `..`); else a
/// name under the sessions folder, unless no session of that name is there and the current
/// folder holds a session of that name (a folder with a session.toml). Any other folder of
/// that name where the command runs is not a session and does not shadow the named one.
pub fn resolve(arg: &str, sessions_dir: &Path) -> PathBuf {
    let p = Path::new(arg);
    let named = sessions_dir.join(arg);
    let here_is_a_session = SessionFiles::is_session(p);
    if arg.contains('/') || arg == "." || arg == ".." || (!named.exists() && here_is_a_session) {
        p.to_path_buf()
    } else {
        named
    }
}

#[derive(Clone)]
pub struct Session {
    pub dir: PathBuf,
    pub config: SessionConfig,
    /// Gathered from every repeat's state (format 2) or the one file (format 1).
    pub state: SessionState,
    /// Format 2 (`PerRepeat`) or a format-1 session not yet converted (`Flat`).
    pub layout: Layout,
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing run yet.
    New,
    /// Started, not running now, not finished.
    Paused,
    /// A live process holds its lock.
    Running,
    Finished,
}

crate::display_as_serde!(Status);

/// A session to create: a preset (a name or a session.toml) with `--set` overrides and,
/// optionally, the data folder (which wins over a `dataset.path` override).
pub struct NewSession<'a> {
    pub preset: &'a str,
    pub sets: &'a [String],
    pub dataset: Option<&'a Path>,
}

impl NewSession<'_> {
    /// The configuration, with the data folder and the sites file checked and made absolute
    /// (a run from another folder must find the same files).
    pub fn config(&self) -> Result<SessionConfig> {
        let mut cfg = preset(self.preset)?;
        cfg.apply_overrides(self.sets)?;
        let from = match self.dataset {
            Some(d) => {
                cfg.dataset.path = d.to_path_buf();
                "data folder"
            }
            None => "dataset.path",
        };
        let path = cfg.dataset.path.clone();
        if path.as_os_str().is_empty() {
            bail!(
                "preset {} needs --dataset DIR (a data set folder)",
                self.preset
            );
        }
        // `demo` (the embedded phantom) is a keyword of the presets and --set; a data folder
        // given as such is always a folder, also one called demo.
        if self.dataset.is_some() || path.as_os_str() != "demo" {
            if !path.is_dir() {
                bail!("{from} {}: no such folder", path.display());
            }
            cfg.dataset.path = std::path::absolute(&path)
                .and_then(|p| p.canonicalize())
                .unwrap_or(path);
        }
        // A relative sites file is looked for in the data folder first.
        if let Some(sites) = cfg.dataset.sites.clone() {
            let found = [cfg.dataset.path.join(&sites), sites.clone()]
                .into_iter()
                .find(|c| c.is_file())
                .with_context(|| format!("dataset.sites {}: no such file", sites.display()))?;
            cfg.dataset.sites = Some(found.canonicalize().unwrap_or(found));
        }
        Ok(cfg)
    }

    /// Creates the session at `dir`.
    pub fn create(&self, dir: &Path) -> Result<Session> {
        Session::create(dir, self.config()?)
    }
}

/// The session's own state file: the format version (format 2).
pub(crate) fn write_format_version(files: &SessionFiles) -> Result<()> {
    let v = serde_json::json!({ "format_version": STATE_FORMAT_VERSION });
    files::write_atomic(&files.state(), &serde_json::to_vec_pretty(&v)?)
}

/// A repeat's state file, when the repeat has one yet.
fn read_repeat_state(path: &Path) -> Result<Option<RepeatState>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let rs: RepeatState = serde_json::from_str(&text)
        .with_context(|| format!("{}: damaged; nothing was changed", path.display()))?;
    if rs.format_version != STATE_FORMAT_VERSION {
        bail!(
            "{}: state format version {} is not supported (this suggestive reads {STATE_FORMAT_VERSION}); nothing was changed",
            path.display(),
            rs.format_version
        );
    }
    Ok(Some(rs))
}

impl Session {
    /// Creates a new session folder; an existing one is never overwritten.
    pub fn create(dir: &Path, config: SessionConfig) -> Result<Session> {
        config.validate()?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        crate::untrusted::check_name("session name", &name).map_err(anyhow::Error::msg)?;
        if dir.exists() {
            bail!(
                "{} already exists; choose another name or delete it",
                dir.display()
            );
        }
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        // Build in a temporary folder and rename, so a half-created session never appears.
        let tmp = parent.join(format!(
            ".{}.creating-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        let session = Session {
            dir: tmp.clone(),
            config,
            state: SessionState::default(),
            layout: Layout::PerRepeat,
        };
        let build = || -> Result<()> {
            std::fs::create_dir_all(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let files = session.files();
            files::write_atomic(&files.config(), session.config.to_toml().as_bytes())?;
            write_format_version(&files)?;
            std::fs::rename(&tmp, dir).with_context(|| format!("cannot create {}", dir.display()))
        };
        if let Err(e) = build() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Session {
            dir: dir.to_path_buf(),
            ..session
        })
    }

    /// Reads a session; refuses unknown versions and damaged files without touching anything.
    pub fn open(dir: &Path) -> Result<Session> {
        let files = SessionFiles::new(dir);
        if !SessionFiles::is_session(dir) {
            bail!("{} is not a session (no session.toml)", dir.display());
        }
        let cfg_path = files.config();
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let config = SessionConfig::from_toml(&text, &cfg_path.display().to_string())?;
        let state_path = files.state();
        let text = std::fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?;
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| {
                format!(
                    "{}: damaged (not JSON); nothing was changed",
                    state_path.display()
                )
            })?
            .get("format_version")
            .and_then(|v| v.as_u64());
        let steps_per_repeat = plan::plan(&config).len() / config.experiment.repeats.max(1);
        let (state, layout) = match version {
            Some(v) if v == FLAT_FORMAT_VERSION as u64 => {
                let mut state: SessionState = serde_json::from_str(&text).with_context(|| {
                    format!("{}: damaged; nothing was changed", state_path.display())
                })?;
                state.split_flat_progress(config.experiment.repeats, steps_per_repeat);
                (state, Layout::Flat)
            }
            Some(v) if v == STATE_FORMAT_VERSION as u64 => {
                let mut state = SessionState::default();
                for r in 0..config.experiment.repeats {
                    let path = files.repeat_state(r);
                    match read_repeat_state(&path)? {
                        Some(rs) => {
                            let stray = rs.picks.iter().map(|p| p.repeat);
                            if let Some(other) = stray
                                .chain(rs.results.iter().map(|x| x.repeat))
                                .find(|&q| q != r)
                            {
                                bail!(
                                    "{}: does not fit the session (a record of repeat {} in the file of repeat {}); nothing was changed",
                                    path.display(),
                                    other.saturating_add(1),
                                    r + 1
                                );
                            }
                            state.add_repeat(r, rs)
                        }
                        None => state.set_progress(r, RepeatProgress::default()),
                    }
                }
                (state, Layout::PerRepeat)
            }
            other => {
                let version = other.map_or("missing".to_string(), |v| v.to_string());
                bail!("{}: state format version {version} is not supported (this suggestive reads {FLAT_FORMAT_VERSION} and {STATE_FORMAT_VERSION}); nothing was changed", state_path.display());
            }
        };
        let session = Session {
            dir: dir.to_path_buf(),
            config,
            state,
            layout,
        };
        session.check_recorded()?;
        Ok(session)
    }

    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The session folder's files.
    pub fn files(&self) -> SessionFiles {
        SessionFiles::with_layout(&self.dir, self.layout)
    }

    /// Steps of the plan per repeat (the plan runs one repeat after another).
    pub fn steps_per_repeat(&self) -> usize {
        plan::plan(&self.config).len() / self.config.experiment.repeats.max(1)
    }

    /// The next step to run (of the first repeat not finished), with the epochs it has done.
    pub fn next_step(&self) -> Option<(plan::Step, usize)> {
        let per = self.steps_per_repeat();
        let steps = plan::plan(&self.config);
        (0..self.config.experiment.repeats).find_map(|r| {
            let p = self.state.progress_of(r);
            (p.done < per).then(|| (steps[r * per + p.done], p.partial_epochs))
        })
    }

    /// Writes `repeat`'s state file: its part of `state` (format 2; a format-1 session is
    /// converted before anything is run).
    pub fn save_repeat(&self, repeat: usize) -> Result<()> {
        if self.layout != Layout::PerRepeat {
            bail!(
                "{}: a session of format {FLAT_FORMAT_VERSION} is converted before it runs",
                self.dir.display()
            );
        }
        files::write_atomic(
            &self.files().repeat_state(repeat),
            &serde_json::to_vec_pretty(&self.state.repeat_state(repeat))?,
        )
    }

    /// The data folder of the session (`demo`: the demo phantom, generated when missing).
    pub fn dataset_dir(&self) -> Result<PathBuf> {
        let p = &self.config.dataset.path;
        if p.as_os_str() == "demo" {
            let dir = crate::paths::data_dir().join("demo-phantom");
            if !dir.join(crate::phantom::MANIFEST).exists() {
                crate::phantom::generate(&crate::phantom::demo_config(), &dir, &|| {})?;
            }
            return Ok(dir);
        }
        Ok(p.clone())
    }

    /// Where the session stands, with the pid of the process running it.
    pub fn status(&self) -> (Status, Option<u32>) {
        let holder = self.files().live_holder();
        let status = if self.state.done >= plan::plan(&self.config).len() {
            Status::Finished
        } else if holder.is_some() {
            Status::Running
        } else if self.state.done == 0 && !self.state.progress.iter().any(|p| p.in_step()) {
            Status::New
        } else {
            Status::Paused
        };
        (status, holder)
    }

    /// Loads the session's data set through the preprocessed cache under `cache_root`, with
    /// the labels it trains and measures on: labelled by people, the data set's segmentations
    /// of the test cases and the annotators' of the pool (`annotations::labelled_dataset`).
    /// `progress` is told of each patient decoded while a cache is built.
    pub fn load_dataset(
        &self,
        progress: Option<LoadProgress>,
        cache_root: &Path,
    ) -> Result<Dataset> {
        let mut ds = self.load_cases(progress, cache_root)?;
        if self.config.experiment.labels == config::Labels::Human {
            for (repeat, data) in self.state.repeats.iter().enumerate() {
                if data.train.is_empty() {
                    continue;
                }
                let (labelled, checksums) = annotations::labelled_dataset(self, &ds, repeat)
                    .with_context(|| format!("session {}", self.name()))?;
                let changed = data
                    .dataset_labels
                    .iter()
                    .find(|&(case, sum)| checksums.get(case).is_some_and(|now| now != sum));
                if let Some((case, _)) = changed {
                    let file = ds
                        .files_of(case)
                        .and_then(|f| f.seg.clone())
                        .unwrap_or_default();
                    bail!(
                        "session {}: {}: the segmentation of test case {case} changed since the split; the Dice of later rounds would not compare with the earlier ones; put it back, or start a new session; nothing was written",
                        self.name(),
                        file.display()
                    );
                }
                ds = labelled;
            }
        }
        Ok(ds)
    }

    /// The session's data set as its cache holds it: its cases, images and geometry, for
    /// commands that need no labels (labelled by people, every mask is empty).
    pub fn load_cases(&self, progress: Option<LoadProgress>, cache_root: &Path) -> Result<Dataset> {
        let mut opts = LoadOptions::new(cache_root);
        opts.preprocessing = self.config.dataset.preprocessing();
        opts.progress = progress;
        opts.sites = self.config.dataset.sites.clone();
        if self.config.experiment.labels == config::Labels::Human {
            // The pool's segmentations are never read: its labels are the annotators'.
            opts.segmentations = crate::data::Segmentations::Ignore;
        }
        let dir = self.dataset_dir()?;
        let ds = Dataset::load(&dir, &opts)
            .with_context(|| format!("session {}: data set {}", self.name(), dir.display()))?
            .0;
        // Before anything trusts the state's indices into it.
        let stamp = state::DatasetStamp::of(&ds);
        match &self.state.dataset {
            Some(s) if *s != stamp => bail!(
                "session {}: its data set changed since the session started ({} patients / {} slices then, {} / {} now); nothing was written",
                self.dir.display(),
                s.patients,
                s.slices,
                stamp.patients,
                stamp.slices
            ),
            _ => {}
        }
        self.check_state(&ds)?;
        Ok(ds)
    }

    /// Checks that state.json fits the session's plan and data set (every index it holds
    /// points at something), so that a hand-edited or damaged file is refused with a message
    /// instead of making the run, the export or the interface fail half-way.
    pub fn check_state(&self, ds: &Dataset) -> Result<()> {
        self.check_recorded()?;
        let st = &self.state;
        let files = self.files();
        let damaged = |repeat: usize, what: String| damaged_state(&files, repeat, what);
        let patients = ds.patients().len();
        // The patients first: the pools below are built from them.
        for (r, rd) in st.repeats.iter().enumerate() {
            if let Some(&p) = [&rd.train, &rd.test, &rd.source]
                .into_iter()
                .flatten()
                .find(|&&p| p >= patients)
            {
                return Err(damaged(
                    r,
                    format!("repeat {}: patient {p}, of a data set of {patients}", r + 1),
                ));
            }
        }
        // Samples in each repeat's pool (patients, or their slices), for the index checks below.
        let granularity = self.config.experiment.granularity;
        let pool_len: Vec<usize> = st
            .repeats
            .iter()
            .map(|rd| pool::Pool::new(ds, rd, granularity).len())
            .collect();
        for (r, rd) in st.repeats.iter().enumerate() {
            let pool = pool_len[r];
            if let Some(&o) = rd.order.iter().find(|&&o| o >= pool) {
                return Err(damaged(
                    r,
                    format!(
                        "repeat {}: sample {o} in the random order, of a pool of {pool}",
                        r + 1
                    ),
                ));
            }
        }
        for rec in &st.picks {
            let pool = *pool_len.get(rec.repeat).ok_or_else(|| {
                damaged(
                    rec.repeat,
                    format!("picks of repeat {}, which has no split", rec.repeat + 1),
                )
            })?;
            let outside = |i: usize| i >= pool;
            if let Some(p) = rec
                .picks
                .iter()
                .find(|p| outside(p.sample) || p.source.is_some_and(outside))
            {
                return Err(damaged(
                    rec.repeat,
                    format!(
                        "{} pick {} (source {}) in round {} of repeat {}, of a pool of {pool}",
                        rec.arm,
                        p.sample,
                        p.source.map_or("none".to_string(), |s| s.to_string()),
                        rec.round,
                        rec.repeat + 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The checks that need no data set, made by every command that opens a session (`status`
    /// and `report` included): the settings are those the session started with, the progress
    /// fits the plan, and every result row is of a repeat with a split, recorded once, with
    /// values a metric can take. A session that fails them is refused by name, not shown.
    fn check_recorded(&self) -> Result<()> {
        let st = &self.state;
        if let Some(started) = &st.config {
            // The device may change between runs (a session started on the CPU can go on on a
            // GPU). The data set's path is left to the data set's own check (Runner::open: its
            // fingerprint, which holds its files' paths, sizes and times, and says what
            // changed in counts). Everything else shapes the plan or the numbers.
            let mut changed = started.changed_keys(&self.config);
            changed.retain(|k| k != "experiment.device" && k != "dataset.path");
            if !changed.is_empty() {
                bail!(
                    "{}: changed since the session started ({}); a started session keeps its settings (create a new session for others, or put the old values back); nothing was written",
                    self.files().config().display(),
                    changed.join(", ")
                );
            }
        }
        let files = self.files();
        let damaged = |repeat: usize, what: String| damaged_state(&files, repeat, what);
        let per = self.steps_per_repeat();
        for r in 0..self.config.experiment.repeats {
            let done = st.progress_of(r).done;
            if done > per {
                return Err(damaged(
                    r,
                    format!("{done} steps done, but a repeat has {per}"),
                ));
            }
            if done > 0 && st.repeats.get(r).is_none_or(|d| d.train.is_empty()) {
                return Err(damaged(
                    r,
                    format!("{done} steps done, but no split recorded"),
                ));
            }
        }
        // Where a record says it belongs must be a place in the plan: a repeat, one of the
        // session's arms, a stage and a round of that stage (0: before the first pick).
        let stages = plan::stages(&self.config);
        let place = |repeat: usize, stage: usize, arm: config::Arm, round: usize| {
            let at = format!(
                "repeat {}, stage {}, {arm} round {round}",
                repeat.saturating_add(1),
                stage.saturating_add(1)
            );
            let fits = repeat < self.config.experiment.repeats
                && self.config.experiment.arms.contains(&arm)
                && stages.get(stage).is_some_and(|s| round <= s.rounds.len());
            (at, fits)
        };
        // Samples labelled after `round` rounds of a stage (the initial set, then each round's).
        let labelled_after = |stage: usize, round: usize| {
            let s = &stages[stage];
            s.rounds[..round]
                .iter()
                .fold(s.initial, |n, k| n.saturating_add(*k))
        };
        for rec in &st.picks {
            let (at, fits) = place(rec.repeat, rec.stage, rec.arm, rec.round);
            if !fits || rec.round == 0 {
                return Err(damaged(
                    rec.repeat,
                    format!("picks of {at}, not in the plan"),
                ));
            }
            // Counts of picks are counts of these picks; directions, of the labelled samples.
            let n = rec.picks.len();
            let sources = labelled_after(rec.stage, rec.round - 1);
            let directions = rec.directions.as_ref().map_or((0, 0), |d| {
                let made = d.methods.values().fold(0usize, |a, b| a.saturating_add(*b));
                (made, d.zero_directions)
            });
            let counts_fit = n <= stages[rec.stage].rounds[rec.round - 1]
                && rec.fallbacks <= n
                && rec.tumour_picks.is_none_or(|t| t <= n)
                && rec.context_picks.is_none_or(|c| c <= n)
                && directions.0 <= sources
                && directions.1 <= directions.0;
            if !counts_fit {
                return Err(damaged(
                    rec.repeat,
                    format!("picks of {at} with counts that do not fit its {n} picks"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &st.results {
            let (at, fits) = place(r.repeat, r.stage, r.arm, r.round);
            if !fits {
                return Err(damaged(
                    r.repeat,
                    format!("a result of {at}, not in the plan"),
                ));
            }
            if st.repeats.get(r.repeat).is_none_or(|d| d.train.is_empty()) {
                return Err(damaged(
                    r.repeat,
                    format!("a result of repeat {}, which has no split", r.repeat + 1),
                ));
            }
            // The full reference trains on the whole pool, whose size needs the data set.
            if r.arm != config::Arm::Full && r.annotated > labelled_after(r.stage, r.round) {
                return Err(damaged(
                    r.repeat,
                    format!("a result of {at} with {} annotated", r.annotated),
                ));
            }
            if !seen.insert((r.repeat, r.stage, r.arm, r.round)) {
                return Err(damaged(r.repeat, format!("the result of {at} twice")));
            }
            let unit = |x: f64| (0.0..=1.0).contains(&x);
            let bad = [("Dice", r.dice_mean), ("slice Dice", r.slice_dice_mean)]
                .into_iter()
                .chain(r.dice.iter().map(|&d| ("Dice", d)))
                .find(|&(_, x)| !unit(x))
                .map(|(what, x)| format!("{what} {x}"))
                .or_else(|| {
                    (!(r.dice_sd.is_finite() && r.dice_sd >= 0.0))
                        .then(|| format!("Dice SD {}", r.dice_sd))
                })
                .or_else(|| {
                    r.hd95
                        .iter()
                        .flatten()
                        .find(|h| !(h.is_finite() && **h >= 0.0))
                        .map(|h| format!("HD95 {h}"))
                });
            if let Some(value) = bad {
                return Err(damaged(r.repeat, format!("{value} in the result of {at}")));
            }
        }
        Ok(())
    }
}

/// A state file that does not fit its session, named (format 1: the session's one file).
fn damaged_state(files: &SessionFiles, repeat: usize, what: String) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: does not fit the session ({what}); nothing was changed",
        files.repeat_state(repeat).display()
    )
}
