//! The selection strategies, one module each, behind one trait: given a round's context (the
//! labelled and unlabelled samples, the spacing rule, the settings, and the models and latents
//! on demand), a strategy picks k samples. The registry (`STRATEGIES`) is the list of them;
//! `Runner::select` builds the context once and records what the strategy picked.

mod context;
mod coreset;
mod entropy;
mod oracle;
mod proposed;
mod random;

pub use context::{Models, PickContext};

use anyhow::Result;

use crate::engine::select::Pick;
use crate::session::events::Phase;
use crate::session::state::DirectionSummary;

/// What a strategy picked, best first, and for the gradient-guided one a summary of the
/// gradient steps behind the picks.
pub struct Picked {
    pub picks: Vec<Pick>,
    pub directions: Option<DirectionSummary>,
}

impl From<Vec<Pick>> for Picked {
    fn from(picks: Vec<Pick>) -> Picked {
        Picked {
            picks,
            directions: None,
        }
    }
}

/// A selection strategy (an arm of the experiment, `full` aside).
pub trait Strategy: Sync {
    /// The arm's name in settings, files and on the command line; it also keys the round's
    /// seeds and checkpoints, so it never changes.
    fn name(&self) -> &'static str;
    /// Up to `cx.k` picks (fewer only when the pool runs out), in the order picked.
    fn pick(&self, cx: &PickContext) -> Result<Picked>;
    /// Whether it picks in the VAE's latent space (and so is only as good as that space; the
    /// run, the dashboard and the report warn when the space holds little).
    fn uses_latent_space(&self) -> bool {
        false
    }
    /// Whether it reads labels nobody has given yet: a session labelled by people cannot run
    /// it.
    fn needs_unlabelled_truth(&self) -> bool {
        false
    }
    /// The phase its selection step reports.
    fn phase(&self) -> Phase {
        Phase::Search
    }
}

/// Every strategy, in the order the arms are listed and sorted.
pub static STRATEGIES: &[&dyn Strategy] = &[
    &random::Random,
    &proposed::Proposed,
    &oracle::Oracle,
    &entropy::Entropy,
    &coreset::Coreset,
];

/// The strategy named `name`, if it is one (`full` is a reference, not a strategy).
pub fn strategy(name: &str) -> Option<&'static dyn Strategy> {
    STRATEGIES.iter().copied().find(|s| s.name() == name)
}

/// The names of the strategies that `keep` keeps, as a person lists them: `a, b or c`.
pub fn names_where(keep: impl Fn(&dyn Strategy) -> bool) -> String {
    let names: Vec<&str> = STRATEGIES
        .iter()
        .filter(|s| keep(**s))
        .map(|s| s.name())
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::config::Arm;

    #[test]
    fn every_arm_but_full_is_a_registered_strategy_of_its_own_name() {
        for arm in [
            Arm::Random,
            Arm::Proposed,
            Arm::Oracle,
            Arm::Entropy,
            Arm::Coreset,
        ] {
            assert_eq!(strategy(arm.name()).map(|s| s.name()), Some(arm.name()));
        }
        assert!(strategy(Arm::Full.name()).is_none());
        let names: Vec<&str> = STRATEGIES.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            ["random", "proposed", "oracle", "entropy", "coreset"]
        );
    }

    #[test]
    fn what_the_registry_says_of_each_strategy() {
        assert_eq!(
            names_where(|s| s.uses_latent_space()),
            "proposed or coreset"
        );
        assert_eq!(names_where(|s| s.needs_unlabelled_truth()), "oracle");
        assert_eq!(
            names_where(|_| true),
            "random, proposed, oracle, entropy or coreset"
        );
        assert_eq!(names_where(|s| s.phase() == Phase::Gradient), "proposed");
        assert!(Arm::Proposed.uses_latent_space() && !Arm::Entropy.uses_latent_space());
        assert!(Arm::Coreset.is_strategy() && !Arm::Full.is_strategy());
    }
}
