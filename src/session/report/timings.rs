//! Where a session's wall time went, from its event logs: steps grouped by what they do, with
//! evaluation and checkpoint I/O counted apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::Report;
use crate::session::events::{Event, LoggedEvent, Phase};

/// Time-breakdown labels for I/O.
const IO_DATA: &str = "I/O: data set open (+ pool upload)";
const IO_CHECKPOINTS: &str = "I/O: epoch checkpoints";

/// A step of the event log whose end has not been read yet.
struct OpenStep {
    label: String,
    /// Training steps split into training and evaluation.
    training: bool,
    start: f64,
    last_epoch: Option<f64>,
    checkpoints: f64,
}

impl Report {
    /// Adds the time breakdown from a session's event log, steps grouped by what they do (VAE,
    /// latents, pre-training, the shared initial UNet, and per arm: selection, training,
    /// evaluation). Each `step_done` gives its step's seconds and the part spent evaluating;
    /// the epochs' checkpoint writes (from `epoch_done`) and the opening of the data set (and
    /// its upload to a GPU, from `started`) are I/O, counted apart. Steps are matched by index,
    /// so the interleaved events of `--devices` lanes add up right (to more than the wall
    /// time: lanes run at once). A step cut by a stop counts until the stop. Logs written
    /// before `step_done` existed: a step lasts until the next step starts, and its evaluation
    /// is what follows its last epoch.
    pub fn with_timings(mut self, logs: &[PathBuf]) -> Report {
        for log in logs {
            self.add_log(&LoggedEvent::read_all(log));
        }
        self
    }

    /// The time breakdown of one event log (see `with_timings`): each log on its own, as the
    /// repeats that wrote them ran apart.
    fn add_log(&mut self, events: &[LoggedEvent]) {
        let by_index = events
            .iter()
            .any(|e| matches!(e.event, Event::StepDone { .. }));
        // Steps in progress, by index (one at a time in logs without step_done).
        let mut open: BTreeMap<usize, OpenStep> = BTreeMap::new();
        for logged in events {
            let t = logged.time;
            match &logged.event {
                Event::Started { data_load_s, .. } => self.add_time(IO_DATA, *data_load_s),
                Event::EpochDone {
                    index,
                    checkpoint_s,
                    ..
                } => {
                    let step = if by_index {
                        open.get_mut(index)
                    } else {
                        open.values_mut().next()
                    };
                    if let Some(o) = step {
                        o.last_epoch = Some(t);
                        o.checkpoints += checkpoint_s;
                    }
                }
                Event::StepDone {
                    index,
                    seconds,
                    evaluation_s,
                } => {
                    if let Some(o) = open.remove(index) {
                        self.add_step(&o, *seconds, *evaluation_s);
                    }
                }
                _ => {}
            }
            let ends_all = matches!(
                logged.event,
                Event::Stopped { .. } | Event::Finished { .. } | Event::Error { .. }
            );
            let starts = matches!(logged.event, Event::StepStarted { .. });
            if ends_all || (!by_index && starts) {
                for (_, o) in std::mem::take(&mut open) {
                    let evaluation = match o.last_epoch {
                        Some(end) if o.training && !by_index => t - end,
                        _ => 0.0,
                    };
                    self.add_step(&o, t - o.start, evaluation);
                }
            }
            if let Event::StepStarted {
                index, phase, arm, ..
            } = &logged.event
            {
                let (label, training) = match (phase, arm) {
                    (Phase::Training, None) => ("shared initial UNet".to_string(), true),
                    (Phase::Training, Some(arm)) => (arm.to_string(), true),
                    (Phase::Gradient | Phase::Search, Some(arm)) => {
                        (format!("selection: {arm}"), false)
                    }
                    (p, _) => (p.to_string(), false),
                };
                open.insert(
                    *index,
                    OpenStep {
                        label,
                        training,
                        start: t,
                        last_epoch: None,
                        checkpoints: 0.0,
                    },
                );
            }
        }
    }

    fn add_time(&mut self, label: &str, seconds: f64) {
        *self.timings.entry(label.to_string()).or_insert(0.0) += seconds.max(0.0);
    }

    /// A step of `seconds`, `evaluation` of them evaluating, its checkpoints' time apart.
    fn add_step(&mut self, o: &OpenStep, seconds: f64, evaluation: f64) {
        self.add_time(IO_CHECKPOINTS, o.checkpoints);
        if o.training {
            let training = seconds - evaluation - o.checkpoints;
            self.add_time(&format!("training: {}", o.label), training);
            self.add_time(&format!("evaluation: {}", o.label), evaluation);
        } else {
            self.add_time(&o.label, seconds - o.checkpoints);
        }
    }

    pub fn timings_text(&self) -> String {
        let total: f64 = self.timings.values().sum();
        let mut v: Vec<(&String, &f64)> = self.timings.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        let mut s = format!("where the time went ({total:.0} s of steps):\n");
        for (k, t) in v {
            let _ = writeln!(
                s,
                "  {k:<36} {t:>8.1} s  {:>5.1} %",
                100.0 * t / total.max(1e-9)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(log: &str) -> BTreeMap<String, f64> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, log).unwrap();
        Report::default().with_timings(&[path]).timings
    }

    fn close(t: &BTreeMap<String, f64>, label: &str, want: f64) {
        let got = t.get(label).copied().unwrap_or(f64::NAN);
        assert!(
            (got - want).abs() < 1e-9,
            "{label}: {got} vs {want} in {t:?}"
        );
    }

    /// Two lanes' training steps interleaved in one log (as `--devices` writes it): each step is
    /// matched by its index, its evaluation and checkpoints split off.
    #[test]
    fn interleaved_lanes_are_matched_by_step_index() {
        let log = r#"{"event":"started","session":"s","device":"cpu","steps_done":5,"steps_total":9,"time":0.0,"data_load_s":2.5}
{"event":"step_started","index":5,"total":9,"phase":"training","arm":"random","description":"d","time":10.0}
{"event":"step_started","index":6,"total":9,"phase":"training","arm":"oracle","description":"d","time":10.5}
{"event":"epoch_done","index":5,"phase":"training","arm":"random","epoch":1,"epochs":1,"loss":0.5,"time":14.0,"checkpoint_s":0.5}
{"event":"epoch_done","index":6,"phase":"training","arm":"oracle","epoch":1,"epochs":1,"loss":0.5,"time":15.0,"checkpoint_s":0.25}
{"event":"step_done","index":5,"time":16.0,"seconds":6.0,"evaluation_s":1.5}
{"event":"step_done","index":6,"time":17.0,"seconds":6.5,"evaluation_s":2.0}
{"event":"finished","steps_total":9,"time":17.0}
"#;
        let t = timings(log);
        close(&t, IO_DATA, 2.5);
        close(&t, IO_CHECKPOINTS, 0.75);
        close(&t, "training: random", 4.0);
        close(&t, "evaluation: random", 1.5);
        close(&t, "training: oracle", 4.25);
        close(&t, "evaluation: oracle", 2.0);
    }

    /// A log from before step_done: a step lasts until the next one starts; what follows its
    /// last epoch is evaluation.
    #[test]
    fn old_logs_are_timed_by_the_next_step() {
        let log = r#"{"event":"step_started","index":0,"total":2,"phase":"vae","arm":null,"description":"d","time":0.0}
{"event":"epoch_done","index":0,"phase":"vae","arm":null,"epoch":1,"epochs":1,"loss":0.5,"time":3.0}
{"event":"step_started","index":1,"total":2,"phase":"training","arm":"proposed","description":"d","time":4.0}
{"event":"epoch_done","index":1,"phase":"training","arm":"proposed","epoch":1,"epochs":1,"loss":0.5,"time":9.0}
{"event":"stopped","steps_done":1,"steps_total":2,"time":10.0}
{"event":"epoch_d
"#;
        let t = timings(log);
        close(&t, "vae", 4.0);
        close(&t, "training: proposed", 5.0);
        close(&t, "evaluation: proposed", 1.0);
    }
}
