"""Training and selection throughput, suggestive (tch) against PyTorch eager (bench/reference.py),
same architecture, batch, precision and initial weights, same device, in the same run; the
losses on the same numbers must agree before anything is timed. Driven by bench/run."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from results import cpu_device, gpu_device, record

HERE = os.path.dirname(os.path.abspath(__file__))

# Dense peak TFLOP/s by card (NVIDIA data sheets): FP32 on the CUDA cores (what float32
# convolutions get with TF32 off), TF32 tensor cores (what cuDNN uses for float32 convolutions by
# default), FP16 tensor cores.
PEAKS = {"H100 SXM": (66.9, 494.7, 989.4), "H100 80GB HBM3": (66.9, 494.7, 989.4), "H200": (66.9, 494.7, 989.4),
         "H100 PCIe": (51.2, 378.0, 756.0), "H100 NVL": (60.0, 417.5, 835.0), "A100": (19.5, 156.0, 312.0)}


def peak_tflops(name):
    for k, v in PEAKS.items():
        if k in name:
            return v
    return None


def run_watching_gpu(cmd, **kw):
    """Runs cmd; with a GPU, polls nvidia-smi for the process's peak GPU memory (MiB)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    peak = [0]

    def poll():
        while proc.poll() is None:
            try:
                q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=5).stdout
                for line in q.splitlines():
                    pid, mib = [v.strip() for v in line.split(",")]
                    if int(pid) == proc.pid:
                        peak[0] = max(peak[0], int(mib))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            time.sleep(0.2)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, err = proc.communicate()
    t.join(timeout=1)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{err}")
    return out, peak[0]


def measure(a, dims, env, suffix, tol, fp16=True, against=None):
    """Runs suggestive's benchmark and then PyTorch's with `env` added to the environment, checks
    that their losses agree to `tol` (relative), and returns the throughput rows (names end with
    `suffix`) and both programs' raw figures. `against`: PyTorch's figures from an earlier pass,
    to run only suggestive."""
    size, batch, depth, base, levels, vbase = dims
    steps, windows = (10, 5) if not a.quick else (5, 3)
    work = tempfile.mkdtemp(prefix="suggestive-train-")
    args = [work, size, batch, depth, base, levels, vbase, a.device, steps, windows]
    binary = [a.bin] if a.bin else ["cargo", "bench", "--quiet", "--bench", "train_bench", "--"]
    full_env = {**os.environ, **env}
    ours, ours_gpu = run_watching_gpu([*binary, *map(str, args)], env=full_env)
    ours = json.loads(ours.strip().splitlines()[-1])
    if against is not None:
        # Ours only, against a reference measured in an earlier pass (e.g. another layout).
        ref, ref_gpu = against, against["gpu_mib"]
    else:
        ref, ref_gpu = run_watching_gpu([sys.executable, os.path.join(HERE, "reference.py"), work, str(size),
                                         str(batch), str(depth), str(levels), a.device, str(steps), str(windows)],
                                        env=full_env)
        ref = json.loads(ref.strip().splitlines()[-1])
    ours["gpu_mib"], ref["gpu_mib"] = ours_gpu, ref_gpu
    for k in ("unet_loss", "vae_loss", "grad_norm"):
        rel = abs(ours[k] - ref[k]) / max(abs(ref[k]), 1e-12)
        assert rel < tol, f"{k} differs{suffix}: suggestive {ours[k]} vs PyTorch {ref[k]} (relative {rel:.1e})"
    print(f"same losses{suffix}: UNet {ours['unet_loss']:.6f} vs {ref['unet_loss']:.6f}, VAE {ours['vae_loss']:.6f} vs "
          f"{ref['vae_loss']:.6f}, |grad| {ours['grad_norm']:.4e} vs {ref['grad_norm']:.4e}; "
          f"threads {ours['threads']} vs {ref['threads']}")
    shape = f"{size}x{size}, batch {batch}"
    rows = [
        {"name": f"UNet training (depth {depth}, base {base}, batch norm), {shape}, fwd+bwd+Adam{suffix}",
         "ours": ours["unet_slices_per_s"], "reference": ref["unet_slices_per_s"], "unit": "slices/s"},
        {"name": f"VAE training (levels {levels}, base {vbase}, latent 5), {shape}, fwd+bwd+Adam{suffix}",
         "ours": ours["vae_slices_per_s"], "reference": ref["vae_slices_per_s"], "unit": "slices/s"},
        {"name": f"gradient to input + encode x and x', {shape}{suffix}",
         "ours": ours["select_slices_per_s"], "reference": ref["select_slices_per_s"], "unit": "slices/s"},
    ]
    if fp16 and "unet_fp16_slices_per_s" in ours and "unet_fp16_slices_per_s" in ref:
        rel = abs(ours["unet_fp16_loss"] - ref["unet_fp16_loss"]) / abs(ref["unet_fp16_loss"])
        assert rel < 1e-2, f"fp16 losses differ: {ours['unet_fp16_loss']} vs {ref['unet_fp16_loss']}"
        rows.append({"name": f"UNet training, mixed precision (fp16 autocast + loss scaling), {shape}",
                     "ours": ours["unet_fp16_slices_per_s"], "reference": ref["unet_fp16_slices_per_s"],
                     "unit": "slices/s"})
    return rows, ours, ref


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", help="a prebuilt train_bench binary (GPU machine without cargo)")
    ap.add_argument("--shape", help="SIZE,BATCH,UNET_DEPTH,UNET_BASE,VAE_LEVELS,VAE_BASE instead of the default "
                                    "(the demo preset: 48,16,3,8,3,8)")
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    # CPU sizes that fit 2 cores; the paper's sizes (256×256, 64-channel UNet) on a GPU.
    dims = (256, 16, 4, 64, 4, 32) if gpu else (64, 8, 3, 16, 3, 16)
    if a.shape:
        dims = tuple(map(int, a.shape.split(",")))
    device = gpu_device(a.device) if gpu else cpu_device()
    shape = f"{dims[0]}x{dims[0]}, batch {dims[1]}"
    if not gpu:
        results, ours, ref = measure(a, dims, {}, "", 1e-4)
    else:
        # Three passes. Strict float32 first (NVIDIA_TF32_OVERRIDE=0 turns TF32 off in cuDNN and
        # cuBLAS, for both programs): the losses must agree to 1e-4; the fp16 row comes from it.
        # Then the default of libtorch and PyTorch alike, float32 convolutions on TF32 tensor
        # cores, which is what a session runs: TF32 keeps 10 mantissa bits and the two programs'
        # cuDNN autotuning picks different algorithms, so their losses agree to about 1e-2 only
        # (0.9 % on the VAE's summed loss on an H200). Last, which layout suits float32 on a
        # GPU: suggestive again with its weights left NCHW (as PyTorch's), against the second
        # pass's PyTorch figures. A failed later pass costs its own rows only.
        results, ours, ref = measure(a, dims, {"NVIDIA_TF32_OVERRIDE": "0"}, " [fp32, TF32 off]", 1e-4)
        ours_tf32 = {}
        try:
            tf32, ours_tf32, ref_tf32 = measure(a, dims, {}, " [TF32, the default]", 2e-2, fp16=False)
            results += tf32
            nchw, _, _ = measure(a, dims, {"SUGGESTIVE_CHANNELS_LAST": "0"}, " [TF32, NCHW weights]", 2e-2,
                                 fp16=False, against=ref_tf32)
            results += nchw
        except (AssertionError, SystemExit) as e:
            print(f"a later pass failed, its rows are left out: {e}")
    for r in results:
        r["device"] = device
        r["ratio"] = r["ours"] / r["reference"]
    # Utilisation: achieved TFLOP/s (3 × the forward convolutions per slice) against the card's peak.
    flops = 3 * ours["unet_forward_flops"]
    if gpu:
        import torch
        name = torch.cuda.get_device_name(0)
        peaks = peak_tflops(name)
        if peaks:
            for run, key, label, peak in ((ours, "unet_slices_per_s", "fp32, TF32 off (FP32 peak)", peaks[0]),
                                          (ours_tf32, "unet_slices_per_s", "TF32 (TF32 tensor-core peak)", peaks[1]),
                                          (ours, "unet_fp16_slices_per_s", "fp16 (FP16 tensor-core peak)", peaks[2])):
                if key in run:
                    results.append({"name": f"UNet training {label}: achieved TFLOP/s (reference: {name} dense peak)",
                                    "device": device, "ours": run[key] * flops / 1e12, "reference": peak,
                                    "unit": "TFLOP/s", "ratio": run[key] * flops / 1e12 / peak})
        if ours["gpu_mib"] and ref["gpu_mib"]:
            results.append({"name": f"peak GPU memory of the training benchmark, {shape} (nvidia-smi)", "device": device,
                            "ours": ours["gpu_mib"] / 1024, "reference": ref["gpu_mib"] / 1024, "unit": "GiB",
                            "ratio": ref["gpu_mib"] / ours["gpu_mib"]})
    results.append({"name": f"peak host RSS of the training benchmark, {shape}", "device": device,
                    "ours": ours["peak_rss_bytes"] / 1e9, "reference": ref["peak_rss_bytes"] / 1e9, "unit": "GB",
                    "ratio": ref["peak_rss_bytes"] / ours["peak_rss_bytes"]})
    record(results)
    print(f"\n{'benchmark':96} {'ours':>9} {'PyTorch':>9} {'unit':>9} {'ratio':>6}")
    for r in results:
        print(f"{r['name']:96} {r['ours']:9.1f} {r['reference']:9.1f} {r['unit']:>9} {r['ratio']:6.2f}")
    print(f"UNet: {flops / 1e9:.2f} GFLOP per training slice; achieved {ours['unet_slices_per_s'] * flops / 1e12:.3f} "
          f"TFLOP/s (PyTorch {ref['unet_slices_per_s'] * flops / 1e12:.3f})")


if __name__ == "__main__":
    main()
