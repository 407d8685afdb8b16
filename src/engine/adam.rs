//! Adam, written out so that its moments can be checkpointed with the weights: a run killed
//! mid-training resumes with the exact optimiser state (tch's optimiser state is not reachable).

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn::VarStore, Kind, Tensor};

pub struct Adam {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    /// Trainable variables in a fixed order (sorted by name).
    params: Vec<Param>,
    /// All parameters' values in one buffer: each variable is a view into it (same strides as
    /// before, channels-last included), so the update is a handful of kernels for the whole
    /// network instead of nine per parameter (on a GPU, launches dominate small networks' steps).
    flat: Tensor,
    /// The gradients, gathered into one buffer in the same order each step.
    grads: Tensor,
    /// The first and second moments, flat like `flat`.
    m: Tensor,
    v: Tensor,
    pub step: i64,
    /// Mixed precision: the gradients come from `loss × scale` (see [`LossScale`]).
    pub loss_scale: Option<LossScale>,
}

struct Param {
    name: String,
    var: Tensor,
    /// Where the variable lives in the flat buffers.
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl Param {
    /// This parameter's slice of a flat buffer, shaped and strided like the variable.
    fn view(&self, flat: &Tensor) -> Tensor {
        flat.as_strided(&self.size, &self.stride, self.offset)
    }
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
    /// An optimiser over `vs`'s trainable variables, which it moves into one flat buffer (they
    /// keep their values, shapes and strides; all must share one kind and device).
    pub fn new(vs: &VarStore, lr: f64) -> Adam {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (kind, device) = vars
            .first()
            .map_or((Kind::Float, vs.device()), |(_, t)| (t.kind(), t.device()));
        let mut offset = 0;
        let params: Vec<Param> = vars
            .into_iter()
            .map(|(name, var)| {
                let p = Param {
                    name,
                    offset,
                    size: var.size(),
                    stride: var.stride(),
                    var,
                };
                offset += p.var.numel() as i64;
                p
            })
            .collect();
        let zeros = || Tensor::zeros([offset], (kind, device));
        let mut adam = Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            params,
            flat: zeros(),
            grads: zeros(),
            m: zeros(),
            v: zeros(),
            step: 0,
            loss_scale: None,
        };
        adam.alias_variables();
        adam
    }

    /// Makes every variable a view into `flat` again where it is not one (at construction, and
    /// if anything replaced a variable's storage since, e.g. a load that changed its kind): the
    /// variable's current values are copied in first. A pointer comparison per parameter.
    fn alias_variables(&mut self) {
        let _guard = tch::no_grad_guard();
        let elem = self.flat.kind().elt_size_in_bytes() as i64;
        let base = self.flat.data_ptr() as i64;
        for p in &mut self.params {
            // Replacing a variable's data (set_data) always moves its pointer.
            if p.var.data_ptr() as i64 != base + p.offset * elem {
                let mut view = p.view(&self.flat);
                view.copy_(&p.var);
                p.var.set_data(&view);
            }
        }
    }

    /// What the loss is multiplied by before `backward` (1 without loss scaling).
    pub fn loss_multiplier(&self) -> f64 {
        self.loss_scale.map_or(1.0, |l| l.scale)
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One Adam step (torch.optim.Adam's formula). With loss scaling: false, and nothing moves,
    /// when the gradients overflowed.
    pub fn step(&mut self) -> bool {
        let _guard = tch::no_grad_guard();
        self.alias_variables();
        // Gather the gradients; a parameter without one is noted, to be left alone below.
        let mut missing = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let g = p.var.grad();
            let mut dst = p.view(&self.grads);
            if g.defined() {
                dst.copy_(&g);
            } else {
                missing.push(i);
                let _ = dst.zero_();
            }
        }
        let mut unscale = 1.0;
        if let Some(ls) = &mut self.loss_scale {
            let total = self.grads.sum(Kind::Float).double_value(&[]);
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
        // Parameters without a gradient keep their moments and values (torch skips them).
        let kept: Vec<(Tensor, Tensor, Tensor)> = missing
            .iter()
            .map(|&i| {
                let p = &self.params[i];
                (p.view(&self.m).copy(), p.view(&self.v).copy(), p.var.copy())
            })
            .collect();
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let step_size = self.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        let mut g = self.grads.shallow_clone();
        if unscale != 1.0 {
            g *= unscale;
        }
        let _ = self.m.lerp_(&g, 1.0 - b1);
        let _ = self.v.g_mul_scalar_(b2).addcmul_(&(&g * (1.0 - b2)), &g);
        let mut denom = self.v.sqrt();
        let _ = denom.g_div_scalar_(bc2_sqrt).g_add_scalar_(self.eps);
        let _ = self.flat.addcdiv_(&(&self.m * -step_size), &denom);
        for (&i, (m, v, var)) in missing.iter().zip(&kept) {
            let p = &self.params[i];
            p.view(&self.m).copy_(m);
            p.view(&self.v).copy_(v);
            p.view(&self.flat).copy_(var);
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
        for p in &self.params {
            named.push((format!("m.{}", p.name), p.view(&self.m).contiguous()));
            named.push((format!("v.{}", p.name), p.view(&self.v).contiguous()));
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
        for p in &self.params {
            for (prefix, flat) in [("m", &self.m), ("v", &self.v)] {
                let name = format!("{prefix}.{}", p.name);
                let src = map
                    .get(&name)
                    .with_context(|| format!("optimiser state lacks {name}"))?;
                if src.size() != p.size {
                    bail!(
                        "optimiser state {name} has shape {:?}, the network {:?}",
                        src.size(),
                        p.size
                    );
                }
                p.view(flat)
                    .copy_(&src.to_kind(flat.kind()).to_device(flat.device()));
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

    /// The flat update equals the per-parameter formula on a channels-last convolution and a
    /// linear layer; a parameter without a gradient is left alone; the variables stay views
    /// into the flat buffer, also after a VarStore load; the moments survive save and load.
    #[test]
    fn flat_update_matches_per_parameter_adam() {
        use tch::nn::{self, Module};
        let build = || {
            tch::manual_seed(3);
            let vs = VarStore::new(Device::Cpu);
            let conv = nn::conv2d(vs.root() / "conv", 2, 3, 3, Default::default());
            let lin = nn::linear(vs.root() / "lin", 3 * 4 * 4, 2, Default::default());
            let unused = vs.root().var("unused", &[4], nn::Init::Const(0.5));
            crate::engine::nets::use_channels_last(&vs);
            (vs, conv, lin, unused)
        };
        let x = Tensor::randn([5, 2, 6, 6], (Kind::Float, Device::Cpu));
        let loss = |conv: &nn::Conv2D, lin: &nn::Linear| {
            lin.forward(&conv.forward(&x).relu().flatten(1, -1))
                .square()
                .sum(Kind::Float)
        };
        let (vs, conv, lin, unused) = build();
        let mut opt = Adam::new(&vs, 0.01);
        // The reference: torch.optim.Adam's formula one variable at a time.
        let (vs_ref, conv_ref, lin_ref, _) = build();
        let mut state: Vec<(Tensor, Tensor, Tensor)> = vs_ref
            .trainable_variables()
            .into_iter()
            .map(|t| (t.zeros_like(), t.zeros_like(), t))
            .collect();
        for t in 1..=3 {
            opt.zero_grad();
            loss(&conv, &lin).backward();
            assert!(opt.step());
            for (_, _, p) in &mut state {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            loss(&conv_ref, &lin_ref).backward();
            let _guard = tch::no_grad_guard();
            for (m, v, p) in &mut state {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
                let _ = m.lerp_(&g, 0.1);
                let _ = v.g_mul_scalar_(0.999).addcmul_(&(&g * 0.001), &g);
                let denom = v.sqrt() / bc2.sqrt() + 1e-8;
                let _ = p.addcdiv_(&(&*m * (-0.01 / bc1)), &denom);
            }
        }
        let (ours, theirs) = (vs.variables(), vs_ref.variables());
        for (name, t) in &ours {
            let diff = (t - &theirs[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name} differs by {diff}");
        }
        let still: Vec<f32> = Vec::try_from(&unused).unwrap();
        assert_eq!(still, vec![0.5; 4]);
        // Channels-last kept; every variable a view into the flat buffer.
        assert_eq!(ours["conv.weight"].stride(), theirs["conv.weight"].stride());
        let aliased = |opt: &Adam| {
            let base = opt.flat.data_ptr() as i64;
            opt.params
                .iter()
                .all(|p| p.var.data_ptr() as i64 == base + 4 * p.offset)
        };
        assert!(aliased(&opt));
        // Moments saved and loaded into a fresh optimiser continue the same trajectory.
        let dir = tempfile::tempdir().unwrap();
        opt.save(&dir.path().join("adam.safetensors")).unwrap();
        let mut again = Adam::new(&vs, 0.01);
        again.load(&dir.path().join("adam.safetensors")).unwrap();
        assert!(aliased(&again));
        for (a, b) in [(&opt.m, &again.m), (&opt.v, &again.v)] {
            assert_eq!(
                a.view([-1])
                    .not_equal_tensor(b)
                    .sum(Kind::Int64)
                    .int64_value(&[]),
                0
            );
        }
    }
}
