//! Following a session that other processes write, on this machine or on a cluster's nodes
//! through a shared file system: the state is read again when a repeat's state file changes,
//! and each repeat's event log is read on from where the last look stopped. Nothing here
//! writes or takes a lock, so any number of followers can watch a running session.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::Arm;
use super::events::{Event, LoggedEvent, Phase};
use super::Session;

/// A folder watched for changes (inotify, through `notify`): each change sends `()` on the
/// receiver. `None` for the watcher where it cannot be had (no inotify, over its limit of
/// watches); the callers look again on a timer anyway, as a shared file system raises no event
/// for a change made on another machine. Keep the watcher alive while it is wanted.
pub fn wake_on_changes(
    dir: &Path,
    recursive: bool,
) -> (
    Option<notify::RecommendedWatcher>,
    crossbeam_channel::Receiver<()>,
) {
    use notify::Watcher;
    let (tx, wake) = crossbeam_channel::unbounded();
    let mode = if recursive {
        notify::RecursiveMode::Recursive
    } else {
        notify::RecursiveMode::NonRecursive
    };
    let watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .and_then(|mut w| {
        w.watch(dir, mode)?;
        Ok(w)
    })
    .ok();
    (watcher, wake)
}

/// What identifies a version of a file: state files are replaced by rename (a new inode), and
/// an append changes the length and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        len: m.len(),
        modified_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// An event log read up to `offset` (the end of its last whole line).
struct LogTail {
    path: PathBuf,
    /// The repeat whose log it is (a format-1 session has one log for all: events that carry
    /// a step index or a repeat say their own).
    repeat: usize,
    offset: u64,
    inode: Option<u64>,
}

impl LogTail {
    /// The whole lines appended since the last read. A line still being written stays for the
    /// next read; a log that was replaced or cut shorter is read again from its start.
    fn read_new(&mut self) -> Vec<LoggedEvent> {
        let Ok(mut f) = File::open(&self.path) else {
            return Vec::new();
        };
        let Ok(meta) = f.metadata() else {
            return Vec::new();
        };
        if self.inode != Some(meta.ino()) || meta.len() < self.offset {
            self.inode = Some(meta.ino());
            self.offset = 0;
        }
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        self.offset += end as u64 + 1;
        String::from_utf8_lossy(&bytes[..end])
            .lines()
            // A line a newer format wrote, or one a killed run cut short: skipped.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// What changed since the last look.
#[derive(Default)]
pub struct Changes {
    /// The session read again: some repeat's state file (or the session's) changed.
    pub session: Option<Session>,
    /// New events in the order each log holds them, with their repeat (0-based).
    pub events: Vec<(usize, LoggedEvent)>,
}

/// Reads a session's files as other processes write them.
pub struct Follower {
    dir: PathBuf,
    repeats: usize,
    steps_per_repeat: usize,
    /// The state files (the session's, then each repeat's) as last read.
    states: Vec<(PathBuf, Option<Stamp>)>,
    logs: Vec<LogTail>,
}

impl Follower {
    /// Reads the session in `dir`; the first `poll` gives every event logged so far.
    pub fn open(dir: &Path) -> Result<(Follower, Session)> {
        let session = Session::open(dir)?;
        let files = session.files();
        let repeats = session.config.experiment.repeats;
        let mut states = vec![files.state()];
        let mut logs: Vec<LogTail> = Vec::new();
        for r in 0..repeats {
            let state = files.repeat_state(r);
            if !states.contains(&state) {
                states.push(state);
            }
            let log = files.repeat_events(r);
            if !logs.iter().any(|l| l.path == log) {
                logs.push(LogTail {
                    path: log,
                    repeat: r,
                    offset: 0,
                    inode: None,
                });
            }
        }
        let follower = Follower {
            dir: dir.to_path_buf(),
            repeats,
            steps_per_repeat: session.steps_per_repeat().max(1),
            states: states.into_iter().map(|p| (p.clone(), stamp(&p))).collect(),
            logs,
        };
        Ok((follower, session))
    }

    /// The session folder (watch it, recursively, to know when to poll).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What changed since the last call. A state file caught between two writes is no
    /// problem (each is replaced whole by rename); one that cannot be read now is an error,
    /// and the next call tries again.
    pub fn poll(&mut self) -> Result<Changes> {
        let mut changes = Changes::default();
        let now: Vec<Option<Stamp>> = self.states.iter().map(|(p, _)| stamp(p)).collect();
        if now.iter().zip(&self.states).any(|(n, (_, old))| n != old) {
            changes.session = Some(Session::open(&self.dir)?);
            for ((_, old), n) in self.states.iter_mut().zip(now) {
                *old = n;
            }
        }
        for log in &mut self.logs {
            for e in log.read_new() {
                // An event about a repeat the session does not have is a damaged line, and is
                // skipped like one.
                match repeat_of(&e.event, self.steps_per_repeat) {
                    Some(r) if r >= self.repeats => {}
                    r => changes.events.push((r.unwrap_or(log.repeat), e)),
                }
            }
        }
        Ok(changes)
    }
}

/// The repeat an event is about, when it says.
fn repeat_of(e: &Event, steps_per_repeat: usize) -> Option<usize> {
    match e {
        Event::StepStarted { index, .. }
        | Event::EpochDone { index, .. }
        | Event::StepDone { index, .. } => Some(index / steps_per_repeat),
        Event::PicksMade { repeat, .. }
        | Event::Evaluated { repeat, .. }
        | Event::Manifold { repeat, .. } => Some(*repeat),
        _ => None,
    }
}

/// What a repeat is doing, as its event log tells: the step it is in, its epoch and loss, and
/// when it was last heard of.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Activity {
    pub step: Option<StepActivity>,
    /// The log's last word was a stop or the end: nothing is running it now.
    pub ended: bool,
    /// Seconds since the Unix epoch of the last event.
    pub last_event: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepActivity {
    pub index: usize,
    pub phase: Phase,
    pub arm: Option<Arm>,
    pub description: String,
    pub epoch: usize,
    pub epochs: usize,
    pub loss: Option<f64>,
}

impl Activity {
    /// Takes in the next event of this repeat's log.
    pub fn apply(&mut self, e: &LoggedEvent) {
        self.last_event = Some(e.time);
        match &e.event {
            Event::Started { .. } => self.ended = false,
            Event::StepStarted {
                index,
                phase,
                arm,
                description,
                ..
            } => {
                self.ended = false;
                self.step = Some(StepActivity {
                    index: *index,
                    phase: *phase,
                    arm: *arm,
                    description: description.clone(),
                    epoch: 0,
                    epochs: 0,
                    loss: None,
                });
            }
            Event::EpochDone {
                index,
                epoch,
                epochs,
                loss,
                ..
            } => {
                if let Some(s) = self.step.as_mut().filter(|s| s.index == *index) {
                    s.epoch = *epoch;
                    s.epochs = *epochs;
                    s.loss = Some(*loss);
                }
            }
            Event::StepDone { index, .. }
                if self.step.as_ref().is_some_and(|s| s.index == *index) =>
            {
                self.step = None;
            }
            Event::Stopped { .. } | Event::Finished { .. } | Event::Error { .. } => {
                self.ended = true;
                self.step = None;
            }
            _ => {}
        }
    }

    /// `train proposed round 2 · epoch 3/10 · loss 0.4120`, or `between steps`.
    pub fn describe(&self) -> String {
        match &self.step {
            Some(s) if s.epochs > 0 => format!(
                "{} · epoch {}/{} · loss {}",
                s.description,
                s.epoch,
                s.epochs,
                s.loss.map_or("–".into(), |l| format!("{l:.4}"))
            ),
            Some(s) => s.description.clone(),
            None if self.ended => "stopped".into(),
            None if self.last_event.is_some() => "between steps".into(),
            None => "no events yet".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(event: Event, time: f64) -> String {
        let mut l = serde_json::to_string(&LoggedEvent {
            format_version: 1,
            time,
            event,
        })
        .unwrap();
        l.push('\n');
        l
    }

    fn epoch(index: usize, epoch: usize) -> Event {
        Event::EpochDone {
            index,
            phase: Phase::Vae,
            arm: None,
            epoch,
            epochs: 4,
            loss: 0.5,
            checkpoint_s: 0.0,
            validation: None,
        }
    }

    #[test]
    fn a_log_is_read_on_by_whole_lines_and_again_from_the_start_when_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.jsonl");
        let mut tail = LogTail {
            path: path.clone(),
            repeat: 0,
            offset: 0,
            inode: None,
        };
        assert!(tail.read_new().is_empty(), "no log yet");
        let first = line(epoch(1, 1), 1.0);
        let second = line(epoch(1, 2), 2.0);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        // One whole line and half of the next: only the whole one is read.
        f.write_all(first.as_bytes()).unwrap();
        f.write_all(&second.as_bytes()[..10]).unwrap();
        let got = tail.read_new();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, epoch(1, 1));
        assert!(tail.read_new().is_empty(), "nothing new");
        // The rest of the line arrives, with a damaged line after it (skipped).
        f.write_all(&second.as_bytes()[10..]).unwrap();
        f.write_all(b"{not json\n").unwrap();
        let got = tail.read_new();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, epoch(1, 2));
        // Replaced by a new file (a new inode): read from its start.
        let other = tmp.path().join("new.jsonl");
        std::fs::write(&other, line(epoch(1, 3), 3.0)).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let got = tail.read_new();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, epoch(1, 3));
    }

    #[test]
    fn activity_follows_the_step_its_epochs_and_the_stop() {
        let mut a = Activity::default();
        assert_eq!(a.describe(), "no events yet");
        let ev = |e, t| LoggedEvent {
            format_version: 1,
            time: t,
            event: e,
        };
        a.apply(&ev(
            Event::StepStarted {
                index: 1,
                total: 10,
                phase: Phase::Vae,
                arm: None,
                description: "train the VAE".into(),
            },
            1.0,
        ));
        a.apply(&ev(epoch(1, 2), 2.0));
        // An epoch of another step (a stale line) does not move this one.
        a.apply(&ev(epoch(0, 3), 2.5));
        assert_eq!(a.describe(), "train the VAE · epoch 2/4 · loss 0.5000");
        assert_eq!(a.last_event, Some(2.5));
        a.apply(&ev(
            Event::Stopped {
                steps_done: 1,
                steps_total: 10,
            },
            3.0,
        ));
        assert!(a.ended);
        assert_eq!(a.describe(), "stopped");
    }
}
