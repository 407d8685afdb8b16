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
}
