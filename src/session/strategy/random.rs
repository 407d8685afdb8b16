//! `random`: samples drawn uniformly, in a seeded order.

use anyhow::Result;

use super::{PickContext, Picked, Strategy};
use crate::engine::select::{pick_random, spaced};

pub struct Random;

impl Strategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, cx: &PickContext) -> Result<Picked> {
        let mut rng = cx.rng("random");
        // The whole pool is shuffled, so that the spacing rule can skip down the order.
        let order = pick_random(cx.unlabelled, cx.unlabelled.len(), &mut rng);
        Ok(spaced(order, cx.k, cx.near).into())
    }
}
