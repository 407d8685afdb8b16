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

# Dense peak TFLOP/s by card (NVIDIA data sheets): (TF32 tensor cores — what cuDNN uses for
# float32 convolutions by default —, FP16 tensor cores).
PEAKS = {"H100 SXM": (494.7, 989.4), "H100 80GB HBM3": (494.7, 989.4), "H200": (494.7, 989.4),
         "H100 PCIe": (378.0, 756.0), "H100 NVL": (417.5, 835.0), "A100": (156.0, 312.0)}


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
    size, batch, depth, base, levels, vbase = (256, 16, 4, 64, 4, 32) if gpu else (64, 8, 3, 16, 3, 16)
    if a.shape:
        size, batch, depth, base, levels, vbase = map(int, a.shape.split(","))
    steps, windows = (10, 5) if not a.quick else (5, 3)
    work = tempfile.mkdtemp(prefix="suggestive-train-")
    args = [work, size, batch, depth, base, levels, vbase, a.device, steps, windows]
    binary = [a.bin] if a.bin else ["cargo", "bench", "--quiet", "--bench", "train_bench", "--"]
    ours, ours_gpu = run_watching_gpu([*binary, *map(str, args)])
    ours = json.loads(ours.strip().splitlines()[-1])
    ref, ref_gpu = run_watching_gpu([sys.executable, os.path.join(HERE, "reference.py"), work, str(size), str(batch),
                                     str(depth), str(levels), a.device, str(steps), str(windows)])
    ref = json.loads(ref.strip().splitlines()[-1])
    for k in ("unet_loss", "vae_loss", "grad_norm"):
        rel = abs(ours[k] - ref[k]) / max(abs(ref[k]), 1e-12)
        assert rel < 1e-4, f"{k} differs: suggestive {ours[k]} vs PyTorch {ref[k]}"
    device = gpu_device(a.device) if gpu else cpu_device()
    shape = f"{size}x{size}, batch {batch}"
    results = [
        {"name": f"UNet training (depth {depth}, base {base}, batch norm), {shape}, fwd+bwd+Adam", "device": device,
         "ours": ours["unet_slices_per_s"], "reference": ref["unet_slices_per_s"], "unit": "slices/s"},
        {"name": f"VAE training (levels {levels}, base {vbase}, latent 5), {shape}, fwd+bwd+Adam", "device": device,
         "ours": ours["vae_slices_per_s"], "reference": ref["vae_slices_per_s"], "unit": "slices/s"},
        {"name": f"gradient to input + encode x and x', {shape}", "device": device,
         "ours": ours["select_slices_per_s"], "reference": ref["select_slices_per_s"], "unit": "slices/s"},
    ]
    if "unet_fp16_slices_per_s" in ours and "unet_fp16_slices_per_s" in ref:
        rel = abs(ours["unet_fp16_loss"] - ref["unet_fp16_loss"]) / abs(ref["unet_fp16_loss"])
        assert rel < 1e-2, f"fp16 losses differ: {ours['unet_fp16_loss']} vs {ref['unet_fp16_loss']}"
        results.append({"name": f"UNet training, mixed precision (fp16 autocast + loss scaling), {shape}", "device": device,
                        "ours": ours["unet_fp16_slices_per_s"], "reference": ref["unet_fp16_slices_per_s"],
                        "unit": "slices/s"})
    for r in results:
        r["ratio"] = r["ours"] / r["reference"]
    # Utilisation: achieved TFLOP/s (3 × the forward convolutions per slice) against the card's peak.
    flops = 3 * ours["unet_forward_flops"]
    if gpu:
        import torch
        name = torch.cuda.get_device_name(0)
        peaks = peak_tflops(name)
        if peaks:
            for key, label, peak in (("unet_slices_per_s", "fp32 (TF32)", peaks[0]),
                                     ("unet_fp16_slices_per_s", "fp16", peaks[1])):
                if key in ours:
                    results.append({"name": f"UNet training {label}: achieved TFLOP/s (reference: {name} dense peak)",
                                    "device": device, "ours": ours[key] * flops / 1e12, "reference": peak,
                                    "unit": "TFLOP/s", "ratio": ours[key] * flops / 1e12 / peak})
        if ours_gpu and ref_gpu:
            results.append({"name": f"peak GPU memory of the training benchmark, {shape} (nvidia-smi)", "device": device,
                            "ours": ours_gpu / 1024, "reference": ref_gpu / 1024, "unit": "GiB",
                            "ratio": ref_gpu / ours_gpu})
    results.append({"name": f"peak host RSS of the training benchmark, {shape}", "device": device,
                    "ours": ours["peak_rss_bytes"] / 1e9, "reference": ref["peak_rss_bytes"] / 1e9, "unit": "GB",
                    "ratio": ref["peak_rss_bytes"] / ours["peak_rss_bytes"]})
    record(results)
    print(f"\n{'benchmark':80} {'ours':>9} {'PyTorch':>9} {'unit':>9} {'ratio':>6}")
    for r in results:
        print(f"{r['name']:80} {r['ours']:9.1f} {r['reference']:9.1f} {r['unit']:>9} {r['ratio']:6.2f}")
    print(f"UNet: {flops / 1e9:.2f} GFLOP per training slice; CPU achieved {ours['unet_slices_per_s'] * flops / 1e12:.3f} "
          f"TFLOP/s (PyTorch {ref['unet_slices_per_s'] * flops / 1e12:.3f})")
    print(f"same losses: UNet {ours['unet_loss']:.6f} vs {ref['unet_loss']:.6f}, VAE {ours['vae_loss']:.6f} vs "
          f"{ref['vae_loss']:.6f}, |grad| {ours['grad_norm']:.4e} vs {ref['grad_norm']:.4e}; threads {ours['threads']} vs {ref['threads']}")


if __name__ == "__main__":
    main()
