//! The session folder's layout and every write into it. This is the one place that knows a
//! file's name inside a session; the runner, the interface, `status`, `report` and `export`
//! ask it for paths. Writes are atomic (`write_atomic`): a crash leaves the old file or the
//! new one, never a mix.
//!
//! ```text
//! session.toml     the settings (written by `new`, edited by people until the first run)
//! state.json       machine-written progress (see state.rs)
//! events.jsonl     one event per line (see events.rs)
//! lock             held by the process running the session (see store.rs)
//! checkpoints/     KEY.safetensors per finished training step; KEY.partial-eN / KEY.adam-eN
//!                  after epoch N of the step in progress
//! latents/         rR.safetensors: the pool's encoder means of repeat R
//! ```

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
const WEIGHTS: &str = ".safetensors";

/// The files of the session in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFiles {
    dir: PathBuf,
}

impl SessionFiles {
    pub fn new(dir: impl Into<PathBuf>) -> SessionFiles {
        SessionFiles { dir: dir.into() }
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

    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    pub fn events(&self) -> PathBuf {
        self.dir.join(EVENTS)
    }

    /// The folders a new session starts with.
    pub fn create_folders(&self) -> Result<()> {
        for d in [CHECKPOINTS, LATENTS] {
            let path = self.dir.join(d);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(())
    }

    /// Takes the session's writer lock (see `Lock`).
    pub fn lock(&self) -> Result<Lock> {
        Lock::acquire(&self.dir, &self.dir.join(LOCK))
    }

    /// The pid of a live process that holds the session's lock, if any.
    pub fn live_holder(&self) -> Option<u32> {
        super::store::live_holder(&self.dir.join(LOCK))
    }

    pub fn event_log(&self) -> Result<EventLog> {
        EventLog::open(&self.events())
    }

    /// The final weights of a training step.
    pub fn checkpoint(&self, step: &Step) -> PathBuf {
        self.dir
            .join(CHECKPOINTS)
            .join(format!("{}{WEIGHTS}", step.key()))
    }

    /// The weights and optimiser moments of a training step after `epochs` epochs. The epoch is
    /// in the names so that the files of the epoch state.json records stay untouched until
    /// state.json records the next one: a kill between writing a checkpoint and recording its
    /// epoch resumes from the recorded epoch's files, exactly.
    pub fn partial(&self, step: &Step, epochs: usize) -> (PathBuf, PathBuf) {
        let name = |what: &str| {
            self.dir
                .join(CHECKPOINTS)
                .join(format!("{}.{what}-e{epochs}{WEIGHTS}", step.key()))
        };
        (name("partial"), name("adam"))
    }

    /// The one pair of partial files that sessions written before the epoch was in the names
    /// have (`KEY.partial`, `KEY.adam`), when it exists.
    pub fn legacy_partial(&self, step: &Step) -> Option<(PathBuf, PathBuf)> {
        let name = |what: &str| {
            self.dir
                .join(CHECKPOINTS)
                .join(format!("{}.{what}{WEIGHTS}", step.key()))
        };
        name("partial")
            .exists()
            .then(|| (name("partial"), name("adam")))
    }

    /// Removes every partial checkpoint of a step (it is done, or starts over).
    pub fn remove_partials(&self, step: &Step) {
        let key = step.key();
        let prefixes = [format!("{key}.partial"), format!("{key}.adam")];
        let Ok(entries) = fs::read_dir(self.dir.join(CHECKPOINTS)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()) && name.ends_with(WEIGHTS))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// The pool's latents of `repeat`.
    pub fn latents(&self, repeat: usize) -> PathBuf {
        self.dir.join(LATENTS).join(format!("r{repeat}{WEIGHTS}"))
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file beside it, synced, then renamed
/// over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        fs::write(tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))
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
        .with_context(|| format!("cannot sync {}", tmp.path().display()))?;
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
        assert_eq!(w, Path::new("/s/checkpoints/r2-vae.partial-e3.safetensors"));
        assert_eq!(a, Path::new("/s/checkpoints/r2-vae.adam-e3.safetensors"));
        assert_eq!(
            f.checkpoint(&step),
            Path::new("/s/checkpoints/r2-vae.safetensors")
        );
        assert_eq!(f.latents(2), Path::new("/s/latents/r2.safetensors"));
    }
}
