//! Adam, written out so that its moments can be checkpointed with the weights: a run killed
//! mid-training resumes with the exact optimiser state (tch's optimiser state is not reachable).

use std::path::Path;

use anyhow::{Context, Result};
use tch::{nn::VarStore, Kind, Tensor};

pub struct Adam {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    /// Trainable variables in a fixed order (sorted by name), with their moments.
    params: Vec<(String, Tensor, Tensor, Tensor)>,
    pub step: i64,
    /// Mixed precision: the gradients come from `loss × scale` (see [`LossScale`]).
    pub loss_scale: Option<LossScale>,
}

/// Dynamic loss scaling for float16 training (as torch.cuda.amp.GradScaler): the loss is
/// multiplied by `scale` before the backward pass so small gradients survive float16; a step
/// whose gradients overflowed is skipped and the scale halved; after `GROWTH_INTERVAL` good
/// steps in a row the scale doubles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScale {
    pub scale: f64,
    pub good_steps: u32,
    /// Steps skipped because of overflow in this process (not checkpointed; for callers that
    /// want to know, such as the tests — sessions do not report it yet).
    pub skipped: u32,
}

const GROWTH_INTERVAL: u32 = 2000;

impl Default for LossScale {
    fn default() -> Self {
        LossScale {
            scale: 65536.0,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl Adam {
    pub fn new(vs: &VarStore, lr: f64) -> Adam {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(n, t)| {
                let m = t.zeros_like();
                let v = t.zeros_like();
                (n, t, m, v)
            })
            .collect();
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            params,
            step: 0,
            loss_scale: None,
        }
    }

    /// What the loss is multiplied by before `backward` (1 without loss scaling).
    pub fn loss_multiplier(&self) -> f64 {
        self.loss_scale.map_or(1.0, |l| l.scale)
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update from the current gradients (as torch.optim.Adam, no weight decay). With loss
    /// scaling the gradients are unscaled first, and a step with an overflow is skipped:
    /// returns whether the weights moved.
    pub fn step(&mut self) -> bool {
        let _guard = tch::no_grad_guard();
        let mut unscale = 1.0;
        if let Some(ls) = &mut self.loss_scale {
            // One reduction and one read for all gradients: inf or NaN anywhere shows in the sum.
            let sums: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p, _, _)| p.grad())
                .filter(|g| g.defined())
                .map(|g| g.sum(Kind::Float))
                .collect();
            let total = if sums.is_empty() {
                0.0
            } else {
                Tensor::stack(&sums, 0).sum(Kind::Float).double_value(&[])
            };
            if !total.is_finite() {
                ls.scale = (ls.scale * 0.5).max(1.0);
                ls.good_steps = 0;
                ls.skipped += 1;
                return false;
            }
            unscale = 1.0 / ls.scale;
            ls.good_steps += 1;
            if ls.good_steps == GROWTH_INTERVAL {
                ls.scale *= 2.0;
                ls.good_steps = 0;
            }
        }
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        // torch.optim.Adam's single-tensor update, in place where it can be:
        // m ← lerp(m, g, 1−β1); v ← β2·v + (1−β2)·g²; p ← p − lr/bc1 · m / (√v/√bc2 + ε).
        let step_size = self.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (_, p, m, v) in &mut self.params {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            if unscale != 1.0 {
                g = g * unscale;
            }
            let _ = m.lerp_(&g, 1.0 - b1);
            let _ = v.g_mul_scalar_(b2).addcmul_(&(&g * (1.0 - b2)), &g);
            let mut denom = v.sqrt();
            let _ = denom.g_div_scalar_(bc2_sqrt).g_add_scalar_(self.eps);
            let _ = p.addcdiv_(&(&*m * -step_size), &denom);
        }
        true
    }

    /// Moments and step count as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let step = Tensor::from_slice(&[self.step]);
        // Moments follow their weight's layout (channels-last): files hold contiguous copies.
        let mut named: Vec<(String, Tensor)> = vec![("step".into(), step)];
        if let Some(ls) = self.loss_scale {
            named.push(("loss_scale".into(), Tensor::from_slice(&[ls.scale])));
            let good = Tensor::from_slice(&[ls.good_steps as i64]);
            named.push(("loss_scale_good_steps".into(), good));
        }
        for (n, _, m, v) in &self.params {
            named.push((format!("m.{n}"), m.contiguous()));
            named.push((format!("v.{n}"), v.contiguous()));
        }
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        self.step = map
            .get("step")
            .context("optimiser state without a step")?
            .int64_value(&[0]);
        if let (Some(ls), Some(scale), Some(good)) = (
            &mut self.loss_scale,
            map.get("loss_scale"),
            map.get("loss_scale_good_steps"),
        ) {
            ls.scale = scale.double_value(&[0]);
            ls.good_steps = good.int64_value(&[0]) as u32;
        }
        let _guard = tch::no_grad_guard();
        for (n, p, m, v) in &mut self.params {
            for (prefix, dst) in [("m", &mut *m), ("v", &mut *v)] {
                let src = map
                    .get(&format!("{prefix}.{n}"))
                    .with_context(|| format!("optimiser state lacks {prefix}.{n}"))?;
                dst.copy_(&src.to_kind(Kind::Float).to_device(p.device()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Three steps on f(p) = Σp², against Adam written out in f64 (torch.optim.Adam's formula).
    #[test]
    fn matches_the_adam_formula() {
        let vs = VarStore::new(Device::Cpu);
        let p = vs
            .root()
            .var_copy("p", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = Adam::new(&vs, 0.1);
        let (mut want, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for t in 1..=3 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step();
            for i in 0..2 {
                let g = 2.0 * want[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let (mh, vh) = (
                    m[i] / (1.0 - 0.9f64.powi(t)),
                    v[i] / (1.0 - 0.999f64.powi(t)),
                );
                want[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = Vec::try_from(&p).unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - want[i]).abs() < 1e-5,
                "{got:?} vs {want:?}"
            );
        }
        // Saved and loaded moments continue identically.
        let dir = tempfile::tempdir().unwrap();
        opt.save(&dir.path().join("adam.safetensors")).unwrap();
        let mut again = Adam::new(&vs, 0.1);
        again.load(&dir.path().join("adam.safetensors")).unwrap();
        assert_eq!(again.step, 3);
    }

    /// Loss scaling: scaled gradients give the unscaled update; an overflow skips the step,
    /// halves the scale and leaves the weights and moments alone; the scale is checkpointed.
    #[test]
    fn loss_scaling_unscales_and_skips_overflowing_steps() {
        let start = [1.0f32, -2.0];
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("p", &Tensor::from_slice(&start));
        let vs_ref = VarStore::new(Device::Cpu);
        let q = vs_ref.root().var_copy("p", &Tensor::from_slice(&start));
        let mut opt = Adam::new(&vs, 0.1);
        opt.loss_scale = Some(LossScale::default());
        let mut plain = Adam::new(&vs_ref, 0.1);
        for _ in 0..2 {
            opt.zero_grad();
            ((&p * &p).sum(Kind::Float) * opt.loss_multiplier()).backward();
            assert!(opt.step());
            plain.zero_grad();
            (&q * &q).sum(Kind::Float).backward();
            plain.step();
        }
        let (got, want): (Vec<f32>, Vec<f32>) =
            (Vec::try_from(&p).unwrap(), Vec::try_from(&q).unwrap());
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?} vs {want:?}"
        );
        // An infinite gradient: nothing moves, the scale halves.
        opt.zero_grad();
        (&p * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!opt.step());
        let after: Vec<f32> = Vec::try_from(&p).unwrap();
        assert_eq!(after, got);
        assert_eq!(opt.step, 2);
        let ls = opt.loss_scale.unwrap();
        assert_eq!((ls.scale, ls.good_steps, ls.skipped), (32768.0, 0, 1));
        let dir = tempfile::tempdir().unwrap();
        opt.save(&dir.path().join("adam.safetensors")).unwrap();
        let mut again = Adam::new(&vs, 0.1);
        again.loss_scale = Some(LossScale::default());
        again.load(&dir.path().join("adam.safetensors")).unwrap();
        assert_eq!(again.loss_scale.unwrap().scale, 32768.0);
    }
}
