//! What a running session tells the world: the same events feed `events.jsonl`, `run --jsonl`,
//! the progress display and (later) the TUI.

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
        tumour_picks: usize,
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
