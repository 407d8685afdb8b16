//! The paired comparisons a report makes, repeat by repeat (within a repeat every arm shares
//! the split, the initial set, the VAE and the initial UNet): each arm against another at every
//! budget, and over its whole budget curve (the normalised area under it, AUBC).

use serde::Serialize;

use super::config::{Arm, Protocol};
use super::report::Row;
use crate::stats::{self, Paired};

/// `arm − versus` in test Dice at one budget, over the repeats that have both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub arm: Arm,
    pub versus: Arm,
    pub stage: usize,
    pub round: usize,
    /// Annotated samples at this budget.
    pub budget: usize,
    #[serde(flatten)]
    pub paired: Paired,
}

/// One arm's area under its budget curve, normalised to [0, 1] over the budget range: mean and
/// 95 % interval over repeats, and paired against another arm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmAubc {
    pub arm: Arm,
    pub repeats: usize,
    pub mean: f64,
    pub ci95: Option<[f64; 2]>,
    pub versus: Option<Arm>,
    /// `arm − versus`, repeat by repeat.
    pub paired: Option<Paired>,
}

/// Each arm's mean Dice per repeat at (stage, round): the value of `arm` in `repeat`.
fn value(rows: &[Row], arm: Arm, repeat: usize, stage: usize, round: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.arm == arm && r.repeat == repeat && r.stage == stage && r.round == round)
        .map(|r| r.dice_mean)
}

/// Values of `a` and `b` at (stage, round), paired by repeat (repeats that have both).
fn pairs(rows: &[Row], a: Arm, b: Arm, stage: usize, round: usize) -> (Vec<f64>, Vec<f64>) {
    let mut repeats: Vec<usize> = rows.iter().map(|r| r.repeat).collect();
    repeats.sort_unstable();
    repeats.dedup();
    repeats
        .into_iter()
        .filter_map(|rep| {
            Some((
                value(rows, a, rep, stage, round)?,
                value(rows, b, rep, stage, round)?,
            ))
        })
        .unzip()
}

/// Every arm other than `versus` against it, at every budget after a round of picks.
pub fn comparisons(rows: &[Row], arms: &[Arm], versus: Arm) -> Vec<Comparison> {
    let mut budgets: Vec<(usize, usize, usize)> = rows
        .iter()
        .filter(|r| r.round > 0)
        .map(|r| (r.stage, r.round, r.annotated))
        .collect();
    budgets.sort_unstable();
    budgets.dedup_by_key(|b| (b.0, b.1));
    let mut out = Vec::new();
    for &arm in arms.iter().filter(|&&a| a != versus) {
        for &(stage, round, budget) in &budgets {
            let (a, b) = pairs(rows, arm, versus, stage, round);
            if a.is_empty() {
                continue;
            }
            out.push(Comparison {
                arm,
                versus,
                stage,
                round,
                budget,
                paired: stats::paired(&a, &b),
            });
        }
    }
    out
}

/// `arm`'s budget curve in `repeat`: the rounds protocol's every round (the shared start
/// included), the budgets protocol's final model of each budget.
fn repeat_curve(rows: &[Row], protocol: Protocol, arm: Arm, repeat: usize) -> Vec<(f64, f64)> {
    rows.iter()
        .filter(|r| r.arm == arm && r.repeat == repeat && protocol.on_curve(r.round))
        .map(|r| (r.annotated as f64, r.dice_mean))
        .collect()
}

/// Each arm's AUBC over repeats, and paired against `versus` (when it is another arm).
pub fn aubc(rows: &[Row], arms: &[Arm], protocol: Protocol, versus: Arm) -> Vec<ArmAubc> {
    let mut repeats: Vec<usize> = rows.iter().map(|r| r.repeat).collect();
    repeats.sort_unstable();
    repeats.dedup();
    // Each repeat's normalised area, for the repeats whose curve is complete (as long as the
    // longest): while a run is in progress, an area over fewer budgets is not comparable.
    let of = |arm: Arm| -> Vec<(usize, f64)> {
        let curves: Vec<(usize, Vec<(f64, f64)>)> = repeats
            .iter()
            .map(|&rep| (rep, repeat_curve(rows, protocol, arm, rep)))
            .collect();
        let complete = curves.iter().map(|c| c.1.len()).max().unwrap_or(0);
        curves
            .into_iter()
            .filter(|c| complete > 0 && c.1.len() == complete)
            .map(|(rep, points)| (rep, stats::aubc(&points)))
            .collect()
    };
    arms.iter()
        .filter_map(|&arm| {
            let mine = of(arm);
            if mine.is_empty() {
                return None;
            }
            let values: Vec<f64> = mine.iter().map(|p| p.1).collect();
            let paired = (arm != versus).then(|| {
                let theirs = of(versus);
                let (a, b): (Vec<f64>, Vec<f64>) = mine
                    .iter()
                    .filter_map(|&(rep, v)| Some((v, theirs.iter().find(|t| t.0 == rep)?.1)))
                    .unzip();
                (!a.is_empty()).then(|| stats::paired(&a, &b))
            });
            Some(ArmAubc {
                arm,
                repeats: values.len(),
                mean: stats::mean(&values),
                ci95: stats::t_interval(&values, 0.95),
                versus: (arm != versus).then_some(versus),
                paired: paired.flatten(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_are_compared_repeat_by_repeat() {
        let mut rows = Vec::new();
        // Three repeats: proposed is ahead by 0.02, 0.04, -0.01 after round 1.
        for (rep, (p, r)) in [(0.62, 0.60), (0.55, 0.51), (0.70, 0.71)]
            .iter()
            .enumerate()
        {
            for arm in [Arm::Random, Arm::Proposed] {
                rows.push(Row::point(arm, rep, 0, 4, 0.4));
            }
            rows.push(Row::point(Arm::Proposed, rep, 1, 8, *p));
            rows.push(Row::point(Arm::Random, rep, 1, 8, *r));
        }
        let c = comparisons(&rows, &[Arm::Random, Arm::Proposed], Arm::Random);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].arm, c[0].budget, c[0].paired.n),
            (Arm::Proposed, 8, 3)
        );
        assert_eq!((c[0].paired.wins, c[0].paired.losses), (2, 1));
        assert!((c[0].paired.mean_diff - 0.05 / 3.0).abs() < 1e-12);
        // AUBC: from 0.4 at 4 to the round's value at 8, normalised: the mean of the two.
        let a = aubc(
            &rows,
            &[Arm::Random, Arm::Proposed],
            Protocol::Rounds,
            Arm::Random,
        );
        let proposed = a.iter().find(|x| x.arm == Arm::Proposed).unwrap();
        assert_eq!(proposed.repeats, 3);
        assert!((proposed.mean - (0.4 + (0.62 + 0.55 + 0.70) / 3.0) / 2.0).abs() < 1e-12);
        let paired = proposed.paired.as_ref().unwrap();
        assert!((paired.mean_diff - 0.05 / 3.0 / 2.0).abs() < 1e-12);
        assert!(a
            .iter()
            .find(|x| x.arm == Arm::Random)
            .unwrap()
            .paired
            .is_none());
        // A fourth repeat part-way (proposed has its round 1, random not yet): random's short
        // curve is left out, so the pairing stays over the three complete repeats.
        rows.push(Row::point(Arm::Random, 3, 0, 4, 0.4));
        rows.push(Row::point(Arm::Proposed, 3, 0, 4, 0.4));
        rows.push(Row::point(Arm::Proposed, 3, 1, 8, 0.9));
        let b = aubc(
            &rows,
            &[Arm::Random, Arm::Proposed],
            Protocol::Rounds,
            Arm::Random,
        );
        let find = |v: &[ArmAubc], arm| v.iter().find(|x| x.arm == arm).unwrap().clone();
        assert_eq!(find(&b, Arm::Random), find(&a, Arm::Random));
        assert_eq!(find(&b, Arm::Proposed).repeats, 4);
        assert_eq!(
            find(&b, Arm::Proposed).paired,
            find(&a, Arm::Proposed).paired
        );
    }
}
