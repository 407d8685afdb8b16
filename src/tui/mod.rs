//! The interactive terminal interface: a session browser and a live dashboard.
//!
//! Threads (as gitui and trippy do it): the UI thread owns the terminal and the `Dashboard`
//! state; an input thread forwards terminal events; the session worker runs the engine; the
//! preview worker renders images. All meet in one `select!` over channels; the UI redraws only
//! after something happened (at most ~30 frames a second), and sleeps otherwise.

pub mod app;
pub mod browser;
mod compare;
mod keys;
pub mod latent;
pub mod progress;
pub mod stderr_log;
pub mod theme;
pub mod ui;
pub mod watch;
pub mod worker;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use crossbeam_channel::{select, Receiver};
use crossterm::event::{Event as TermEvent, KeyEventKind};
use ratatui_image::picker::{Picker, ProtocolType};

use app::{Dashboard, RunState};
use browser::{Action, Browser};
use theme::Theme;
use ui::ImageState;
use worker::{PreviewJob, SessionWorker};

/// How images are drawn in the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageProtocol {
    /// Ask the terminal (kitty, sixel, iTerm2), half-blocks when it answers nothing.
    Auto,
    Halfblocks,
    Sixel,
    Kitty,
    Iterm2,
}

pub struct TuiOptions {
    pub session: Option<PathBuf>,
    pub sessions_dir: PathBuf,
    pub cache_root: PathBuf,
    pub theme: String,
    pub images: ImageProtocol,
    pub device: Option<String>,
    /// Attach to the session (follow it, run nothing) whatever runs it.
    pub watch: bool,
}

const FRAME: Duration = Duration::from_millis(33);

pub fn run(opts: TuiOptions) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("`suggestive tui` needs a terminal, and stdout is not one; for scripts and batch jobs use `suggestive run SESSION` (add --jsonl for machine-readable events)");
    }
    let picker = make_picker(opts.images);
    let (theme, theme_msg) = Theme::load(&opts.theme, theme::truecolor_terminal());
    // ratatui::init enters raw mode and the alternate screen, and installs a panic hook that
    // restores the terminal before the panic message is printed.
    let mut terminal = ratatui::init();
    // After ratatui's hook is installed, so that on a panic stderr is back before the terminal
    // is restored and the message printed.
    let log_path = opts.sessions_dir.join("tui-stderr.log");
    let _ = std::fs::create_dir_all(&opts.sessions_dir);
    let stderr_log = stderr_log::StderrToLog::start(&log_path).ok();
    // Outermost: only a panic on this (the interface's) thread restores the terminal. One on
    // any other thread (the workers, the threads they use, such as the cache build's) is
    // caught by its worker and shown in the interface, which stays up; the hooks below would
    // restore the terminal under it (raw mode off, so keys no longer arrive). Its message
    // goes to the log instead (when stderr is one).
    let to_log = stderr_log.is_some();
    let ui_thread = std::thread::current().id();
    let inner_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != ui_thread {
            if to_log {
                let thread = std::thread::current();
                eprintln!("thread '{}' {info}", thread.name().unwrap_or("<unnamed>"));
            }
        } else {
            inner_hook(info);
        }
    }));
    let keys = spawn_input();
    let result = (|| -> Result<()> {
        // Some terminals (tmux among them) show the alternate screen with what the pane held
        // before; ratatui only draws the cells it changes, so clear it first. (Not
        // `Terminal::clear`: it asks the terminal for the cursor position, and one that never
        // answers fails it.)
        ratatui::backend::Backend::clear(terminal.backend_mut())?;
        let mut target = opts.session.clone();
        let mut browser = Browser::new(opts.sessions_dir.clone());
        browser.message = theme_msg.clone();
        loop {
            let (dir, from_browser) = match target.take() {
                Some(d) => (d, false),
                None => (
                    loop {
                        terminal.draw(|f| browser.draw(f, &theme))?;
                        match keys.recv() {
                            Ok(TermEvent::Key(k)) if k.kind == KeyEventKind::Press => {
                                match browser.on_key(k) {
                                    Some(Action::Open(d)) => break d,
                                    Some(Action::Quit) => return Ok(()),
                                    None => {}
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return Ok(()),
                        }
                    },
                    true,
                ),
            };
            let ui = Ui {
                terminal: &mut terminal,
                keys: &keys,
                opts: &opts,
                theme: &theme,
                theme_msg: theme_msg.as_deref(),
                picker: &picker,
            };
            let back_to_browser = dashboard(ui, dir, from_browser)?;
            if !back_to_browser {
                return Ok(());
            }
            browser.refresh();
        }
    })();
    ratatui::restore();
    if let Some(log) = stderr_log {
        let written = log.written();
        let path = log.path().to_path_buf();
        drop(log);
        if written > 0 {
            eprintln!(
                "libraries wrote {written} bytes to stderr while the interface ran: {}",
                path.display()
            );
        }
    }
    result
}

fn make_picker(p: ImageProtocol) -> Picker {
    let mut picker = match p {
        ImageProtocol::Halfblocks => Picker::halfblocks(),
        // Asking the terminal must happen before raw mode and the alternate screen. It waits
        // for the answer with poll() and leaves no reader behind, so a terminal that never
        // answers (screen, a Linux console) costs its timeout and gets half-blocks.
        _ => with_terminal_mode_kept(|| {
            Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks())
        }),
    };
    match p {
        ImageProtocol::Sixel => picker.set_protocol_type(ProtocolType::Sixel),
        ImageProtocol::Kitty => picker.set_protocol_type(ProtocolType::Kitty),
        ImageProtocol::Iterm2 => picker.set_protocol_type(ProtocolType::Iterm2),
        _ => {}
    }
    picker
}

/// Runs `f` and puts the terminal's mode back as it was. The query above switches echo and line
/// mode off while it waits, and when the terminal never answers it returns without switching
/// them back (ratatui-image 12.0.0-rc.3); the interface's own raw mode would then take that
/// state for the one to restore at exit, leaving the user's shell without echo.
fn with_terminal_mode_kept<T>(f: impl FnOnce() -> T) -> T {
    let fd = libc::STDIN_FILENO;
    // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed struct that tcgetattr fills.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then_some(t)
    };
    let out = f();
    if let Some(t) = saved {
        unsafe {
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
    out
}

fn spawn_input() -> Receiver<TermEvent> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            while let Ok(ev) = crossterm::event::read() {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })
        .expect("spawn the input thread");
    rx
}

/// What every screen of the interface works with: the terminal, its keys, the options, the
/// theme (and what loading it said), and how images are drawn.
struct Ui<'a> {
    terminal: &'a mut ratatui::DefaultTerminal,
    keys: &'a Receiver<TermEvent>,
    opts: &'a TuiOptions,
    theme: &'a Theme,
    theme_msg: Option<&'a str>,
    picker: &'a Picker,
}

/// Runs the dashboard of one session. Returns true to go back to the browser: the dashboard was
/// opened from it and closed with q or esc (ctrl-c quits the program).
fn dashboard(ui: Ui, dir: PathBuf, from_browser: bool) -> Result<bool> {
    let Ui {
        terminal,
        keys,
        opts,
        theme,
        theme_msg,
        picker,
    } = ui;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A session whose repeats run elsewhere (another process, a Slurm task) is followed, not
    // run: its writers hold the locks a run here would need.
    let watching =
        opts.watch || crate::session::Session::open(&dir).is_ok_and(|s| watch::runs_elsewhere(&s));
    let start_worker = |watching: bool| {
        let (msg_tx, msgs) = crossbeam_channel::unbounded();
        let worker = if watching {
            watch::start(dir.clone(), opts.cache_root.clone(), msg_tx)
        } else {
            SessionWorker::start(
                dir.clone(),
                opts.cache_root.clone(),
                opts.device.clone(),
                msg_tx,
            )
        };
        (worker, msgs)
    };
    let (mut worker, mut msgs) = start_worker(watching);
    let (job_tx, jobs) = crossbeam_channel::unbounded();
    let (reply_tx, mut replies) = crossbeam_channel::unbounded();
    let _preview =
        worker::start_preview_worker(dir.clone(), opts.cache_root.clone(), jobs, reply_tx);
    let mut app = Dashboard::new(name);
    app.from_browser = from_browser;
    app.watching = watching;
    app.watch_only = opts.watch;
    if let Some(m) = theme_msg {
        app.log(true, m);
    }
    let mut img = ImageState::default();
    let mut shown_preview = 0;
    let mut dirty = true;
    let mut last_draw = Instant::now() - FRAME;
    loop {
        if let Some(cmd) = app.restart.take() {
            // The old worker's thread has ended; replacing it joins it.
            (worker, msgs) = start_worker(app.watching);
            app.worker_alive = true;
            worker.send(cmd);
        }
        if let Some(r) = app.want_latents.take() {
            let _ = job_tx.send(PreviewJob::Latents(r));
        }
        if std::mem::take(&mut app.want_preview) {
            if let Some(req) = app.preview_request() {
                let _ = job_tx.send(PreviewJob::Image(req));
            }
        }
        if app.preview_generation != shown_preview {
            // Encoding for the terminal happens once per new image, not per frame.
            shown_preview = app.preview_generation;
            img.protocol = app.preview.as_ref().map(|(_, i, _)| {
                picker.new_resize_protocol(image::DynamicImage::ImageRgb8(i.clone()))
            });
        }
        if dirty && last_draw.elapsed() >= FRAME {
            terminal.draw(|f| ui::draw(f, &app, theme, &mut img))?;
            dirty = false;
            last_draw = Instant::now();
        }
        if app.quit {
            app.run = RunState::Stopping;
            terminal.draw(|f| ui::draw(f, &app, theme, &mut img))?;
            worker.shutdown();
            return Ok(from_browser && !app.exit);
        }
        // Sleep until something happens; wake for a pending redraw, and once a second while
        // training (or watching) so the ETA and the times since the last event move.
        let ticking = matches!(app.run, RunState::Running | RunState::Watching);
        let timeout = if dirty {
            FRAME.saturating_sub(last_draw.elapsed())
        } else if ticking {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3600)
        };
        // A channel whose sender is gone is ready at once, every time: stop listening to it.
        let (mut worker_gone, mut preview_gone) = (false, false);
        select! {
            recv(keys) -> k => match k {
                Ok(TermEvent::Key(k)) if k.kind == KeyEventKind::Press => {
                    if let Some(cmd) = app.on_key(k) {
                        worker.send(cmd);
                    }
                    dirty = true;
                }
                Ok(TermEvent::Resize(..)) => dirty = true,
                Ok(_) => {}
                Err(_) => {
                    app.quit = true;
                    app.exit = true;
                }
            },
            recv(msgs) -> m => {
                match m {
                    Ok(m) => {
                        app.on_message(m);
                        // Drain what else is queued before drawing: events can come in bursts.
                        for m in msgs.try_iter().take(256) {
                            app.on_message(m);
                        }
                    }
                    Err(_) => worker_gone = true,
                }
                dirty = true;
            },
            recv(replies) -> r => {
                match r {
                    Ok(r) => app.on_preview(r),
                    Err(_) => preview_gone = true,
                }
                dirty = true;
            },
            default(timeout) => {
                if ticking {
                    dirty = true;
                }
            },
        }
        if worker_gone {
            msgs = crossbeam_channel::never();
            app.on_worker_gone();
        }
        if preview_gone {
            replies = crossbeam_channel::never();
            app.log(true, "the preview worker ended; previews stop here");
        }
    }
}
