//! A round's inbox: the files annotators drop there, offered for import once whole, refused
//! ones moved to `rejected/` without replacing any, and the watch that wakes a waiting run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::annotations::{import, Verdict, REJECTED};
use super::files::write_atomic;
use super::Session;
use crate::data::Dataset;

/// Offers every file in round `round`'s inbox. A counted file leaves the inbox (its copy is in
/// `labels/`); a refused one moves to `rejected/` with a note beside it saying why.
pub fn take_inbox(
    session: &mut Session,
    ds: &Dataset,
    repeat: usize,
    round: usize,
    replace: bool,
) -> Result<Vec<(PathBuf, Verdict)>> {
    let package = session.files().package(round);
    let inbox = session.files().inbox(round);
    let mut offered: Vec<PathBuf> = match std::fs::read_dir(&inbox) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            // Files still being written wait: hidden or temporary ones, and any changed in
            // the last second.
            .filter(|p| settled(p))
            .filter(|p| {
                p.is_file()
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        !n.starts_with('.') && (n.ends_with(".nii.gz") || n.ends_with(".nii"))
                    })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    offered.sort();
    let mut out = Vec::new();
    for file in offered {
        let verdict = import(session, ds, repeat, round, &file, replace)?;
        match &verdict {
            Verdict::Counted { .. } | Verdict::AlreadyCounted { .. } => {
                let _ = std::fs::remove_file(&file);
            }
            Verdict::Refused(why) => {
                let rejected = package.join(REJECTED);
                std::fs::create_dir_all(&rejected)?;
                let to = move_without_replacing(&file, &rejected)?;
                let mut note = to.file_name().unwrap_or_default().to_os_string();
                note.push(".why.txt");
                write_atomic(&rejected.join(note), format!("{why}\n").as_bytes())?;
            }
        }
        out.push((file, verdict));
    }
    Ok(out)
}

/// Moves `file` into `dir` under its own name, or with `.2`, `.3`, … before its NIfTI
/// extension when that is taken (`P1_seg.2.nii.gz`): nothing in `dir` is ever replaced (a hard
/// link refuses an existing name, then the original goes). Returns where it went.
fn move_without_replacing(file: &Path, dir: &Path) -> Result<PathBuf> {
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let (stem, ext) = [".nii.gz", ".nii"]
        .iter()
        .find_map(|e| name.strip_suffix(e).map(|s| (s.to_string(), *e)))
        .unwrap_or((name.clone(), ""));
    for k in 1.. {
        let to = if k == 1 {
            dir.join(&name)
        } else {
            dir.join(format!("{stem}.{k}{ext}"))
        };
        match std::fs::hard_link(file, &to) {
            Ok(()) => {
                std::fs::remove_file(file)
                    .with_context(|| format!("cannot remove {}", file.display()))?;
                return Ok(to);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot move {} to {}", file.display(), to.display()))
            }
        }
    }
    unreachable!("a free name is found")
}

/// younger but not growing over a moment's look.
fn settled(path: &Path) -> bool {
    let look = || std::fs::metadata(path).ok();
    let Some(before) = look() else {
        return false;
    };
    let old = before
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= std::time::Duration::from_secs(1));
    if old {
        return true;
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    look().is_some_and(|after| {
        after.len() == before.len() && after.modified().ok() == before.modified().ok()
    })
}

/// Watches a round's inbox for files arriving (inotify through `notify`, and a look at its
/// listing at every wait, for shared file systems whose changes made elsewhere raise no event).
pub struct InboxWatch {
    dir: PathBuf,
    wake: crossbeam_channel::Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    seen: Vec<(std::ffi::OsString, u64)>,
}

impl InboxWatch {
    pub fn new(dir: &Path) -> InboxWatch {
        let (watcher, wake) = super::follow::wake_on_changes(dir, false);
        InboxWatch {
            dir: dir.to_path_buf(),
            wake,
            _watcher: watcher,
            // Empty: a segmentation already there (arrived since the inbox was last taken)
            // wakes the first wait.
            seen: Vec::new(),
        }
    }

    /// Waits up to `timeout` for the inbox to change; true once it has, and its files have
    /// stopped growing (a file still being copied is taken when whole).
    pub fn wait(&mut self, timeout: std::time::Duration) -> bool {
        let _ = self.wake.recv_timeout(timeout);
        if listing(&self.dir) == self.seen {
            return false;
        }
        // Until the files stop growing, for a few seconds at most (a stop waits no longer).
        let mut last = listing(&self.dir);
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            while self.wake.try_recv().is_ok() {}
            let now = listing(&self.dir);
            if now == last {
                break;
            }
            last = now;
        }
        self.seen = last;
        true
    }
}

/// The segmentations in the inbox (NIfTI files, not hidden) with their sizes, sorted.
fn listing(dir: &Path) -> Vec<(std::ffi::OsString, u64)> {
    let mut l: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        !n.starts_with('.') && (n.ends_with(".nii.gz") || n.ends_with(".nii"))
                    })
                })
                .map(|e| (e.file_name(), e.metadata().map_or(0, |m| m.len())))
                .collect()
        })
        .unwrap_or_default();
    l.sort();
    l
}
