//! Training throughput of suggestive's networks (driven by bench/train_bench.py, compared with
//! bench/reference.py in the same run). Writes the initial weights and one fixed batch as
//! safetensors so the reference computes the same losses on the same numbers, then times
//! forward + backward + Adam steps of the UNet and the VAE, and the gradient-to-input + encode
//! step of the selection, in windows after warm-up. Prints one JSON object.
//!
//! Arguments: OUT_DIR SIZE BATCH UNET_DEPTH UNET_BASE VAE_LEVELS VAE_BASE DEVICE STEPS WINDOWS

use std::path::PathBuf;
use std::time::Instant;

use suggestive::engine::adam::{Adam, LossScale};
use suggestive::engine::device::parse_device;
use suggestive::engine::nets::{
    dice_loss, fold_batch_norm, save_weights, use_channels_last, Norm, UNet, UNetConfig, Vae,
    VaeConfig,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sync(d: Device) {
    if let Device::Cuda(n) = d {
        tch::Cuda::synchronize(n as i64);
    }
}

/// Median slices per second over `windows` windows of `steps` calls of `f`, after 3 warm-ups.
fn time(d: Device, batch: usize, steps: usize, windows: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    sync(d);
    let mut rates = Vec::new();
    for _ in 0..windows {
        let t = Instant::now();
        for _ in 0..steps {
            f();
        }
        sync(d);
        rates.push((steps * batch) as f64 / t.elapsed().as_secs_f64());
    }
    median(rates)
}

/// The process's peak resident set (VmHWM), bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    // As the suggestive binary does first (engine::host_memory).
    suggestive::engine::host_memory::keep_freed_blocks();
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let num = |i: usize| a[i].parse::<i64>().expect("numeric argument");
    let out = PathBuf::from(&a[0]);
    let (size, batch) = (num(1), num(2));
    let unet_cfg = UNetConfig {
        depth: num(3) as usize,
        base: num(4),
        norm: Norm::Batch,
    };
    let vae_cfg = VaeConfig {
        latent: 5,
        base: num(6),
        levels: num(5) as usize,
    };
    let device = parse_device(&a[7]).expect("device");
    let (steps, windows) = (num(8) as usize, num(9) as usize);
    std::fs::create_dir_all(&out).unwrap();
    if let Device::Cuda(_) = device {
        tch::Cuda::cudnn_set_benchmark(true);
    }

    tch::manual_seed(0);
    let x = Tensor::randn([batch, 4, size, size], (Kind::Float, Device::Cpu));
    let y = x.narrow(1, 0, 1).gt(0.8).to_kind(Kind::Float);
    let eps = Tensor::randn([batch, vae_cfg.latent], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[("x", &x), ("y", &y), ("eps", &eps)],
        out.join("batch.safetensors"),
    )
    .unwrap();
    let (x, y, eps) = (
        x.to_device(device),
        y.to_device(device),
        eps.to_device(device),
    );

    let vs_u = VarStore::new(device);
    let unet = UNet::new(&vs_u.root(), 4, &unet_cfg);
    // The engine's weight layout (the reference keeps PyTorch's default).
    use_channels_last(&vs_u);
    save_weights(&vs_u, &out.join("unet.safetensors")).unwrap();
    let vs_v = VarStore::new(device);
    let vae = Vae::new(&vs_v.root(), 4, size, &vae_cfg);
    use_channels_last(&vs_v);
    save_weights(&vs_v, &out.join("vae.safetensors")).unwrap();

    // Same-computation checks: losses on the saved weights and batch, before any step
    // (the UNet in training mode, as in its first training step; the VAE with the saved noise).
    let unet_loss = dice_loss(&unet.forward_t(&x, true), &y).double_value(&[]);
    let vae_loss = vae.loss(&x, 1.0, &eps).double_value(&[]);
    // The selection step's input gradient, eval mode, checked by its norm.
    let xg = x.copy().set_requires_grad(true);
    let l = dice_loss(&unet.forward_t(&xg, false), &y);
    let grad_norm = Tensor::run_backward(&[&l], &[&xg], false, false)[0]
        .norm()
        .double_value(&[]);
    // Those forward passes in training mode moved the running statistics: restore them.
    let mut vs_u = vs_u;
    vs_u.load(out.join("unet.safetensors")).unwrap();

    let mut opt = Adam::new(&vs_u, 1e-3);
    let unet_rate = time(device, batch as usize, steps, windows, || {
        opt.zero_grad();
        let loss = dice_loss(&unet.forward_t(&x, true), &y);
        loss.backward();
        opt.step();
    });
    // Mixed precision (CUDA only: autocast is a no-op elsewhere), from the same weights.
    let mut unet_fp16 = None;
    if let Device::Cuda(_) = device {
        vs_u.load(out.join("unet.safetensors")).unwrap();
        let mut opt16 = Adam::new(&vs_u, 1e-3);
        opt16.loss_scale = Some(LossScale::default());
        let first = dice_loss(
            &suggestive::engine::mixed::autocast_fp16(|| unet.forward_t(&x, true))
                .to_kind(Kind::Float),
            &y,
        )
        .double_value(&[]);
        vs_u.load(out.join("unet.safetensors")).unwrap();
        let rate = time(device, batch as usize, steps, windows, || {
            opt16.zero_grad();
            let logits = suggestive::engine::mixed::autocast_fp16(|| unet.forward_t(&x, true));
            let loss = dice_loss(&logits.to_kind(Kind::Float), &y);
            (&loss * opt16.loss_multiplier()).backward();
            opt16.step();
        });
        unet_fp16 = Some((first, rate));
    }
    let mut opt_v = Adam::new(&vs_v, 1e-4);
    let vae_rate = time(device, batch as usize, steps, windows, || {
        opt_v.zero_grad();
        // Fresh noise each step, drawn on the device as the reference does (torch.randn_like).
        let loss = vae.loss(&x, 1.0, &eps.randn_like());
        loss.backward();
        opt_v.step();
    });
    // The session's selection step runs on the UNet with batch norm folded in.
    let (_folded, unet_eval) = fold_batch_norm(&vs_u, 4, &unet_cfg).expect("batch norm");
    let select_rate = time(device, batch as usize, steps, windows, || {
        let xg = x.copy().set_requires_grad(true);
        let l = dice_loss(&unet_eval.forward_t(&xg, false), &y);
        let g = Tensor::run_backward(&[&l], &[&xg], false, false).remove(0);
        let _guard = tch::no_grad_guard();
        let z = vae.encode(&x).0;
        let zp = vae.encode(&(&x + g * 1e-4)).0;
        let _ = (zp - z).sum(Kind::Float).double_value(&[]);
    });
    let mut json = serde_json::json!({
        "unet_loss": unet_loss, "vae_loss": vae_loss, "grad_norm": grad_norm,
        "unet_slices_per_s": unet_rate, "vae_slices_per_s": vae_rate,
        "select_slices_per_s": select_rate, "threads": tch::get_num_threads(),
        "unet_forward_flops": unet_cfg.forward_flops(4, size),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if let Some((loss, rate)) = unet_fp16 {
        json["unet_fp16_loss"] = loss.into();
        json["unet_fp16_slices_per_s"] = rate.into();
    }
    println!("{json}");
}
