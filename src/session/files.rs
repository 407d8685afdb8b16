//! The session folder's layout and every write into it. This is the one place that knows a
//! file's name inside a session; the runner, the interface, `status`, `report` and `export`
//! ask it for paths. Writes are atomic (`write_atomic`): a crash leaves the old file or the
//! new one, never a mix.
//!
//! Each repeat is a unit of its own (format 2): its progress, checkpoints, events and lock live
//! in its folder, so processes that run different repeats never write the same file.
//!
//! ```text
//! session.toml               the settings (written by `new`, edited by people until the first run)
//! state.json                 the format version
//! repeats/NN/                repeat NN (from 01):
//!   state.json               its progress, split, picks and results (see state.rs)
//!   events.jsonl             one event per line (see events.rs)
//!   lock                     held by the process running the repeat (see store.rs)
//!   checkpoints/             KEY.safetensors per finished training step; KEY.partial-eN /
//!                            KEY.adam-eN after epoch N of the step in progress
//!   latents.safetensors      the pool's encoder means
//! ```
//!
//! Format 1 (`Layout::Flat`) kept one state.json, events.jsonl, lock, checkpoints/ and
//! latents/rR.safetensors for all repeats in the session folder; such sessions are read as they
//! are and converted when a run opens them (`session::convert`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::plan::Step;
use super::store::{EventLog, Lock};

const CONFIG: &str = "session.toml";
const STATE: &str = "state.json";
const EVENTS: &str = "events.jsonl";
const LOCK: &str = "lock";
const CHECKPOINTS: &str = "checkpoints";
const LATENTS: &str = "latents";
const REPEATS: &str = "repeats";
const WEIGHTS: &str = ".safetensors";

/// Where a session keeps its repeats' files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Format 2: a folder per repeat.
    PerRepeat,
    /// Format 1: all repeats' files together in the session folder.
    Flat,
}

/// The files of the session in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFiles {
    dir: PathBuf,
    layout: Layout,
}

impl SessionFiles {
    /// The files of a session of the current format.
    pub fn new(dir: impl Into<PathBuf>) -> SessionFiles {
        SessionFiles::with_layout(dir, Layout::PerRepeat)
    }

    pub fn with_layout(dir: impl Into<PathBuf>, layout: Layout) -> SessionFiles {
        SessionFiles {
            dir: dir.into(),
            layout,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `dir` holds a session (its settings file).
    pub fn is_session(dir: &Path) -> bool {
        dir.join(CONFIG).is_file()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG)
    }

    /// The session's own state file (format 2: the version; format 1: everything).
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    /// The folder of `repeat`'s files (format 2).
    fn repeat_dir(&self, repeat: usize) -> PathBuf {
        self.dir
            .join(REPEATS)
            .join(format!("{:02}", repeat.saturating_add(1)))
    }

    /// Where a repeat's files go: its folder, or (format 1) the session folder.
    fn unit(&self, repeat: usize) -> PathBuf {
        match self.layout {
            Layout::PerRepeat => self.repeat_dir(repeat),
            Layout::Flat => self.dir.clone(),
        }
    }

    /// The state file of `repeat` (format 1: the session's, shared by all repeats).
    pub fn repeat_state(&self, repeat: usize) -> PathBuf {
        self.unit(repeat).join(STATE)
    }

    /// The event log of `repeat` (format 1: the session's).
    pub fn repeat_events(&self, repeat: usize) -> PathBuf {
        self.unit(repeat).join(EVENTS)
    }

    /// Every event log of the session, each to be read on its own: the session folder's (all
    /// of a format-1 session's history) and each repeat's, in repeat order.
    pub fn event_logs(&self) -> Vec<PathBuf> {
        let mut logs = vec![self.dir.join(EVENTS)];
        logs.extend(self.repeat_dirs().into_iter().map(|d| d.join(EVENTS)));
        logs.retain(|p| p.is_file());
        logs
    }

    /// The repeat folders that exist, in order.
    fn repeat_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.dir.join(REPEATS))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.retain(|d| d.is_dir());
        dirs.sort();
        dirs
    }

    /// Takes `repeat`'s writer lock (format 1: the session's), making its folders first.
    pub fn lock_repeat(&self, repeat: usize) -> Result<Lock> {
        let unit = self.unit(repeat);
        let checkpoints = unit.join(CHECKPOINTS);
        fs::create_dir_all(&checkpoints)
            .with_context(|| format!("cannot create {}", checkpoints.display()))?;
        if let Some(d) = self.latents(repeat).parent() {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Lock::acquire(&unit, &unit.join(LOCK))
    }

    /// Takes the session folder's own lock: what format-1 runs held (a conversion holds it).
    pub fn session_lock(&self) -> Result<Lock> {
        Lock::acquire(&self.dir, &self.dir.join(LOCK))
    }

    /// The pid of a live process that holds the session's lock or any repeat's, if any.
    pub fn live_holder(&self) -> Option<u32> {
        std::iter::once(self.dir.clone())
            .chain(self.repeat_dirs())
            .find_map(|d| super::store::live_holder(&d.join(LOCK)))
    }

    /// The pid of a live process running `repeat`, if any.
    pub fn repeat_holder(&self, repeat: usize) -> Option<u32> {
        super::store::live_holder(&self.unit(repeat).join(LOCK))
    }

    /// The host named in `repeat`'s lock file (where its writer runs), if any.
    pub fn repeat_holder_host(&self, repeat: usize) -> Option<String> {
        super::store::holder_host(&self.unit(repeat).join(LOCK))
    }

    /// Opens `repeat`'s event log for appending.
    pub fn event_log(&self, repeat: usize) -> Result<EventLog> {
        EventLog::open(&self.repeat_events(repeat))
    }

    /// A format-1 session's files of `repeat`, each with where format 2 keeps it.
    pub fn flat_files_of(&self, repeat: usize) -> Vec<(PathBuf, PathBuf)> {
        let flat = SessionFiles::with_layout(&self.dir, Layout::Flat);
        let ours = SessionFiles::new(&self.dir);
        let mut out = vec![(flat.latents(repeat), ours.latents(repeat))];
        let prefix = format!("r{repeat}-");
        if let Ok(rd) = fs::read_dir(self.dir.join(CHECKPOINTS)) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with(&prefix) {
                    let to = ours.repeat_dir(repeat).join(CHECKPOINTS).join(&name);
                    out.push((e.path(), to));
                }
            }
        }
        out.retain(|(from, _)| from.exists());
        out
    }

    /// What a conversion from format 1 removes once it is complete.
    pub fn flat_folders(&self) -> [PathBuf; 2] {
        [self.dir.join(CHECKPOINTS), self.dir.join(LATENTS)]
    }

    /// The folder that holds every repeat's folder.
    pub fn repeats_root(&self) -> PathBuf {
        self.dir.join(REPEATS)
    }

    /// The final weights of a training step.
    pub fn checkpoint(&self, step: &Step) -> PathBuf {
        self.checkpoints_of(step)
            .join(format!("{}{WEIGHTS}", step.key()))
    }

    fn checkpoints_of(&self, step: &Step) -> PathBuf {
        self.unit(step.repeat()).join(CHECKPOINTS)
    }

    /// The weights and optimiser moments of a training step after `epochs` epochs. The epoch is
    /// in the names so that the files of the epoch state.json records stay untouched until
    /// state.json records the next one: a kill between writing a checkpoint and recording its
    /// epoch resumes from the recorded epoch's files, exactly.
    pub fn partial(&self, step: &Step, epochs: usize) -> (PathBuf, PathBuf) {
        self.partial_at(step, epochs, 0)
    }

    /// As `partial`, `batches` batches into the epoch after `epochs` (a stop mid-epoch; 0: the
    /// epoch's end, named as `partial` names it).
    pub fn partial_at(&self, step: &Step, epochs: usize, batches: usize) -> (PathBuf, PathBuf) {
        let at = if batches > 0 {
            format!("e{epochs}b{batches}")
        } else {
            format!("e{epochs}")
        };
        let name = |what: &str| {
            self.checkpoints_of(step)
                .join(format!("{}.{what}-{at}{WEIGHTS}", step.key()))
        };
        (name("partial"), name("adam"))
    }

    /// The one pair of partial files that sessions written before the epoch was in the names
    /// have (`KEY.partial`, `KEY.adam`), when it exists.
    pub fn legacy_partial(&self, step: &Step) -> Option<(PathBuf, PathBuf)> {
        let name = |what: &str| {
            self.checkpoints_of(step)
                .join(format!("{}.{what}{WEIGHTS}", step.key()))
        };
        name("partial")
            .exists()
            .then(|| (name("partial"), name("adam")))
    }

    /// The weights of the VAE after epoch `epoch` (1-based), kept while it is the best one by
    /// validation error. The epoch is in the name for the reason `partial` gives.
    pub fn best(&self, step: &Step, epoch: usize) -> PathBuf {
        self.checkpoints_of(step)
            .join(format!("{}.best-e{epoch}{WEIGHTS}", step.key()))
    }

    /// Removes every partial checkpoint of a step, its best epoch's included (it is done, or
    /// starts over).
    pub fn remove_partials(&self, step: &Step) {
        self.remove_partials_except(step, &[]);
    }

    /// Removes every partial checkpoint (weights, moments, best epoch) of a step but the files
    /// `keep`: once state.json records a point, the files of every other point are stale.
    pub fn remove_partials_except(&self, step: &Step, keep: &[&Path]) {
        let key = step.key();
        let prefixes = [
            format!("{key}.partial"),
            format!("{key}.adam"),
            format!("{key}.best"),
        ];
        let Ok(entries) = fs::read_dir(self.checkpoints_of(step)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let path = e.path();
            let kept = keep.contains(&path.as_path());
            if !kept
                && prefixes
                    .iter()
                    .any(|p| name.starts_with(p.as_str()) && name.ends_with(WEIGHTS))
            {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// A session labelled by people: round `round`'s work package (`annotate/round-NN/`).
    pub fn package(&self, round: usize) -> PathBuf {
        self.dir.join("annotate").join(format!("round-{round:02}"))
    }

    /// Where round `round`'s segmentations go back.
    pub fn inbox(&self, round: usize) -> PathBuf {
        self.package(round).join(super::annotations::INBOX)
    }

    /// Where accepted segmentations are kept (named by case, round and checksum).
    pub fn labels_dir(&self) -> PathBuf {
        self.dir.join("labels")
    }

    /// The Slurm job scripts, their logs and the submissions (`suggestive slurm`).
    pub fn slurm_dir(&self) -> PathBuf {
        self.dir.join("slurm")
    }

    /// The record of every submission to Slurm.
    pub fn slurm_jobs(&self) -> PathBuf {
        self.slurm_dir().join("jobs.json")
    }

    /// A job script: `run.sbatch` (the array job) or `report.sbatch`.
    pub fn slurm_script(&self, job: &str) -> PathBuf {
        self.slurm_dir().join(format!("{job}.sbatch"))
    }

    /// Where Slurm writes a repeat's output (1-based, as Slurm's array task numbers), or with
    /// `None` the report job's.
    pub fn slurm_log(&self, repeat: Option<usize>) -> PathBuf {
        let logs = self.slurm_dir().join("logs");
        match repeat {
            Some(r) => logs.join(format!("repeat-{r}.out")),
            None => logs.join("report.out"),
        }
    }

    /// The pool's latents of `repeat`.
    pub fn latents(&self, repeat: usize) -> PathBuf {
        match self.layout {
            Layout::PerRepeat => self.repeat_dir(repeat).join(format!("{LATENTS}{WEIGHTS}")),
            Layout::Flat => self.dir.join(LATENTS).join(format!("r{repeat}{WEIGHTS}")),
        }
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file beside it, synced, then renamed
/// over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        // Named by the file it replaces: the temporary name means nothing to a reader.
        fs::write(tmp, bytes).with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Atomically replaces `path` with what `write` puts at the temporary path it is given (which
/// ends like `path` does: tch picks a weights file's format by its extension). A failed write
/// leaves `path` as it was and removes the temporary file.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let suffix = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    // Readable as any new file is (0666 less the umask), not tempfile's owner-only default:
    // exports and reports are for the group that annotates.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(&suffix)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write beside {}", path.display()))?;
    write(tmp.path())?;
    // By path: the writer may have replaced the file rather than written into it.
    File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // A failing writer leaves the old file and no temporary one.
        let failed = write_atomic_with(&path, |tmp| {
            fs::write(tmp, b"half")?;
            anyhow::bail!("disk full")
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // The mode a plain new file gets (the umask applied), not owner-only.
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
    }

    #[test]
    fn partial_files_carry_their_epoch() {
        let f = SessionFiles::new("/s");
        let step = Step::Vae { repeat: 2 };
        let (w, a) = f.partial(&step, 3);
        let at = |p: &str| Path::new("/s/repeats/03").join(p);
        assert_eq!(w, at("checkpoints/r2-vae.partial-e3.safetensors"));
        assert_eq!(a, at("checkpoints/r2-vae.adam-e3.safetensors"));
        assert_eq!(f.checkpoint(&step), at("checkpoints/r2-vae.safetensors"));
        assert_eq!(f.latents(2), at("latents.safetensors"));
        assert_eq!(f.repeat_state(2), at("state.json"));
        // Format 1: all in the session folder.
        let flat = SessionFiles::with_layout("/s", Layout::Flat);
        assert_eq!(
            flat.checkpoint(&step),
            Path::new("/s/checkpoints/r2-vae.safetensors")
        );
        assert_eq!(flat.latents(2), Path::new("/s/latents/r2.safetensors"));
        assert_eq!(flat.repeat_state(2), Path::new("/s/state.json"));
    }
}
