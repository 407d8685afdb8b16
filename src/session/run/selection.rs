//! The steps around training: the pool's latents (with the VAE's manifold statistics), the
//! picks of a round (the context its strategy picks from, built once, and the record of what
//! it picked; the strategies themselves are in `session::strategy`), and the evaluation on the
//! test set (Dice and HD95 per case).

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use tch::nn::VarStore;
use tch::Tensor;

use super::{Runner, EVAL_BATCH};
use crate::data::Dataset;
use crate::engine::batch::Feed;
use crate::engine::nets::{UNet, Vae};
use crate::engine::select::{Near, Spacing};
use crate::engine::{eval, manifold, surface};
use crate::session::config::{Arm, Granularity};
use crate::session::events::Event;
use crate::session::files::write_atomic_with;
use crate::session::plan::{previous_model, stages, Step};
use crate::session::state::{PickRecord, ResultRow};
use crate::session::strategy::{Models, PickContext, Picked};

/// Which model's test Dice is recorded: a repeat's stage, after `round` rounds (0: the shared
/// initial model), for `arms`.
pub(super) struct Evaluation<'a> {
    pub repeat: usize,
    pub stage: usize,
    pub arms: &'a [Arm],
    pub round: usize,
}

impl Runner {
    /// Encoder means of every pool slice of `repeat`, saved for selection and the interface,
    /// and the manifold's statistics (recorded with the repeat's data).
    pub(super) fn latents(&mut self, repeat: usize, sink: &mut dyn FnMut(&Event)) -> Result<()> {
        let (_vs, vae) = self.load_vae(repeat)?;
        let slices = self.pool_slices(repeat);
        let (z, stats) =
            manifold::encode_and_diagnose(&vae, &self.ds, &slices, &self.feed, EVAL_BATCH);
        self.session.state.repeats[repeat].manifold = Some(stats.clone());
        let warning = self.cfg().weak_manifold(&stats);
        self.emit(
            Event::Manifold {
                repeat,
                stats,
                warning,
            },
            sink,
        );
        let path = self.files.latents(repeat);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        write_atomic_with(&path, |tmp| {
            Tensor::write_safetensors(&[("z", &z)], tmp)
                .with_context(|| format!("cannot write {}", path.display()))
        })
    }

    /// Latent of every pool sample of `repeat` (see `Pool::sample_latents`).
    pub fn sample_latents(&self, repeat: usize) -> Result<Vec<Vec<f64>>> {
        self.pool(repeat)
            .sample_latents(&self.files.latents(repeat))
    }

    pub(super) fn select(
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
        // A slice without brain is never a candidate (nor, below, a source of proposed): its
        // input gradient is zero and every such slice sits at the same point of the latent
        // space, so it would only ever "fall back" to another one at distance 0.
        // Image-wise with selection.avoid_context: the neighbours of labelled slices were seen
        // as their context, and a pick's neighbours are not picked in the same round.
        let avoid = cfg.experiment.granularity == Granularity::Image && cfg.selection.avoid_context;
        let unlabelled: Vec<usize> = {
            let pool = self.pool(repeat);
            (0..pool.len())
                .filter(|s| !taken.contains(s) && pool.has_brain(*s))
                .collect()
        };
        let pool_view = self.pool(repeat);
        let neighbours = |s: usize| pool_view.neighbours(s);
        let spacing = Spacing {
            near: &neighbours,
            seen: labelled
                .iter()
                .flat_map(|&s| pool_view.neighbours(s))
                .collect(),
        };
        let near: Near = avoid.then_some(&spacing);
        let image = cfg.experiment.granularity == Granularity::Image;
        let key = Step::Select {
            repeat,
            stage,
            arm,
            round,
        }
        .key();
        let strategy = arm
            .strategy()
            .with_context(|| format!("{arm} is a reference, not a strategy: it picks nothing"))?;
        let models = RunnerModels {
            runner: self,
            repeat,
            previous: previous_model(repeat, stage, arm, round),
        };
        let cx = PickContext {
            k,
            labelled: &labelled,
            unlabelled: &unlabelled,
            near,
            image,
            selection: &cfg.selection,
            batch: EVAL_BATCH,
            models: &models,
            seed: cfg.experiment.seed,
            key: &key,
        };
        let Picked { picks, directions } = strategy.pick(&cx)?;
        if picks.len() < k {
            bail!(
                "{arm} found only {} of {k} picks in round {round} (pool exhausted)",
                picks.len()
            );
        }
        let pool = self.pool(repeat);
        // The pool's masks are the annotators' in a session labelled by people: a pick has none yet.
        let tumour_picks = (!self.human_labels())
            .then(|| picks.iter().filter(|p| pool.has_tumour(p.sample)).count());
        let fallbacks = picks.iter().filter(|p| p.fallback).count();
        let context_picks = image.then(|| {
            let mut seen: HashSet<usize> =
                labelled.iter().flat_map(|&s| pool.neighbours(s)).collect();
            picks
                .iter()
                .filter(|p| {
                    let near = seen.contains(&p.sample);
                    seen.extend(pool.neighbours(p.sample));
                    near
                })
                .count()
        });
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
            context_picks,
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

    /// Test Dice of `net`, recorded for each arm of `at`; returns the seconds it took (the
    /// report's evaluation line).
    pub(super) fn evaluate(
        &mut self,
        net: &UNet,
        at: Evaluation,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<f64> {
        let Evaluation {
            repeat,
            stage,
            arms,
            round,
        } = at;
        let started = std::time::Instant::now();
        let test = self.session.state.repeats[repeat].test.clone();
        if test.is_empty() {
            // Labelled by people without labelled test cases: evaluation is off.
            return Ok(0.0);
        }
        let mut total_pred = 0;
        let mut dice = Vec::new();
        let mut hd95 = Vec::new();
        let mut slice_dice = Vec::new();
        let ds = &self.ds;
        let downsample = ds.preprocessing().downsample as f64;
        let mut each = |n: usize, p: eval::PatientPrediction| {
            let o = eval::Overlap::total(&p.slices);
            total_pred += o.pred;
            dice.push(o.dice());
            // Slice Dice only where there is tumour to find (it is degenerate elsewhere).
            slice_dice.extend(p.slices.iter().filter(|o| o.truth > 0).map(|o| o.dice()));
            let info = &ds.patients()[test[n]];
            // The cache's voxel size is (x, y, z); slices are [z][row = y][col = x], down-sampled
            // in plane.
            let [vx, vy, vz] = info.voxel_mm.map(f64::from);
            let plane = ds.mask(info.first_slice).len();
            let truth = &ds.masks()[info.first_slice * plane..][..info.slices * plane];
            let volume = |mask| surface::Volume {
                mask,
                dims: [info.slices, ds.size(), ds.size()],
                spacing_mm: [vz, vy * downsample, vx * downsample],
            };
            hd95.push(surface::hd95(volume(&p.mask), volume(truth)));
        };
        eval::patient_predictions(net, ds, &test, &self.feed, EVAL_BATCH, &mut each);
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
                hd95: hd95.clone(),
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

/// The run's models, latents and data of one round, for its strategy.
struct RunnerModels<'r> {
    runner: &'r Runner,
    repeat: usize,
    /// The model the arm trained in the previous round.
    previous: Step,
}

impl Models for RunnerModels<'_> {
    fn previous_unet(&self) -> Result<(VarStore, UNet)> {
        self.runner.load_unet(&self.previous)
    }

    fn vae_and_f64_copy(&self) -> Result<((VarStore, Vae), (VarStore, Vae))> {
        let (vs, vae) = self.runner.load_vae(self.repeat)?;
        let mut vs64 = VarStore::new(self.runner.device);
        let vae64 = self.runner.new_vae(&vs64);
        vs64.copy(&vs)?;
        vs64.double();
        Ok(((vs, vae), (vs64, vae64)))
    }

    fn latents(&self) -> Result<Vec<Vec<f64>>> {
        self.runner.sample_latents(self.repeat)
    }

    fn sample_slices(&self, samples: &[usize]) -> Vec<usize> {
        self.runner.sample_slices(self.repeat, samples)
    }

    fn has_brain(&self, sample: usize) -> bool {
        self.runner.pool(self.repeat).has_brain(sample)
    }

    fn patient(&self, sample: usize) -> usize {
        self.runner.session.state.repeats[self.repeat].train[sample]
    }

    fn dataset(&self) -> &Dataset {
        &self.runner.ds
    }

    fn feed(&self) -> &Feed {
        &self.runner.feed
    }
}
