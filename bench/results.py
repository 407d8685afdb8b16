"""bench/results.json, shared by the benchmark scripts: a list of
{name, device, ours, reference, unit, ratio}; a new run replaces the entries of the same name
on the same device and keeps the others."""

import json
import os
import platform

# BENCH_RESULTS redirects the file (the GPU script writes into its output folder).
PATH = os.environ.get("BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")


def cpu_device():
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def gpu_device(device):
    """e.g. "cuda (NVIDIA H100 80GB HBM3)"."""
    import torch
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def record(results):
    old = []
    if os.path.exists(PATH):
        with open(PATH) as fh:
            old = json.load(fh)
    new = {(r["name"], r["device"]) for r in results}
    kept = [r for r in old if (r["name"], r["device"]) not in new]
    with open(PATH, "w") as fh:
        json.dump(kept + results, fh, indent=2)
        fh.write("\n")
    return PATH
