//! The two networks of the method, in tch: a 2D UNet (whole-tumour segmentation, one sigmoid
//! output) and a VAE from residual blocks whose encoder mean is a slice's latent.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Per-layer normalisation of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Batch,
    /// Per-sample (group norm with one group per channel). Note (docs/method.md): it makes the input
    /// gradient of empty slices large; the gradient step masks it to the brain.
    Instance,
    Group,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Number of resolution levels (poolings).
    pub depth: usize,
    /// Channels of the first level; doubled at each level.
    pub base: i64,
    pub norm: Norm,
}

impl UNetConfig {
    /// Floating-point operations (2 per multiply-add) of one forward pass of one `size`²
    /// slice through the convolutions (norms and activations are a few percent more and are
    /// left out, as usual in utilisation figures). A training step is about 3× this.
    pub fn forward_flops(&self, in_channels: i64, size: i64) -> f64 {
        let w = |l: usize| (self.base << l) as f64;
        let px = |l: usize| ((size >> l) * (size >> l)) as f64;
        let conv3 = |i: f64, o: f64, l: usize| 2.0 * 9.0 * i * o * px(l);
        let mut f = 0.0;
        for l in 0..=self.depth {
            let i = if l == 0 { in_channels as f64 } else { w(l - 1) };
            f += conv3(i, w(l), l) + conv3(w(l), w(l), l);
        }
        for l in 0..self.depth {
            f += 2.0 * w(l + 1) * w(l) * px(l); // 2×2 transposed, stride 2
            f += conv3(2.0 * w(l), w(l), l) + conv3(w(l), w(l), l);
        }
        f + 2.0 * w(0) * px(0) // 1×1 head
    }
}

impl Default for UNetConfig {
    /// The classic 2D UNet (Ronneberger et al.): 4 poolings, 64 channels at the top.
    fn default() -> Self {
        UNetConfig {
            depth: 4,
            base: 64,
            norm: Norm::Batch,
        }
    }
}

fn norm_layer(p: nn::Path, c: i64, norm: Norm) -> Box<dyn ModuleT> {
    match norm {
        Norm::Batch => Box::new(nn::batch_norm2d(p, c, Default::default())),
        Norm::Instance => Box::new(nn::group_norm(p, c, c, Default::default())),
        Norm::Group => Box::new(nn::group_norm(p, (c / 8).max(1), c, Default::default())),
        Norm::None => Box::new(nn::func_t(|x, _| x.shallow_clone())),
    }
}

/// conv3×3 → norm → ReLU, twice.
fn double_conv(p: nn::Path, i: i64, o: i64, norm: Norm) -> nn::SequentialT {
    let cfg = nn::ConvConfig {
        padding: 1,
        bias: norm == Norm::None,
        ..Default::default()
    };
    nn::seq_t()
        .add(nn::conv2d(&p / "c1", i, o, 3, cfg))
        .add(Boxed(norm_layer(&p / "n1", o, norm)))
        .add_fn(|x| x.relu())
        .add(nn::conv2d(&p / "c2", o, o, 3, cfg))
        .add(Boxed(norm_layer(&p / "n2", o, norm)))
        .add_fn(|x| x.relu())
}

/// Lets a boxed layer go into a `SequentialT`.
struct Boxed(Box<dyn ModuleT>);
impl std::fmt::Debug for Boxed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("norm")
    }
}
impl ModuleT for Boxed {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.0.forward_t(xs, train)
    }
}

#[derive(Debug)]
pub struct UNet {
    down: Vec<nn::SequentialT>,
    bottom: nn::SequentialT,
    up: Vec<(nn::ConvTranspose2D, nn::SequentialT)>,
    head: nn::Conv2D,
}

impl UNet {
    pub fn new(p: &nn::Path, in_channels: i64, cfg: &UNetConfig) -> UNet {
        let w = |l: usize| cfg.base << l;
        let down = (0..cfg.depth)
            .map(|l| {
                double_conv(
                    p / format!("down{l}"),
                    if l == 0 { in_channels } else { w(l - 1) },
                    w(l),
                    cfg.norm,
                )
            })
            .collect();
        let bottom_in = if cfg.depth == 0 {
            in_channels
        } else {
            w(cfg.depth - 1)
        };
        let bottom = double_conv(p / "bottom", bottom_in, w(cfg.depth), cfg.norm);
        let up = (0..cfg.depth)
            .rev()
            .map(|l| {
                let t = nn::conv_transpose2d(
                    p / format!("up{l}t"),
                    w(l + 1),
                    w(l),
                    2,
                    nn::ConvTransposeConfig {
                        stride: 2,
                        ..Default::default()
                    },
                );
                (
                    t,
                    double_conv(p / format!("up{l}"), 2 * w(l), w(l), cfg.norm),
                )
            })
            .collect();
        let mut head = nn::conv2d(p / "head", w(0), 1, 1, Default::default());
        // Start by predicting little tumour (sigmoid(-2) ≈ 0.12): soft Dice from an all-0.5 output
        // spends its first epochs removing false positives, and small batches can then collapse.
        if let Some(b) = head.bs.as_mut() {
            let _g = tch::no_grad_guard();
            let _ = b.fill_(-2.0);
        }
        UNet {
            down,
            bottom,
            up,
            head,
        }
    }

    /// Logits, shape (N, 1, H, W). H and W must be multiples of 2^depth.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut skips = Vec::with_capacity(self.down.len());
        let mut h = x.shallow_clone();
        for d in &self.down {
            let s = d.forward_t(&h, train);
            h = s.max_pool2d_default(2);
            skips.push(s);
        }
        h = self.bottom.forward_t(&h, train);
        for ((t, conv), s) in self.up.iter().zip(skips.iter().rev()) {
            let u = h.apply(t);
            h = conv.forward_t(&Tensor::cat(&[s, &u], 1), train);
        }
        h.apply(&self.head)
    }
}

/// Soft Dice loss `1 − (2Σpy + 1) / (Σp + Σy + 1)` over the whole batch, on sigmoid
/// probabilities: the training loss. (The paper writes −Dice; the gradient is the same.) The
/// +1 keeps empty batches finite.
pub fn dice_loss(logits: &Tensor, target: &Tensor) -> Tensor {
    dice_loss_smoothed(logits, target, 1.0)
}

/// [`dice_loss`] with `smoothing` in place of the +1. With 0 it is the paper's loss
/// `1 − 2Σpy / (Σp + Σy)`, constant (gradient exactly zero) where the target is empty; a
/// floor on the denominator keeps an all-zero prediction of an empty target at a loss of 1.
pub fn dice_loss_smoothed(logits: &Tensor, target: &Tensor, smoothing: f64) -> Tensor {
    let p = logits.sigmoid();
    let kind = logits.kind(); // float64 stays float64 (the gradient-step tests rely on it)
    let inter = (&p * target).sum(kind);
    let denom = p.sum(kind) + target.sum(kind);
    1.0 - (2.0 * inter + smoothing) / (denom + smoothing).clamp_min(DICE_FLOOR)
}

/// The smallest denominator of [`dice_loss_smoothed`].
pub const DICE_FLOOR: f64 = 1e-12;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    /// Latent dimensions (the paper: 5).
    pub latent: i64,
    /// Channels after the first down-sampling; doubled at each of `levels`.
    pub base: i64,
    /// Stride-2 stages (each followed by a residual block).
    pub levels: usize,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            latent: 5,
            base: 32,
            levels: 4,
        }
    }
}

/// PyTorch's default initialisation of a layer with `fan_in` inputs per output: weights and
/// biases uniform in ±1/√fan_in (torch.nn's `kaiming_uniform_(a = √5)` and its bias rule).
/// The VAE uses it for every layer. tch's default (Kaiming uniform with the ReLU gain, ±√6/√fan_in,
/// zero convolution biases) is 2.45 times larger: the VAE, a residual network without normalisation,
/// then blows up in its first steps and its decoder settles on a near-constant image
/// (docs/method.md has the measurements).
pub fn torch_default_init(fan_in: i64) -> (nn::Init, nn::Init) {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let uniform = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    (uniform, uniform)
}

/// A VAE convolution from `in_channels` with a `k`×`k` kernel, initialised as PyTorch does.
fn conv_config(in_channels: i64, k: i64, stride: i64, padding: i64) -> nn::ConvConfig {
    let (ws_init, bs_init) = torch_default_init(in_channels * k * k);
    nn::ConvConfig {
        stride,
        padding,
        ws_init,
        bs_init,
        ..Default::default()
    }
}

/// x + conv(relu(conv(relu(x)))): the residual block of the VAE.
#[derive(Debug)]
struct ResBlock {
    c1: nn::Conv2D,
    c2: nn::Conv2D,
}

impl ResBlock {
    fn new(p: nn::Path, c: i64) -> Self {
        let cfg = conv_config(c, 3, 1, 1);
        ResBlock {
            c1: nn::conv2d(&p / "c1", c, c, 3, cfg),
            c2: nn::conv2d(&p / "c2", c, c, 3, cfg),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x + x.relu().apply(&self.c1).relu().apply(&self.c2)
    }
}

#[derive(Debug)]
pub struct Vae {
    enc: Vec<(nn::Conv2D, ResBlock)>,
    mu: nn::Linear,
    logvar: nn::Linear,
    dec_in: nn::Linear,
    dec: Vec<(ResBlock, nn::ConvTranspose2D)>,
    out: nn::Conv2D,
    /// Channels and side at the bottleneck.
    bottleneck: (i64, i64),
}

impl Vae {
    /// `size` must be divisible by 2^levels. Every layer starts from PyTorch's default
    /// initialisation ([`torch_default_init`]).
    pub fn new(p: &nn::Path, in_channels: i64, size: i64, cfg: &VaeConfig) -> Vae {
        let w = |l: usize| cfg.base << l;
        let enc = (0..cfg.levels)
            .map(|l| {
                let i = if l == 0 { in_channels } else { w(l - 1) };
                (
                    nn::conv2d(p / format!("enc{l}"), i, w(l), 4, conv_config(i, 4, 2, 1)),
                    ResBlock::new(p / format!("encres{l}"), w(l)),
                )
            })
            .collect();
        let side = size >> cfg.levels;
        let c = w(cfg.levels - 1);
        let flat = c * side * side;
        let dec = (0..cfg.levels)
            .rev()
            .map(|l| {
                let o = if l == 0 { cfg.base } else { w(l - 1) };
                // PyTorch takes a transposed convolution's fan-in from its output channels
                // (the weight is in × out × k × k and fan-in is read from dimension 1).
                let (bound, bias) = torch_default_init(o * 16);
                let up = nn::ConvTransposeConfig {
                    stride: 2,
                    padding: 1,
                    ws_init: bound,
                    bs_init: bias,
                    ..Default::default()
                };
                (
                    ResBlock::new(p / format!("decres{l}"), w(l)),
                    nn::conv_transpose2d(p / format!("dec{l}"), w(l), o, 4, up),
                )
            })
            .collect();
        let linear = |fan_in: i64| {
            let (ws_init, bs_init) = torch_default_init(fan_in);
            nn::LinearConfig {
                ws_init,
                bs_init: Some(bs_init),
                bias: true,
            }
        };
        Vae {
            enc,
            mu: nn::linear(p / "mu", flat, cfg.latent, linear(flat)),
            logvar: nn::linear(p / "logvar", flat, cfg.latent, linear(flat)),
            dec_in: nn::linear(p / "dec_in", cfg.latent, flat, linear(cfg.latent)),
            dec,
            out: nn::conv2d(
                p / "out",
                cfg.base,
                in_channels,
                3,
                conv_config(cfg.base, 3, 1, 1),
            ),
            bottleneck: (c, side),
        }
    }

    /// Encoder mean and log-variance, each (N, latent).
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        for (conv, res) in &self.enc {
            h = res.forward(&h.apply(conv).relu());
        }
        let h = h.relu().flatten(1, -1);
        (h.apply(&self.mu), h.apply(&self.logvar))
    }

    pub fn decode(&self, z: &Tensor) -> Tensor {
        let (c, side) = self.bottleneck;
        let mut h = z.apply(&self.dec_in).view([-1, c, side, side]);
        for (res, up) in &self.dec {
            h = res.forward(&h).relu().apply(up);
        }
        h.relu().apply(&self.out)
    }

    /// The loss `MSE + kl_weight·KL`, with KL summed over latent dimensions and scaled per
    /// input element like the MSE (the per-element ELBO), for the reparameterisation noise
    /// `eps` (batch × latent, drawn by the caller). A tensor on the device: nothing is read
    /// back, so the host never waits for the GPU here.
    pub fn loss(&self, x: &Tensor, kl_weight: f64, eps: &Tensor) -> Tensor {
        let (mu, logvar) = self.encode(x);
        let z = &mu + (&logvar * 0.5).exp() * eps;
        let recon = self.decode(&z);
        let mse = recon.mse_loss(x, tch::Reduction::Mean);
        let kl = (&logvar + 1.0 - mu.square() - logvar.exp())
            .sum_dim_intlist(1, false, tch::Kind::Float)
            .mean(tch::Kind::Float)
            * -0.5;
        let per_element = (x.numel() / x.size()[0] as usize) as f64;
        mse + kl_weight * kl / per_element
    }

    /// Latent dimensions.
    pub fn latent(&self) -> i64 {
        self.mu.ws.size()[0]
    }
}

/// For inference and input gradients (eval mode): a copy of a batch-norm UNet whose norms are
/// folded into the convolutions before them (`W·γ/σ`, bias `β − γμ/σ` with σ = √(var + ε)),
/// on the same device, frozen, channels-last. Same function up to float rounding, without the
/// norm layers' passes: the evaluation, the oracle's scoring and the gradient step run on it.
/// `None` for other norms (group and instance norms depend on the input).
pub fn fold_batch_norm(
    vs: &nn::VarStore,
    in_channels: i64,
    cfg: &UNetConfig,
) -> Option<(nn::VarStore, UNet)> {
    if cfg.norm != Norm::Batch {
        return None;
    }
    let mut folded = nn::VarStore::new(vs.device());
    let net = UNet::new(
        &folded.root(),
        in_channels,
        &UNetConfig {
            norm: Norm::None,
            ..cfg.clone()
        },
    );
    let src = vs.variables();
    let eps = nn::BatchNormConfig::default().eps;
    {
        let _guard = tch::no_grad_guard();
        for (name, mut dst) in folded.variables() {
            // "down0.c1.weight" is normalised by "down0.n1.*"
            let norm = name
                .rsplit_once(".c")
                .filter(|(_, rest)| rest.ends_with(".weight") || rest.ends_with(".bias"))
                .and_then(|(block, rest)| {
                    let i = rest.split('.').next()?;
                    let n = |f: &str| src.get(&format!("{block}.n{i}.{f}"));
                    Some((
                        n("weight")?,
                        n("bias")?,
                        n("running_mean")?,
                        n("running_var")?,
                    ))
                });
            let value = match norm {
                Some((gamma, beta, mean, var)) => {
                    let scale = gamma / (var + eps).sqrt();
                    if name.ends_with(".weight") {
                        src.get(&name)?.contiguous() * scale.view([-1, 1, 1, 1])
                    } else {
                        beta - mean * scale
                    }
                }
                None => src.get(&name)?.contiguous(),
            };
            dst.copy_(&value);
        }
    }
    folded.freeze();
    use_channels_last(&folded);
    Some((folded, net))
}

/// Runs `f` (building networks) with libtorch's global generator seeded to `seed`, holding a
/// process-wide lock: weight initialisation draws from that one generator, and concurrent
/// builders (the lanes of `--devices`, the TUI's preview thread) would otherwise interleave
/// their draws and change each other's initial weights.
pub fn seeded<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    static GLOBAL_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = GLOBAL_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    f()
}

/// Stores every 4-d weight of `vs` channels-last (NCHW shape, NHWC strides). oneDNN on the CPU
/// and cuDNN on the GPU then choose their NHWC convolution kernels and the activations follow
/// the weights' layout; on the 2-core benchmark machine this is most of the training
/// benchmark's lead over PyTorch's default layout (bench/README.md). Values are unchanged, and
/// checkpoints are written contiguous ([`save_weights`]), so the layout never reaches a file.
///
/// `SUGGESTIVE_CHANNELS_LAST=0` keeps the standard layout: a measurement knob for the GPU
/// check, which times both layouts (channels-last wins with fp16 tensor cores and on the CPU;
/// whether it wins in float32 on a GPU is what that run decides).
pub fn use_channels_last(vs: &nn::VarStore) {
    if std::env::var("SUGGESTIVE_CHANNELS_LAST").is_ok_and(|v| v == "0") {
        return;
    }
    let _guard = tch::no_grad_guard();
    for (_, mut t) in vs.variables() {
        if t.dim() == 4 {
            let nhwc = t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            t.set_data(&nhwc);
        }
    }
}

/// Writes `vs` as safetensors (which takes contiguous tensors only: channels-last weights are
/// copied to the standard layout first).
pub fn save_weights(vs: &nn::VarStore, path: &std::path::Path) -> Result<(), tch::TchError> {
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.contiguous()))
        .collect();
    Tensor::write_safetensors(&named, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_flops_count_the_convolutions() {
        let cfg = |depth| UNetConfig {
            depth,
            base: 8,
            norm: Norm::Batch,
        };
        // Depth 0: conv 4→8, conv 8→8, head 8→1, at 16×16.
        let px = 256.0;
        let want = 2.0 * px * (9.0 * 4.0 * 8.0 + 9.0 * 8.0 * 8.0 + 8.0);
        assert_eq!(cfg(0).forward_flops(4, 16), want);
        // One level more adds the bottom at 8×8 (8→16, 16→16), the transposed conv 16→8 and the
        // decoder's 16→8, 8→8 at 16×16.
        let extra = 2.0 * 64.0 * (9.0 * 8.0 * 16.0 + 9.0 * 16.0 * 16.0)
            + 2.0 * px * (16.0 * 8.0 + 9.0 * 16.0 * 8.0 + 9.0 * 8.0 * 8.0);
        assert_eq!(cfg(1).forward_flops(4, 16), want + extra);
        // The paper's UNet at 256×256: about 96 GFLOP (48 G multiply-adds) per slice forward,
        // ~11 G multiply-adds per level plus the bottom.
        let paper = UNetConfig::default().forward_flops(4, 256);
        assert!((9.0e10..1.0e11).contains(&paper), "{paper:e}");
    }

    #[test]
    fn folding_batch_norm_keeps_the_eval_function_and_its_input_gradient() {
        tch::manual_seed(5);
        let cfg = UNetConfig {
            depth: 2,
            base: 4,
            norm: Norm::Batch,
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = UNet::new(&vs.root(), 3, &cfg);
        use_channels_last(&vs);
        // Give the norms non-trivial statistics and affine parameters.
        for _ in 0..3 {
            let _ = net.forward_t(
                &(Tensor::randn([4, 3, 16, 16], tch::kind::FLOAT_CPU) * 3.0 + 1.0),
                true,
            );
        }
        {
            let _g = tch::no_grad_guard();
            for (n, mut t) in vs.variables() {
                if n.contains(".n") && (n.ends_with("weight") || n.ends_with("bias")) {
                    t.copy_(&(Tensor::rand_like(&t) + 0.5));
                }
            }
        }
        let (_fvs, folded) = fold_batch_norm(&vs, 3, &cfg).unwrap();
        let x = Tensor::randn([2, 3, 16, 16], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let a = net.forward_t(&x, false);
        let b = folded.forward_t(&x, false);
        let err = (&a - &b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]);
        assert!(
            err < 1e-4 * scale.max(1.0),
            "outputs differ by {err} (scale {scale})"
        );
        let ga = Tensor::run_backward(&[&a.sum(tch::Kind::Float)], &[&x], false, false).remove(0);
        let gb = Tensor::run_backward(&[&b.sum(tch::Kind::Float)], &[&x], false, false).remove(0);
        let gerr = (&ga - &gb).abs().max().double_value(&[]);
        assert!(
            gerr < 1e-4 * ga.abs().max().double_value(&[]),
            "gradients differ by {gerr}"
        );
        // Only batch norm folds.
        let gn = UNetConfig {
            norm: Norm::Group,
            ..cfg
        };
        assert!(fold_batch_norm(&vs, 3, &gn).is_none());
    }
}
