//! A session's work as a fixed list of steps, derived from its config alone. The state records how
//! many steps are done (and epochs of the one in progress), so resuming is "regenerate the plan,
//! skip what is done".

use serde::{Deserialize, Serialize};

use super::config::{Arm, Protocol, Scenario, SessionConfig};

/// One annotation stage: an initial random set, then rounds of picks per arm. The rounds protocol
/// has one stage; the budgets protocol one per budget n (n/2 random + n/2 picked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub initial: usize,
    /// Picks per round.
    pub rounds: Vec<usize>,
}

pub fn stages(cfg: &SessionConfig) -> Vec<Stage> {
    let e = &cfg.experiment;
    match e.protocol {
        Protocol::Rounds => vec![Stage {
            initial: e.initial,
            rounds: vec![e.per_round; e.rounds],
        }],
        Protocol::Budgets => e
            .budgets
            .iter()
            .map(|&n| Stage {
                initial: n / 2,
                rounds: vec![n - n / 2],
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// Train/test split, pool and initial order (no training).
    Split {
        repeat: usize,
    },
    Vae {
        repeat: usize,
    },
    /// Encode the pool with the VAE.
    Latents {
        repeat: usize,
    },
    /// Transfer: pre-train the UNet on the source site.
    Pretrain {
        repeat: usize,
    },
    /// Train the UNet on the stage's initial set (shared by all arms), then evaluate it.
    Init {
        repeat: usize,
        stage: usize,
    },
    /// Pick samples for round `round` (1-based) of `arm`.
    Select {
        repeat: usize,
        stage: usize,
        arm: Arm,
        round: usize,
    },
    /// Train on the enlarged set, then evaluate.
    Train {
        repeat: usize,
        stage: usize,
        arm: Arm,
        round: usize,
    },
    /// The `full` reference: the UNet trained on the whole pool (see `full_epochs`), then
    /// evaluated.
    Full {
        repeat: usize,
    },
}

/// Epochs of the `full` reference: as many as the arms' final models have trained for in all
/// (the initial epochs and every round's), from the same start (a seeded initialisation, or the
/// pre-trained UNet in the transfer scenario). Each pool sample is seen that often, at least as
/// often as any sample an arm labelled.
pub fn full_epochs(cfg: &SessionConfig) -> usize {
    let rounds = stages(cfg)
        .iter()
        .map(|s| s.rounds.len())
        .max()
        .unwrap_or(0);
    cfg.unet.epochs_initial + rounds * cfg.unet.epochs_per_round
}

/// The model arm `arm` selects with in round `round` and continues training from: its previous
/// round's, or the stage's shared initial UNet before its first round.
pub fn previous_model(repeat: usize, stage: usize, arm: Arm, round: usize) -> Step {
    if round <= 1 {
        Step::Init { repeat, stage }
    } else {
        Step::Train {
            repeat,
            stage,
            arm,
            round: round - 1,
        }
    }
}

impl Step {
    pub fn repeat(&self) -> usize {
        match *self {
            Step::Split { repeat }
            | Step::Vae { repeat }
            | Step::Latents { repeat }
            | Step::Pretrain { repeat }
            | Step::Full { repeat } => repeat,
            Step::Init { repeat, .. }
            | Step::Select { repeat, .. }
            | Step::Train { repeat, .. } => repeat,
        }
    }

    /// A stable name, used for checkpoint files and seeds.
    pub fn key(&self) -> String {
        match *self {
            Step::Split { repeat } => format!("r{repeat}-split"),
            Step::Vae { repeat } => format!("r{repeat}-vae"),
            Step::Latents { repeat } => format!("r{repeat}-latents"),
            Step::Pretrain { repeat } => format!("r{repeat}-pretrain"),
            Step::Full { repeat } => format!("r{repeat}-full"),
            Step::Init { repeat, stage } => format!("r{repeat}-s{stage}-init"),
            Step::Select {
                repeat,
                stage,
                arm,
                round,
            } => format!("r{repeat}-s{stage}-{arm}-k{round}-select"),
            Step::Train {
                repeat,
                stage,
                arm,
                round,
            } => format!("r{repeat}-s{stage}-{arm}-k{round}"),
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Step::Split { repeat } => format!("repeat {}: split", repeat + 1),
            Step::Vae { repeat } => format!("repeat {}: VAE", repeat + 1),
            Step::Latents { repeat } => format!("repeat {}: latents", repeat + 1),
            Step::Pretrain { repeat } => {
                format!("repeat {}: pre-training on the source site", repeat + 1)
            }
            Step::Init { repeat, stage } => {
                format!("repeat {}, stage {}: initial UNet", repeat + 1, stage + 1)
            }
            Step::Full { repeat } => {
                format!("repeat {}: full-data reference", repeat + 1)
            }
            Step::Select {
                repeat,
                stage,
                arm,
                round,
            } => format!(
                "repeat {}, stage {}: {arm} picks, round {round}",
                repeat + 1,
                stage + 1
            ),
            Step::Train {
                repeat,
                stage,
                arm,
                round,
            } => format!(
                "repeat {}, stage {}: {arm} training, round {round}",
                repeat + 1,
                stage + 1
            ),
        }
    }
}

/// Every step of the session, in order. Within a stage, rounds are interleaved across arms so the
/// comparison grows evenly; the `full` reference closes each repeat.
pub fn plan(cfg: &SessionConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    for repeat in 0..cfg.experiment.repeats {
        steps.push(Step::Split { repeat });
        steps.push(Step::Vae { repeat });
        steps.push(Step::Latents { repeat });
        if cfg.experiment.scenario == Scenario::Transfer {
            steps.push(Step::Pretrain { repeat });
        }
        for (stage, st) in stages(cfg).iter().enumerate() {
            steps.push(Step::Init { repeat, stage });
            for round in 1..=st.rounds.len() {
                for arm in cfg.experiment.strategies() {
                    steps.push(Step::Select {
                        repeat,
                        stage,
                        arm,
                        round,
                    });
                    steps.push(Step::Train {
                        repeat,
                        stage,
                        arm,
                        round,
                    });
                }
            }
        }
        if cfg.experiment.has_full() {
            steps.push(Step::Full { repeat });
        }
    }
    steps
}

/// A seed for one purpose of one step: every random choice is a function of the session seed.
pub fn seed_for(base: u64, key: &str, purpose: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{base}/{key}/{purpose}").as_bytes())
}
