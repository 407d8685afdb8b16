//! The dashboard's keys: what each does to the `Dashboard` and which command it sends the
//! session worker.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{Dashboard, RunState, Tab};
use super::latent::{pca_axes, Projection};
use super::worker::Command;

impl Dashboard {
    /// Handles a key; returns a command for the session worker, if any.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Command> {
        if self.help {
            self.help = false;
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        // The comparison view closes with c or esc; the other keys work under it (tab
        // changes the arm it shows).
        if self.comparison && !ctrl && matches!(key.code, KeyCode::Esc | KeyCode::Char('c')) {
            self.comparison = false;
            return None;
        }
        if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
            || (ctrl && key.code == KeyCode::Char('c'))
        {
            self.quit = true;
            self.exit = ctrl;
            return Some(Command::Quit);
        }
        match key.code {
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('c') => self.comparison = true,
            KeyCode::Char('n') | KeyCode::Char(' ') | KeyCode::Char('r')
                if self.run == RunState::Watching =>
            {
                let cmd = match key.code {
                    KeyCode::Char('r') => Command::RunAll,
                    _ => Command::Step,
                };
                self.run_here(cmd);
            }
            KeyCode::Char('n') | KeyCode::Char(' ') if self.can_start() => {
                return self.start(Command::Step);
            }
            KeyCode::Char('r') if self.can_start() => return self.start(Command::RunAll),
            KeyCode::Char('n') | KeyCode::Char(' ') | KeyCode::Char('r')
                if self.run == RunState::AwaitingLabels =>
            {
                // Look at the inbox again now.
                self.run = RunState::Running;
                return Some(match key.code {
                    KeyCode::Char('r') => Command::RunAll,
                    _ => Command::Step,
                });
            }
            KeyCode::Char('p') if self.run == RunState::AwaitingLabels => {
                self.run = RunState::Paused;
                return Some(Command::Pause);
            }
            KeyCode::Char('p') if self.run == RunState::Running => {
                self.run = RunState::Stopping;
                return Some(Command::Pause);
            }
            KeyCode::Right | KeyCode::Char('l') => self.move_pick(1),
            KeyCode::Left | KeyCode::Char('h') => self.move_pick(-1),
            KeyCode::Tab | KeyCode::Char('a') => self.move_arm(1),
            KeyCode::BackTab => self.move_arm(-1),
            KeyCode::Char('m') => {
                let c = self
                    .config
                    .as_ref()
                    .map(|c| c.dataset.modalities.len())
                    .unwrap_or(1);
                self.channel = (self.channel + 1) % c.max(1);
                self.want_preview = true;
            }
            KeyCode::Char('d') => self.cycle_projection(),
            KeyCode::Char('+') | KeyCode::Char('=') => self.zoom = (self.zoom * 1.5).min(50.0),
            KeyCode::Char('-') => self.zoom = (self.zoom / 1.5).max(1.0),
            KeyCode::Char('0') => {
                self.zoom = 1.0;
                self.pan = (0.0, 0.0);
            }
            KeyCode::Char('H') => self.pan.0 -= 0.1 / self.zoom,
            KeyCode::Char('L') => self.pan.0 += 0.1 / self.zoom,
            KeyCode::Char('K') => self.pan.1 += 0.1 / self.zoom,
            KeyCode::Char('J') => self.pan.1 -= 0.1 / self.zoom,
            KeyCode::Char('1') => self.tab = Tab::Overview,
            KeyCode::Char('2') => self.tab = Tab::Latent,
            KeyCode::Char('3') => self.tab = Tab::Preview,
            KeyCode::Char('4') => self.tab = Tab::Log,
            _ => {}
        }
        None
    }

    /// `n`/`r`: the command for the worker, or, when the worker has ended, a restart.
    pub(super) fn start(&mut self, cmd: Command) -> Option<Command> {
        if self.worker_alive {
            self.run = RunState::Running;
            Some(cmd)
        } else {
            self.log(false, "reopening the session");
            self.run = RunState::Loading;
            self.restart = Some(cmd);
            self.resume_on_load = true;
            None
        }
    }

    /// Attached, `n`/`r`: while the repeats run elsewhere this dashboard only watches; once
    /// nothing runs them, it runs the session here (a new worker that takes the locks).
    pub(super) fn run_here(&mut self, cmd: Command) {
        if self.placements.is_empty() {
            self.log(
                false,
                "still asking where the repeats run; try again in a moment",
            );
            return;
        }
        let live: Vec<String> = self
            .placements
            .iter()
            .filter(|p| p.is_live())
            .map(|p| format!("repeat {}: {}", p.repeat + 1, p.describe()))
            .collect();
        if self.watch_only {
            self.log(false, "opened with --watch: this dashboard only watches");
            return;
        }
        if !live.is_empty() {
            self.log(
                false,
                format!(
                    "this dashboard watches; the session runs elsewhere ({})",
                    live.join("; ")
                ),
            );
            return;
        }
        self.log(false, "nothing runs this session now: running it here");
        self.watching = false;
        self.run = RunState::Loading;
        self.restart = Some(cmd);
        self.resume_on_load = true;
    }

    /// The session worker's thread ended (its channel disconnected): nothing runs any more
    /// until `n`/`r` reopen the session.
    pub fn on_worker_gone(&mut self) {
        self.worker_alive = false;
        self.resume_on_load = false;
        self.step = None;
        if !matches!(self.run, RunState::Failed(_)) {
            self.run = RunState::Failed("the session worker ended".into());
        }
        self.log(
            false,
            "the session is closed; n or r reopens it and tries again",
        );
    }

    pub(super) fn can_start(&self) -> bool {
        matches!(self.run, RunState::Paused | RunState::Failed(_))
    }

    pub(super) fn move_arm(&mut self, d: isize) {
        let n = self.arms().len().max(1) as isize;
        self.arm_index = (self.arm_index as isize + d).rem_euclid(n) as usize;
        self.pick_index = 0;
        self.want_preview = true;
    }

    /// Ask the worker for `repeat`'s latents unless the scatter already shows them.
    pub(super) fn want_latents_of(&mut self, repeat: usize) {
        if self.latents.as_ref().is_none_or(|(r, _)| *r != repeat) {
            self.want_latents = Some(repeat);
        }
    }

    pub(super) fn move_pick(&mut self, d: isize) {
        let n = self.current_picks().map(|(_, v)| v.len()).unwrap_or(0);
        if n == 0 {
            return;
        }
        self.pick_index = (self.pick_index as isize + d).rem_euclid(n as isize) as usize;
        self.want_preview = true;
    }

    /// PCA → (z1, z2) → (z1, z3) … → PCA.
    pub(super) fn cycle_projection(&mut self) {
        let Some((_, latents)) = &self.latents else {
            return;
        };
        let d = latents.first().map(|v| v.len()).unwrap_or(0);
        let pairs: Vec<(usize, usize)> = (0..d)
            .flat_map(|a| (a + 1..d).map(move |b| (a, b)))
            .collect();
        self.projection = Some(match &self.projection {
            Some(Projection::Pca { .. }) | None => match pairs.first() {
                Some(&(a, b)) => Projection::Dims(a, b),
                None => return,
            },
            Some(Projection::Dims(a, b)) => match pairs
                .iter()
                .position(|p| *p == (*a, *b))
                .and_then(|i| pairs.get(i + 1))
            {
                Some(&(a, b)) => Projection::Dims(a, b),
                None => {
                    let (mean, axes) = pca_axes(latents);
                    Projection::Pca { mean, axes }
                }
            },
        });
    }
}
