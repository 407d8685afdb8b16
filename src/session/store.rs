//! The session folder on disk: atomic writes (temp file, fsync, rename), the writer lock, and
//! the append-only event log.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Moves an already written temporary file into place atomically.
pub fn commit_file(tmp: &Path, path: &Path) -> Result<()> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    fs::rename(tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The pid in `session`'s lock file, when that process is alive: who is writing the session.
pub fn live_holder(session: &Path) -> Option<u32> {
    fs::read_to_string(session.join("lock"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Exclusive right to write a session, held while a process runs it. A lock left by a process
/// that died (SIGKILL) is taken over; a live holder is named in the error.
pub struct Lock {
    path: PathBuf,
}

impl Lock {
    pub fn acquire(session: &Path) -> Result<Lock> {
        let path = session.join("lock");
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())?;
                    f.sync_all()?;
                    return Ok(Lock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match live_holder(session) {
                        Some(pid) if pid != std::process::id() => {
                            bail!("session {} is being written by another process (pid {pid}); stop it first or wait", session.display())
                        }
                        // The holder is gone: a stale lock from a killed run.
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        bail!("cannot take the lock {}", path.display())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `events.jsonl`: one JSON object per line, appended as the run goes.
pub struct EventLog {
    file: File,
}

impl EventLog {
    pub fn open(session: &Path) -> Result<EventLog> {
        let path = session.join("events.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(EventLog { file })
    }

    pub fn append(&mut self, line: &str) -> Result<()> {
        // One write per line: a killed run loses at most the line being written.
        self.file.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }
}
