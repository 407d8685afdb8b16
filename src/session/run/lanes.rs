//! `--devices`: the arms of a round run concurrently, one lane (thread) per device.
//!
//! Within a round the arms are independent: each selects from its own labelled set and trains
//! its own UNet from its own previous model, so the `Select`/`Train` steps of different arms
//! can run at the same time. Lane `j` takes arms `j`, `j + lanes`, …; each lane is a copy of the
//! runner on its device whose state is merged into the session when the whole round is done,
//! in plan order, so state.json is exactly what a run on one device writes.
//!
//! The round is the unit of resumption: lanes checkpoint their epochs as usual, but state.json
//! only moves when every arm of the round has finished. A run stopped or killed in the middle
//! of a round does that round again when resumed (and, seeded, gets the same result).

use std::sync::Arc;

use anyhow::{anyhow, Result};
use tch::Device;

use super::{Control, Event, Feed, Runner, Step, StepContext};
use crate::session::state::RepeatProgress;

impl Runner {
    /// Runs the arms of each round concurrently on `devices` (more than one). Checks each.
    pub fn set_lanes(&mut self, devices: Vec<Device>) -> Result<()> {
        for &d in &devices {
            crate::engine::device::check_device(d)?;
            if self.session.config.unet.precision == super::Precision::Fp16
                && !matches!(d, Device::Cuda(_))
            {
                anyhow::bail!("unet.precision = \"fp16\" (mixed precision) needs CUDA devices, and --devices names {}", crate::engine::device::describe(d));
            }
        }
        self.lane_feeds = devices.iter().map(|_| None).collect();
        self.lanes = if devices.len() > 1 {
            devices
        } else {
            Vec::new()
        };
        if !self.lanes.is_empty() {
            let names: Vec<String> = self
                .lanes
                .iter()
                .map(|&d| crate::engine::device::describe(d))
                .collect();
            self.session.state.device = Some(format!("{} (arms in parallel)", names.join(", ")));
        }
        Ok(())
    }

    /// With lanes: the end of the round that starts at `index` (its `Select`/`Train` steps of
    /// the same repeat, stage and round), when it has more than one arm left to run. A step
    /// that stopped mid-way (partial epochs) first finishes on its own.
    pub(super) fn parallel_round(&self, index: usize) -> Option<usize> {
        let repeat = self.plan[index].repeat();
        if self.lanes.is_empty() || self.session.state.progress_of(repeat).in_step() {
            return None;
        }
        let round_of = |s: &Step| match *s {
            Step::Select {
                repeat,
                stage,
                round,
                ..
            }
            | Step::Train {
                repeat,
                stage,
                round,
                ..
            } => Some((repeat, stage, round)),
            _ => None,
        };
        let first = round_of(&self.plan[index])?;
        let end = index
            + self.plan[index..]
                .iter()
                .take_while(|s| round_of(s) == Some(first))
                .count();
        let arms = self.arms_in(index, end);
        (arms.len() > 1).then_some(end)
    }

    /// The arms of steps `start..end`, in plan order.
    fn arms_in(&self, start: usize, end: usize) -> Vec<super::Arm> {
        let mut arms = Vec::new();
        for s in &self.plan[start..end] {
            if let Step::Select { arm, .. } | Step::Train { arm, .. } = *s {
                if !arms.contains(&arm) {
                    arms.push(arm);
                }
            }
        }
        arms
    }

    /// A copy of this runner on `device` that leaves state.json alone.
    fn lane(&self, device: Device, feed: Option<Feed>, repeat: usize) -> Result<Runner> {
        let mut session = self.session.clone();
        let done = session.state.progress_of(repeat).done;
        session.state.set_progress(
            repeat,
            RepeatProgress {
                done,
                ..Default::default()
            },
        );
        Ok(Runner {
            session,
            files: self.files.clone(),
            _locks: Arc::clone(&self._locks),
            repeats: self.repeats.clone(),
            steps_per_repeat: self.steps_per_repeat,
            ds: Arc::clone(&self.ds),
            device,
            feed: feed.unwrap_or_else(|| Feed::auto(&self.ds, device)),
            lanes: Vec::new(),
            lane_feeds: Vec::new(),
            persist: false,
            data_load_s: 0.0,
            log: self.files.event_log(repeat)?,
            plan: self.plan.clone(),
            annotated: None,
        })
    }

    /// Runs steps `start..end` (one round) in lanes; merges and records them when all finished.
    /// `Ok(false)`: stopped (nothing of the round recorded).
    pub(super) fn run_round_in_lanes(
        &mut self,
        start: usize,
        end: usize,
        control: &Control,
        sink: &mut dyn FnMut(&Event),
    ) -> Result<bool> {
        let arms = self.arms_in(start, end);
        let n = self.lanes.len();
        let lane_of = |s: &Step| match *s {
            Step::Select { arm, .. } | Step::Train { arm, .. } => {
                arms.iter().position(|&a| a == arm).unwrap_or(0) % n
            }
            _ => 0,
        };
        // The runner's own device lends its feed to its lane: one copy of the pool per device.
        let mut feeds = std::mem::take(&mut self.lane_feeds);
        feeds.resize_with(n, || None);
        let own = self.lanes.iter().position(|&d| d == self.device);
        if let Some(j) = own {
            feeds[j] = Some(std::mem::replace(&mut self.feed, Feed::host(self.device)));
        }
        let mut lanes = Vec::new();
        for (j, &device) in self.lanes.iter().enumerate() {
            let steps: Vec<(usize, Step)> = (start..end)
                .filter(|&i| lane_of(&self.plan[i]) == j)
                .map(|i| (i, self.plan[i]))
                .collect();
            if !steps.is_empty() {
                lanes.push((
                    j,
                    steps,
                    self.lane(device, feeds[j].take(), self.plan[start].repeat())?,
                ));
            }
        }
        let spawned = lanes.len();
        let (tx, rx) = crossbeam_channel::unbounded::<Event>();
        let outcomes: Vec<(usize, Result<bool>, Runner)> = std::thread::scope(|scope| {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|(j, steps, mut lane)| {
                    let tx = tx.clone();
                    scope.spawn(move || {
                        let mut forward = |e: &Event| {
                            let _ = tx.send(e.clone());
                        };
                        let mut outcome = Ok(true);
                        for (index, step) in steps {
                            let mut cx = StepContext {
                                index,
                                control,
                                sink: &mut forward,
                            };
                            match lane.run_step(step, &mut cx) {
                                Ok(true) => {
                                    let r = step.repeat();
                                    let done = lane.session.state.progress_of(r).done;
                                    let progress = RepeatProgress {
                                        done,
                                        ..Default::default()
                                    };
                                    lane.session.state.set_progress(r, progress);
                                }
                                other => {
                                    outcome = other;
                                    break;
                                }
                            }
                        }
                        (j, outcome, lane)
                    })
                })
                .collect();
            drop(tx);
            // The caller's sink sees the lanes' events as they happen, on this thread.
            for e in rx.iter() {
                sink(&e);
            }
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let lost = outcomes.len() < spawned;
        let (base_picks, base_results) = (
            self.session.state.picks.len(),
            self.session.state.results.len(),
        );
        let mut picks = Vec::new();
        let mut results = Vec::new();
        let mut finished = true;
        let mut error = None;
        for (j, outcome, lane) in outcomes {
            match outcome {
                Ok(true) => {}
                Ok(false) => finished = false,
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
            picks.extend_from_slice(&lane.session.state.picks[base_picks..]);
            results.extend_from_slice(&lane.session.state.results[base_results..]);
            feeds[j] = Some(lane.feed);
        }
        if let Some(j) = own {
            self.feed = feeds[j]
                .take()
                .unwrap_or_else(|| Feed::auto(&self.ds, self.device));
        }
        self.lane_feeds = feeds;
        if let Some(e) = error {
            return Err(e);
        }
        if lost {
            return Err(anyhow!(
                "a device lane panicked; the round was not recorded"
            ));
        }
        if !finished {
            return Ok(false);
        }
        // Plan order: what one device would have appended.
        let position = |arm| arms.iter().position(|&a| a == arm).unwrap_or(usize::MAX);
        picks.sort_by_key(|p| position(p.arm));
        results.sort_by_key(|r| position(r.arm));
        self.session.state.picks.extend(picks);
        self.session.state.results.extend(results);
        let repeat = self.plan[start].repeat();
        self.set_progress(repeat, end - repeat * self.steps_per_repeat, 0);
        self.save_repeat(repeat)?;
        for step in &self.plan[start..end] {
            self.files.remove_partials(step);
        }
        Ok(true)
    }
}
