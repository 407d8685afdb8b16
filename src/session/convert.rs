//! Converting a session of format 1 (one state file, event log, lock and checkpoint folder for
//! all repeats) to format 2 (a folder per repeat) when a run opens it. The old files stay until
//! the new ones are complete: the switch is the rewrite of the session's state.json, and a run
//! killed before it finds a format-1 session again, and converts it anew.

use std::fs::{self, File};
use std::path::Path;

use anyhow::{Context, Result};

use super::files::{write_atomic, Layout, SessionFiles};
use super::Session;

/// Converts `session` in place (it must be of format 1); afterwards it is of format 2.
pub fn to_per_repeat(session: &mut Session) -> Result<()> {
    let flat = SessionFiles::with_layout(&session.dir, Layout::Flat);
    let new = SessionFiles::new(&session.dir);
    // No run of an earlier version, which takes this lock, may write meanwhile.
    let _lock = flat.session_lock()?;
    let root = new.repeats_root();
    // Left by a conversion killed before its switch: the session is still of format 1.
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    for repeat in 0..session.config.experiment.repeats {
        let progress = session.state.progress_of(repeat);
        let files = flat.flat_files_of(repeat);
        if progress.done == 0 && progress.partial_epochs == 0 && files.is_empty() {
            continue;
        }
        for (from, to) in files {
            link_or_copy(&from, &to)?;
        }
        let state = session.state.repeat_state(repeat);
        let path = new.repeat_state(repeat);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_atomic(&path, &serde_json::to_vec_pretty(&state)?)?;
        sync_tree(path.parent().unwrap_or(&root));
    }
    sync_tree(&root);
    // The switch: from here on the session is of format 2.
    super::write_format_version(&new)?;
    session.layout = Layout::PerRepeat;
    for old in flat.flat_folders() {
        let _ = fs::remove_dir_all(old);
    }
    Ok(())
}

/// Makes `to` hold what `from` holds: a hard link (instant, no copy), or a copy where the file
/// system has none.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        File::open(to).and_then(|f| f.sync_all()).ok();
    }
    Ok(())
}

/// Syncs a folder and the folders in it (their entries: new names must survive a crash).
fn sync_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                sync_tree(&e.path());
            }
        }
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
