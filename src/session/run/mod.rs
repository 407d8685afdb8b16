//! Running a session: the plan's steps one after another, each leaving the session resumable.
//! This module holds the step loop (events, stop, commit); the steps live beside it: the data
//! of a repeat (`repeat.rs`), training (`training.rs`), latents, selection and evaluation
//! (`selection.rs`), and the arms of a round on several devices (`lanes.rs`).
//!
//! Crash safety: training steps checkpoint weights and optimiser moments after every epoch, and
//! at a stop mid-epoch (atomically), then record that point in `state.json`; a step's final
//! weights are written before the step is counted done. Killed anywhere, a run resumes from the
//! last point recorded and, on CPU with the same seed, ends with the same picks and metrics as
//! an uninterrupted run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tch::Device;

use super::config::{Arm, Precision, SessionConfig};
use super::events::{Event, Phase};
use super::files::{Layout, SessionFiles};
use super::plan::{plan, Step};
use super::state::{DatasetStamp, PickRecord, RepeatProgress};
use super::store::{EventLog, Lock};
use super::Session;
use crate::data::Dataset;
use crate::engine::batch::Feed;
use crate::engine::device;

mod annotation;
mod lanes;
mod repeat;
mod selection;
mod training;

use selection::Evaluation;
use training::Trained;

/// Asks a running session to stop at its next safe point: the end of the current training
/// batch (with a checkpoint of that point), or of the current step.
#[derive(Default, Clone)]
pub struct Control {
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Stopped,
    /// A session labelled by people: round `round` has `received` of the `needed`
    /// segmentations its training needs (its work package says which).
    Waiting {
        round: usize,
        received: usize,
        needed: usize,
    },
}

pub struct Runner {
    session: Session,
    files: SessionFiles,
    /// The locks of the repeats this run may write.
    _locks: Arc<Vec<Lock>>,
    /// The repeats this run runs (0-based, in order), and the steps of each in the plan.
    repeats: Vec<usize>,
    steps_per_repeat: usize,
    ds: Arc<Dataset>,
    device: Device,
    /// How batches reach the device (the pool on a GPU when it fits).
    feed: Feed,
    /// `--devices`: the devices that run the arms of a round concurrently (see lanes.rs);
    /// empty: every step on `device`, one after another.
    lanes: Vec<Device>,
    /// Each lane's feed, kept between rounds (a pool uploaded once per device).
    lane_feeds: Vec<Option<Feed>>,
    /// Only the main runner writes state.json; a lane's state is merged when its round ends.
    persist: bool,
    /// Seconds spent opening the data set and placing the pool on the device (reported once).
    data_load_s: f64,
    /// The event log of the repeat being run.
    log: EventLog,
    plan: Vec<Step>,
    /// A session labelled by people: how many counted segmentations the pool's masks hold
    /// (`None`: not split yet).
    annotated: Option<usize>,
}

/// How a repeat's run ended.
enum RepeatEnd {
    Done,
    Stopped,
    Waiting {
        round: usize,
        received: usize,
        needed: usize,
    },
}

/// Evaluation and prediction batch size (no gradients, so larger than training's).
const EVAL_BATCH: usize = 32;

/// What a step is given besides the runner: its index in the plan, the stop flag, and where
/// its events go.
struct StepContext<'a> {
    index: usize,
    control: &'a Control,
    sink: &'a mut dyn FnMut(&Event),
}

impl Runner {
    /// Takes the session's lock and loads its data set (through the cache under `cache_root`).
    /// `device` overrides the session's configured device for this run.
    pub fn open(
        session: Session,
        progress: Option<crate::data::LoadProgress>,
        cache_root: &Path,
        device: Option<&str>,
    ) -> Result<Runner> {
        Runner::open_repeats(session, None, progress, cache_root, device)
    }

    /// As `open`, for some repeats only (0-based; `None`: all). Takes the lock of each of them
    /// that is not finished, so processes that run different repeats of one session run side
    /// by side. A session of format 1 is converted to format 2 first.
    pub fn open_repeats(
        mut session: Session,
        repeats: Option<&[usize]>,
        progress: Option<crate::data::LoadProgress>,
        cache_root: &Path,
        device: Option<&str>,
    ) -> Result<Runner> {
        let count = session.config.experiment.repeats;
        let repeats: Vec<usize> = match repeats {
            Some(list) => {
                if let Some(&r) = list.iter().find(|&&r| r >= count) {
                    bail!(
                        "session {} has {count} repeats; there is no repeat {}",
                        session.dir.display(),
                        r + 1
                    );
                }
                let mut list = list.to_vec();
                list.sort_unstable();
                list.dedup();
                list
            }
            None => (0..count).collect(),
        };
        if session.layout == Layout::Flat {
            super::convert::to_per_repeat(&mut session)?;
        }
        let files = session.files();
        let steps_per_repeat = session.steps_per_repeat();
        let mut locks = Vec::new();
        for &r in &repeats {
            if session.state.progress_of(r).done < steps_per_repeat {
                let lock = files
                    .lock_repeat(r)
                    .with_context(|| format!("repeat {}", r + 1))?;
                locks.push(lock);
            }
        }
        let load_started = std::time::Instant::now();
        // Refuses a data set that changed since the session started.
        let ds = session.load_dataset(progress, cache_root)?;
        let stamp = DatasetStamp::of(&ds);
        session
            .config
            .check_slice_size(ds.size())
            .with_context(|| format!("session {}", session.dir.display()))?;
        let device = device::parse_device(device.unwrap_or(&session.config.experiment.device))?;
        device::check_device(device)?;
        if session.config.unet.precision == Precision::Fp16 && !matches!(device, Device::Cuda(_)) {
            bail!(
                "unet.precision = \"fp16\" (mixed precision) needs a CUDA device, and this run is on {}; use \"fp32\"",
                device::describe(device)
            );
        }
        // The log of the first repeat this run writes (a finished one's only when none is
        // left: then nothing but the start and the end is logged).
        let first = repeats
            .iter()
            .copied()
            .find(|&r| session.state.progress_of(r).done < steps_per_repeat)
            .or(repeats.first().copied())
            .unwrap_or(0);
        let log = files.event_log(first)?;
        let plan = plan(&session.config);
        if let Device::Cuda(_) = device {
            // Shapes are fixed within a session: let cuDNN time its algorithms once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let feed = Feed::auto(&ds, device);
        // Opening the data set and, on a GPU, uploading the pool: the run's data I/O.
        let data_load_s = load_started.elapsed().as_secs_f64();
        let mut r = Runner {
            session,
            files,
            _locks: Arc::new(locks),
            repeats,
            steps_per_repeat,
            ds: Arc::new(ds),
            device,
            feed,
            lanes: Vec::new(),
            lane_feeds: Vec::new(),
            persist: true,
            data_load_s,
            log,
            plan,
            annotated: None,
        };
        // Labelled by people: `load_dataset` laid the counted segmentations over the pool.
        if r.human_labels() {
            r.annotated = r
                .session
                .state
                .repeats
                .iter()
                .find(|d| !d.train.is_empty())
                .map(|d| d.annotations.len());
        }
        if r.session.state.dataset.is_none() {
            r.session.state.dataset = Some(stamp);
        }
        if r.session.state.config.is_none() {
            r.session.state.config = Some(r.session.config.clone());
        }
        r.session.state.device = Some(format!(
            "{} ({})",
            device::describe(device),
            r.feed.describe()
        ));
        Ok(r)
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn dataset(&self) -> &Dataset {
        &self.ds
    }

    /// The picks of a record as a person reads them.
    pub fn views(&self, rec: &PickRecord) -> Vec<super::events::PickView> {
        let pool = self.pool(rec.repeat);
        rec.picks.iter().map(|p| pool.pick_view(p)).collect()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn cfg(&self) -> &SessionConfig {
        &self.session.config
    }

    fn emit(&mut self, ev: Event, sink: &mut dyn FnMut(&Event)) {
        emit_to(&mut self.log, sink, ev);
    }

    /// Writes `repeat`'s state file (a lane writes nothing: lanes.rs).
    fn save_repeat(&self, repeat: usize) -> Result<()> {
        self.session.save_repeat(repeat)
    }

    /// Records how far `repeat` is.
    fn set_progress(&mut self, repeat: usize, done: usize, partial_epochs: usize) {
        let p = RepeatProgress {
            done,
            partial_epochs,
            mid_epoch: None,
        };
        self.session.state.set_progress(repeat, p);
    }

    /// Runs (or resumes) this run's repeats, one after another, until they are done or
    /// `control.stop` is set.
    pub fn run(&mut self, control: &Control, sink: &mut dyn FnMut(&Event)) -> Result<Outcome> {
        let total = self.plan.len();
        let started = Event::Started {
            session: self.session.name(),
            device: device::describe(self.device),
            steps_done: self.session.state.done,
            steps_total: total,
            data_load_s: self.data_load_s,
        };
        self.emit(started, sink);
        // Counted once: a run started again (after waiting for annotations) loaded nothing.
        self.data_load_s = 0.0;
        for repeat in self.repeats.clone() {
            if self.session.state.progress_of(repeat).done < self.steps_per_repeat {
                self.log = self.files.event_log(repeat)?;
            }
            match self.run_repeat(repeat, control, sink) {
                Ok(RepeatEnd::Done) => {}
                Ok(RepeatEnd::Waiting {
                    round,
                    received,
                    needed,
                }) => {
                    let inbox = self.files.inbox(round).display().to_string();
                    self.emit(
                        Event::AwaitingLabels {
                            repeat,
                            round,
                            received,
                            needed,
                            inbox,
                        },
                        sink,
                    );
                    return Ok(Outcome::Waiting {
                        round,
                        received,
                        needed,
                    });
                }
                Ok(RepeatEnd::Stopped) => {
                    let done = self.session.state.done;
                    self.emit(
                        Event::Stopped {
                            steps_done: done,
                            steps_total: total,
                        },
                        sink,
                    );
                    return Ok(Outcome::Stopped);
                }
                Err(e) => {
                    self.emit(
                        Event::Error {
                            message: format!("{e:#}"),
                        },
                        sink,
                    );
                    return Err(e);
                }
            }
        }
        self.emit(Event::Finished { steps_total: total }, sink);
        Ok(Outcome::Finished)
    }

    /// Runs the rest of one repeat's steps, until they are done, a stop, or (labelled by
    /// people) a round whose segmentations are not all in.
    fn run_repeat(
        &mut self,
        repeat: usize,
        control: &Control,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<RepeatEnd> {
        let first = repeat * self.steps_per_repeat;
        loop {
            let done = self.session.state.progress_of(repeat).done;
            if done >= self.steps_per_repeat {
                return Ok(RepeatEnd::Done);
            }
            if control.stop.load(Ordering::Relaxed) {
                return Ok(RepeatEnd::Stopped);
            }
            let index = first + done;
            if let Some(round) = self.labels_round(self.plan[index]) {
                if let annotation::Labelled::Waiting {
                    round,
                    received,
                    needed,
                } = self.await_labels(repeat, round, sink)?
                {
                    return Ok(RepeatEnd::Waiting {
                        round,
                        received,
                        needed,
                    });
                }
            }
            // A round of several arms on several devices (lanes.rs records it when it ends),
            // or the next step on its own.
            let finished = match self.parallel_round(index) {
                Some(end) => self.run_round_in_lanes(index, end, control, sink)?,
                None => {
                    let step = self.plan[index];
                    let mut cx = StepContext {
                        index,
                        control,
                        sink: &mut *sink,
                    };
                    let finished = self.run_step(step, &mut cx)?;
                    if finished {
                        self.set_progress(repeat, done + 1, 0);
                        self.save_repeat(repeat)?;
                        self.files.remove_partials(&step);
                    }
                    finished
                }
            };
            if !finished {
                return Ok(RepeatEnd::Stopped);
            }
            // Labelled by people: the initial set's package as soon as the split is known, so
            // that annotating can start while the VAE trains.
            if self.human_labels() && matches!(self.plan[index], Step::Split { .. }) {
                self.ensure_package(repeat, 0)?;
            }
        }
    }

    /// Returns Ok(false) when stopped before the step finished.
    fn run_step(&mut self, step: Step, cx: &mut StepContext) -> Result<bool> {
        let (index, total) = (cx.index, self.plan.len());
        let (phase, arm) = match step {
            Step::Split { .. } => (Phase::Split, None),
            Step::Vae { .. } => (Phase::Vae, None),
            Step::Latents { .. } => (Phase::Latents, None),
            Step::Pretrain { .. } => (Phase::Pretraining, None),
            Step::Init { .. } => (Phase::Training, None),
            Step::Select { arm, .. } => (
                arm.strategy().map_or(Phase::Search, |s| s.phase()),
                Some(arm),
            ),
            Step::Train { arm, .. } => (Phase::Training, Some(arm)),
            Step::Full { .. } => (Phase::Training, Some(Arm::Full)),
        };
        self.emit(
            Event::StepStarted {
                index,
                total,
                phase,
                arm,
                description: step.describe(),
            },
            cx.sink,
        );
        let started = std::time::Instant::now();
        let mut evaluation_s = 0.0;
        let done = self.execute(step, cx, &mut evaluation_s)?;
        if done {
            self.emit(
                Event::StepDone {
                    index,
                    seconds: started.elapsed().as_secs_f64(),
                    evaluation_s,
                },
                cx.sink,
            );
        }
        Ok(done)
    }

    /// The work of one step; `evaluation_s` receives the time spent evaluating the model it
    /// trained (Init and Train steps). Ok(false) when stopped before the step finished.
    fn execute(
        &mut self,
        step: Step,
        cx: &mut StepContext,
        evaluation_s: &mut f64,
    ) -> Result<bool> {
        match step {
            Step::Split { repeat } => self.split(repeat, cx.sink).map(|_| true),
            Step::Latents { repeat } => self.latents(repeat, cx.sink).map(|_| true),
            Step::Select {
                repeat,
                stage,
                arm,
                round,
            } => self
                .select(repeat, stage, arm, round, cx.sink)
                .map(|_| true),
            Step::Vae { .. } | Step::Pretrain { .. } => Ok(self.train(step, cx)?.is_some()),
            Step::Init { repeat, stage } => {
                let arms = self.cfg().experiment.strategies();
                let at = Evaluation {
                    repeat,
                    stage,
                    arms: &arms,
                    round: 0,
                };
                self.train_and_evaluate(step, cx, at, evaluation_s)
            }
            Step::Train {
                repeat,
                stage,
                arm,
                round,
            } => {
                let at = Evaluation {
                    repeat,
                    stage,
                    arms: &[arm],
                    round,
                };
                self.train_and_evaluate(step, cx, at, evaluation_s)
            }
            Step::Full { repeat } => {
                let at = Evaluation {
                    repeat,
                    stage: 0,
                    arms: &[Arm::Full],
                    round: 0,
                };
                self.train_and_evaluate(step, cx, at, evaluation_s)
            }
        }
    }

    /// Trains a UNet step, then evaluates the model for the arms of `at`. Ok(false) when
    /// stopped before the training finished.
    fn train_and_evaluate(
        &mut self,
        step: Step,
        cx: &mut StepContext,
        at: Evaluation,
        evaluation_s: &mut f64,
    ) -> Result<bool> {
        let Some(Trained::Unet(net)) = self.train(step, cx)? else {
            return Ok(false);
        };
        *evaluation_s = self.evaluate(&net, at, cx.sink)?;
        Ok(true)
    }
}

/// Logs an event with its wall-clock time (the report's time breakdown reads it), then hands it
/// to the sink.
fn emit_to(log: &mut EventLog, sink: &mut dyn FnMut(&Event), ev: Event) {
    let _ = log.append(&ev);
    sink(&ev);
}
