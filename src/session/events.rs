//! What a running session tells the world: the same events feed `events.jsonl` (as
//! `LoggedEvent` lines), `run --jsonl`, the progress display and the TUI.

use serde::{Deserialize, Serialize};

use super::config::Arm;

crate::display_as_serde!(Phase);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Split,
    Vae,
    Latents,
    Pretraining,
    Training,
    Gradient,
    Search,
    Evaluation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PickView {
    /// Pool index of the picked sample, and of the labelled sample whose gradient led to it.
    pub sample: usize,
    pub source: Option<usize>,
    /// Patient ID.
    pub patient: String,
    /// Image-wise: the slice (index within the patient's kept slices).
    pub slice: Option<usize>,
    pub distance: Option<f64>,
    pub angle_deg: Option<f64>,
    pub fallback: bool,
    pub dice: Option<f64>,
}

/// Picks named on one line are at most this many; the rest are counted (a round at paper
/// scale picks hundreds; they all are in `export` and `--jsonl`).
const PICKS_NAMED: usize = 4;

/// A round's picks as a person reads them: `8 picks, 5 with tumour, 2 fallbacks: P1, P7, …`
/// (without the tumour count where it is not known: a session labelled by people).
pub fn picks_summary(picks: &[PickView], tumour_picks: Option<usize>, fallbacks: usize) -> String {
    format!(
        "{} pick{}, {}{fallbacks} fallback{}: {}",
        picks.len(),
        if picks.len() == 1 { "" } else { "s" },
        tumour_picks.map_or(String::new(), |n| format!("{n} with tumour, ")),
        if fallbacks == 1 { "" } else { "s" },
        picks_line(picks)
    )
}

/// A split as a person reads it: `repeat 1: 40 cases in the pool, 10 test cases`.
pub fn split_summary(repeat: usize, pool_cases: usize, test_cases: usize) -> String {
    let test = match test_cases {
        0 => "no labelled test case: evaluation off".to_string(),
        1 => "1 test case".to_string(),
        n => format!("{n} test cases"),
    };
    format!(
        "repeat {}: {pool_cases} cases in the pool, {test}",
        // Saturating: the line may come from a damaged log.
        repeat.saturating_add(1)
    )
}

/// A round's picks as one short line: the first few as `ID` or `ID#slice`, then how many more.
pub fn picks_line(picks: &[PickView]) -> String {
    let mut names: Vec<String> = picks
        .iter()
        .take(PICKS_NAMED)
        .map(|p| match p.slice {
            Some(s) => format!("{}#{s}", p.patient),
            None => p.patient.clone(),
        })
        .collect();
    if picks.len() > PICKS_NAMED {
        names.push(format!("… {} more", picks.len() - PICKS_NAMED));
    }
    names.join(", ")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        session: String,
        device: String,
        steps_done: usize,
        steps_total: usize,
        /// Seconds spent opening (or building) the preprocessed data set before this run.
        #[serde(default)]
        data_load_s: f64,
    },
    StepStarted {
        index: usize,
        total: usize,
        phase: Phase,
        arm: Option<Arm>,
        description: String,
    },
    EpochDone {
        index: usize,
        phase: Phase,
        arm: Option<Arm>,
        epoch: usize,
        epochs: usize,
        loss: f64,
        /// Seconds this epoch's checkpoint took to write (weights, optimiser state, state.json).
        #[serde(default)]
        checkpoint_s: f64,
        /// The VAE with validation slices: the epoch measured on them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        validation: Option<crate::engine::manifold::VaeEpoch>,
    },
    /// A step finished: its wall time, and the part spent evaluating (Init and Train steps);
    /// its epochs' checkpoint writes are in their `EpochDone`s.
    StepDone {
        index: usize,
        seconds: f64,
        evaluation_s: f64,
    },
    PicksMade {
        repeat: usize,
        stage: usize,
        arm: Arm,
        round: usize,
        picks: Vec<PickView>,
        fallbacks: usize,
        tumour_picks: Option<usize>,
    },
    Evaluated {
        repeat: usize,
        stage: usize,
        arm: Arm,
        round: usize,
        annotated: usize,
        viewed: usize,
        dice_mean: f64,
        dice_sd: f64,
        collapsed: bool,
    },
    /// A repeat's cases are split into its pool and its test cases. None of the latter (a
    /// session labelled by people without labelled cases): evaluation is off.
    Split {
        repeat: usize,
        pool_cases: usize,
        test_cases: usize,
    },
    /// The pool is encoded: how much of it the VAE's latent space holds.
    Manifold {
        repeat: usize,
        stats: crate::engine::manifold::ManifoldStats,
        /// Set when the latent space is too weak for the arms that pick in it
        /// (`SessionConfig::weak_manifold`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
    /// Labelled by people: a segmentation offered for round `round` was counted or refused.
    Annotation {
        repeat: usize,
        round: usize,
        counted: bool,
        text: String,
    },
    /// Labelled by people: the run waits for round `round`'s segmentations in `inbox`.
    AwaitingLabels {
        repeat: usize,
        round: usize,
        received: usize,
        needed: usize,
        inbox: String,
    },
    Stopped {
        steps_done: usize,
        steps_total: usize,
    },
    Finished {
        steps_total: usize,
    },
    Error {
        message: String,
    },
}

/// The format of `events.jsonl`'s lines (`LoggedEvent`).
pub const EVENT_FORMAT_VERSION: u32 = 1;

fn first_format() -> u32 {
    1
}

/// One line of `events.jsonl`: an event, when it happened, and the line's format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Lines written before the version was recorded are the first format.
    #[serde(default = "first_format")]
    pub format_version: u32,
    /// Seconds since the Unix epoch.
    pub time: f64,
    #[serde(flatten)]
    pub event: Event,
}

impl LoggedEvent {
    /// `event`, stamped now.
    pub fn now(event: Event) -> LoggedEvent {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        LoggedEvent {
            format_version: EVENT_FORMAT_VERSION,
            time,
            event,
        }
    }

    /// The events of a log file, in order; lines that are not events (the last line of a
    /// killed run, cut mid-write) are skipped. A missing file has none.
    pub fn read_all(path: &std::path::Path) -> Vec<LoggedEvent> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_of_many_picks_is_one_short_line() {
        let pick = |i: usize| PickView {
            sample: i,
            source: None,
            patient: format!("P{i}"),
            slice: Some(i),
            distance: None,
            angle_deg: None,
            fallback: false,
            dice: None,
        };
        let few: Vec<PickView> = (0..3).map(pick).collect();
        assert_eq!(picks_line(&few), "P0#0, P1#1, P2#2");
        let many: Vec<PickView> = (0..1250).map(pick).collect();
        assert_eq!(picks_line(&many), "P0#0, P1#1, P2#2, P3#3, … 1246 more");
        assert_eq!(
            picks_summary(&many, Some(700), 1),
            "1250 picks, 700 with tumour, 1 fallback: P0#0, P1#1, P2#2, P3#3, … 1246 more"
        );
        // Labelled by people, nobody knows yet.
        assert_eq!(
            picks_summary(&few, None, 0),
            "3 picks, 0 fallbacks: P0#0, P1#1, P2#2"
        );
        assert_eq!(
            split_summary(0, 40, 0),
            "repeat 1: 40 cases in the pool, no labelled test case: evaluation off"
        );
    }

    #[test]
    fn logged_events_round_trip_with_time_and_version() {
        let e = LoggedEvent::now(Event::StepDone {
            index: 3,
            seconds: 1.5,
            evaluation_s: 0.25,
        });
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""event":"step_done""#) && line.contains(r#""format_version":1"#));
        let back: LoggedEvent = serde_json::from_str(&line).unwrap();
        assert_eq!((back.format_version, &back.event), (1, &e.event));
        // (serde_json parses floats to within a unit in the last place.)
        assert!((back.time - e.time).abs() < 1e-3);
        // A line of a log written before the version was recorded.
        let old = r#"{"event":"finished","steps_total":4,"time":12.5}"#;
        let e: LoggedEvent = serde_json::from_str(old).unwrap();
        assert_eq!((e.format_version, e.time), (1, 12.5));
        assert_eq!(e.event, Event::Finished { steps_total: 4 });
    }
}
