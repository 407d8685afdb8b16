//! Training steps (the VAE, pre-training, the shared initial UNet, each arm's UNet after a
//! round, the full-data reference) through one epoch loop, with a commit at every epoch's end
//! and at a stop mid-epoch: weights and optimiser moments to the point's partial checkpoint
//! files (each atomically), then the point (epochs, and batches into the next) into
//! state.json (the commit), then the files of every other point are removed. A kill at any
//! moment resumes from the point state.json names, whose files exist.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use tch::nn::VarStore;

use super::{emit_to, Runner, StepContext, EVAL_BATCH};
use crate::engine::adam::{Adam, LossScale};
use crate::engine::manifold::{
    best_epoch, encode_and_diagnose, plateaued, ManifoldStats, VaeEpoch,
};
use crate::engine::nets::{fold_batch_norm, save_weights, seeded, use_channels_last, UNet, Vae};
use crate::engine::train::{self, Checkpoint, Schedule};
use crate::session::config::{Arm, Precision, Scenario};
use crate::session::events::{Event, Phase};
use crate::session::files::{write_atomic_with, SessionFiles};
use crate::session::plan::{full_epochs, previous_model, seed_for, Step};
use crate::session::state::RepeatProgress;
use crate::session::store::EventLog;
use crate::session::Session;

/// What a finished training step leaves for the step that follows: the UNet, ready for
/// evaluation, or nothing (the VAE and pre-training are read back from their checkpoints).
pub(super) enum Trained {
    Unet(Box<UNet>),
    Saved,
}

/// The network being trained.
enum Net {
    Unet(UNet),
    Vae(Vae),
}

impl Runner {
    pub(super) fn new_unet(&self, vs: &VarStore) -> UNet {
        let net = UNet::new(
            &vs.root(),
            self.ds.channels() as i64,
            &self.cfg().unet.net(),
        );
        use_channels_last(vs);
        net
    }

    pub(super) fn new_vae(&self, vs: &VarStore) -> Vae {
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
        let path = self.files.checkpoint(step);
        vs.load(&path).with_context(|| {
            format!(
                "cannot load checkpoint {} (was the session folder changed by hand?)",
                path.display()
            )
        })
    }

    pub(super) fn load_vae(&self, repeat: usize) -> Result<(VarStore, Vae)> {
        let mut vs = VarStore::new(self.device);
        let net = self.new_vae(&vs);
        self.load_final(&mut vs, &Step::Vae { repeat })?;
        Ok((vs, net))
    }

    /// The kept VAE of `repeat` measured on its validation slices (`vae.validation`): what the
    /// curve in state.json records for the kept epoch.
    pub fn measure_vae(&self, repeat: usize) -> Result<ManifoldStats> {
        let (_vs, vae) = self.load_vae(repeat)?;
        let validation = self.vae_slices(repeat).1;
        Ok(encode_and_diagnose(&vae, &self.ds, &validation, &self.feed, EVAL_BATCH).1)
    }

    /// The UNet as evaluation, the oracle and the gradient step use it: batch norm folded into
    /// the convolutions (nets::fold_batch_norm) when it has batch norm.
    fn for_eval(&self, vs: VarStore, net: UNet) -> (VarStore, UNet) {
        fold_batch_norm(&vs, self.ds.channels() as i64, &self.cfg().unet.net()).unwrap_or((vs, net))
    }

    /// The final weights of `step`, for evaluation (see `for_eval`).
    pub(super) fn load_unet(&self, step: &Step) -> Result<(VarStore, UNet)> {
        let mut vs = VarStore::new(self.device);
        let net = self.new_unet(&vs);
        self.load_final(&mut vs, step)?;
        Ok(self.for_eval(vs, net))
    }

    /// The slices a training step trains on, its epoch count, and the step whose weights it
    /// starts from (`None`: a seeded initialisation).
    fn training_data(&self, step: Step) -> (Vec<usize>, usize, Option<Step>) {
        let cfg = self.cfg();
        match step {
            Step::Vae { repeat } => (self.vae_slices(repeat).0, cfg.vae.epochs, None),
            Step::Pretrain { repeat } => {
                let source = &self.session.state.repeats[repeat].source;
                let slices = self.patient_slices(source);
                (slices, cfg.unet.epochs_pretrain, None)
            }
            Step::Init { repeat, stage } => {
                let from = (cfg.experiment.scenario == Scenario::Transfer)
                    .then_some(Step::Pretrain { repeat });
                let labelled = self.labelled(repeat, stage, None, 0);
                let slices = self.sample_slices(repeat, &labelled);
                (slices, cfg.unet.epochs_initial, from)
            }
            Step::Train {
                repeat,
                stage,
                arm,
                round,
            } => {
                let labelled = self.labelled(repeat, stage, Some(arm), round);
                let slices = self.sample_slices(repeat, &labelled);
                let from = previous_model(repeat, stage, arm, round);
                (slices, cfg.unet.epochs_per_round, Some(from))
            }
            Step::Full { repeat } => {
                let from = (cfg.experiment.scenario == Scenario::Transfer)
                    .then_some(Step::Pretrain { repeat });
                (self.pool_slices(repeat), full_epochs(cfg), from)
            }
            Step::Split { .. } | Step::Latents { .. } | Step::Select { .. } => {
                unreachable!("{} trains nothing", step.describe())
            }
        }
    }

    /// Trains the network of `step` epoch by epoch, with a checkpoint after each, resuming
    /// from the epoch state.json records. `None` when stopped before the last epoch.
    pub(super) fn train(&mut self, step: Step, cx: &mut StepContext) -> Result<Option<Trained>> {
        let key = step.key();
        let seed = self.cfg().experiment.seed;
        let (slices, epochs, from) = self.training_data(step);
        let mut vs = VarStore::new(self.device);
        let vae = matches!(step, Step::Vae { .. });
        let net = seeded(seed_for(seed, &key, "init"), || {
            if vae {
                Net::Vae(self.new_vae(&vs))
            } else {
                Net::Unet(self.new_unet(&vs))
            }
        });
        let cfg = self.cfg();
        let (lr, batch_size) = if vae {
            (cfg.vae.lr, cfg.vae.batch_size)
        } else {
            (cfg.unet.lr, cfg.unet.batch_size)
        };
        let mixed = !vae && cfg.unet.precision == Precision::Fp16;
        let kl_weight = cfg.vae.kl_weight;
        let mut opt = Adam::new(&vs, lr);
        if mixed {
            opt.loss_scale = Some(LossScale::default());
        }
        let progress = self.session.state.progress_of(step.repeat());
        let start = progress.partial_epochs;
        // The VAE is measured after every epoch on slices it does not train on, and stops on
        // a plateau of their error (vae.validation, vae.patience).
        let validation = match step {
            Step::Vae { repeat } => self.vae_slices(repeat).1,
            _ => Vec::new(),
        };
        let patience = if vae { cfg.vae.patience } else { 0 };
        let mut end = epochs;
        if let Step::Vae { repeat } = step {
            let curve = &mut self.session.state.repeats[repeat].vae_epochs;
            if !progress.in_step() {
                curve.clear(); // a step that starts over
            }
            // The curve is committed with each epoch's point: one entry per epoch done.
            let fits = curve.iter().enumerate().all(|(i, e)| e.epoch == i + 1)
                && (validation.is_empty() || curve.len() == start);
            if !fits {
                bail!(
                    "repeat {}: the VAE's validation curve in state.json ({} epochs) does not fit its checkpoint ({start} epochs); was the session changed by hand?",
                    repeat + 1,
                    curve.len()
                );
            }
            if plateaued(curve, patience) {
                end = start; // a kill came after the plateau was recorded: nothing to train
            }
        }
        if progress.in_step() {
            let batches = progress.mid_epoch.map_or(0, |m| m.batches);
            restore_partial(&self.files, &step, &mut vs, &mut opt, (start, batches))?;
        } else if let Some(from) = from {
            self.load_final(&mut vs, &from)?;
        }
        // Disjoint borrows: the data set is read while the state and log are written.
        let Runner {
            session,
            files,
            ds,
            log,
            feed,
            persist,
            ..
        } = self;
        let schedule = Schedule {
            ds,
            feed,
            slices: &slices,
            batch_size,
            epochs: start..end,
            resume: progress.mid_epoch,
            seed: seed_for(seed, &key, "shuffle"),
            stop: Some(&cx.control.stop),
        };
        let mut ck = EpochCheckpoint {
            files,
            session,
            log,
            vs: &vs,
            step,
            epochs,
            persist: *persist,
            patience,
            plateau: end < epochs,
        };
        let ds: &crate::data::Dataset = ds;
        let mut after = |point: Checkpoint, opt: &Adam| {
            let measured = match (point, &net) {
                (Checkpoint::EpochEnd { .. }, Net::Vae(v)) if !validation.is_empty() => {
                    Some(encode_and_diagnose(v, ds, &validation, feed, EVAL_BATCH).1)
                }
                _ => None,
            };
            ck.save(cx, opt, point, measured)
        };
        let reached = match &net {
            Net::Unet(n) => train::train_unet(n, &mut opt, &schedule, mixed, &mut after)?,
            Net::Vae(n) => train::train_vae(n, &mut opt, &schedule, kl_weight, &mut after)?,
        };
        if reached < epochs && !ck.plateau {
            return Ok(None);
        }
        let final_path = self.files.checkpoint(&step);
        let best = match step {
            Step::Vae { repeat } => best_epoch(&self.session.state.repeats[repeat].vae_epochs),
            _ => None,
        };
        match best {
            // The epoch with the lowest validation error is the VAE kept.
            Some(epoch) => {
                let best = self.files.best(&step, epoch);
                write_atomic_with(&final_path, |tmp| {
                    std::fs::copy(&best, tmp)
                        .map(|_| ())
                        .with_context(|| format!("cannot copy {}", best.display()))
                })?
            }
            None => save_var_store(&vs, &final_path)?,
        }
        Ok(Some(match net {
            Net::Unet(n) => Trained::Unet(Box::new(self.for_eval(vs, n).1)),
            Net::Vae(_) => Trained::Saved,
        }))
    }
}

/// Saves a var store atomically (the temporary file keeps the .safetensors ending that tch
/// picks the format by).
fn save_var_store(vs: &VarStore, path: &std::path::Path) -> Result<()> {
    write_atomic_with(path, |tmp| {
        save_weights(vs, tmp).with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Resumes a training step killed or stopped at `at` (epochs done, batches into the next):
/// its weights and optimiser moments. Sessions written before the epoch was in the names have
/// one pair of files, which then held the recorded epoch's state unless the kill fell between
/// the two writes.
fn restore_partial(
    files: &SessionFiles,
    step: &Step,
    vs: &mut VarStore,
    opt: &mut Adam,
    at: (usize, usize),
) -> Result<()> {
    let (mut partial, mut adam) = files.partial_at(step, at.0, at.1);
    if !partial.exists() && at.1 == 0 {
        if let Some(old) = files.legacy_partial(step) {
            (partial, adam) = old;
        }
    }
    vs.load(&partial)
        .with_context(|| format!("cannot load the partial checkpoint {}", partial.display()))?;
    opt.load(&adam)
}

/// What happens at every checkpoint of training (see the module's comment): the weights and
/// moments to files named by the point, the point into state.json (the commit), then the files
/// of every other point removed. An epoch's end returns `Break` when a stop was asked for; a
/// mid-epoch point is itself a stop.
struct EpochCheckpoint<'a> {
    files: &'a SessionFiles,
    session: &'a mut Session,
    log: &'a mut EventLog,
    vs: &'a VarStore,
    step: Step,
    epochs: usize,
    /// False in a lane (lanes.rs): the point is not recorded in state.json.
    persist: bool,
    /// The VAE stops once this many epochs pass without a lower validation error (0: never).
    patience: usize,
    /// Set when the VAE's training stopped on a plateau: the step is complete.
    plateau: bool,
}

impl EpochCheckpoint<'_> {
    /// `measured`: at an epoch's end of the VAE, its statistics on the validation slices.
    fn save(
        &mut self,
        cx: &mut StepContext,
        opt: &Adam,
        point: Checkpoint,
        measured: Option<ManifoldStats>,
    ) -> Result<ControlFlow<()>> {
        let writing = std::time::Instant::now();
        let (epochs, mid_epoch) = match point {
            Checkpoint::EpochEnd { epoch, .. } => (epoch + 1, None),
            Checkpoint::MidEpoch { epoch, at } => (epoch, Some(at)),
        };
        let files = self
            .files
            .partial_at(&self.step, epochs, mid_epoch.map_or(0, |m| m.batches));
        save_var_store(self.vs, &files.0)?;
        write_atomic_with(&files.1, |tmp| opt.save(tmp))?;
        let repeat = self.step.repeat();
        // The VAE's validation curve goes into state.json with the point, and the best epoch's
        // weights are on disk before it names them.
        let mut validation = None;
        if let (Checkpoint::EpochEnd { epoch, mean_loss }, Some(m)) = (point, &measured) {
            let curve = &mut self.session.state.repeats[repeat].vae_epochs;
            curve.truncate(epoch);
            let entry = VaeEpoch {
                epoch: epoch + 1,
                loss: mean_loss,
                validation_mse: m.recon_mse,
                variance_explained: m.variance_explained,
            };
            curve.push(entry);
            validation = Some(entry);
            if best_epoch(curve) == Some(epoch + 1) {
                save_var_store(self.vs, &self.files.best(&self.step, epoch + 1))?;
            }
        }
        let curve = match self.step {
            Step::Vae { .. } => self
                .session
                .state
                .repeats
                .get(repeat)
                .map_or(&[][..], |d| &d.vae_epochs[..]),
            _ => &[],
        };
        let best = best_epoch(curve).map(|e| self.files.best(&self.step, e));
        let plateau = plateaued(curve, self.patience);
        let done = self.session.state.progress_of(repeat).done;
        let progress = RepeatProgress {
            done,
            partial_epochs: epochs,
            mid_epoch,
        };
        self.session.state.set_progress(repeat, progress);
        if self.persist {
            self.session.save_repeat(repeat)?;
        }
        let mut keep = vec![files.0.as_path(), files.1.as_path()];
        keep.extend(best.as_deref());
        self.files.remove_partials_except(&self.step, &keep);
        let Checkpoint::EpochEnd { epoch, mean_loss } = point else {
            return Ok(ControlFlow::Break(()));
        };
        let (phase, arm) = match self.step {
            Step::Vae { .. } => (Phase::Vae, None),
            Step::Pretrain { .. } => (Phase::Pretraining, None),
            Step::Train { arm, .. } => (Phase::Training, Some(arm)),
            Step::Full { .. } => (Phase::Training, Some(Arm::Full)),
            _ => (Phase::Training, None),
        };
        emit_to(
            self.log,
            cx.sink,
            Event::EpochDone {
                index: cx.index,
                phase,
                arm,
                epoch: epoch + 1,
                epochs: self.epochs,
                loss: mean_loss,
                checkpoint_s: writing.elapsed().as_secs_f64(),
                validation,
            },
        );
        if plateau {
            self.plateau = true;
            return Ok(ControlFlow::Break(()));
        }
        Ok(if cx.control.stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}
