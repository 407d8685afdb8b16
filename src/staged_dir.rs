//! A folder built next to its final place and moved there whole when complete: a crash or an
//! error leaves either the old folder or the new one, never a half-written one. The data
//! cache and the phantom generator build their folders this way.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// `DEST.tmp-PID` while it is built; dropped without `commit`, it is removed.
pub struct StagedDir {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl StagedDir {
    /// Creates the temporary folder (and `dest`'s parent), after clearing what builds of
    /// `dest` by processes that died left beside it.
    pub fn create(dest: &Path) -> io::Result<StagedDir> {
        let parent = parent_of(dest);
        fs::create_dir_all(&parent)?;
        remove_stale_siblings(dest);
        let tmp = sibling(dest, "tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp)?;
        Ok(StagedDir {
            tmp,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the folder into place, replacing `dest` (moved aside first: a folder cannot be
    /// renamed over a non-empty one), and syncs the parent.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        let old = sibling(&self.dest, "old");
        if self.dest.exists() {
            fs::rename(&self.dest, &old)?;
        }
        fs::rename(&self.tmp, &self.dest)?;
        let _ = fs::remove_dir_all(&old);
        let _ = File::open(parent_of(&self.dest)).and_then(|d| d.sync_all());
        self.done = true;
        Ok(self.dest.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `DEST.TAG-PID` of this process.
fn sibling(dest: &Path, tag: &str) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!("{name}.{tag}-{}", std::process::id()))
}

/// Removes `DEST.tmp-PID` and `DEST.old-PID` folders of processes that are gone (a killed
/// process cannot clean up after itself), and this process's own. Nothing else beside `dest`
/// is touched (it may be a user's folder).
fn remove_stale_siblings(dest: &Path) {
    let Some(name) = dest.file_name() else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent_of(dest)) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let pid = ["tmp", "old"]
            .iter()
            .find_map(|tag| n.strip_prefix(&format!("{}.{tag}-", name.to_string_lossy())))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive || pid == std::process::id() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}
