//! The data of a repeat: its seeded train/test split and sample order, its pool, and the
//! labelled set of an arm after some rounds.

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Runner;
use crate::session::config::{Arm, Scenario};
use crate::session::events::Event;
use crate::session::plan::{seed_for, stages, Step};
use crate::session::pool::Pool;
use crate::session::state::RepeatData;

impl Runner {
    pub(super) fn patient_slices(&self, patients: &[usize]) -> Vec<usize> {
        patients
            .iter()
            .flat_map(|&p| self.ds.patients()[p].slice_range())
            .collect()
    }

    pub(super) fn pool(&self, repeat: usize) -> Pool<'_> {
        Pool::new(
            &self.ds,
            &self.session.state.repeats[repeat],
            self.session.config.experiment.granularity,
        )
    }

    pub(super) fn pool_slices(&self, repeat: usize) -> Vec<usize> {
        self.pool(repeat).slices().to_vec()
    }

    /// The VAE's training and validation slices of `repeat`, each in pool order: a seeded
    /// `vae.validation` share of the pool's patients (at least one when above 0, never all)
    /// is held out of its training.
    pub(super) fn vae_slices(&self, repeat: usize) -> (Vec<usize>, Vec<usize>) {
        let cfg = self.cfg();
        let pool = &self.session.state.repeats[repeat].train;
        let share = cfg.vae.validation;
        let n = pool.len();
        let held = if share > 0.0 && n >= 2 {
            ((share * n as f64).round() as usize).clamp(1, n - 1)
        } else {
            0
        };
        let mut order: Vec<usize> = pool.clone();
        let key = Step::Vae { repeat }.key();
        let seed = seed_for(cfg.experiment.seed, &key, "validation");
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let held: std::collections::HashSet<usize> = order[..held].iter().copied().collect();
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for &p in pool {
            let slices = self.ds.patients()[p].slice_range();
            if held.contains(&p) {
                validation.extend(slices);
            } else {
                train.extend(slices);
            }
        }
        (train, validation)
    }

    pub(super) fn sample_slices(&self, repeat: usize, samples: &[usize]) -> Vec<usize> {
        self.pool(repeat).sample_slices(samples)
    }

    /// Labelled samples of `arm` after `round` rounds (round 0: the shared initial set); the
    /// `full` reference has the whole pool.
    pub(super) fn labelled(
        &self,
        repeat: usize,
        stage: usize,
        arm: Option<Arm>,
        round: usize,
    ) -> Vec<usize> {
        if arm == Some(Arm::Full) {
            return (0..self.pool(repeat).len()).collect();
        }
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

    pub(super) fn split(&mut self, repeat: usize, sink: &mut dyn FnMut(&Event)) -> Result<()> {
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
                if self.human_labels() {
                    let missing: Vec<&str> = s
                        .iter()
                        .filter(|&&p| !self.ds.has_segmentation(p))
                        .map(|&p| self.ds.patients()[p].id.as_str())
                        .collect();
                    if !missing.is_empty() {
                        bail!("transfer scenario: pre-training on source site '{}' needs its segmentations, and {} of its {} cases have none ({}); give them one, or use the scratch scenario", e.source_site, missing.len(), s.len(), missing.join(", "));
                    }
                }
                (t, s)
            }
        };
        candidates.shuffle(&mut rng);
        let (test, mut train) = if self.human_labels() {
            self.human_split(&candidates)?
        } else {
            let n_test = ((candidates.len() as f64 * e.test_fraction).round() as usize)
                .clamp(1, candidates.len().saturating_sub(1).max(1));
            if candidates.len() < 2 {
                bail!(
                    "only {} patient(s) available: need at least 2 for a train/test split",
                    candidates.len()
                );
            }
            (candidates[..n_test].to_vec(), candidates[n_test..].to_vec())
        };
        train.sort();
        let test_cases = test
            .iter()
            .map(|&p| {
                let info = &self.ds.patients()[p];
                (info.id.clone(), info.site.clone())
            })
            .collect();
        let mut rd = RepeatData {
            train,
            test,
            source,
            order: Vec::new(),
            test_cases,
            manifold: None,
            vae_epochs: Vec::new(),
            annotations: Vec::new(),
            dataset_labels: Default::default(),
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
        let split = Event::Split {
            repeat,
            pool_cases: rd.train.len(),
            test_cases: rd.test.len(),
        };
        self.session.state.repeats[repeat] = rd;
        if self.human_labels() {
            self.apply_test_labels(repeat)?;
        }
        self.emit(split, sink);
        Ok(())
    }

    /// The split of a session labelled by people, from `shuffled` candidates: the test cases
    /// are the first of them with a segmentation in the data set (the test fraction of those),
    /// and every other case is the pool. With all cases labelled this is the simulated split.
    /// None labelled, or a test fraction of 0: no test cases, and evaluation is off.
    fn human_split(&self, shuffled: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
        let fraction = self.cfg().experiment.test_fraction;
        let labelled: Vec<usize> = shuffled
            .iter()
            .copied()
            .filter(|&p| self.ds.has_segmentation(p))
            .collect();
        let n_test = if labelled.is_empty() || fraction == 0.0 {
            0
        } else {
            ((labelled.len() as f64 * fraction).round() as usize)
                .clamp(1, labelled.len())
                .min(shuffled.len().saturating_sub(1))
        };
        let test = labelled[..n_test].to_vec();
        let train: Vec<usize> = shuffled
            .iter()
            .copied()
            .filter(|p| !test.contains(p))
            .collect();
        if train.is_empty() {
            bail!(
                "only {} case(s) available: none left to annotate",
                shuffled.len()
            );
        }
        Ok((test, train))
    }
}
