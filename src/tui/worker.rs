//! Background threads of the TUI. The session worker owns the runner (libtorch tensors are not
//! Sync, so models live on that thread) and reports plain data; the preview worker renders slice
//! images and projects latents on request, latest request wins. The UI thread never waits.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use std::panic::{catch_unwind, AssertUnwindSafe, UnwindSafe};

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use image::{Rgb, RgbImage};
use tch::nn::VarStore;
use tch::Kind;

use crate::data::Dataset;
use crate::engine::nets::UNet;
use crate::engine::{batch, device};
use crate::session::annotations;
use crate::session::config::{Arm, SessionConfig};
use crate::session::events::{Event, PickView};
use crate::session::plan::{previous_model, Step};
use crate::session::pool::Pool;
use crate::session::run::{Control, Outcome, Runner};
use crate::session::state::SessionState;
use crate::session::Session;

/// The names of the worker threads (their panics are caught and reported to the UI; the panic
/// hook leaves the terminal alone for every thread but the interface's, see `tui::run`).
pub const SESSION_THREAD: &str = "session";
pub const PREVIEW_THREAD: &str = "preview";

/// Runs `f`, turning a panic into an error that carries the panic's message.
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T> + UnwindSafe) -> Result<T> {
    catch_unwind(f).unwrap_or_else(|payload| Err(panic_error(payload)))
}

fn panic_error(payload: Box<dyn std::any::Any + Send>) -> anyhow::Error {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    anyhow!(
        "internal error (a bug): the {} worker panicked: {msg}",
        std::thread::current().name().unwrap_or("background")
    )
}

/// What the UI asks of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run until the current round is done for every arm, then pause.
    Step,
    /// Run to the end.
    RunAll,
    /// Stop at the next safe point (the end of the current batch).
    Pause,
    /// Stop at the next safe point and end the thread.
    Quit,
}

/// What a session reports to the UI.
#[derive(Debug, Clone)]
pub enum Message {
    Loaded {
        config: Box<SessionConfig>,
        state: Box<SessionState>,
        views: Vec<Vec<PickView>>,
        device: String,
        steps_total: usize,
    },
    Event(Event),
    /// Attached to a session that runs elsewhere: what changed in its files.
    Followed(Box<super::watch::Followed>),
    /// Labelled by people: the round's worklist and each case's state, when the run waits.
    Worklist {
        round: usize,
        inbox: PathBuf,
        rows: Vec<annotations::WorkRow>,
    },
    /// The worker started a run by itself (files arrived in the inbox).
    Busy,
    /// The run paused (round done, or asked to) or finished.
    Idle(Outcome),
    Failed(String),
}

pub struct SessionWorker {
    pub commands: Sender<Command>,
    pub control: Control,
    handle: Option<JoinHandle<()>>,
}

impl SessionWorker {
    pub fn start(
        dir: PathBuf,
        cache_root: PathBuf,
        device: Option<String>,
        out: Sender<Message>,
    ) -> SessionWorker {
        SessionWorker::spawn(out, move |rx, c, out| {
            session_thread(&dir, &cache_root, device.as_deref(), rx, c, out)
        })
    }

    /// Runs `body` on the session thread. An error, or a panic, ends the thread with a
    /// `Message::Failed` (the UI keeps going; its channel then disconnects).
    pub fn spawn(
        out: Sender<Message>,
        body: impl FnOnce(&Receiver<Command>, &Control, &Sender<Message>) -> Result<()> + Send + 'static,
    ) -> SessionWorker {
        let (tx, rx) = crossbeam_channel::unbounded();
        let control = Control::default();
        let c = control.clone();
        let handle = std::thread::Builder::new()
            .name(SESSION_THREAD.into())
            .spawn(move || {
                let result = catch_panic(AssertUnwindSafe(|| body(&rx, &c, &out)));
                if let Err(e) = result {
                    let _ = out.send(Message::Failed(format!("{e:#}")));
                }
            })
            .expect("spawn the session thread");
        SessionWorker {
            commands: tx,
            control,
            handle: Some(handle),
        }
    }

    pub fn send(&self, cmd: Command) {
        if matches!(cmd, Command::Pause | Command::Quit) {
            self.control.stop.store(true, Ordering::Relaxed);
        }
        let _ = self.commands.send(cmd);
    }

    /// Asks the thread to stop at its next safe point and waits for it.
    pub fn shutdown(&mut self) {
        self.send(Command::Quit);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for SessionWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn session_thread(
    dir: &std::path::Path,
    cache_root: &std::path::Path,
    device: Option<&str>,
    rx: &Receiver<Command>,
    control: &Control,
    out: &Sender<Message>,
) -> Result<()> {
    let session = Session::open(dir)?;
    let mut runner = Runner::open(session, None, cache_root, device)?;
    let views = runner
        .session()
        .state
        .picks
        .iter()
        .map(|r| runner.views(r))
        .collect();
    let steps_total = crate::session::plan::plan(&runner.session().config).len();
    let _ = out.send(Message::Loaded {
        config: Box::new(runner.session().config.clone()),
        state: Box::new(runner.session().state.clone()),
        views,
        device: device::describe(runner.device()),
        steps_total,
    });
    let last_arm: Option<Arm> = runner
        .session()
        .config
        .experiment
        .strategies()
        .last()
        .copied();
    // A run to start again by itself: labelled by people, once files arrive in the inbox.
    let mut again: Option<Command> = None;
    loop {
        let cmd = match again.take() {
            Some(cmd) => cmd,
            None => match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => return Ok(()),
            },
        };
        #[cfg(debug_assertions)]
        if cmd != Command::Quit {
            test_panic(SESSION_THREAD);
        }
        let step_mode = match cmd {
            Command::Quit => return Ok(()),
            Command::Pause => continue,
            Command::Step => true,
            Command::RunAll => false,
        };
        control.stop.store(false, Ordering::Relaxed);
        let stop = control.stop.clone();
        let outcome = runner.run(control, &mut |ev| {
            // A round is done when the last arm has been evaluated (round 0: the shared start);
            // the full-data reference is a step of its own.
            if step_mode {
                if let Event::Evaluated { arm, .. } = ev {
                    if Some(*arm) == last_arm || *arm == Arm::Full {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            let _ = out.send(Message::Event(ev.clone()));
        });
        match outcome {
            Ok(waiting @ Outcome::Waiting { round, .. }) => {
                let _ = out.send(worklist_message(runner.session(), round));
                let _ = out.send(Message::Idle(waiting));
                // Wait for the annotators: a file in the inbox runs the round again (it
                // takes the files), as do n and r; q ends the thread, p stops waiting.
                let inbox = runner.session().files().inbox(round);
                let mut watch = annotations::InboxWatch::new(&inbox);
                again = loop {
                    match rx.try_recv() {
                        Ok(Command::Quit) => return Ok(()),
                        Ok(Command::Pause) => break None,
                        Ok(c) => break Some(c),
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return Ok(()),
                        Err(crossbeam_channel::TryRecvError::Empty) => {}
                    }
                    if watch.wait(std::time::Duration::from_millis(300)) {
                        let _ = out.send(Message::Busy);
                        break Some(cmd);
                    }
                };
                continue;
            }
            Ok(o) => {
                let _ = out.send(Message::Idle(o));
            }
            Err(e) => {
                let _ = out.send(Message::Failed(format!("{e:#}")));
            }
        }
        // A Quit that arrived while running ends the thread now.
        while let Ok(cmd) = rx.try_recv() {
            if cmd == Command::Quit {
                return Ok(());
            }
        }
    }
}

/// Round `round`'s worklist with each case's state, for the dashboard.
fn worklist_message(session: &Session, round: usize) -> Message {
    match annotations::work_rows(session, 0, round) {
        Ok(rows) => Message::Worklist {
            round,
            inbox: session.files().inbox(round),
            rows,
        },
        Err(e) => Message::Failed(format!("{e:#}")),
    }
}

/// Debug builds only: `SUGGESTIVE_TEST_PANIC=session` (or `preview`) makes that worker panic when
/// asked to work, so the tests can check that the interface survives a worker's panic.
#[cfg(debug_assertions)]
fn test_panic(thread: &str) {
    if std::env::var("SUGGESTIVE_TEST_PANIC").is_ok_and(|v| v == thread) {
        panic!("SUGGESTIVE_TEST_PANIC={thread}");
    }
}

/// A preview to render: a pick of an arm after a round, with the sample it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewRequest {
    pub repeat: usize,
    pub stage: usize,
    pub arm: Arm,
    pub round: usize,
    pub sample: usize,
    pub source: Option<usize>,
    /// Channel index into the session's modalities.
    pub channel: usize,
}

#[derive(Debug, Clone)]
pub enum PreviewReply {
    Image {
        request: PreviewRequest,
        image: RgbImage,
        caption: String,
    },
    /// Latents of every pool sample of a repeat (for the scatter).
    Latents {
        repeat: usize,
        latents: Vec<Vec<f64>>,
        initial: Vec<usize>,
    },
    Failed(String),
}

#[derive(Debug, Clone)]
pub enum PreviewJob {
    Image(PreviewRequest),
    Latents(usize),
}

/// Renders previews and loads latents off the UI thread. Requests pile up while it works; it
/// serves the newest one of each kind.
pub fn start_preview_worker(
    dir: PathBuf,
    cache_root: PathBuf,
    jobs: Receiver<PreviewJob>,
    out: Sender<PreviewReply>,
) -> JoinHandle<()> {
    spawn_preview_worker(jobs, out, move || {
        let (dir, cache_root) = (dir.clone(), cache_root.clone());
        // The data set with the session's labels: reloaded when the settings or (labelled by
        // people) the counted segmentations change.
        let mut ctx: Option<(SessionConfig, Vec<String>, Dataset)> = None;
        let mut net: Option<LoadedNet> = None;
        move |latest_image: Option<PreviewRequest>, latest_latents: Option<usize>| {
            // Reopen the session for each batch of jobs: the runner keeps writing its state.
            let session = Session::open(&dir)?;
            // Checksums: a replaced segmentation keeps the count.
            let labels: Vec<String> = session
                .state
                .repeats
                .iter()
                .flat_map(|d| {
                    let test = std::iter::once(d.test.len().to_string());
                    test.chain(d.annotations.iter().map(|a| a.checksum.clone()))
                })
                .collect();
            if ctx
                .as_ref()
                .map(|(config, n, _)| *config != session.config || *n != labels)
                .unwrap_or(true)
            {
                let ds = session.load_dataset(None, &cache_root)?;
                ctx = Some((session.config.clone(), labels, ds));
                net = None;
            }
            let (_, _, ds) = ctx.as_ref().expect("set above");
            // The state was read again: its indices are checked again before any pool is built.
            session.check_state(ds)?;
            let mut replies = Vec::new();
            if let Some(repeat) = latest_latents {
                let initial = crate::session::plan::stages(&session.config)
                    .first()
                    .map(|st| st.initial)
                    .unwrap_or(0);
                let order = session
                    .state
                    .repeats
                    .get(repeat)
                    .map(|r| r.order.iter().take(initial).copied().collect())
                    .unwrap_or_default();
                replies.push(PreviewReply::Latents {
                    repeat,
                    latents: Pool::new(
                        ds,
                        session
                            .state
                            .repeats
                            .get(repeat)
                            .context("no such repeat yet")?,
                        session.config.experiment.granularity,
                    )
                    .sample_latents(&session.files().latents(repeat))?,
                    initial: order,
                });
            }
            if let Some(req) = latest_image {
                let (image, caption) = render_preview(&session, ds, &req, &mut net)?;
                replies.push(PreviewReply::Image {
                    request: req,
                    image,
                    caption,
                });
            }
            Ok(replies)
        }
    })
}

/// The preview thread's loop: `make()` gives the handler (with its caches), which gets the newest
/// image request and the newest latents request of each batch. An error, or a panic, becomes a
/// `PreviewReply::Failed` and the thread goes on; after a panic the handler is made afresh (its
/// caches may be half-made).
pub fn spawn_preview_worker<H>(
    jobs: Receiver<PreviewJob>,
    out: Sender<PreviewReply>,
    make: impl Fn() -> H + Send + 'static,
) -> JoinHandle<()>
where
    H: FnMut(Option<PreviewRequest>, Option<usize>) -> Result<Vec<PreviewReply>>,
{
    std::thread::Builder::new()
        .name(PREVIEW_THREAD.into())
        .spawn(move || {
            let mut handler = make();
            while let Ok(first) = jobs.recv() {
                let mut latest_image = None;
                let mut latest_latents = None;
                for job in std::iter::once(first).chain(jobs.try_iter()) {
                    match job {
                        PreviewJob::Image(r) => latest_image = Some(r),
                        PreviewJob::Latents(r) => latest_latents = Some(r),
                    }
                }
                let reply = match catch_unwind(AssertUnwindSafe(|| {
                    handler(latest_image, latest_latents)
                })) {
                    Ok(r) => r,
                    Err(payload) => {
                        handler = make();
                        Err(panic_error(payload))
                    }
                };
                let replies =
                    reply.unwrap_or_else(|e| vec![PreviewReply::Failed(format!("{e:#}"))]);
                for r in replies {
                    if out.send(r).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("spawn the preview thread")
}

/// The slice to show for a sample: image-wise the slice itself; patient-wise its slice with the
/// most tumour.
fn display_slice(pool: &Pool, sample: usize) -> usize {
    let slices = pool.sample_slices(&[sample]);
    slices
        .iter()
        .copied()
        .max_by_key(|&s| {
            (
                pool.ds.mask(s).iter().filter(|&&m| m != 0).count(),
                std::cmp::Reverse(s),
            )
        })
        .unwrap_or(slices[0])
}

/// The pick (with its context slices, image-wise) and its source, side by side: the chosen
/// modality in grey, ground truth outlined in red, the arm's current prediction in cyan.
fn render_preview(
    s: &Session,
    ds: &Dataset,
    req: &PreviewRequest,
    net: &mut Option<LoadedNet>,
) -> Result<(RgbImage, String)> {
    let rd = s
        .state
        .repeats
        .get(req.repeat)
        .context("no such repeat yet")?;
    let pool = Pool::new(ds, rd, s.config.experiment.granularity);
    let centre = display_slice(&pool, req.sample);
    let info = ds.patient_of(centre);
    let mut tiles: Vec<usize> = Vec::new();
    if s.config.experiment.granularity == crate::session::config::Granularity::Image {
        for n in [centre.wrapping_sub(1), centre, centre + 1] {
            if info.slice_range().contains(&n) {
                tiles.push(n);
            }
        }
    } else {
        tiles.push(centre);
    }
    let source = req.source.map(|src| display_slice(&pool, src));
    let all: Vec<usize> = tiles.iter().copied().chain(source).collect();
    let pred = predict(s, ds, req, &all, net).ok();
    let size = ds.size() as u32;
    let gap = 2;
    let mut img = RgbImage::new(all.len() as u32 * (size + gap) - gap, size);
    for (k, &slice) in all.iter().enumerate() {
        let x0 = k as u32 * (size + gap);
        draw_slice(
            &mut img,
            x0,
            ds,
            slice,
            req.channel,
            pred.as_ref().map(|p| &p[k][..]),
        );
    }
    let mut caption = format!("{} slice {}", info.id, centre - info.first_slice);
    if tiles.len() > 1 {
        caption += " (with context)";
    }
    if let Some(src) = source {
        let si = ds.patient_of(src);
        caption += &format!("  ← from {} slice {}", si.id, src - si.first_slice);
    }
    Ok((img, caption))
}

/// The UNet of one checkpoint file, kept between previews: browsing picks of one round asks
/// for the same model again and again, and at the paper's size a load is ~120 MB from disk.
struct LoadedNet {
    /// The file and its modification time and length when loaded (checkpoints are replaced
    /// by rename, so a rewrite changes them).
    file: (PathBuf, Option<std::time::SystemTime>, u64),
    _vs: VarStore,
    net: UNet,
}

fn file_identity(path: &std::path::Path) -> (PathBuf, Option<std::time::SystemTime>, u64) {
    let meta = std::fs::metadata(path).ok();
    (
        path.to_path_buf(),
        meta.as_ref().and_then(|m| m.modified().ok()),
        meta.map_or(0, |m| m.len()),
    )
}

/// Thresholded predictions of the arm's latest model for `slices`.
fn predict(
    s: &Session,
    ds: &Dataset,
    req: &PreviewRequest,
    slices: &[usize],
    cache: &mut Option<LoadedNet>,
) -> Result<Vec<Vec<u8>>> {
    // The round's own model once it is trained, the one it started from before.
    let files = s.files();
    let trained = files.checkpoint(&Step::Train {
        repeat: req.repeat,
        stage: req.stage,
        arm: req.arm,
        round: req.round,
    });
    let path = if trained.exists() {
        trained
    } else {
        files.checkpoint(&previous_model(req.repeat, req.stage, req.arm, req.round))
    };
    let dev = tch::Device::Cpu;
    let file = file_identity(&path);
    if cache.as_ref().is_none_or(|c| c.file != file) {
        let mut vs = VarStore::new(dev);
        // Under the generator's lock: the run's worker may be initialising a network meanwhile.
        let net = crate::engine::nets::seeded(0, || {
            UNet::new(&vs.root(), ds.channels() as i64, &s.config.unet.net())
        });
        vs.load(&path)
            .with_context(|| format!("cannot load {}", path.display()))?;
        *cache = Some(LoadedNet { file, _vs: vs, net });
    }
    let net = &cache.as_ref().expect("loaded above").net;
    let _g = tch::no_grad_guard();
    let x = batch::images(ds, slices, dev);
    let p = net
        .forward_t(&x, false)
        .gt(0.0)
        .to_kind(Kind::Uint8)
        .reshape([slices.len() as i64, -1]);
    let flat: Vec<u8> = Vec::try_from(p.reshape([-1]))?;
    Ok(flat
        .chunks(ds.size() * ds.size())
        .map(|c| c.to_vec())
        .collect())
}

fn draw_slice(
    img: &mut RgbImage,
    x0: u32,
    ds: &Dataset,
    slice: usize,
    channel: usize,
    pred: Option<&[u8]>,
) {
    let n = ds.size();
    let plane = &ds.image(slice)[channel.min(ds.channels() - 1) * n * n..][..n * n];
    let vals: Vec<f32> = plane.iter().map(|v| v.to_f32()).collect();
    let (lo, hi) = (-2.0f32, 3.0f32); // z-scored intensities
    for y in 0..n {
        for x in 0..n {
            let g = (((vals[y * n + x] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0) as u8;
            img.put_pixel(x0 + x as u32, y as u32, Rgb([g, g, g]));
        }
    }
    let outline = |m: &dyn Fn(usize, usize) -> bool, colour: Rgb<u8>, img: &mut RgbImage| {
        for y in 0..n {
            for x in 0..n {
                if m(x, y)
                    && !(x > 0
                        && m(x - 1, y)
                        && x + 1 < n
                        && m(x + 1, y)
                        && y > 0
                        && m(x, y - 1)
                        && y + 1 < n
                        && m(x, y + 1))
                {
                    img.put_pixel(x0 + x as u32, y as u32, colour);
                }
            }
        }
    };
    let truth = ds.mask(slice);
    if let Some(p) = pred {
        outline(&|x, y| p[y * n + x] != 0, Rgb([0, 220, 255]), img);
    }
    outline(&|x, y| truth[y * n + x] != 0, crate::preview::OUTLINE, img);
}
