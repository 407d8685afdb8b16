"""Training and selection throughput, suggestive (tch) against PyTorch eager (bench/reference.py),
same architecture, batch, precision and initial weights, same device, in the same run; the
losses on the same numbers must agree before anything is timed. Driven by bench/run."""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from results import cpu_device, record

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    # CPU sizes that fit 2 cores; the paper's sizes (256×256, 64-channel UNet) on a GPU.
    size, batch, depth, base, levels, vbase = (256, 16, 4, 64, 4, 32) if gpu else (64, 8, 3, 16, 3, 16)
    steps, windows = (10, 5) if not a.quick else (5, 3)
    work = tempfile.mkdtemp(prefix="suggestive-train-")
    args = [work, size, batch, depth, base, levels, vbase, a.device, steps, windows]
    ours = subprocess.run(["cargo", "bench", "--quiet", "--bench", "train_bench", "--", *map(str, args)],
                          check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    ours = json.loads(ours)
    ref = subprocess.run([sys.executable, os.path.join(HERE, "reference.py"), work, str(size), str(batch), str(depth),
                          str(levels), a.device, str(steps), str(windows)], check=True, capture_output=True, text=True)
    ref = json.loads(ref.stdout.strip().splitlines()[-1])
    for k in ("unet_loss", "vae_loss", "grad_norm"):
        rel = abs(ours[k] - ref[k]) / max(abs(ref[k]), 1e-12)
        assert rel < 1e-4, f"{k} differs: suggestive {ours[k]} vs PyTorch {ref[k]}"
    device = a.device if gpu else cpu_device()
    shape = f"{size}x{size}, batch {batch}"
    results = [
        {"name": f"UNet training (depth {depth}, base {base}, batch norm), {shape}, fwd+bwd+Adam", "device": device,
         "ours": ours["unet_slices_per_s"], "reference": ref["unet_slices_per_s"], "unit": "slices/s"},
        {"name": f"VAE training (levels {levels}, base {vbase}, latent 5), {shape}, fwd+bwd+Adam", "device": device,
         "ours": ours["vae_slices_per_s"], "reference": ref["vae_slices_per_s"], "unit": "slices/s"},
        {"name": f"gradient to input + encode x and x', {shape}", "device": device,
         "ours": ours["select_slices_per_s"], "reference": ref["select_slices_per_s"], "unit": "slices/s"},
    ]
    for r in results:
        r["ratio"] = r["ours"] / r["reference"]
    record(results)
    print(f"\n{'benchmark':80} {'ours':>9} {'PyTorch':>9} {'unit':>9} {'ratio':>6}")
    for r in results:
        print(f"{r['name']:80} {r['ours']:9.1f} {r['reference']:9.1f} {r['unit']:>9} {r['ratio']:6.2f}")
    print(f"same losses: UNet {ours['unet_loss']:.6f} vs {ref['unet_loss']:.6f}, VAE {ours['vae_loss']:.6f} vs "
          f"{ref['vae_loss']:.6f}, |grad| {ours['grad_norm']:.4e} vs {ref['grad_norm']:.4e}; threads {ours['threads']} vs {ref['threads']}")


if __name__ == "__main__":
    main()
