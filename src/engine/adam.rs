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
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update from the current gradients (as torch.optim.Adam, no weight decay).
    pub fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        // torch.optim.Adam's single-tensor update, in place where it can be:
        // m ← lerp(m, g, 1−β1); v ← β2·v + (1−β2)·g²; p ← p − lr/bc1 · m / (√v/√bc2 + ε).
        let step_size = self.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (_, p, m, v) in &mut self.params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = m.lerp_(&g, 1.0 - b1);
            let _ = v.g_mul_scalar_(b2).addcmul_(&(&g * (1.0 - b2)), &g);
            let mut denom = v.sqrt();
            let _ = denom.g_div_scalar_(bc2_sqrt).g_add_scalar_(self.eps);
            let _ = p.addcdiv_(&(&*m * -step_size), &denom);
        }
    }

    /// Moments and step count as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let step = Tensor::from_slice(&[self.step]);
        // Moments follow their weight's layout (channels-last): files hold contiguous copies.
        let mut named: Vec<(String, Tensor)> = vec![("step".into(), step)];
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
}
