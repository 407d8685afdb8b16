//! `state.json`: what a session has done so far, machine-written after every step and epoch.

use serde::{Deserialize, Serialize};

use super::config::Arm;
use crate::engine::select::Pick;

pub const STATE_FORMAT_VERSION: u32 = 1;

/// Identifies the data a session was started on, so a changed data set is noticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStamp {
    pub fingerprint: String,
    pub patients: usize,
    pub slices: usize,
}

/// Per repeat: the seeded split and the order in which random samples are taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepeatData {
    /// Patient indices (into the data set) of the pool, the test set and, in the transfer
    /// scenario, the source site used for pre-training.
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub source: Vec<usize>,
    /// A seeded permutation of pool samples; stage initial sets are its prefixes.
    pub order: Vec<usize>,
}

/// Summary of the gradient steps behind one round of proposed picks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionSummary {
    /// How many directions each path computed (float32 / float64 / central-difference).
    pub methods: std::collections::BTreeMap<String, usize>,
    pub median_rel_dx: f64,
    pub median_dz: f64,
    /// Labelled samples whose gradient was exactly zero (no direction; their picks fall back).
    pub zero_directions: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PickRecord {
    pub repeat: usize,
    pub stage: usize,
    pub arm: Arm,
    pub round: usize,
    pub picks: Vec<Pick>,
    pub fallbacks: usize,
    /// Picks that contain tumour (slices with tumour; patients always do in BraTS).
    pub tumour_picks: usize,
    #[serde(default)]
    pub directions: Option<DirectionSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub repeat: usize,
    pub stage: usize,
    pub arm: Arm,
    /// 0: the shared initial model.
    pub round: usize,
    /// Annotated samples (patients or slices).
    pub annotated: usize,
    /// Slices an annotator looks at (image-wise: annotated plus context neighbours).
    pub viewed: usize,
    pub dice_mean: f64,
    pub dice_sd: f64,
    /// Per test patient, in test-set order.
    pub dice: Vec<f64>,
    /// Mean 2D Dice over the test slices that contain tumour.
    #[serde(default)]
    pub slice_dice_mean: f64,
    /// The model predicts no tumour anywhere on the test set (a collapsed run).
    pub collapsed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub format_version: u32,
    pub dataset: Option<DatasetStamp>,
    /// Steps of the plan completed.
    pub done: usize,
    /// Epochs completed of the step in progress (training steps only).
    pub partial_epochs: usize,
    pub repeats: Vec<RepeatData>,
    pub picks: Vec<PickRecord>,
    pub results: Vec<ResultRow>,
    pub device: Option<String>,
    /// session.toml as it was when a run first opened the session (for sessions started by
    /// older versions: when this version first ran them): a started session keeps its settings
    /// (resuming indexes the plan by `done`), so later edits are refused by name.
    #[serde(default)]
    pub config: Option<super::config::SessionConfig>,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            format_version: STATE_FORMAT_VERSION,
            dataset: None,
            done: 0,
            partial_epochs: 0,
            repeats: Vec::new(),
            picks: Vec::new(),
            results: Vec::new(),
            config: None,
            device: None,
        }
    }
}
