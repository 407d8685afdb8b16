//! Running a session: the plan's steps one after another, each leaving the session resumable.
//!
//! Crash safety: training steps checkpoint weights and optimiser moments after every epoch
//! (atomically), then record the epoch in `state.json`; a step's final weights are written before
//! the step is counted done. Killed anywhere, a run resumes from its last finished epoch and, on
//! CPU with the same seed, ends with the same picks and metrics as an uninterrupted run.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::config::{Arm, Granularity, Precision, Scenario, SessionConfig};
use super::events::{Event, Phase};
use super::plan::{plan, seed_for, stages, Step};
use super::pool::Pool;
use super::state::{DatasetStamp, DirectionSummary, PickRecord, RepeatData, ResultRow};
use super::store::{commit_file, EventLog, Lock};
use super::Session;
use crate::data::Dataset;
use crate::engine::adam::{Adam, LossScale};
use crate::engine::batch::Feed;
use crate::engine::nets::{fold_batch_norm, save_weights, seeded, use_channels_last, UNet, Vae};
use crate::engine::select::{
    encode_slices, gradient_directions, pick_oracle, pick_proposed, pick_random, GradientStep,
    Pick, Source,
};
use crate::engine::{device, eval, train};

mod lanes;

/// Asks a running session to stop at its next safe point (the end of an epoch or step).
#[derive(Default, Clone)]
pub struct Control {
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Stopped,
}

pub struct Runner {
    session: Session,
    _lock: Arc<Lock>,
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
    log: EventLog,
    plan: Vec<Step>,
}

/// Evaluation and prediction batch size (no gradients, so larger than training's).
const EVAL_BATCH: usize = 32;

impl Runner {
    /// Takes the session's lock and loads its data set (through the cache under `cache_root`).
    /// `device` overrides the session's configured device for this run.
    pub fn open(
        session: Session,
        progress: Option<crate::data::LoadProgress>,
        cache_root: &Path,
        device: Option<&str>,
    ) -> Result<Runner> {
        let lock = Lock::acquire(&session.dir)?;
        let load_started = std::time::Instant::now();
        let ds = session.load_dataset(progress, cache_root)?;
        let stamp = DatasetStamp {
            fingerprint: ds.fingerprint().to_string(),
            patients: ds.patients().len(),
            slices: ds.num_slices(),
        };
        match &session.state.dataset {
            Some(s) if *s != stamp => bail!(
                "session {}: its data set changed since the session started ({} patients / {} slices then, {} / {} now); nothing was written",
                session.dir.display(),
                s.patients,
                s.slices,
                stamp.patients,
                stamp.slices
            ),
            _ => {}
        }
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
        let log = EventLog::open(&session.dir)?;
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
            _lock: Arc::new(lock),
            ds: Arc::new(ds),
            device,
            feed,
            lanes: Vec::new(),
            lane_feeds: Vec::new(),
            persist: true,
            data_load_s,
            log,
            plan,
        };
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

    fn save_state(&self) -> Result<()> {
        self.session.save_state()
    }

    /// Runs (or resumes) until the plan is done or `control.stop` is set.
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
        while self.session.state.done < total {
            if control.stop.load(Ordering::Relaxed) {
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
            let index = self.session.state.done;
            // A round of several arms on several devices (lanes.rs records it when it ends),
            // or the next step on its own.
            let result = match self.parallel_round(index) {
                Some(end) => self.run_round_in_lanes(index, end, control, sink),
                None => {
                    let step = self.plan[index];
                    let r = self.run_step(index, step, control, sink);
                    if let Ok(true) = r {
                        self.session.state.done += 1;
                        self.session.state.partial_epochs = 0;
                        self.save_state()?;
                        self.remove_partial(&step);
                    }
                    r
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => {
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

    fn ckpt(&self, key: &str, suffix: &str) -> PathBuf {
        self.session
            .dir
            .join("checkpoints")
            .join(format!("{key}{suffix}.safetensors"))
    }

    /// The step's partial checkpoints (weights and optimiser moments after each epoch).
    fn partial_files(&self, step: &Step) -> PartialFiles {
        PartialFiles {
            dir: self.session.dir.join("checkpoints"),
            key: step.key(),
        }
    }

    fn remove_partial(&self, step: &Step) {
        self.partial_files(step).remove_all();
    }

    /// Saves a var store atomically (the file name must end in .safetensors for tch).
    fn save_vs(vs: &VarStore, path: &Path) -> Result<()> {
        let tmp = path.with_file_name(format!(
            ".tmp-{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        save_weights(vs, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        commit_file(&tmp, path)
    }

    /// Returns Ok(false) when stopped before the step finished.
    fn run_step(
        &mut self,
        index: usize,
        step: Step,
        control: &Control,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<bool> {
        let total = self.plan.len();
        let (phase, arm) = match step {
            Step::Split { .. } => (Phase::Split, None),
            Step::Vae { .. } => (Phase::Vae, None),
            Step::Latents { .. } => (Phase::Latents, None),
            Step::Pretrain { .. } => (Phase::Pretraining, None),
            Step::Init { .. } => (Phase::Training, None),
            Step::Select { arm, .. } => (
                if arm == Arm::Proposed {
                    Phase::Gradient
                } else {
                    Phase::Search
                },
                Some(arm),
            ),
            Step::Train { arm, .. } => (Phase::Training, Some(arm)),
        };
        self.emit(
            Event::StepStarted {
                index,
                total,
                phase,
                arm,
                description: step.describe(),
            },
            sink,
        );
        let started = std::time::Instant::now();
        let mut evaluation_s = 0.0;
        let done = self.execute(index, step, control, sink, &mut evaluation_s)?;
        if done {
            self.emit(
                Event::StepDone {
                    index,
                    seconds: started.elapsed().as_secs_f64(),
                    evaluation_s,
                },
                sink,
            );
        }
        Ok(done)
    }

    /// The work of one step; `evaluation_s` receives the time spent evaluating the model it
    /// trained (Init and Train steps). Ok(false) when stopped before the step finished.
    fn execute(
        &mut self,
        index: usize,
        step: Step,
        control: &Control,
        sink: &mut dyn FnMut(&Event),
        evaluation_s: &mut f64,
    ) -> Result<bool> {
        match step {
            Step::Split { repeat } => self.split(repeat).map(|_| true),
            Step::Vae { repeat } => self.train_vae(index, repeat, control, sink),
            Step::Latents { repeat } => self.latents(repeat).map(|_| true),
            Step::Pretrain { repeat } => {
                let slices =
                    self.patient_slices(&self.session.state.repeats[repeat].source.clone());
                let epochs = self.cfg().unet.epochs_pretrain;
                self.train_unet(index, step, None, &slices, epochs, control, sink)
                    .map(|r| r.is_some())
            }
            Step::Init { repeat, stage } => {
                let from = (self.cfg().experiment.scenario == Scenario::Transfer)
                    .then_some(Step::Pretrain { repeat });
                let labelled = self.labelled(repeat, stage, None, 0);
                let slices = self.sample_slices(repeat, &labelled);
                let epochs = self.cfg().unet.epochs_initial;
                let Some(net) =
                    self.train_unet(index, step, from, &slices, epochs, control, sink)?
                else {
                    return Ok(false);
                };
                let arms = self.cfg().experiment.arms.clone();
                *evaluation_s = self.evaluate(&net, repeat, stage, &arms, 0, sink)?;
                Ok(true)
            }
            Step::Select {
                repeat,
                stage,
                arm,
                round,
            } => self.select(repeat, stage, arm, round, sink).map(|_| true),
            Step::Train {
                repeat,
                stage,
                arm,
                round,
            } => {
                let labelled = self.labelled(repeat, stage, Some(arm), round);
                let slices = self.sample_slices(repeat, &labelled);
                let epochs = self.cfg().unet.epochs_per_round;
                let Some(net) = self.train_unet(
                    index,
                    step,
                    Some(previous_model(repeat, stage, arm, round)),
                    &slices,
                    epochs,
                    control,
                    sink,
                )?
                else {
                    return Ok(false);
                };
                *evaluation_s = self.evaluate(&net, repeat, stage, &[arm], round, sink)?;
                Ok(true)
            }
        }
    }

    // ---- data of a repeat ------------------------------------------------------------------

    fn patient_slices(&self, patients: &[usize]) -> Vec<usize> {
        patients
            .iter()
            .flat_map(|&p| self.ds.patients()[p].slice_range())
            .collect()
    }

    fn pool(&self, repeat: usize) -> Pool<'_> {
        Pool::new(
            &self.ds,
            &self.session.state.repeats[repeat],
            self.session.config.experiment.granularity,
        )
    }

    fn pool_slices(&self, repeat: usize) -> Vec<usize> {
        self.pool(repeat).slices().to_vec()
    }

    fn sample_slices(&self, repeat: usize, samples: &[usize]) -> Vec<usize> {
        self.pool(repeat).sample_slices(samples)
    }

    /// Labelled samples of `arm` after `round` rounds (round 0: the shared initial set).
    fn labelled(&self, repeat: usize, stage: usize, arm: Option<Arm>, round: usize) -> Vec<usize> {
        let st = &stages(self.cfg())[stage];
        let mut out: Vec<usize> = self.session.state.repeats[repeat].order[..st.initial].to_vec();
        if let Some(arm) = arm {
            for rec in &self.session.state.picks {
                if rec.repeat == repeat
                    && rec.stage == stage
                    && rec.arm == arm
                    && rec.round <= round
                {
                    out.extend(rec.picks.iter().map(|p| p.sample));
                }
            }
        }
        out
    }

    fn split(&mut self, repeat: usize) -> Result<()> {
        let cfg = self.cfg().clone();
        let e = &cfg.experiment;
        let key = Step::Split { repeat }.key();
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(e.seed, &key, "split"));
        let by_site = |site: &str| -> Vec<usize> {
            (0..self.ds.patients().len())
                .filter(|&i| self.ds.patients()[i].site == site)
                .collect()
        };
        let sites = || {
            let mut s: Vec<String> = self.ds.patients().iter().map(|p| p.site.clone()).collect();
            s.sort();
            s.dedup();
            s.join(", ")
        };
        let (mut candidates, source) = match e.scenario {
            Scenario::Scratch => (
                (0..self.ds.patients().len()).collect::<Vec<_>>(),
                Vec::new(),
            ),
            Scenario::Transfer => {
                let (t, s) = (by_site(&e.target_site), by_site(&e.source_site));
                if t.is_empty() || s.is_empty() {
                    bail!("transfer scenario: source site '{}' has {} patients and target site '{}' has {}; the data set's sites are {}", e.source_site, s.len(), e.target_site, t.len(), sites());
                }
                (t, s)
            }
        };
        candidates.shuffle(&mut rng);
        let n_test = ((candidates.len() as f64 * e.test_fraction).round() as usize)
            .clamp(1, candidates.len().saturating_sub(1).max(1));
        if candidates.len() < 2 {
            bail!(
                "only {} patient(s) available: need at least 2 for a train/test split",
                candidates.len()
            );
        }
        let test = candidates[..n_test].to_vec();
        let mut train = candidates[n_test..].to_vec();
        train.sort();
        let mut rd = RepeatData {
            train,
            test,
            source,
            order: Vec::new(),
        };
        self.session
            .state
            .repeats
            .resize(repeat + 1, RepeatData::default());
        self.session.state.repeats[repeat] = rd.clone();
        let pool = self.pool(repeat).len();
        let need = stages(&cfg)
            .iter()
            .map(|s| s.initial + s.rounds.iter().sum::<usize>())
            .max()
            .unwrap_or(0);
        if need > pool {
            bail!("the protocol needs {need} samples per arm but the pool has {pool} ({} training patients, granularity {})", rd.train.len(), e.granularity);
        }
        let mut order: Vec<usize> = (0..pool).collect();
        order.shuffle(&mut rng);
        rd.order = order;
        self.session.state.repeats[repeat] = rd;
        Ok(())
    }

    // ---- training --------------------------------------------------------------------------

    fn new_unet(&self, vs: &VarStore) -> UNet {
        let net = UNet::new(
            &vs.root(),
            self.ds.channels() as i64,
            &self.cfg().unet.net(),
        );
        use_channels_last(vs);
        net
    }

    fn new_vae(&self, vs: &VarStore) -> Vae {
        let net = Vae::new(
            &vs.root(),
            self.ds.channels() as i64,
            self.ds.size() as i64,
            &self.cfg().vae.net(),
        );
        use_channels_last(vs);
        net
    }

    /// Loads the final weights of `step` into `vs`.
    fn load_final(&self, vs: &mut VarStore, step: &Step) -> Result<()> {
        let path = self.ckpt(&step.key(), "");
        vs.load(&path).with_context(|| {
            format!(
                "cannot load checkpoint {} (was the session folder changed by hand?)",
                path.display()
            )
        })
    }

    /// Trains a UNet for `step` (from `from`'s weights, or a seeded initialisation), epoch by
    /// epoch with checkpoints. `None` when stopped.
    #[allow(clippy::too_many_arguments)]
    fn train_unet(
        &mut self,
        index: usize,
        step: Step,
        from: Option<Step>,
        slices: &[usize],
        epochs: usize,
        control: &Control,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<Option<UNet>> {
        let key = step.key();
        let seed = self.cfg().experiment.seed;
        let mut vs = VarStore::new(self.device);
        let net = seeded(seed_for(seed, &key, "init"), || self.new_unet(&vs));
        let mut opt = Adam::new(&vs, self.cfg().unet.lr);
        let mixed = self.cfg().unet.precision == Precision::Fp16;
        if mixed {
            opt.loss_scale = Some(LossScale::default());
        }
        let start = self.session.state.partial_epochs;
        let files = self.partial_files(&step);
        if start > 0 {
            files.restore(&mut vs, &mut opt, start)?;
        } else if let Some(from) = from {
            self.load_final(&mut vs, &from)?;
        }
        let arm = match step {
            Step::Train { arm, .. } => Some(arm),
            _ => None,
        };
        let phase = if matches!(step, Step::Pretrain { .. }) {
            Phase::Pretraining
        } else {
            Phase::Training
        };
        let batch = self.cfg().unet.batch_size;
        // Disjoint borrows: the data set is read while the state and log are written.
        let Runner {
            session,
            ds,
            log,
            feed,
            ..
        } = self;
        let ck = EpochCheckpoint {
            files,
            index,
            phase,
            arm,
            epochs,
            persist: self.persist,
        };
        let mut after = |epoch: usize, loss: f64, opt: &Adam| {
            ck.save(session, log, sink, control, &vs, opt, epoch, loss)
        };
        let reached = train::train_unet(
            &net,
            &mut opt,
            ds,
            slices,
            batch,
            mixed,
            feed,
            start..epochs,
            seed_for(seed, &key, "shuffle"),
            &mut after,
        )?;
        if reached < epochs {
            return Ok(None);
        }
        Self::save_vs(&vs, &self.ckpt(&key, ""))?;
        Ok(Some(self.for_eval(vs, net).1))
    }
}

/// Where a repeat's pool latents live in a session folder.
fn latents_path(session: &Path, repeat: usize) -> PathBuf {
    session
        .join("latents")
        .join(format!("r{repeat}.safetensors"))
}

/// Latent of every pool sample of `repeat` (image: the slice's; patient: the mean of its
/// slices'), from the latents the session saved. The runner and the TUI's preview worker read
/// them through this.
pub fn sample_latents(s: &Session, ds: &Dataset, repeat: usize) -> Result<Vec<Vec<f64>>> {
    let path = latents_path(&s.dir, repeat);
    let t = Tensor::read_safetensors(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let z = &t
        .iter()
        .find(|(n, _)| n == "z")
        .context("latents file without 'z'")?
        .1;
    let rd = s.state.repeats.get(repeat).context("no such repeat yet")?;
    let pool_slices: usize = rd.train.iter().map(|&p| ds.patients()[p].slices).sum();
    let (n, d) = match z.size()[..] {
        [n, d] if n >= 0 && d > 0 => (n as usize, d as usize),
        ref other => bail!(
            "{}: latents of shape {other:?}, expected (slices, latent)",
            path.display()
        ),
    };
    if n != pool_slices {
        bail!(
            "{}: latents of {n} slices, but the pool of repeat {} has {pool_slices}",
            path.display(),
            repeat + 1
        );
    }
    let flat: Vec<f64> = Vec::try_from(z.to_kind(Kind::Double).reshape([-1]))?;
    let rows: Vec<Vec<f64>> = flat.chunks(d).map(|c| c.to_vec()).collect();
    Ok(match s.config.experiment.granularity {
        Granularity::Image => rows,
        Granularity::Patient => {
            let mut out = Vec::new();
            let mut at = 0;
            for &p in &rd.train {
                let n = ds.patients()[p].slices;
                let mut m = vec![0.0; d];
                for r in &rows[at..at + n] {
                    m.iter_mut().zip(r).for_each(|(a, b)| *a += b / n as f64);
                }
                out.push(m);
                at += n;
            }
            out
        }
    })
}

/// A training step's partial checkpoints: after `n` epochs, the weights in
/// `KEY.partial-eN.safetensors` and the optimiser moments in `KEY.adam-eN.safetensors`. The
/// epoch is in the names so that the files of the epoch state.json records stay untouched
/// until state.json records the next one: a kill between writing a checkpoint and recording
/// its epoch resumes from the recorded epoch's files, exactly (with one name for every epoch,
/// it resumed from newer weights than the epoch count said, and trained an epoch twice).
struct PartialFiles {
    dir: PathBuf,
    key: String,
}

impl PartialFiles {
    fn at(&self, epochs: usize) -> (PathBuf, PathBuf) {
        let name = |what: &str| {
            self.dir
                .join(format!("{}.{what}-e{epochs}.safetensors", self.key))
        };
        (name("partial"), name("adam"))
    }

    /// Resumes a training step killed or stopped after `epochs` epochs: its weights and
    /// optimiser moments. Sessions written before the epoch was in the names have one pair of
    /// files, `KEY.partial` / `KEY.adam`, which then held the recorded epoch's state unless the
    /// kill fell between the two writes.
    fn restore(&self, vs: &mut VarStore, opt: &mut Adam, epochs: usize) -> Result<()> {
        let (mut partial, mut adam) = self.at(epochs);
        if !partial.exists() {
            let old = |what: &str| self.dir.join(format!("{}.{what}.safetensors", self.key));
            if old("partial").exists() {
                (partial, adam) = (old("partial"), old("adam"));
            }
        }
        vs.load(&partial)
            .with_context(|| format!("cannot load the partial checkpoint {}", partial.display()))?;
        opt.load(&adam)
    }

    /// Every partial checkpoint of the step (the step is done, or starts over).
    fn remove_all(&self) {
        let prefixes = [
            format!("{}.partial", self.key),
            format!("{}.adam", self.key),
        ];
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()) && name.ends_with(".safetensors"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// What happens after every training epoch: weights and optimiser moments to the epoch's
/// partial checkpoint files (each atomically), then the epoch into state.json (the commit
/// point), then the previous epoch's files are removed, then the event; `Break` when a stop was
/// asked for. A kill at any point resumes from the epoch state.json names, whose files exist.
struct EpochCheckpoint {
    files: PartialFiles,
    index: usize,
    phase: Phase,
    arm: Option<Arm>,
    epochs: usize,
    /// False in a lane (lanes.rs): the epoch is not recorded in state.json.
    persist: bool,
}

impl EpochCheckpoint {
    #[allow(clippy::too_many_arguments)]
    fn save(
        &self,
        session: &mut Session,
        log: &mut EventLog,
        sink: &mut dyn FnMut(&Event),
        control: &Control,
        vs: &VarStore,
        opt: &Adam,
        epoch: usize,
        loss: f64,
    ) -> Result<ControlFlow<()>> {
        let writing = std::time::Instant::now();
        let (partial, adam) = self.files.at(epoch + 1);
        Runner::save_vs(vs, &partial)?;
        let tmp = adam.with_file_name(format!(
            ".tmp-{}",
            adam.file_name().unwrap_or_default().to_string_lossy()
        ));
        opt.save(&tmp)?;
        commit_file(&tmp, &adam)?;
        session.state.partial_epochs = epoch + 1;
        if self.persist {
            session.save_state()?;
        }
        let (old_partial, old_adam) = self.files.at(epoch);
        let _ = std::fs::remove_file(old_partial);
        let _ = std::fs::remove_file(old_adam);
        emit_to(
            log,
            sink,
            Event::EpochDone {
                index: self.index,
                phase: self.phase,
                arm: self.arm,
                epoch: epoch + 1,
                epochs: self.epochs,
                loss,
                checkpoint_s: writing.elapsed().as_secs_f64(),
            },
        );
        Ok(if control.stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

/// Logs an event with its wall-clock time (the report's time breakdown reads it), then hands it
/// to the sink.
fn emit_to(log: &mut EventLog, sink: &mut dyn FnMut(&Event), ev: Event) {
    if let Ok(mut v) = serde_json::to_value(&ev) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        v["time"] = now.into();
        let _ = log.append(&v.to_string());
    }
    sink(&ev);
}

fn previous_model(repeat: usize, stage: usize, arm: Arm, round: usize) -> Step {
    if round <= 1 {
        Step::Init { repeat, stage }
    } else {
        Step::Train {
            repeat,
            stage,
            arm,
            round: round - 1,
        }
    }
}

impl Runner {
    fn train_vae(
        &mut self,
        index: usize,
        repeat: usize,
        control: &Control,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<bool> {
        let step = Step::Vae { repeat };
        let key = step.key();
        let seed = self.cfg().experiment.seed;
        let mut vs = VarStore::new(self.device);
        let net = seeded(seed_for(seed, &key, "init"), || self.new_vae(&vs));
        let mut opt = Adam::new(&vs, self.cfg().vae.lr);
        let start = self.session.state.partial_epochs;
        let files = self.partial_files(&step);
        if start > 0 {
            files.restore(&mut vs, &mut opt, start)?;
        }
        let slices = self.pool_slices(repeat);
        let (epochs, batch, kl) = (
            self.cfg().vae.epochs,
            self.cfg().vae.batch_size,
            self.cfg().vae.kl_weight,
        );
        let Runner {
            session,
            ds,
            log,
            feed,
            ..
        } = self;
        let ck = EpochCheckpoint {
            files,
            index,
            phase: Phase::Vae,
            arm: None,
            epochs,
            persist: self.persist,
        };
        let mut after = |epoch: usize, loss: f64, opt: &Adam| {
            ck.save(session, log, sink, control, &vs, opt, epoch, loss)
        };
        let reached = train::train_vae(
            &net,
            &mut opt,
            ds,
            &slices,
            batch,
            kl,
            feed,
            start..epochs,
            seed_for(seed, &key, "shuffle"),
            &mut after,
        )?;
        if reached < epochs {
            return Ok(false);
        }
        Self::save_vs(&vs, &self.ckpt(&key, ""))?;
        Ok(true)
    }

    fn load_vae(&self, repeat: usize) -> Result<(VarStore, Vae)> {
        let mut vs = VarStore::new(self.device);
        let net = self.new_vae(&vs);
        self.load_final(&mut vs, &Step::Vae { repeat })?;
        Ok((vs, net))
    }

    fn latents_path(&self, repeat: usize) -> PathBuf {
        latents_path(&self.session.dir, repeat)
    }

    /// Encoder means of every pool slice, saved as `latents/r{repeat}.safetensors`.
    fn latents(&mut self, repeat: usize) -> Result<()> {
        let (_vs, vae) = self.load_vae(repeat)?;
        let slices = self.pool_slices(repeat);
        let z = encode_slices(&vae, &self.ds, &slices, &self.feed, EVAL_BATCH);
        let path = self.latents_path(repeat);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        let tmp = path.with_file_name(format!(".tmp-r{repeat}.safetensors"));
        Tensor::write_safetensors(&[("z", &z)], &tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        commit_file(&tmp, &path)
    }

    /// Latent of every pool sample (see [`sample_latents`]).
    pub fn sample_latents(&self, repeat: usize) -> Result<Vec<Vec<f64>>> {
        sample_latents(&self.session, &self.ds, repeat)
    }

    /// The UNet as evaluation, the oracle and the gradient step use it: batch norm folded into
    /// the convolutions (nets::fold_batch_norm) when it has batch norm.
    fn for_eval(&self, vs: VarStore, net: UNet) -> (VarStore, UNet) {
        fold_batch_norm(&vs, self.ds.channels() as i64, &self.cfg().unet.net()).unwrap_or((vs, net))
    }

    /// The final weights of `step`, for evaluation (see `for_eval`).
    fn load_unet(&self, step: &Step) -> Result<(VarStore, UNet)> {
        let mut vs = VarStore::new(self.device);
        let net = self.new_unet(&vs);
        self.load_final(&mut vs, step)?;
        Ok(self.for_eval(vs, net))
    }

    fn select(
        &mut self,
        repeat: usize,
        stage: usize,
        arm: Arm,
        round: usize,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<()> {
        let cfg = self.cfg().clone();
        let k = stages(&cfg)[stage].rounds[round - 1];
        let labelled = self.labelled(repeat, stage, Some(arm), round - 1);
        let taken: HashSet<usize> = labelled.iter().copied().collect();
        let pool = self.pool(repeat).len();
        let image = cfg.experiment.granularity == Granularity::Image;
        let key = Step::Select {
            repeat,
            stage,
            arm,
            round,
        }
        .key();
        let mut directions = None;
        let picks: Vec<Pick> = match arm {
            Arm::Random => {
                let unlabelled: Vec<usize> = (0..pool).filter(|s| !taken.contains(s)).collect();
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed_for(cfg.experiment.seed, &key, "random"));
                pick_random(&unlabelled, k, &mut rng)
            }
            Arm::Oracle => {
                let (_vs, net) = self.load_unet(&previous_model(repeat, stage, arm, round))?;
                let unlabelled: Vec<usize> = (0..pool).filter(|s| !taken.contains(s)).collect();
                let scores: Vec<(usize, f64)> = if image {
                    // Per-slice Dice is degenerate without tumour (one false positive scores 0),
                    // so the oracle ranks the slices that contain tumour.
                    let slices = self.sample_slices(repeat, &unlabelled);
                    let ov = eval::slice_overlaps(&net, &self.ds, &slices, &self.feed, EVAL_BATCH);
                    unlabelled
                        .iter()
                        .zip(ov)
                        .filter(|(_, o)| o.truth > 0)
                        .map(|(&s, o)| (s, o.dice()))
                        .collect()
                } else {
                    let patients: Vec<usize> = unlabelled
                        .iter()
                        .map(|&s| self.session.state.repeats[repeat].train[s])
                        .collect();
                    let d = eval::patient_dice(&net, &self.ds, &patients, &self.feed, EVAL_BATCH);
                    unlabelled.iter().copied().zip(d).collect()
                };
                pick_oracle(&scores, k)
            }
            Arm::Proposed => {
                let (_u, unet) = self.load_unet(&previous_model(repeat, stage, arm, round))?;
                let (vs, vae) = self.load_vae(repeat)?;
                // The float64 copy of the encoder for steps below float32 resolution.
                let mut vs64 = VarStore::new(self.device);
                let vae64 = self.new_vae(&vs64);
                vs64.copy(&vs)?;
                vs64.double();
                let latents = self.sample_latents(repeat)?;
                let samples: Vec<Vec<usize>> = labelled
                    .iter()
                    .map(|&s| self.sample_slices(repeat, &[s]))
                    .collect();
                let gradients = gradient_directions(
                    &unet,
                    &vae,
                    &vae64,
                    &self.ds,
                    &samples,
                    cfg.selection.alpha,
                    cfg.selection.direction,
                    &self.feed,
                    EVAL_BATCH,
                )?;
                let mut steps: Vec<(usize, GradientStep)> =
                    labelled.iter().copied().zip(gradients).collect();
                // The hardest labelled samples lead: highest loss first.
                steps.sort_by(|a, b| b.1.loss.total_cmp(&a.1.loss).then(a.0.cmp(&b.0)));
                let sources: Vec<Source> = steps
                    .iter()
                    .map(|(s, g)| Source {
                        sample: *s,
                        z: latents[*s].clone(),
                        direction: g.direction.clone(),
                    })
                    .collect();
                let candidates: Vec<(usize, Vec<f64>)> = (0..pool)
                    .filter(|s| !taken.contains(s))
                    .map(|s| (s, latents[s].clone()))
                    .collect();
                let mut methods = BTreeMap::new();
                for (_, g) in &steps {
                    *methods.entry(g.method.to_string()).or_insert(0) += 1;
                }
                let median = |mut v: Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied().unwrap_or(0.0)
                };
                directions = Some(DirectionSummary {
                    methods,
                    median_rel_dx: median(steps.iter().map(|(_, g)| g.rel_dx).collect()),
                    median_dz: median(steps.iter().map(|(_, g)| g.dz_norm).collect()),
                    zero_directions: steps.iter().filter(|(_, g)| g.dz_norm == 0.0).count(),
                });
                pick_proposed(&sources, &candidates, k, cfg.selection.cone_degrees)
            }
        };
        if picks.len() < k {
            bail!(
                "{arm} found only {} of {k} picks in round {round} (pool exhausted)",
                picks.len()
            );
        }
        let pool = self.pool(repeat);
        let tumour_picks = picks.iter().filter(|p| pool.has_tumour(p.sample)).count();
        let fallbacks = picks.iter().filter(|p| p.fallback).count();
        let views = picks.iter().map(|p| pool.pick_view(p)).collect();
        self.session.state.picks.push(PickRecord {
            repeat,
            stage,
            arm,
            round,
            picks,
            fallbacks,
            tumour_picks,
            directions,
        });
        self.emit(
            Event::PicksMade {
                repeat,
                stage,
                arm,
                round,
                picks: views,
                fallbacks,
                tumour_picks,
            },
            sink,
        );
        Ok(())
    }

    /// Test Dice of `net`, recorded for each of `arms`; returns the seconds it took (the
    /// report's evaluation line).
    fn evaluate(
        &mut self,
        net: &UNet,
        repeat: usize,
        stage: usize,
        arms: &[Arm],
        round: usize,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<f64> {
        let started = std::time::Instant::now();
        let test = self.session.state.repeats[repeat].test.clone();
        let mut total_pred = 0;
        let mut dice = Vec::new();
        let mut slice_dice = Vec::new();
        for ov in eval::patient_slice_overlaps(net, &self.ds, &test, &self.feed, EVAL_BATCH) {
            let o = eval::Overlap::total(&ov);
            total_pred += o.pred;
            dice.push(o.dice());
            // Slice Dice only where there is tumour to find (it is degenerate elsewhere).
            slice_dice.extend(ov.iter().filter(|o| o.truth > 0).map(|o| o.dice()));
        }
        let (mean, sd) = eval::mean_sd(&dice);
        let slice_dice_mean = eval::mean_sd(&slice_dice).0;
        for &arm in arms {
            let labelled = self.labelled(repeat, stage, Some(arm), round);
            let row = ResultRow {
                repeat,
                stage,
                arm,
                round,
                annotated: labelled.len(),
                viewed: self.pool(repeat).viewed(&labelled),
                dice_mean: mean,
                dice_sd: sd,
                dice: dice.clone(),
                slice_dice_mean,
                collapsed: total_pred == 0,
            };
            let ev = Event::Evaluated {
                repeat,
                stage,
                arm,
                round,
                annotated: row.annotated,
                viewed: row.viewed,
                dice_mean: mean,
                dice_sd: sd,
                collapsed: row.collapsed,
            };
            self.session.state.results.push(row);
            self.emit(ev, sink);
        }
        Ok(started.elapsed().as_secs_f64())
    }
}
