//! The dashboard's state: built from session messages, changed by keys. No drawing and no I/O
//! here, so scripted events can drive it in tests.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use image::RgbImage;

use super::latent::{pca_axes, Projection};
use super::watch::Followed;
use super::worker::{Command, Message, PreviewReply, PreviewRequest};
use crate::cluster::Placement;
use crate::session::annotations::WorkRow;
use crate::session::compare::Comparison;
use crate::session::config::{Arm, SessionConfig};
use crate::session::events::{Event, Phase, PickView};
use crate::session::follow::Activity;
use crate::session::report::Report;
use crate::session::run::Outcome;
use crate::session::state::{ManifoldStats, PickRecord, ResultRow, SessionState};

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Loading,
    Paused,
    Running,
    Stopping,
    Finished,
    /// Attached to a session whose repeats run elsewhere: following, not running.
    Watching,
    /// Labelled by people: the round waits for the annotators' segmentations.
    AwaitingLabels,
    Failed(String),
}

impl RunState {
    pub fn label(&self) -> &str {
        match self {
            RunState::Loading => "loading",
            RunState::Paused => "paused",
            RunState::Running => "running",
            RunState::Stopping => "stopping at the next safe point",
            RunState::Finished => "finished",
            RunState::Watching => "attached",
            RunState::AwaitingLabels => "waiting for annotations",
            RunState::Failed(_) => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    pub index: usize,
    pub phase: Phase,
    pub arm: Option<Arm>,
    pub description: String,
    pub epoch: usize,
    pub epochs: usize,
    pub loss: Option<f64>,
    /// The VAE's epochs measured on its validation slices so far (its learning curve).
    pub validation: Vec<crate::engine::manifold::VaeEpoch>,
    pub started: Instant,
}

impl StepProgress {
    /// Time left, from the mean epoch time so far.
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        if self.epoch == 0 || self.epochs == 0 {
            return None;
        }
        let per = now.duration_since(self.started).as_secs_f64() / self.epoch as f64;
        Some(Duration::from_secs_f64(
            per * (self.epochs - self.epoch) as f64,
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Latent,
    Preview,
    Log,
}

pub struct Dashboard {
    pub session: String,
    pub config: Option<SessionConfig>,
    pub device: String,
    pub run: RunState,
    pub steps_done: usize,
    pub steps_total: usize,
    pub step: Option<StepProgress>,
    pub results: Vec<ResultRow>,
    pub picks: Vec<(PickRecord, Vec<PickView>)>,
    pub arm_index: usize,
    pub pick_index: usize,
    pub channel: usize,
    pub latents: Option<(usize, Vec<Vec<f64>>)>,
    /// The shared initial set of the repeat shown in the latent view.
    pub initial: Vec<usize>,
    pub projection: Option<Projection>,
    pub zoom: f64,
    pub pan: (f64, f64),
    pub preview: Option<(PreviewRequest, RgbImage, String)>,
    /// Counts the image replies: each one is drawn afresh, even for the same request (the arm's
    /// model may have changed since).
    pub preview_generation: u64,
    pub log: VecDeque<(bool, String)>,
    /// The report of the results so far (comparisons, full-data reference), made again when
    /// a result arrives rather than on every frame.
    pub report: Report,
    /// Per repeat: the VAE's latent space over the pool, once encoded.
    pub manifold: BTreeMap<usize, ManifoldStats>,
    /// The validation curve of a VAE whose training was interrupted, as the session's state
    /// holds it: the start of the curve its resumed step draws.
    pub(super) vae_resumed: Vec<crate::engine::manifold::VaeEpoch>,
    pub help: bool,
    /// The comparison view (`c`): the selected arm against random, paired by repeat.
    pub comparison: bool,
    pub tab: Tab,
    /// Close the dashboard (q, esc): back to the browser when it was opened from there.
    pub quit: bool,
    /// Quit the program (ctrl-c), wherever the dashboard was opened from.
    pub exit: bool,
    /// Opened from the session browser, so q goes back there (the footer says so).
    pub from_browser: bool,
    /// Set when the selection changed and a new preview should be asked for.
    pub want_preview: bool,
    pub want_latents: Option<usize>,
    /// False once the session worker's thread has ended (failed to open, failed, panicked).
    pub worker_alive: bool,
    /// A command to run on a new session worker: `n`/`r` after the old one ended reopen the
    /// session (the UI loop takes this, starts a worker, and sends the command).
    pub restart: Option<Command>,
    /// Set while a reopened session loads with a command waiting: it runs once loaded.
    pub(super) resume_on_load: bool,
    /// Attached to a session whose repeats run elsewhere: the worker follows its files and
    /// runs nothing (set by the interface before the worker starts).
    pub watching: bool,
    /// Attached: what each repeat is doing, from its event log.
    pub activity: Vec<Activity>,
    /// Attached: where each repeat runs.
    pub placements: Vec<Placement>,
    /// `tui --watch`: attached for good; `n`/`r` never run the session here.
    pub watch_only: bool,
    /// Labelled by people: the worklist of the round that waits, with its inbox.
    pub worklist: Option<(usize, std::path::PathBuf, Vec<WorkRow>)>,
    /// A split without test cases (labelled by people, none labelled): no Dice to show.
    pub evaluation_off: bool,
}

const LOG_LINES: usize = 200;

impl Dashboard {
    pub fn new(session: String) -> Dashboard {
        Dashboard {
            session,
            config: None,
            device: String::new(),
            run: RunState::Loading,
            steps_done: 0,
            steps_total: 0,
            step: None,
            results: Vec::new(),
            picks: Vec::new(),
            arm_index: 0,
            pick_index: 0,
            channel: 0,
            latents: None,
            initial: Vec::new(),
            projection: None,
            zoom: 1.0,
            pan: (0.0, 0.0),
            preview: None,
            preview_generation: 0,
            log: VecDeque::new(),
            report: Report::default(),
            manifold: BTreeMap::new(),
            vae_resumed: Vec::new(),
            help: false,
            comparison: false,
            tab: Tab::Overview,
            quit: false,
            exit: false,
            from_browser: false,
            want_preview: false,
            want_latents: None,
            worker_alive: true,
            restart: None,
            resume_on_load: false,
            watching: false,
            activity: Vec::new(),
            placements: Vec::new(),
            watch_only: false,
            worklist: None,
            evaluation_off: false,
        }
    }

    /// Adds a line to the log panel, its control characters escaped (lines name files and
    /// values from other people).
    pub fn log(&mut self, error: bool, line: impl Into<String>) {
        let line = crate::untrusted::escaped(&line.into()).into_owned();
        self.log.push_back((error, line));
        while self.log.len() > LOG_LINES {
            self.log.pop_front();
        }
    }

    pub fn arms(&self) -> Vec<Arm> {
        self.config
            .as_ref()
            .map(|c| c.experiment.strategies())
            .unwrap_or_default()
    }

    /// Per repeat with a latent space too weak for the arms that pick in it, the warning
    /// (`SessionConfig::weak_manifold`).
    pub fn weak_manifolds(&self) -> Vec<(usize, String)> {
        let Some(cfg) = &self.config else {
            return Vec::new();
        };
        self.manifold
            .iter()
            .filter_map(|(&r, m)| Some((r, cfg.weak_manifold(m)?)))
            .collect()
    }

    pub fn selected_arm(&self) -> Option<Arm> {
        self.arms().get(self.arm_index).copied()
    }

    /// The latest pick record of the selected arm.
    pub fn current_picks(&self) -> Option<&(PickRecord, Vec<PickView>)> {
        let arm = self.selected_arm()?;
        self.picks.iter().rev().find(|(r, _)| r.arm == arm)
    }

    /// "round k of R" of the latest evaluation of a strategy.
    pub fn round_label(&self) -> String {
        let rounds = self.config.as_ref().map(|c| match c.experiment.protocol {
            crate::session::config::Protocol::Rounds => c.experiment.rounds,
            crate::session::config::Protocol::Budgets => 1,
        });
        let evaluated = self
            .results
            .iter()
            .rev()
            .find(|r| r.arm.is_strategy())
            .map(|r| r.round);
        // Evaluation off: the picks say how far the rounds have come.
        let picked = || {
            self.picks
                .last()
                .filter(|_| self.evaluation_off)
                .map(|(rec, _)| rec.round)
        };
        let k = evaluated.or_else(picked).unwrap_or(0);
        match rounds {
            Some(r) => format!("round {k} of {r}"),
            None => String::new(),
        }
    }

    pub fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Loaded {
                config,
                state,
                views,
                device,
                steps_total,
            } => {
                self.load_state(*config, *state, views);
                self.device = device;
                self.steps_total = steps_total;
                self.run = if self.steps_done >= steps_total {
                    RunState::Finished
                } else if self.watching {
                    RunState::Watching
                } else if std::mem::take(&mut self.resume_on_load) {
                    RunState::Running
                } else {
                    RunState::Paused
                };
                let line = if self.watching {
                    format!(
                        "attached to {}: {}/{} steps done; it runs elsewhere and this dashboard follows its files",
                        self.session, self.steps_done, steps_total
                    )
                } else {
                    format!(
                        "opened {} on {}: {}/{} steps done",
                        self.session, self.device, self.steps_done, steps_total
                    )
                };
                self.log(false, line);
            }
            Message::Event(e) => self.on_event(e),
            Message::Followed(f) => self.on_followed(*f),
            Message::Idle(Outcome::Finished) => {
                self.run = RunState::Finished;
                self.step = None;
            }
            Message::Idle(Outcome::Waiting { .. }) => {
                // The worker watches the inbox and goes on by itself.
                self.run = RunState::AwaitingLabels;
                self.step = None;
            }
            Message::Worklist { round, inbox, rows } => {
                self.worklist = Some((round, inbox, rows));
            }
            Message::Busy => {
                self.run = RunState::Running;
                self.worklist = None;
            }
            Message::Idle(Outcome::Stopped) => {
                self.run = RunState::Paused;
                // The step's progress (and its ETA) belongs to the run that stopped.
                self.step = None;
            }
            Message::Failed(e) => {
                self.log(true, format!("error: {e}"));
                self.run = RunState::Failed(e);
                self.step = None;
            }
        }
    }

    fn load_state(
        &mut self,
        config: SessionConfig,
        state: SessionState,
        views: Vec<Vec<PickView>>,
    ) {
        self.steps_done = state.done;
        self.evaluation_off = state.evaluation_off();
        self.results = state.results.clone();
        self.picks = state.picks.into_iter().zip(views).collect();
        self.config = Some(config);
        self.manifold = state
            .repeats
            .iter()
            .enumerate()
            .filter_map(|(r, d)| Some((r, d.manifold.clone()?)))
            .collect();
        // A repeat whose VAE has epochs but no latents yet was stopped while it trained.
        self.vae_resumed = state
            .repeats
            .iter()
            .find(|d| d.manifold.is_none() && !d.vae_epochs.is_empty())
            .map(|d| d.vae_epochs.clone())
            .unwrap_or_default();
        self.refresh_report();
        if !state.repeats.is_empty() && state.done > 2 {
            self.want_latents = Some(self.picks.last().map(|(r, _)| r.repeat).unwrap_or(0));
        }
        self.want_preview = self.current_picks().is_some();
    }

    /// Makes the report of the results so far again.
    fn refresh_report(&mut self) {
        if let Some(cfg) = &self.config {
            self.report = Report::from_results(cfg, &self.results);
        }
    }

    /// The arm the comparison view and the header compare with random: the selected arm, or
    /// the first other one while random is selected.
    pub fn compared_arm(&self) -> Option<Arm> {
        let arms = self.arms();
        match self.selected_arm() {
            Some(a) if a != Arm::Random => Some(a),
            _ => arms.into_iter().find(|&a| a != Arm::Random),
        }
    }

    /// The compared arm against random at the largest budget compared so far.
    pub fn headline(&self) -> Option<&Comparison> {
        let arm = self.compared_arm()?;
        self.report
            .comparisons
            .iter()
            .filter(|c| c.arm == arm && c.versus == Arm::Random)
            .max_by_key(|c| (c.budget, c.stage, c.round))
    }

    pub fn on_event(&mut self, e: Event) {
        if let Some((error, line)) = event_line(&e) {
            self.log(error, line);
        }
        match e {
            Event::Manifold { repeat, stats, .. } => {
                self.manifold.insert(repeat, stats);
            }
            Event::Split { test_cases, .. } => self.evaluation_off = test_cases == 0,
            Event::Started {
                steps_done,
                steps_total,
                device,
                ..
            } => {
                self.steps_done = steps_done;
                self.steps_total = steps_total;
                self.device = device;
            }
            Event::StepStarted {
                index,
                phase,
                arm,
                description,
                ..
            } => {
                self.steps_done = index;
                let validation = match phase {
                    Phase::Vae => std::mem::take(&mut self.vae_resumed),
                    _ => Vec::new(),
                };
                self.step = Some(StepProgress {
                    index,
                    phase,
                    arm,
                    description,
                    epoch: 0,
                    epochs: 0,
                    loss: None,
                    validation,
                    started: Instant::now(),
                });
            }
            Event::EpochDone {
                epoch,
                epochs,
                loss,
                validation,
                ..
            } => {
                if let Some(s) = self.step.as_mut() {
                    s.epoch = epoch;
                    s.epochs = epochs;
                    s.loss = Some(loss);
                    s.validation.extend(validation);
                }
            }
            Event::PicksMade {
                repeat,
                stage,
                arm,
                round,
                picks,
                fallbacks,
                tumour_picks,
            } => {
                let rec = PickRecord {
                    repeat,
                    stage,
                    arm,
                    round,
                    picks: Vec::new(),
                    fallbacks,
                    tumour_picks,
                    directions: None,
                    context_picks: None,
                };
                self.picks.push((rec, picks));
                // Latents exist once picks are made; refresh the scatter and the preview.
                self.want_latents_of(repeat);
                if Some(arm) == self.selected_arm() {
                    self.pick_index = 0;
                    self.want_preview = true;
                }
            }
            Event::Evaluated {
                repeat,
                stage,
                arm,
                round,
                annotated,
                viewed,
                dice_mean,
                dice_sd,
                collapsed,
            } => {
                self.results.push(ResultRow {
                    repeat,
                    stage,
                    arm,
                    round,
                    annotated,
                    viewed,
                    dice_mean,
                    dice_sd,
                    dice: Vec::new(),
                    hd95: Vec::new(),
                    slice_dice_mean: 0.0,
                    collapsed,
                });
                self.refresh_report();
                // The VAE's latents exist by the first evaluation of a repeat.
                self.want_latents_of(repeat);
                // The arm's model of this round is trained now: the preview asked for at its
                // picks showed the previous one's prediction.
                if Some(arm) == self.selected_arm() {
                    self.want_preview = true;
                }
            }
            // Timing for the report.
            Event::StepDone { .. } => {}
            Event::Stopped { steps_done, .. } => self.steps_done = steps_done,
            Event::Finished { steps_total } => self.steps_done = steps_total,
            Event::Error { .. } | Event::Annotation { .. } | Event::AwaitingLabels { .. } => {}
        }
    }

    /// Attached: takes in what changed in the session's files. The results and picks come
    /// from the state files (what the runs saved); the logs tell what each repeat is doing.
    pub fn on_followed(&mut self, f: Followed) {
        if let Some((state, views)) = f.state {
            self.follow_state(state, views);
        }
        for (repeat, e) in f.events {
            if self.activity.len() <= repeat {
                self.activity.resize(repeat + 1, Activity::default());
            }
            self.activity[repeat].apply(&e);
            if let Some((error, line)) = event_line(&e.event) {
                self.log(error, line);
            }
        }
        if let Some(p) = f.placements {
            self.placements = p;
        }
        if self.run == RunState::Watching && self.steps_done >= self.steps_total {
            self.run = RunState::Finished;
        }
    }

    fn follow_state(&mut self, state: SessionState, views: Vec<Vec<PickView>>) {
        self.steps_done = state.done;
        self.manifold = state
            .repeats
            .iter()
            .enumerate()
            .filter_map(|(r, d)| Some((r, d.manifold.clone()?)))
            .collect();
        if state.results != self.results {
            self.results = state.results;
            self.refresh_report();
            let newest = self.results.last().map(|r| r.arm);
            if newest.is_some() && newest == self.selected_arm() {
                // The arm's newest model may draw a different prediction.
                self.want_preview = true;
            }
        }
        let grew = state.picks.len() != self.picks.len();
        // Or the same picks, now with names (the data set was loaded after the first look).
        let named = !grew && self.picks.iter().map(|(_, v)| v).ne(views.iter());
        if grew || named {
            let newest = state.picks.last().map(|r| (r.repeat, r.arm));
            self.picks = state.picks.into_iter().zip(views).collect();
            if !grew {
                self.want_preview = self.current_picks().is_some();
                return;
            }
            if let Some((repeat, arm)) = newest {
                self.want_latents_of(repeat);
                if Some(arm) == self.selected_arm() {
                    self.pick_index = 0;
                    self.want_preview = true;
                }
            }
        }
    }

    /// Attached: whether any unfinished repeat runs somewhere (a live process, a Slurm task
    /// queued or running).
    pub fn runs_elsewhere(&self) -> bool {
        self.placements.iter().any(Placement::is_live)
    }

    /// The full pick records may lack sample indices (picks from live events carry views only);
    /// the preview request needs them, so it is built from the state the session saved.
    pub fn on_preview(&mut self, reply: PreviewReply) {
        match reply {
            PreviewReply::Image {
                request,
                image,
                caption,
            } => {
                self.preview = Some((request, image, caption));
                self.preview_generation += 1;
            }
            PreviewReply::Latents {
                repeat,
                latents,
                initial,
            } => {
                self.initial = initial;
                let (mean, axes) = pca_axes(&latents);
                if self.projection.is_none()
                    || matches!(self.projection, Some(Projection::Pca { .. }))
                {
                    self.projection = Some(Projection::Pca { mean, axes });
                }
                self.latents = Some((repeat, latents));
            }
            PreviewReply::Failed(e) => self.log(true, format!("preview: {e}")),
        }
    }
}

impl Dashboard {
    /// The preview the current selection asks for.
    pub fn preview_request(&self) -> Option<PreviewRequest> {
        let (rec, views) = self.current_picks()?;
        let v = views.get(self.pick_index)?;
        Some(PreviewRequest {
            repeat: rec.repeat,
            stage: rec.stage,
            arm: rec.arm,
            round: rec.round,
            sample: v.sample,
            source: v.source,
            channel: self.channel,
        })
    }
}

/// The log line an event makes (and whether it tells of an error), if any.
fn event_line(e: &Event) -> Option<(bool, String)> {
    Some(match e {
        Event::Manifold {
            repeat,
            stats,
            warning: None,
        } => (false, format!("repeat {}: {}", repeat.saturating_add(1), stats.line())),
        Event::Manifold {
            repeat,
            warning: Some(w),
            ..
        } => (true, format!("repeat {}: warning: {w}", repeat.saturating_add(1))),
        Event::Split {
            repeat,
            pool_cases,
            test_cases,
        } => (
            false,
            crate::session::events::split_summary(*repeat, *pool_cases, *test_cases),
        ),
        Event::StepStarted { description, .. } => (false, description.clone()),
        Event::PicksMade {
            arm,
            round,
            picks,
            fallbacks,
            tumour_picks,
            ..
        } => {
            let line = crate::session::events::picks_summary(picks, *tumour_picks, *fallbacks);
            (false, format!("{arm} round {round}: {line}"))
        }
        Event::Evaluated {
            arm,
            round,
            annotated,
            dice_mean,
            dice_sd,
            collapsed,
            ..
        } => (
            false,
            format!(
                "{arm} round {round}: {annotated} annotated, test Dice {dice_mean:.3} ± {dice_sd:.3}{}",
                if *collapsed { " (collapsed)" } else { "" }
            ),
        ),
        Event::Stopped { steps_done, .. } => (false, format!("paused after {steps_done} steps")),
        Event::Finished { .. } => (false, "finished".into()),
        Event::Error { message } => (true, format!("error: {message}")),
        Event::Annotation { counted, text, .. } => (!counted, text.clone()),
        Event::AwaitingLabels {
            round,
            received,
            needed,
            inbox,
            ..
        } => (
            false,
            format!("round {round}: {received} of {needed} annotations in {inbox}; waiting for the rest"),
        ),
        Event::Started { .. } | Event::EpochDone { .. } | Event::StepDone { .. } => return None,
    })
}
