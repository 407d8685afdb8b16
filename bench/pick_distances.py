"""Where each arm's picks lie in the VAE's latent space, round by round, over a patient-wise
session's repeats (docs/results.md):

    python3 bench/pick_distances.py target/study/study-nearest

For each arm and round, averaged over the repeats: the picks' mean distance to the nearest
patient labelled before the round, the mean distance between the round's picks, and the
round's mean test Dice gain. A patient's latent is the mean of its slices' encoder means (as
the coreset and proposed arms see it). Python's standard library only: the latents are read
from each repeat's latents.safetensors (a JSON header, then float32 rows)."""

import argparse
import glob
import json
import math
import os
import statistics
import struct


def read_latents(path):
    with open(path, "rb") as fh:
        data = fh.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    z = header["z"]
    rows, dim = z["shape"]
    start, end = z["data_offsets"]
    values = struct.unpack(f"<{(end - start) // 4}f", data[8 + n + start:8 + n + end])
    return [values[i * dim:(i + 1) * dim] for i in range(rows)], dim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("session")
    a = ap.parse_args()
    rows = {}
    for repeat in sorted(glob.glob(os.path.join(a.session, "repeats", "*"))):
        with open(os.path.join(repeat, "state.json")) as fh:
            state = json.load(fh)
        if not state.get("picks"):
            continue
        z, dim = read_latents(os.path.join(repeat, "latents.safetensors"))
        patients = len(state["data"]["train"])
        per = len(z) // patients
        # Pool order: each pool patient's slices in turn, as many for each.
        latent = [[statistics.mean(z[p * per + i][k] for i in range(per)) for k in range(dim)]
                  for p in range(patients)]
        dice = {(r["arm"], r["round"]): r["dice_mean"] for r in state["results"] if r["stage"] == 0}
        # The initial set: the prefix of the seeded order the shared initial model trained on.
        initial = next(r["annotated"] for r in state["results"] if r["round"] == 0)
        for arm in sorted({r["arm"] for r in state["picks"]}):
            labelled = list(state["data"]["order"][:initial])
            for rec in sorted((r for r in state["picks"] if r["arm"] == arm and r["stage"] == 0),
                              key=lambda r: r["round"]):
                picks = [p["sample"] for p in rec["picks"]]
                to_labelled = statistics.mean(min(math.dist(latent[p], latent[q]) for q in labelled) for p in picks)
                pairs = [math.dist(latent[p], latent[q]) for i, p in enumerate(picks) for q in picks[i + 1:]]
                between = statistics.mean(pairs) if pairs else float("nan")
                gain = dice[(arm, rec["round"])] - dice[(arm, rec["round"] - 1)]
                rows.setdefault((arm, rec["round"]), []).append((to_labelled, between, gain))
                labelled += picks
    order = ["random", "proposed", "oracle", "entropy", "coreset"]
    print("| arm | round | repeats | to labelled | between picks | Dice gain |")
    print("|---|---|---|---|---|---|")
    for (arm, rnd), v in sorted(rows.items(), key=lambda x: (x[0][1], order.index(x[0][0]) if x[0][0] in order else 99)):
        m = [statistics.mean(x[i] for x in v) for i in range(3)]
        print(f"| {arm} | {rnd} | {len(v)} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:+.3f} |")


if __name__ == "__main__":
    main()
