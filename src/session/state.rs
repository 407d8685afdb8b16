//! What a session has done so far: each repeat's `state.json` (`RepeatState`, machine-written
//! after every step and epoch of that repeat), and the session's state gathered from all of
//! them (`SessionState`; sessions of format 1 kept all of it in one file).

use serde::{Deserialize, Serialize};

use super::config::Arm;
pub use crate::engine::manifold::ManifoldStats;
use crate::engine::select::Pick;
use crate::engine::train::MidEpoch;

/// Format 2: one state file per repeat (`repeats/NN/state.json`); the session's own
/// `state.json` holds only the version. Format 1: everything in the session's `state.json`.
pub const STATE_FORMAT_VERSION: u32 = 2;
pub const FLAT_FORMAT_VERSION: u32 = 1;

/// How far one repeat is: steps of its part of the plan done, epochs of its step in progress,
/// and where in the next epoch that step stopped, when it stopped mid-epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RepeatProgress {
    pub done: usize,
    pub partial_epochs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid_epoch: Option<MidEpoch>,
}

impl RepeatProgress {
    /// Whether the step in progress has begun (an epoch done, or batches of one).
    pub fn in_step(&self) -> bool {
        self.partial_epochs > 0 || self.mid_epoch.is_some()
    }
}

/// Identifies the data a session was started on, so a changed data set is noticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStamp {
    pub fingerprint: String,
    pub patients: usize,
    pub slices: usize,
}

impl DatasetStamp {
    pub fn of(ds: &crate::data::Dataset) -> DatasetStamp {
        DatasetStamp {
            fingerprint: ds.fingerprint().to_string(),
            patients: ds.patients().len(),
            slices: ds.num_slices(),
        }
    }
}

/// Per repeat: the seeded split and the order in which random samples are taken, and once the
/// pool is encoded, how much of it the VAE's latent space holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepeatData {
    /// Patient indices (into the data set) of the pool, the test set and, in the transfer
    /// scenario, the source site used for pre-training.
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub source: Vec<usize>,
    /// A seeded permutation of pool samples; stage initial sets are its prefixes.
    pub order: Vec<usize>,
    /// The test patients' case IDs and sites, in `test` order (for results_long.csv).
    #[serde(default)]
    pub test_cases: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifold: Option<ManifoldStats>,
    /// The VAE's training, epoch by epoch, measured on its validation slices (with
    /// `vae.validation` > 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vae_epochs: Vec<crate::engine::manifold::VaeEpoch>,
    /// A session labelled by people: the segmentations imported so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    /// A session labelled by people: per test and source case, xxh3 of the whole-tumour masks
    /// its segmentation in the data set gave at the split. The data set's fingerprint leaves
    /// segmentation files out, so this is what notices them change.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dataset_labels: std::collections::BTreeMap<String, String>,
}

/// An annotator's segmentation of a case, as imported: the file in the session's `labels/`
/// and what it changed of the model's prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub case: String,
    /// The round whose worklist asked for it (0: the initial set).
    pub round: usize,
    /// Its copy in `labels/`.
    pub file: String,
    /// xxh3-128 of the file's bytes, hex.
    pub checksum: String,
    /// The file it was imported from.
    pub source: String,
    /// Image-wise: the slices (z of the original volume) it was asked for and counts on;
    /// empty: the whole case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<usize>,
    /// Seconds since the Unix epoch.
    pub imported: f64,
    /// Against the prediction the package gave to start from (none in round 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<Effort>,
}

/// How much an annotator changed the model's prediction, over the voxels asked for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Effort {
    /// Dice between the prediction and the annotation (whole tumour; 1 when both are empty).
    pub dice: f64,
    /// Voxels whose whole-tumour label differs between the two.
    pub changed_voxels: u64,
    pub voxels: u64,
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
    /// Picks that contain tumour (slices with tumour; patients always do in BraTS). `None` in
    /// a session labelled by people: nobody knows until the annotator has looked.
    pub tumour_picks: Option<usize>,
    #[serde(default)]
    pub directions: Option<DirectionSummary>,
    /// Image-wise: picks next to a slice labelled before them or to another pick of the round
    /// (near-copies, already seen as context). `None` in sessions written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_picks: Option<usize>,
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
    /// Per test patient: the 95th-percentile Hausdorff distance in mm (null where exactly one
    /// of prediction and truth is empty; sessions of earlier versions have none).
    #[serde(default)]
    pub hd95: Vec<Option<f64>>,
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
    /// Per repeat (not in files: format 2 keeps it in each repeat's file, format 1 as `done`).
    #[serde(skip)]
    pub progress: Vec<RepeatProgress>,
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
            progress: Vec::new(),
        }
    }
}

impl SessionState {
    /// The counted segmentations of `repeat` (none before its split).
    pub fn annotations(&self, repeat: usize) -> &[Annotation] {
        self.repeats
            .get(repeat)
            .map(|d| d.annotations.as_slice())
            .unwrap_or_default()
    }

    /// A repeat was split without test cases (labelled by people, none labelled, or a test
    /// fraction of 0): nothing is evaluated.
    pub fn evaluation_off(&self) -> bool {
        self.repeats
            .iter()
            .any(|d| !d.train.is_empty() && d.test.is_empty())
    }

    /// Records how far `repeat` is, and the totals over all repeats.
    pub fn set_progress(&mut self, repeat: usize, progress: RepeatProgress) {
        if self.progress.len() <= repeat {
            self.progress.resize(repeat + 1, RepeatProgress::default());
        }
        self.progress[repeat] = progress;
        // Saturating: a damaged file's counts are refused by the checks, not by an overflow.
        self.done = self
            .progress
            .iter()
            .fold(0, |n, p| n.saturating_add(p.done));
        self.partial_epochs =
            (self.progress.iter()).fold(0, |n, p| n.saturating_add(p.partial_epochs));
    }

    pub fn progress_of(&self, repeat: usize) -> RepeatProgress {
        self.progress.get(repeat).copied().unwrap_or_default()
    }

    /// A format-1 state's progress by repeat: its global step count cut into repeats of
    /// `steps_per_repeat` steps (the plan runs one repeat after another), the epochs with the
    /// repeat of the step in progress.
    pub fn split_flat_progress(&mut self, repeats: usize, steps_per_repeat: usize) {
        let (done, partial) = (self.done, self.partial_epochs);
        for r in 0..repeats {
            let start = r * steps_per_repeat;
            let done_r = done.saturating_sub(start).min(steps_per_repeat);
            let in_progress = done >= start && done < start + steps_per_repeat;
            let partial_epochs = if in_progress { partial } else { 0 };
            self.set_progress(
                r,
                RepeatProgress {
                    done: done_r,
                    partial_epochs,
                    mid_epoch: None,
                },
            );
        }
    }

    /// The part of the state that belongs to `repeat`.
    pub fn repeat_state(&self, repeat: usize) -> RepeatState {
        let progress = self.progress_of(repeat);
        RepeatState {
            format_version: STATE_FORMAT_VERSION,
            dataset: self.dataset.clone(),
            config: self.config.clone(),
            done: progress.done,
            partial_epochs: progress.partial_epochs,
            mid_epoch: progress.mid_epoch,
            data: self.repeats.get(repeat).cloned(),
            picks: self
                .picks
                .iter()
                .filter(|p| p.repeat == repeat)
                .cloned()
                .collect(),
            results: self
                .results
                .iter()
                .filter(|r| r.repeat == repeat)
                .cloned()
                .collect(),
            device: self.device.clone(),
        }
    }

    /// Adds a repeat's state (read from its file) to the session's.
    pub fn add_repeat(&mut self, repeat: usize, rs: RepeatState) {
        if self.dataset.is_none() {
            self.dataset = rs.dataset;
        }
        if self.config.is_none() {
            self.config = rs.config;
        }
        if rs.device.is_some() {
            self.device = rs.device;
        }
        if let Some(data) = rs.data {
            if self.repeats.len() <= repeat {
                self.repeats.resize(repeat + 1, RepeatData::default());
            }
            self.repeats[repeat] = data;
        }
        self.picks.extend(rs.picks);
        self.results.extend(rs.results);
        self.set_progress(
            repeat,
            RepeatProgress {
                done: rs.done,
                partial_epochs: rs.partial_epochs,
                mid_epoch: rs.mid_epoch,
            },
        );
    }
}

/// One repeat's `state.json` (format 2): written only by the process that runs the repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatState {
    pub format_version: u32,
    /// The data set and settings the session started with (as in `SessionState`).
    pub dataset: Option<DatasetStamp>,
    #[serde(default)]
    pub config: Option<super::config::SessionConfig>,
    /// Steps of this repeat done, epochs of its step in progress, and where in the next epoch
    /// that step stopped (a stop mid-epoch; absent otherwise).
    pub done: usize,
    pub partial_epochs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid_epoch: Option<MidEpoch>,
    /// The split, once the repeat's first step ran.
    pub data: Option<RepeatData>,
    pub picks: Vec<PickRecord>,
    pub results: Vec<ResultRow>,
    pub device: Option<String>,
}
