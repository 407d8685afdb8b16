//! The steps around training: the pool's latents (with the VAE's manifold statistics), the
//! picks of a round (random, oracle, entropy, coreset, the gradient-guided cone search), and the
//! evaluation on the test set (Dice and HD95 per case).

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::Tensor;

use super::{Runner, EVAL_BATCH};
use crate::engine::cone::{pick_proposed, ConeSettings, Source};
use crate::engine::coreset::pick_coreset;
use crate::engine::nets::UNet;
use crate::engine::select::{
    gradient_directions, pick_highest, pick_oracle, pick_random, spaced, DirectionNets,
    GradientStep, Near, Pick, Spacing, StepSettings,
};
use crate::engine::{eval, manifold, surface};
use crate::session::config::{Arm, Granularity};
use crate::session::events::Event;
use crate::session::files::write_atomic_with;
use crate::session::plan::{previous_model, seed_for, stages, Step};
use crate::session::state::{DirectionSummary, PickRecord, ResultRow};

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
        let mut directions = None;
        let picks: Vec<Pick> = match arm {
            Arm::Random => {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed_for(cfg.experiment.seed, &key, "random"));
                spaced(
                    pick_random(&unlabelled, unlabelled.len(), &mut rng),
                    k,
                    near,
                )
            }
            Arm::Oracle => {
                let (_vs, net) = self.load_unet(&previous_model(repeat, stage, arm, round))?;
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
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed_for(cfg.experiment.seed, &key, "ties"));
                spaced(pick_oracle(&scores, scores.len(), &mut rng), k, near)
            }
            Arm::Entropy => {
                let (_vs, net) = self.load_unet(&previous_model(repeat, stage, arm, round))?;
                // One pass over all unlabelled slices; a sample's entropy is its mean over the
                // brain pixels of its slices (a patient's slices pooled).
                let groups: Vec<Vec<usize>> = unlabelled
                    .iter()
                    .map(|&s| self.sample_slices(repeat, &[s]))
                    .collect();
                let slices: Vec<usize> = groups.concat();
                let per_slice =
                    eval::slice_entropies(&net, &self.ds, &slices, &self.feed, EVAL_BATCH);
                let mut at = 0;
                let scores: Vec<(usize, f64)> = unlabelled
                    .iter()
                    .zip(&groups)
                    .map(|(&s, g)| {
                        let (h, n) = per_slice[at..at + g.len()]
                            .iter()
                            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
                        at += g.len();
                        (s, if n > 0.0 { h / n } else { 0.0 })
                    })
                    .collect();
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed_for(cfg.experiment.seed, &key, "ties"));
                spaced(pick_highest(&scores, scores.len(), &mut rng), k, near)
            }
            Arm::Coreset => {
                let latents = self.sample_latents(repeat)?;
                let centres: Vec<Vec<f64>> = labelled.iter().map(|&s| latents[s].clone()).collect();
                let candidates: Vec<(usize, Vec<f64>)> = unlabelled
                    .iter()
                    .map(|&s| (s, latents[s].clone()))
                    .collect();
                pick_coreset(&centres, &candidates, k, near)
            }
            Arm::Full => unreachable!("the full reference picks nothing"),
            Arm::Proposed => {
                let (_u, unet) = self.load_unet(&previous_model(repeat, stage, arm, round))?;
                let (vs, vae) = self.load_vae(repeat)?;
                // The float64 copy of the encoder for steps below float32 resolution.
                let mut vs64 = VarStore::new(self.device);
                let vae64 = self.new_vae(&vs64);
                vs64.copy(&vs)?;
                vs64.double();
                let latents = self.sample_latents(repeat)?;
                let sources: Vec<usize> = {
                    let pool = self.pool(repeat);
                    let brain: Vec<usize> = labelled
                        .iter()
                        .copied()
                        .filter(|&s| pool.has_brain(s))
                        .collect();
                    // With no labelled slice inside the brain, every source falls back (zero
                    // directions, counted) rather than the round picking nothing.
                    if brain.is_empty() {
                        labelled.clone()
                    } else {
                        brain
                    }
                };
                let samples: Vec<Vec<usize>> = sources
                    .iter()
                    .map(|&s| self.sample_slices(repeat, &[s]))
                    .collect();
                let nets = DirectionNets {
                    unet: &unet,
                    vae: &vae,
                    vae64: &vae64,
                };
                let step = StepSettings {
                    alpha: cfg.selection.alpha,
                    dice_smoothing: cfg.selection.dice_smoothing,
                    method: cfg.selection.direction,
                };
                let gradients =
                    gradient_directions(&nets, &self.ds, &self.feed, &samples, step, EVAL_BATCH)?;
                let mut steps: Vec<(usize, GradientStep)> =
                    sources.iter().copied().zip(gradients).collect();
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
                let candidates: Vec<(usize, Vec<f64>)> = unlabelled
                    .iter()
                    .map(|&s| (s, latents[s].clone()))
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
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed_for(cfg.experiment.seed, &key, "fallback"));
                let cone = ConeSettings {
                    degrees: cfg.selection.cone_degrees,
                    fallback: cfg.selection.fallback,
                    rng: &mut rng,
                    near,
                };
                pick_proposed(&sources, &candidates, k, cone)
            }
        };
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
