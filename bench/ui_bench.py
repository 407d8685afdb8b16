"""TUI benchmarks (driven by bench/run): frame render time (cargo bench --bench ui_render) and
key-to-screen latency under training load (ui_latency.py). The reference of each is its goal:
p99 frame time under 10 ms, key to screen under 50 ms; ratio > 1 means the goal is met."""

import argparse
import json
import os
import subprocess
import sys

from results import cpu_device, record

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    a = ap.parse_args()
    device = cpu_device()
    out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "ui_render"], check=True, capture_output=True, text=True).stdout
    frame = json.loads(out.strip().splitlines()[-1])
    lat = json.loads(subprocess.run([sys.executable, os.path.join(HERE, "ui_latency.py"), a.binary], check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    results = [
        {"name": f"dashboard frame render p99, {frame['points']} latent points, {frame['curves']}, {frame['size']} (reference: goal)",
         "device": device, "ours": frame["p99_ms"], "reference": 10.0, "unit": "ms", "ratio": 10.0 / frame["p99_ms"]},
        {"name": "dashboard frame render median (reference: goal)", "device": device, "ours": frame["median_ms"],
         "reference": 10.0, "unit": "ms", "ratio": 10.0 / frame["median_ms"]},
        {"name": f"key to screen p95 while training on the CPU, via tmux, {lat['samples']} keys (reference: goal)",
         "device": device, "ours": lat["p95_ms"], "reference": 50.0, "unit": "ms", "ratio": 50.0 / lat["p95_ms"]},
        {"name": "idle dashboard CPU, paused, over 10 s (reference: 1 % of a core)", "device": device,
         "ours": lat["idle_cpu_percent"], "reference": 1.0, "unit": "% core", "ratio": 1.0 / max(lat["idle_cpu_percent"], 0.01)},
    ]
    record(results)
    print(f"\n{'benchmark':100} {'ours':>8} {'goal':>6} {'unit':>5} {'ratio':>7}")
    for r in results:
        print(f"{r['name']:100} {r['ours']:8.2f} {r['reference']:6.0f} {r['unit']:>5} {r['ratio']:7.2f}")
    print(f"key to screen: median {lat['median_ms']:.1f} ms, max {lat['max_ms']:.1f} ms; training during the run: {lat['training_during']}")
    print(f"idle dashboard: {lat['idle_cpu_percent']:.2f} % of one core over 10 s")


if __name__ == "__main__":
    main()
