"""bench/results.json, shared by the benchmark scripts: a list of
{name, device, ours, reference, unit, ratio}; a new run replaces the entries of the same name
on the same device and keeps the others. Entries without a reference (end to end) have
reference and ratio null."""

import argparse
import datetime
import json
import os
import platform
import subprocess

# BENCH_RESULTS redirects the file (the GPU script writes into its output folder).
PATH = os.environ.get("BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")


def cpu_device():
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def gpu_device(device):
    """e.g. "cuda (NVIDIA H100 80GB HBM3)"."""
    import torch
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


HISTORY = 10


def record(results):
    """Writes `results` into the file, replacing the entries of the same name and device. Each
    entry keeps a `history` of its last HISTORY runs ({ours, reference, ratio, date, commit},
    this one last), so that a range over runs quoted in docs/performance.md comes from the file
    (`python3 bench/results.py` prints them)."""
    old = []
    if os.path.exists(PATH):
        with open(PATH) as fh:
            old = json.load(fh)
    prev = {(r["name"], r["device"]): r for r in old}
    today = datetime.date.today().isoformat()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    for r in results:
        run = {"ours": r["ours"], "reference": r["reference"], "ratio": r["ratio"], "date": today, "commit": commit}
        r["history"] = (prev.get((r["name"], r["device"]), {}).get("history", []) + [run])[-HISTORY:]
    new = {(r["name"], r["device"]) for r in results}
    kept = [r for r in old if (r["name"], r["device"]) not in new]
    with open(PATH, "w") as fh:
        json.dump(kept + results, fh, indent=2)
        fh.write("\n")
    return PATH


def ranges(last=None):
    """Per entry: the ratio's range over its recorded runs (the last `last` of them)."""
    with open(PATH) as fh:
        entries = json.load(fh)
    for r in entries:
        ratios = [h["ratio"] for h in r.get("history", [])][-(last or HISTORY):] or [r["ratio"]]
        if None in ratios:  # no reference (end to end): the values' range
            ours = [h["ours"] for h in r.get("history", [])][-(last or HISTORY):] or [r["ours"]]
            print(f"{r['device'][:24]:24}  {r['name'][:96]:96}  {min(ours):.2f}–{max(ours):.2f} {r['unit']} "
                  f"over {len(ours)} run(s)")
            continue
        span = f"{min(ratios):.2f}" if len(ratios) == 1 else f"{min(ratios):.2f}–{max(ratios):.2f}"
        print(f"{r['device'][:24]:24}  {r['name'][:96]:96}  ratio {span:>9} over {len(ratios)} run(s)")


# The table's order (docs/performance.md): groups by the start of an entry's name (the file keeps the order in
# which benchmarks last ran); the file's order within a group.
GROUPS = [("cold load", "cached reload", "nibabel"), ("dashboard", "key to screen", "idle dashboard"),
          ("host RSS after",), ("UNet training", "VAE training", "gradient to input", "peak host RSS of the training"),
          ("selection:", "training input"), ("end to end",)]


def group(name):
    return next((i for i, g in enumerate(GROUPS) if name.startswith(g)), len(GROUPS))


def markdown(device):
    """The table in docs/performance.md: the last run of each entry whose device starts with `device`."""
    with open(PATH) as fh:
        entries = json.load(fh)
    print("| benchmark | suggestive | reference | unit | ratio |\n|---|---|---|---|---|")
    for r in sorted(entries, key=lambda r: group(r["name"])):
        if r["device"].startswith(device):
            ref = "—" if r["reference"] is None else f"{r['reference']:.3f}"
            ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
            print(f"| {r['name']} | {r['ours']:.3f} | {ref} | {r['unit']} | {ratio} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="each entry's ratio range over its recorded runs")
    ap.add_argument("--last", type=int, help="only the last N runs of each entry")
    ap.add_argument("--markdown", metavar="DEVICE", help="print the last run of DEVICE's entries (e.g. cpu) as "
                    "the table in docs/performance.md instead")
    a = ap.parse_args()
    if a.markdown:
        markdown(a.markdown)
    else:
        ranges(a.last)
