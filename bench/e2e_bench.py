"""End to end: one repeat of the paper's `brats-patient` session (3 arms, budgets of 10..50
patients) on the selection benchmark's 335-patient phantom, with one epoch per training, timed
as a whole (wall time, peak RSS) and broken down by `suggestive report` (VAE, training and
evaluation per arm, selection, I/O). Training lines scale with the preset's epochs (30 per
UNet training, 50 for the VAE), so they are reported at 1 epoch, as measured.

On the CPU the phantom is 64×64×155 with small networks (UNet depth 3 / base 16, VAE 3 levels /
base 16), as in select_bench.py; on a GPU it is BraTS-size 240×240×155 with the paper's networks.
There is no PyTorch reference for a whole session: the rows carry no ratio.

usage: e2e_bench.py [--device cpu|cuda] [--bin FOLDER] [--epochs N] [--timeout S]

With --timeout the run is stopped (SIGTERM, as Ctrl-C: it stops between steps) when S seconds
have passed, and the rows say after how many of its steps. The breakdown is also written to
e2e-cpu.json / e2e-gpu.json next to the results file."""

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

import pool
import results
from results import cpu_device, gpu_device, record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bin", help="a prebuilt suggestive binary's folder (GPU machine without cargo)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of every training (the preset: 30 / 50)")
    ap.add_argument("--timeout", type=float, help="stop the run after this many seconds")
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    if a.bin:
        suggestive = [os.path.join(a.bin, "suggestive")]
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet"], check=True, cwd=pool.ROOT)
        suggestive = [os.path.join(pool.ROOT, "target", "release", "suggestive")]
    data, cache = pool.phantom(gpu, suggestive)
    tmp = tempfile.mkdtemp(prefix="suggestive-e2e-")
    env = {**os.environ, "SUGGESTIVE_SESSIONS_DIR": os.path.join(tmp, "sessions"), "SUGGESTIVE_CACHE_DIR": cache}
    e = str(a.epochs)
    sets = ["experiment.repeats=1", f'experiment.device="{a.device}"', f"unet.epochs_initial={e}",
            f"unet.epochs_per_round={e}", f"vae.epochs={e}"]
    if not gpu:  # the GPU's are the preset's own
        depth, base, levels, vbase = pool.nets(gpu)
        sets += [f"unet.depth={depth}", f"unet.base={base}", f"vae.levels={levels}", f"vae.base={vbase}"]
    subprocess.run([*suggestive, "new", "e2e", "--preset", "brats-patient", "--dataset", data,
                    *[x for s in sets for x in ("--set", s)]], check=True, env=env, stdout=subprocess.DEVNULL)
    t = time.perf_counter()
    events = os.path.join(tmp, "events.jsonl")
    with open(events, "w") as log:
        p = subprocess.Popen([*suggestive, "run", "e2e", "--jsonl"], env=env, stdout=log)
        # wait4 gives this process's own peak RSS (RUSAGE_CHILDREN would be the largest of every
        # child so far: the build, the phantom).
        signalled = None
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.perf_counter() - t
            if a.timeout is not None and elapsed > a.timeout and signalled is None:
                p.send_signal(signal.SIGTERM)  # as Ctrl-C: it stops between steps
                signalled = elapsed
            elif signalled is not None and elapsed > signalled + 40:
                p.kill()
            time.sleep(0.2)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    peak_rss = usage.ru_maxrss * 1024
    steps_total, steps_done = 0, 0
    for line in open(events):
        ev = json.loads(line)
        if ev.get("event") == "started":
            steps_total = ev.get("steps_total", 0)
        steps_done += ev.get("event") == "step_done"
    complete = steps_total > 0 and steps_done == steps_total
    if not complete and a.timeout is None:
        raise SystemExit(f"the run failed after {steps_done} of {steps_total} steps (exit {p.returncode})")
    report = os.path.join(tmp, "report")
    out = subprocess.run([*suggestive, "report", "e2e", "--out", report], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"stopped after {steps_done} of {steps_total} steps, {wall:.0f} s: no report "
                         f"({out.stderr.strip()})")
    text = out.stdout
    rep = json.load(open(os.path.join(report, "results.json")))
    timings = rep["timings"]

    device = gpu_device(a.device) if gpu else cpu_device()
    px = pool.shape(gpu).split(",")[0]
    what = (f"one repeat of brats-patient (3 arms, budgets 10..50 patients), 335-patient phantom "
            f"{px}x{px}x155, {a.epochs} epoch(s) per training")
    if not complete:
        what += f", stopped by --timeout after {steps_done} of {steps_total} steps"
    rows = [{"name": f"end to end: {what}, wall time", "ours": wall, "unit": "s"},
            {"name": f"end to end: {what}, peak host RSS", "ours": peak_rss / 1e9, "unit": "GB"}]
    for r in rows:
        r.update(device=device, reference=None, ratio=None)
    record(rows)
    with open(os.path.join(os.path.dirname(results.PATH), f"e2e-{'gpu' if gpu else 'cpu'}.json"), "w") as fh:
        json.dump({"device": device, "what": what, "steps": [steps_done, steps_total], "wall_s": wall,
                   "peak_rss_gb": peak_rss / 1e9,
                   "timings_s": timings, "final_dice": final_dice(rep)}, fh, indent=2)
        fh.write("\n")
    total = sum(timings.values())
    print(f"{what} on {device}: {wall:.0f} s wall, peak RSS {peak_rss / 1e9:.2f} GB")
    print(f"where the time went ({total:.0f} s of steps):")
    for k, v in sorted(timings.items(), key=lambda kv: -kv[1]):
        print(f"  {k:40} {v:8.1f} s {100 * v / total:5.1f} %")
    print("\n".join(line for line in text.splitlines() if line.startswith("wrote")))


def final_dice(rep):
    """Mean test Dice per arm at the largest budget, from the report's results.json."""
    best = {}
    for r in rep["rows"]:
        if r["annotated"] >= best.get(r["arm"], (-1, 0))[0]:
            best[r["arm"]] = (r["annotated"], r["dice_mean"])
    return {arm: {"annotated": n, "dice": d} for arm, (n, d) in best.items()}


if __name__ == "__main__":
    main()
