"""Key-to-screen latency of the TUI while it trains (driven by bench/run): the real binary in
tmux at 160x48 runs the demo preset ('r'), so libtorch keeps both cores busy; meanwhile '?'
opens and any key closes the help overlay, and the time from send-keys until the screen shows
the change is measured by polling tmux (its own overhead, a few ms, is included)."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def tmux(*args):
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def main():
    binary = sys.argv[1]
    work = tempfile.mkdtemp(prefix="suggestive-ui-")
    env = {**os.environ, "SUGGESTIVE_SESSIONS_DIR": f"{work}/sessions", "SUGGESTIVE_DATA_DIR": f"{work}/share",
           "SUGGESTIVE_CACHE_DIR": os.environ.get("SUGGESTIVE_CACHE_DIR", f"{work}/cache")}
    subprocess.run([binary, "new", "ui", "--preset", "demo", "--set", "experiment.repeats=1",
                    "--set", "experiment.device=\"cpu\""], check=True, env=env, capture_output=True)
    name = f"suggestive-ui-{os.getpid()}"
    cmd = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("SUGGESTIVE_")) + f" {binary} tui ui --images halfblocks"
    tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "48", f"env {cmd}")
    try:
        def wait(pred, what, limit=300):
            t0 = time.perf_counter()
            while True:
                s = tmux("capture-pane", "-t", name, "-p")
                if pred(s):
                    return time.perf_counter() - t0
                if time.perf_counter() - t0 > limit:
                    raise SystemExit(f"timed out waiting for {what}:\n{s}")
        wait(lambda s: "paused" in s, "the dashboard (the demo phantom is generated on first use)")
        # Idle cost: CPU time the paused dashboard uses over 10 s (it should sleep).
        pid = int(tmux("list-panes", "-t", name, "-F", "#{pane_pid}").split()[0])
        def cpu_seconds():
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        time.sleep(2)
        c0, t0 = cpu_seconds(), time.perf_counter()
        time.sleep(10)
        idle_cpu = (cpu_seconds() - c0) / (time.perf_counter() - t0)
        tmux("send-keys", "-t", name, "r")
        wait(lambda s: "epoch" in s and "running" in s, "training to start")
        help_line = "run the next round, then pause"
        lat = []
        for i in range(40):
            tmux("send-keys", "-t", name, "?")
            lat.append(wait(lambda s: help_line in s, "the help") * 1e3)
            tmux("send-keys", "-t", name, "x")
            lat.append(wait(lambda s: help_line not in s, "the help to close") * 1e3)
            time.sleep(0.05)
        busy = "running" in tmux("capture-pane", "-t", name, "-p")
        tmux("send-keys", "-t", name, "q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    lat.sort()
    print(json.dumps({"samples": len(lat), "median_ms": statistics.median(lat),
                      "p95_ms": lat[int(len(lat) * 0.95) - 1], "max_ms": lat[-1], "training_during": busy,
                      "idle_cpu_percent": 100 * idle_cpu}))


if __name__ == "__main__":
    main()
