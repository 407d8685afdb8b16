"""Memory over rounds (driven by bench/run): a 5-round demo session run headless; the process's
resident memory is read from /proc when each round's last evaluation is reported. No growth
from round 1 to round 5 is the goal (the reference column is round 1; ratio = round 1 / round 5)."""

import argparse
import json
import os
import subprocess
import tempfile

from results import cpu_device, record

HERE = os.path.dirname(os.path.abspath(__file__))


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="suggestive-mem-")
    env = {**os.environ, "SUGGESTIVE_SESSIONS_DIR": f"{work}/sessions"}
    subprocess.run([a.binary, "new", "mem", "--preset", "demo", "--set", "experiment.repeats=1", "--set", "experiment.rounds=5",
                    "--set", "experiment.device=\"cpu\"", "--set", "unet.epochs_per_round=4"], check=True, env=env, capture_output=True)
    p = subprocess.Popen([a.binary, "run", "mem", "--jsonl"], env=env, stdout=subprocess.PIPE, text=True)
    per_round = {}
    for line in p.stdout:
        e = json.loads(line)
        if e["event"] == "evaluated" and e["arm"] == "oracle":
            per_round[e["round"]] = rss(p.pid)
    assert p.wait() == 0, "the run failed"
    r1, r5 = per_round[1], per_round[5]
    device = cpu_device()
    result = {"name": "host RSS after round 5 (reference: after round 1), demo, 5 rounds x 3 arms", "device": device,
              "ours": r5 / 1e9, "reference": r1 / 1e9, "unit": "GB", "ratio": r1 / r5}
    record([result])
    print("RSS per round (MB): " + ", ".join(f"{k}: {v / 1e6:.0f}" for k, v in sorted(per_round.items())))
    print(f"round 5 / round 1 = {r5 / r1:.3f}")


if __name__ == "__main__":
    main()
