//! The attached dashboard's worker: it follows a session whose repeats run elsewhere (other
//! processes, a cluster's nodes) and reports what changes in its files, and where each repeat
//! runs. It reads only and takes no lock; the processes that run the repeats are untouched.

use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{select, Receiver, Sender};

use super::worker::{Command, Message, SessionWorker};
use crate::cluster::{placements, Placement};
use crate::data::Dataset;
use crate::session::events::{LoggedEvent, PickView};
use crate::session::follow::Follower;
use crate::session::pool::Pool;
use crate::session::state::SessionState;
use crate::session::Session;

/// How often the files are read again without a notification: a change made on another node
/// of a shared file system (NFS, Lustre) raises no inotify event here.
const REREAD: Duration = Duration::from_secs(2);
/// How often Slurm and the locks are asked where the repeats run.
const PLACES: Duration = Duration::from_secs(10);

/// What changed in an attached session's files.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The state read again (with each pick record's picks as a person reads them).
    pub state: Option<(SessionState, Vec<Vec<PickView>>)>,
    /// New events of the repeats' logs, each with its repeat (0-based).
    pub events: Vec<(usize, LoggedEvent)>,
    /// Where each repeat runs, when asked again.
    pub placements: Option<Vec<Placement>>,
}

/// Whether `session`'s dashboard should attach rather than run: an unfinished repeat is held
/// by a live process or queued or running in Slurm.
pub fn runs_elsewhere(session: &Session) -> bool {
    placements(session).is_ok_and(|p| p.iter().any(Placement::is_live))
}

/// Starts the worker that follows the session in `dir`.
pub fn start(
    dir: std::path::PathBuf,
    cache_root: std::path::PathBuf,
    out: Sender<Message>,
) -> SessionWorker {
    SessionWorker::spawn(out, move |rx, _control, out| {
        follow_thread(&dir, &cache_root, rx, out)
    })
}

fn follow_thread(
    dir: &std::path::Path,
    cache_root: &std::path::Path,
    rx: &Receiver<Command>,
    out: &Sender<Message>,
) -> Result<()> {
    let (mut follower, session) = Follower::open(dir)?;
    // Shown at once; the picks' names and the previews follow once the data set is loaded.
    let _ = out.send(Message::Loaded {
        config: Box::new(session.config.clone()),
        views: vec![Vec::new(); session.state.picks.len()],
        state: Box::new(session.state.clone()),
        // The device the runs reported; this process runs nothing.
        device: session.state.device.clone().unwrap_or_default(),
        steps_total: crate::session::plan::plan(&session.config).len(),
    });
    // The data set names the picks and draws the previews; without it (not reachable from
    // this machine) the curves and statistics still follow.
    // Names only: the labels are not needed.
    let ds = match session.load_cases(None, cache_root) {
        Ok(ds) => Some(ds),
        Err(e) => {
            let _ = out.send(Message::Event(crate::session::events::Event::Error {
                message: format!("{e:#}; picks are shown without names"),
            }));
            None
        }
    };
    let _ = out.send(Message::Followed(Box::new(Followed {
        state: Some((session.state.clone(), views(&session, ds.as_ref()))),
        events: Vec::new(),
        placements: None,
    })));
    let mut current = session;
    // Without inotify (or over its limit of watches) the timer alone does it.
    let (_watcher, wake) = crate::session::follow::wake_on_changes(dir, true);
    let mut asked_places: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        let changes = follower.poll();
        let places = asked_places
            .is_none_or(|at| at.elapsed() >= PLACES)
            .then(|| {
                asked_places = Some(Instant::now());
                placements(&current).ok()
            });
        let mut update = Followed {
            state: None,
            events: Vec::new(),
            placements: places.flatten(),
        };
        match changes {
            Ok(c) => {
                last_error = None;
                if let Some(s) = c.session {
                    update.state = Some((s.state.clone(), views(&s, ds.as_ref())));
                    current = s;
                    // The state moved: where things run may have too.
                    if update.placements.is_none() {
                        update.placements = placements(&current).ok();
                        asked_places = Some(Instant::now());
                    }
                }
                update.events = c.events;
            }
            // Said once, not at every look while it lasts.
            Err(e) => {
                let message = format!("{e:#} (tried again every {} s)", REREAD.as_secs());
                if last_error.as_ref() != Some(&message) {
                    let _ = out.send(Message::Event(crate::session::events::Event::Error {
                        message: message.clone(),
                    }));
                    last_error = Some(message);
                }
            }
        }
        if update.state.is_some() || !update.events.is_empty() || update.placements.is_some() {
            let _ = out.send(Message::Followed(Box::new(update)));
        }
        select! {
            recv(rx) -> cmd => match cmd {
                Ok(Command::Quit) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
            recv(wake) -> _ => {
                // A write comes as several notifications: take them as one.
                std::thread::sleep(Duration::from_millis(100));
                while wake.try_recv().is_ok() {}
            },
            default(REREAD) => {},
        }
    }
}

/// Each pick record's picks as a person reads them (empty without the data set, or when the
/// state does not fit it: its indices are not trusted then).
fn views(session: &Session, ds: Option<&Dataset>) -> Vec<Vec<PickView>> {
    let ds = ds.filter(|ds| session.check_state(ds).is_ok());
    session
        .state
        .picks
        .iter()
        .map(|rec| match (ds, session.state.repeats.get(rec.repeat)) {
            (Some(ds), Some(rd)) => {
                let pool = Pool::new(ds, rd, session.config.experiment.granularity);
                rec.picks.iter().map(|p| pool.pick_view(p)).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}
