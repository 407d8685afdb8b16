//! `session.toml`: everything needed to reproduce a session. Written once from a preset (with
//! `--set key=value` overrides) and read on every open; unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::{Modality, Preprocessing};
use crate::engine::nets::{Norm, UNetConfig, VaeConfig};
use crate::session::strategy::{self, Strategy};

/// Bumped when the meaning of session files changes; other versions are refused, not guessed at.
pub const SESSION_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    pub format_version: u32,
    pub dataset: DatasetConfig,
    pub experiment: ExperimentConfig,
    pub unet: UNetTrain,
    pub vae: VaeTrain,
    pub selection: SelectionConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// A BraTS folder; `demo` means the demo phantom in the data folder (generated if missing).
    pub path: PathBuf,
    pub modalities: Vec<Modality>,
    pub downsample: usize,
    #[serde(default)]
    pub pad_to: Option<usize>,
    pub drop_first: usize,
    pub drop_last: usize,
    /// A CSV of `case ID,site` rows, for data sets whose IDs carry no site (the transfer
    /// scenario needs sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<PathBuf>,
}

impl DatasetConfig {
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            modalities: self.modalities.clone(),
            drop_first: self.drop_first,
            drop_last: self.drop_last,
            pad_to: self.pad_to,
            downsample: self.downsample,
            zscore: true,
        }
    }
}

pub use crate::engine::select::DirectionMethod;

crate::display_as_serde!(Scenario, Granularity, Protocol, Precision);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Pool, training and test from all sites.
    Scratch,
    /// UNet pre-trained on the source site; VAE, pool and test from the target site.
    Transfer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Patient,
    Image,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// An initial random set shared by all arms, then `rounds` rounds of `per_round` picks.
    Rounds,
    /// The paper's: for each budget n, n/2 random then n/2 by each arm.
    Budgets,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    Random,
    Proposed,
    Oracle,
    /// Uncertainty sampling: the samples on which the current model's prediction has the
    /// highest mean binary entropy over the brain.
    Entropy,
    /// Diversity: k-center greedy in the VAE's latent space, from the labelled set.
    Coreset,
    /// A reference, not a strategy: the UNet trained on the whole pool (once per repeat).
    Full,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::Random => "random",
            Arm::Proposed => "proposed",
            Arm::Oracle => "oracle",
            Arm::Entropy => "entropy",
            Arm::Coreset => "coreset",
            Arm::Full => "full",
        }
    }

    /// The arm's strategy (none for the `full` reference).
    pub fn strategy(self) -> Option<&'static dyn Strategy> {
        strategy::strategy(self.name())
    }

    /// Whether the arm picks in the VAE's latent space (and so is only as good as it is).
    pub fn uses_latent_space(self) -> bool {
        self.strategy().is_some_and(|s| s.uses_latent_space())
    }

    /// Whether the arm picks samples round by round (every arm but the `full` reference).
    pub fn is_strategy(self) -> bool {
        self.strategy().is_some()
    }
}

impl std::fmt::Display for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Protocol {
    /// Whether an evaluation after `round` rounds is a point of an arm's budget curve: every
    /// round in the rounds protocol (the shared start included), each budget's final model in
    /// the budgets protocol.
    pub fn on_curve(self, round: usize) -> bool {
        self == Protocol::Rounds || round > 0
    }
}

impl ExperimentConfig {
    /// The arms that pick samples round by round, in the configured order.
    pub fn strategies(&self) -> Vec<Arm> {
        self.arms
            .iter()
            .copied()
            .filter(|a| a.is_strategy())
            .collect()
    }

    /// Whether the session trains the `full` reference.
    pub fn has_full(&self) -> bool {
        self.arms.contains(&Arm::Full)
    }

    /// The design in a line: `scratch / patient / rounds, arms random, proposed, 2 repeats`.
    pub fn describe(&self) -> String {
        let arms: Vec<&str> = self.arms.iter().map(|a| a.name()).collect();
        format!(
            "{} / {} / {}, arms {}, {} repeat{}",
            self.scenario,
            self.granularity,
            self.protocol,
            arms.join(", "),
            self.repeats,
            if self.repeats == 1 { "" } else { "s" }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub scenario: Scenario,
    /// Transfer only: pre-training site and target site.
    pub source_site: String,
    pub target_site: String,
    pub granularity: Granularity,
    pub protocol: Protocol,
    /// Rounds protocol: size of the shared initial random set (patients or slices).
    pub initial: usize,
    pub rounds: usize,
    pub per_round: usize,
    /// Budgets protocol: total annotation budgets n (n/2 random + n/2 picked).
    pub budgets: Vec<usize>,
    pub arms: Vec<Arm>,
    pub repeats: usize,
    pub seed: u64,
    /// Share of patients held out for testing (per site in the transfer scenario: of the target).
    pub test_fraction: f64,
    /// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
    pub device: String,
    /// Who labels the picked pool cases: the data set's own segmentations standing in for an
    /// annotator (`simulated`), or a person whose segmentations are imported each round
    /// (`human`).
    #[serde(default)]
    pub labels: Labels,
}

/// Where the labels of the pool's picked cases come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    #[default]
    Simulated,
    Human,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetTrain {
    pub depth: usize,
    pub base: i64,
    pub norm: Norm,
    pub lr: f64,
    pub epochs_initial: usize,
    pub epochs_per_round: usize,
    /// Transfer only: epochs of pre-training on the source site.
    pub epochs_pretrain: usize,
    pub batch_size: usize,
    /// `fp32`, or `fp16`: mixed precision (CUDA autocast with dynamic loss scaling) for the
    /// UNet's training; evaluation and the gradient step stay in float32/float64. CUDA only.
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
}

impl UNetTrain {
    pub fn net(&self) -> UNetConfig {
        UNetConfig {
            depth: self.depth,
            base: self.base,
            norm: self.norm,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeTrain {
    pub latent: i64,
    pub base: i64,
    pub levels: usize,
    pub lr: f64,
    pub epochs: usize,
    pub kl_weight: f64,
    pub batch_size: usize,
    /// Share of the pool's patients held out of the VAE's training (seeded per repeat, at least
    /// one when above 0): after every epoch the VAE is measured on their slices, and the epoch
    /// with the lowest validation error is the one kept. 0 (sessions written before it
    /// existed): every pool slice is trained on and the last epoch is kept.
    #[serde(default)]
    pub validation: f64,
    /// With validation: stop once this many epochs have passed without a lower validation
    /// error (`epochs` is then the most it trains). 0: train all `epochs`.
    #[serde(default)]
    pub patience: usize,
    /// Below this share of the pool's variance explained, `run`, the dashboard and the report
    /// warn that the arms picking in the latent space (proposed, coreset) carry little
    /// information.
    #[serde(default = "default_min_variance_explained")]
    pub min_variance_explained: f64,
}

fn default_min_variance_explained() -> f64 {
    crate::engine::manifold::DEFAULT_MIN_VARIANCE_EXPLAINED
}

impl VaeTrain {
    pub fn net(&self) -> VaeConfig {
        VaeConfig {
            latent: self.latent,
            base: self.base,
            levels: self.levels,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// Step length α of `x' = x + α ∂L/∂x`.
    pub alpha: f64,
    /// Half-angle of the search cone around `z' − z`, degrees.
    pub cone_degrees: f64,
    pub direction: DirectionMethod,
    /// What `proposed` takes when a cone holds no candidate.
    #[serde(default)]
    pub fallback: ConeFallback,
    /// Image-wise: a slice next to one already labelled (seen as its context), or next to
    /// another pick of the round, is picked only when no other candidate is left. False in
    /// sessions written before it existed.
    #[serde(default)]
    pub avoid_context: bool,
    /// The smoothing term of the Dice loss whose gradient moves the images: 1 (the training
    /// loss's), or 0 (the paper's, with no gradient on a tumour-free sample). 1 in sessions
    /// written before it existed.
    #[serde(default = "one")]
    pub dice_smoothing: f64,
}

fn one() -> f64 {
    1.0
}

pub use crate::engine::cone::ConeFallback;

impl SessionConfig {
    pub fn from_toml(text: &str, origin: &str) -> Result<SessionConfig> {
        let cfg: SessionConfig =
            toml::from_str(text).with_context(|| format!("{origin}: not a valid session file"))?;
        if cfg.format_version != SESSION_FORMAT_VERSION {
            bail!(
                "{origin}: session format version {} is not supported (this suggestive reads version {SESSION_FORMAT_VERSION})",
                cfg.format_version
            );
        }
        cfg.validate().with_context(|| origin.to_string())?;
        Ok(cfg)
    }

    /// What the networks need of the slice size `size` (known once the data set is loaded):
    /// each UNet level and each VAE level halves it, so it must divide by 2^depth and 2^levels.
    pub fn check_slice_size(&self, size: usize) -> Result<()> {
        for (key, n) in [
            ("unet.depth", self.unet.depth),
            ("vae.levels", self.vae.levels),
        ] {
            if !size.is_multiple_of(1 << n) {
                bail!(
                    "{key} = {n} halves the slice {n} times, but the data set's slices are {size}×{size}, not divisible by {}; use fewer levels or dataset.pad_to",
                    1 << n
                );
            }
        }
        Ok(())
    }

    /// The warning that a repeat's latent space, with these statistics, is too weak for the
    /// session's arms that pick in it (see `ManifoldStats::weak_for`).
    pub fn weak_manifold(&self, stats: &crate::engine::manifold::ManifoldStats) -> Option<String> {
        let arms: Vec<&str> = self
            .experiment
            .arms
            .iter()
            .filter(|a| a.uses_latent_space())
            .map(|a| a.name())
            .collect();
        stats.weak_for(self.vae.min_variance_explained, &arms)
    }

    /// The settings (`section.key`) whose values differ from `other`'s.
    pub fn changed_keys(&self, other: &SessionConfig) -> Vec<String> {
        // Through JSON, not TOML: a recorded copy read from a damaged state file may hold
        // numbers TOML cannot (above i64::MAX).
        fn flat(cfg: &SessionConfig) -> std::collections::BTreeMap<String, String> {
            let table = match serde_json::to_value(cfg) {
                Ok(serde_json::Value::Object(t)) => t,
                _ => Default::default(),
            };
            let mut out = std::collections::BTreeMap::new();
            for (section, v) in table {
                match v {
                    serde_json::Value::Object(t) => {
                        for (k, v) in t {
                            out.insert(format!("{section}.{k}"), v.to_string());
                        }
                    }
                    v => {
                        out.insert(section, v.to_string());
                    }
                }
            }
            out
        }
        let (a, b) = (flat(self), flat(other));
        let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        keys.retain(|k| a.get(k) != b.get(k));
        keys
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    pub fn validate(&self) -> Result<()> {
        let e = &self.experiment;
        if e.strategies().is_empty() {
            bail!(
                "experiment.arms names no strategy (full is a reference; add {})",
                strategy::names_where(|_| true)
            );
        }
        if e.repeats == 0 {
            bail!("experiment.repeats must be at least 1");
        }
        if e.labels == Labels::Human {
            let arms: Vec<&str> = e.arms.iter().map(|a| a.name()).collect();
            if e.protocol != Protocol::Rounds {
                bail!("experiment.labels = \"human\" needs the rounds protocol (the budgets protocol starts again from scratch at each budget, which only a simulation can afford)");
            }
            let runs_unlabelled =
                |a: Arm| a.strategy().is_some_and(|s| !s.needs_unlabelled_truth());
            if e.arms.len() != 1 || !runs_unlabelled(e.arms[0]) {
                bail!(
                    "experiment.labels = \"human\" takes one strategy, {} ({} needs the labels it is waiting for); experiment.arms is [{}]",
                    strategy::names_where(|s| !s.needs_unlabelled_truth()),
                    strategy::names_where(|s| s.needs_unlabelled_truth()),
                    arms.join(", ")
                );
            }
            if e.repeats != 1 {
                bail!(
                    "experiment.labels = \"human\" annotates the data set once: experiment.repeats must be 1, not {}",
                    e.repeats
                );
            }
        }
        // People may annotate every case: no test set, evaluation off.
        let least = if e.labels == Labels::Human {
            0.0
        } else {
            f64::MIN_POSITIVE
        };
        if !(least <= e.test_fraction && e.test_fraction < 1.0) {
            bail!(
                "experiment.test_fraction {} must be between 0 and 1{}",
                e.test_fraction,
                if e.labels == Labels::Human {
                    " (0: no test cases, evaluation off)"
                } else {
                    ""
                }
            );
        }
        match e.protocol {
            Protocol::Rounds if e.initial == 0 || e.per_round == 0 || e.rounds == 0 => {
                bail!("rounds protocol needs experiment.initial, rounds and per_round above 0")
            }
            Protocol::Budgets if e.budgets.is_empty() || e.budgets.iter().any(|&n| n < 2) => {
                bail!("budgets protocol needs experiment.budgets, each at least 2")
            }
            _ => {}
        }
        if self.unet.batch_size == 0 || self.vae.batch_size == 0 {
            bail!("batch sizes must be at least 1");
        }
        if !(0.0..180.0).contains(&self.selection.cone_degrees) {
            bail!(
                "selection.cone_degrees {} must be in [0, 180)",
                self.selection.cone_degrees
            );
        }
        if self.vae.latent < 1 || self.vae.levels == 0 || self.unet.depth == 0 {
            bail!("vae.latent, vae.levels and unet.depth must be at least 1");
        }
        if self.unet.base < 1 || self.vae.base < 1 {
            bail!(
                "unet.base and vae.base (channels of the first level) must be at least 1, not {} and {}",
                self.unet.base,
                self.vae.base
            );
        }
        // Each level doubles the channels: keep the widest layer's count far from overflow.
        if self.unet.depth > 12 || self.vae.levels > 12 {
            bail!("unet.depth and vae.levels must be at most 12 (each level halves the slice)");
        }
        for (key, v) in [
            ("unet.lr", self.unet.lr),
            ("vae.lr", self.vae.lr),
            ("selection.alpha", self.selection.alpha),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{key} = {v} must be a positive number");
            }
        }
        if !(self.selection.dice_smoothing.is_finite() && self.selection.dice_smoothing >= 0.0) {
            bail!(
                "selection.dice_smoothing = {} must be 0 or more",
                self.selection.dice_smoothing
            );
        }
        if !(self.vae.kl_weight.is_finite() && self.vae.kl_weight >= 0.0) {
            bail!("vae.kl_weight = {} must be 0 or more", self.vae.kl_weight);
        }
        if !(0.0..0.5).contains(&self.vae.validation) {
            bail!(
                "vae.validation = {} must be a share of the pool from 0 to below 0.5",
                self.vae.validation
            );
        }
        if self.vae.patience > 0 && self.vae.validation == 0.0 {
            bail!(
                "vae.patience = {} needs validation slices: set vae.validation (e.g. 0.1)",
                self.vae.patience
            );
        }
        let bar = self.vae.min_variance_explained;
        if !(0.0..=1.0).contains(&bar) {
            bail!("vae.min_variance_explained = {bar} must be a share between 0 and 1");
        }
        for (i, arm) in e.arms.iter().enumerate() {
            if e.arms[..i].contains(arm) {
                bail!(
                    "experiment.arms names {} twice (each arm runs once per repeat)",
                    arm.name()
                );
            }
        }
        crate::engine::device::parse_device(&e.device)?;
        Ok(())
    }

    /// Applies `key=value` overrides such as `experiment.repeats=3` or `unet.norm="instance"`.
    /// The value is TOML; a bare word is taken as a string.
    pub fn apply_overrides(&mut self, sets: &[String]) -> Result<()> {
        let mut doc: toml::Table = toml::from_str(&self.to_toml())?;
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .with_context(|| format!("--set {set}: expected key=value"))?;
            let path: Vec<&str> = key.trim().split('.').collect();
            let value = value.trim();
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let mut table = &mut doc;
            for part in &path[..path.len() - 1] {
                table = table
                    .get_mut(*part)
                    .and_then(|v| v.as_table_mut())
                    .with_context(|| format!("--set {set}: no section '{part}'"))?;
            }
            let last = path[path.len() - 1];
            // pad_to and sites are optional, so absent from a config that does not set them.
            if !table.contains_key(last) && last != "pad_to" && last != "sites" {
                bail!("--set {set}: unknown key '{key}'");
            }
            table.insert(last.to_string(), parsed);
        }
        let text = toml::to_string(&doc)?;
        *self = SessionConfig::from_toml(&text, "--set")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The demo preset with `sets` applied: the error message, or "ok".
    fn check(sets: &[&str]) -> String {
        let mut cfg = crate::session::preset("demo").unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        match cfg.apply_overrides(&sets).and_then(|_| cfg.validate()) {
            Ok(()) => "ok".into(),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn values_the_networks_or_optimisers_cannot_use_are_refused_by_name() {
        assert_eq!(check(&[]), "ok");
        for (set, phrase) in [
            ("unet.base=0", "unet.base and vae.base"),
            ("vae.base=-4", "unet.base and vae.base"),
            ("unet.lr=nan", "unet.lr = NaN must be a positive number"),
            ("vae.lr=0.0", "vae.lr = 0 must be a positive number"),
            ("selection.alpha=-1.0", "selection.alpha = -1 must be"),
            ("vae.kl_weight=inf", "vae.kl_weight = inf"),
            (
                "selection.dice_smoothing=-1.0",
                "selection.dice_smoothing = -1 must be 0 or more",
            ),
            ("vae.validation=0.7", "vae.validation = 0.7 must be a share"),
            (
                "vae.validation=0.0",
                "vae.patience = 4 needs validation slices",
            ),
            (
                "vae.min_variance_explained=25.0",
                "vae.min_variance_explained = 25 must be a share",
            ),
            ("unet.depth=40", "at most 12"),
            (
                "experiment.arms=[\"random\",\"proposed\",\"random\"]",
                "names random twice",
            ),
        ] {
            let e = check(&[set]);
            assert!(e.contains(phrase), "--set {set}: {e}");
        }
    }

    #[test]
    fn the_slice_size_must_divide_by_every_level() {
        let cfg = crate::session::preset("demo").unwrap();
        // The demo's networks (3 levels each) on its 48×48 slices.
        cfg.check_slice_size(48).unwrap();
        let e = cfg.check_slice_size(36).unwrap_err().to_string();
        assert!(e.contains("36×36") && e.contains("divisible by 8"), "{e}");
    }
}
