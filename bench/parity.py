"""Learning parity with PyTorch on the demo phantom: a preset's network trained by suggestive
(cargo bench --bench parity) and by its PyTorch twin (twin.py) from the same initial weights on
the same batches and noise, compared step by step and by the trained network's quality.

usage: parity.py [--preset demo] [--network vae|unet] [--epochs N] [--start as-built|tch-default]
                 [--binary PATH]
Prints the comparison as a Markdown table row and the raw JSON."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--network", default="vae", choices=["vae", "unet"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--start", default="as-built", choices=["as-built", "tch-default"])
    ap.add_argument("--binary", help="a built parity bench binary (default: cargo bench)")
    ap.add_argument("--phantom", default=os.path.join(ROOT, "target", "parity-bench", "phantom"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="suggestive-parity-")
    args = [work, a.network, a.preset, a.start, str(a.epochs), a.phantom]
    cmd = [a.binary] if a.binary else ["cargo", "bench", "--quiet", "--bench", "parity", "--"]
    t = time.perf_counter()
    subprocess.run([*cmd, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(HERE, "twin.py"), work], check=True,
                         capture_output=True, text=True).stdout
    twin_s = time.perf_counter() - t
    cmp = json.loads(out.strip().splitlines()[-1])
    q = "variance explained" if a.network == "vae" else "Dice"
    print(f"| preset | network | start | epochs | steps | max rel. diff, first 10 steps | max rel. diff, epoch means "
          f"| {q}, pool: ours / twin | {q}, held out: ours / twin | seconds: ours / twin |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.preset} | {a.network} | {a.start} | {a.epochs} | {cmp['steps']} | {cmp['max_rel_first_10_steps']:.1e} "
          f"| {cmp['max_rel_epoch_mean']:.1e} "
          f"| {cmp['quality_train']['ours']:.3f} / {cmp['quality_train']['twin']:.3f} "
          f"| {cmp['quality_held_out']['ours']:.3f} / {cmp['quality_held_out']['twin']:.3f} "
          f"| {ours_s:.0f} / {twin_s:.0f} |")
    ours = json.load(open(os.path.join(work, "ours.json")))
    twin = json.load(open(os.path.join(work, "twin.json")))
    print("epoch losses, ours:", " ".join(f"{v:.4f}" for v in ours["epoch_losses"]))
    print("epoch losses, twin:", " ".join(f"{v:.4f}" for v in twin["epoch_losses"]))
    print(json.dumps(cmp))


if __name__ == "__main__":
    main()
