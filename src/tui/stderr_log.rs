//! While the TUI owns the terminal, the process's stderr (file descriptor 2) goes to a log file.
//!
//! libtorch's C++ code writes its warnings straight to fd 2 (on a GPU, e.g. libtorch 2.11 warns
//! on every autocast call of a mixed-precision session), and those bytes would land in the middle
//! of the alternate screen. Redirecting the descriptor catches them whichever library writes them;
//! the guard puts the terminal's stderr back when dropped, and a panic hook puts it back before
//! the panic message is printed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

pub struct StderrToLog {
    /// A duplicate of the original fd 2, restored on drop.
    saved: OwnedFd,
    /// `saved`'s number for the panic hook, -1 once the guard is dropped (the number may then be
    /// reused by another file).
    hook_fd: Arc<AtomicI32>,
    path: PathBuf,
    start_len: u64,
}

impl StderrToLog {
    /// Appends fd 2 to `path` (created if missing) until the guard is dropped.
    pub fn start(path: &Path) -> io::Result<StderrToLog> {
        let log = OpenOptions::new().create(true).append(true).open(path)?;
        let start_len = log.metadata()?.len();
        // SAFETY: dup/dup2 on descriptors this process owns; the duplicate is owned by `saved`.
        let saved = unsafe {
            let fd = libc::dup(libc::STDERR_FILENO);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        if unsafe { libc::dup2(log.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let hook_fd = Arc::new(AtomicI32::new(saved.as_raw_fd()));
        let fd = hook_fd.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let saved = fd.load(Ordering::SeqCst);
            if saved >= 0 {
                unsafe { libc::dup2(saved, libc::STDERR_FILENO) };
            }
            previous(info);
        }));
        Ok(StderrToLog {
            saved,
            hook_fd,
            path: path.to_path_buf(),
            start_len,
        })
    }

    /// The bytes written to the log while this guard was active.
    pub fn written(&self) -> u64 {
        File::open(&self.path)
            .and_then(|f| f.metadata())
            .map(|m| m.len().saturating_sub(self.start_len))
            .unwrap_or(0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StderrToLog {
    fn drop(&mut self) {
        // The panic hook installed by start() stays (it wraps the previous one): disarm it first.
        self.hook_fd.store(-1, Ordering::SeqCst);
        unsafe { libc::dup2(self.saved.as_raw_fd(), libc::STDERR_FILENO) };
    }
}

/// Tests that redirect fd 2 take this first: two redirections at once would swap each other's
/// descriptors.
#[cfg(test)]
pub(crate) static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    fn write_fd2(s: &str) {
        unsafe { libc::write(libc::STDERR_FILENO, s.as_ptr().cast(), s.len()) };
    }

    #[test]
    fn fd2_goes_to_the_log_while_the_guard_lives_and_comes_back_after() {
        let _one_at_a_time = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("suggestive-stderr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tui-stderr.log");
        std::fs::write(&path, "earlier run\n").unwrap();
        let before = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_GETFL) };
        {
            let guard = StderrToLog::start(&path).unwrap();
            write_fd2("[W libtorch] a warning\n");
            assert_eq!(guard.written(), 23);
        }
        let log = std::fs::read_to_string(&path).unwrap();
        assert_eq!(log, "earlier run\n[W libtorch] a warning\n");
        // fd 2 is open again (on the original file), not closed and not the log.
        assert_eq!(
            unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_GETFL) },
            before
        );
        let after_len = std::fs::metadata(&path).unwrap().len();
        write_fd2("x");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), after_len);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
