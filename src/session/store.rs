//! The writer lock of a session and its append-only event log (their paths come from
//! `SessionFiles`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::events::{Event, LoggedEvent};

/// The pid of the process that holds the lock file `path` (is writing the session), if any; 0
/// when the lock is held but its file does not name the holder yet.
pub fn live_holder(path: &Path) -> Option<u32> {
    let path = path.to_path_buf();
    let f = File::open(&path).ok()?;
    // A shared lock is granted unless a writer holds the exclusive one; held for an instant
    // (an `acquire` at that moment retries).
    match f.try_lock_shared() {
        Ok(()) => legacy_holder(&path),
        Err(fs::TryLockError::WouldBlock) => Some(read_pid(&path).unwrap_or(0)),
        Err(fs::TryLockError::Error(e)) if flock_unsupported(&e) => pid_alive(&path),
        Err(fs::TryLockError::Error(_)) => None,
    }
}

/// The pid on the lock file's first line.
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The host on the lock file's second line (files written before it was there name none).
pub fn holder_host(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let host = text.lines().nth(1)?.trim();
    (!host.is_empty()).then(|| host.to_string())
}

/// This machine's name, as the lock file records it: on a cluster, the node a run is on.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match ok {
        true => String::from_utf8_lossy(&buf[..end]).into_owned(),
        false => "unknown".into(),
    }
}

/// The pid in the lock file when that process is alive and is not this one. A pid of another
/// host (the file names it) cannot be looked up here: it counts as not alive.
fn pid_alive(path: &Path) -> Option<u32> {
    if holder_host(path).is_some_and(|h| h != host_name()) {
        return None;
    }
    read_pid(path).filter(|&p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists())
}

/// A live suggestive process named by a lock file that nobody holds: a run of a version from
/// before this lock, which wrote its pid and took no flock. (Any other live process of that
/// pid is a reused pid, and not a writer.)
fn legacy_holder(path: &Path) -> Option<u32> {
    pid_alive(path).filter(|p| {
        fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|exe| {
            exe.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("suggestive"))
        })
    })
}

/// File systems without `flock` (Lustre mounted without it, NFS without its lock daemon) say
/// so with one of these.
fn flock_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOLCK | libc::ENOSYS | libc::EOPNOTSUPP)
        )
}

/// Exclusive right to write a session, held while a process runs it: an advisory lock
/// (`flock`) on the session's `lock` file, which holds the pid and host for people. The kernel releases
/// it when the process ends, however it ends, so a lock left by a killed run is simply taken
/// over, and two processes can never both hold it (a pid-file check alone let two runs in
/// when one read the other's file before its pid was written, and could mistake a reused pid
/// for a live writer).
pub struct Lock {
    path: PathBuf,
    file: File,
}

impl Lock {
    /// Takes the lock file `path` of the session in `session`.
    pub fn acquire(session: &Path, path: &Path) -> Result<Lock> {
        let path = path.to_path_buf();
        let busy = |pid: Option<u32>| {
            anyhow::anyhow!(
                "session {} is being written by another process (pid {}); stop it first or wait",
                session.display(),
                pid.map_or("unknown".into(), |p| p.to_string())
            )
        };
        for attempt in 0..20 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {
                    if let Some(pid) = legacy_holder(&path) {
                        return Err(busy(Some(pid)));
                    }
                }
                Err(fs::TryLockError::WouldBlock) => {
                    // Maybe only `live_holder` looking for an instant: try again shortly.
                    if attempt < 4 {
                        std::thread::sleep(std::time::Duration::from_millis(25));
                        continue;
                    }
                    return Err(busy(read_pid(&path)));
                }
                Err(fs::TryLockError::Error(e)) if flock_unsupported(&e) => {
                    // No flock here: the pid in the file, checked against the running
                    // processes, is the lock (weaker: two runs starting in the same instant
                    // can both pass).
                    if let Some(pid) = pid_alive(&path) {
                        return Err(busy(Some(pid)));
                    }
                    eprintln!(
                        "warning: {} does not support file locks (flock); the session's lock is its pid file only",
                        session.display()
                    );
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()))
                }
            }
            // The holder before us removes the file as it lets go: if the name now leads to
            // another file (or none), this lock is on a file nobody else will see. Again.
            let same = |a: &fs::Metadata, b: &fs::Metadata| {
                use std::os::unix::fs::MetadataExt;
                a.dev() == b.dev() && a.ino() == b.ino()
            };
            match (fs::metadata(&path), file.metadata()) {
                (Ok(a), Ok(b)) if same(&a, &b) => {}
                _ => continue,
            }
            let mut f = &file;
            f.set_len(0)?;
            // The pid first (what earlier versions read), then the host: a process on
            // another node of a cluster is named by both.
            writeln!(f, "{}\n{}", std::process::id(), host_name())?;
            f.sync_all()?;
            return Ok(Lock { path, file });
        }
        bail!("cannot take the lock {}", path.display())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held (the file closes after this), so that a waiting process
        // that opened the old file notices the name moved on (see `acquire`).
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// `events.jsonl`: one JSON object per line, appended as the run goes.
pub struct EventLog {
    file: File,
}

/// Whether `file` is not empty and its last byte is not a newline.
fn ends_mid_line(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

impl EventLog {
    /// Opens the log at `path` for appending. A last line cut short (a write that a full disk
    /// or a kill ended early) is closed with a newline first, so the next event starts on a
    /// line of its own and readers skip only the damaged one.
    pub fn open(path: &Path) -> Result<EventLog> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if ends_mid_line(&mut file).with_context(|| format!("cannot read {}", path.display()))? {
            file.write_all(b"\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(EventLog { file })
    }

    /// Appends `event`, stamped with the time and the log's format version.
    pub fn append(&mut self, event: &Event) -> Result<()> {
        let mut line = serde_json::to_string(&LoggedEvent::now(event.clone()))?;
        line.push('\n');
        // One write per line: a killed run loses at most the line being written.
        self.file.write_all(line.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::events::{Event, LoggedEvent};

    #[test]
    fn an_event_after_a_cut_line_starts_a_line_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.jsonl");
        let done = Event::Finished { steps_total: 4 };
        let mut log = EventLog::open(&path).unwrap();
        log.append(&done).unwrap();
        drop(log);
        // A write cut short by a full disk or a kill.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"event":"step_st"#).unwrap();
        drop(file);
        EventLog::open(&path).unwrap().append(&done).unwrap();
        let events = LoggedEvent::read_all(&path);
        assert_eq!(events.len(), 2, "{}", fs::read_to_string(&path).unwrap());
        assert!(events.iter().all(|e| e.event == done));
        // A log that ends a line adds no empty one.
        EventLog::open(&path).unwrap();
        assert!(!fs::read_to_string(&path).unwrap().contains("\n\n"));
    }
}
