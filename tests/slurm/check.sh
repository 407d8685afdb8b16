#!/usr/bin/env bash
# The whole `suggestive slurm` path on a real Slurm: brings up a one-node cluster on this machine
# (Debian's slurm-wlm and munge, the daemons started directly, without systemd), submits a tiny
# phantom session of 3 repeats as an array job, interrupts two tasks in the middle of their
# training the two ways a cluster does (the time-limit warning, USR1 to the batch shell, after
# which the task requeues itself; and `scontrol requeue`, whose SIGTERM the run answers with a
# checkpoint), attaches the dashboard to the running tasks (in tmux), waits for the requeued
# tasks and the report job, and compares every repeat's state.json with the same session run
# locally.
#
#   tests/slurm/check.sh          (as root: it installs packages and starts daemons)
#
# Not part of `cargo test`: it needs root, apt and about ten minutes. KEEP=1 leaves the cluster
# running; the work folder is $SLURM_CHECK_DIR (default /tmp/suggestive-slurm-check);
# SUGGESTIVE_BIN=PATH uses a binary already built instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
work="${SLURM_CHECK_DIR:-/tmp/suggestive-slurm-check}"
say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "check.sh: run as root (it installs slurm-wlm and munge and starts their daemons)" >&2
  exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
say "versions"
slurmctld -V
munged --version 2>&1 | head -1

# A fresh cluster in $work.
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
rm -rf "$work"
mkdir -p "$work"/{etc,state,spool,log,sessions,local}
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$work/etc/slurm.conf" <<EOF
ClusterName=check
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
export SLURM_CONF="$work/etc/slurm.conf"

say "munge"
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- munged
munge -n | unmunge | grep STATUS

say "slurmctld and slurmd"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  sinfo -h -o '%T' 2>/dev/null | grep -q idle && break
  sleep 1
done
sinfo

say "the binary and a tiny session of 3 repeats"
# SUGGESTIVE_BIN: a binary already built (it must see libtorch, as the build's rpath gives it).
if [ -n "${SUGGESTIVE_BIN:-}" ]; then
  bin=$(realpath "$SUGGESTIVE_BIN")
else
  ./with-torch cargo build --release --quiet
  bin="$repo/target/release/suggestive"
fi
export SUGGESTIVE_CACHE_DIR="$work/cache"
"$bin" phantom --out "$work/data" --sites CBICA=5,TCIA=5 --shape 64,64,24 >/dev/null
sets=(
  --set 'experiment.device="cpu"' --set experiment.repeats=3 --set experiment.initial=2
  --set experiment.rounds=1 --set experiment.per_round=1 --set dataset.downsample=2
  --set unet.depth=2 --set unet.base=4 --set unet.epochs_initial=4 --set unet.epochs_per_round=2
  --set unet.batch_size=2 --set vae.levels=2 --set vae.base=4 --set vae.epochs=40
  --set vae.batch_size=4 --set 'experiment.arms=["random", "proposed", "full"]'
)
SUGGESTIVE_SESSIONS_DIR="$work/sessions" "$bin" new grid --preset demo --dataset "$work/data" "${sets[@]}" >/dev/null
SUGGESTIVE_SESSIONS_DIR="$work/local" "$bin" new grid --preset demo --dataset "$work/data" "${sets[@]}" >/dev/null
session="$work/sessions/grid"

say "suggestive slurm"
"$bin" slurm "$session" --max-parallel 3 --cpus-per-task 1
job=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[-1]["array_job"])' "$session/slurm/jobs.json")
report=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[-1]["report_job"])' "$session/slurm/jobs.json")
echo "array job $job, report job $report"

# Waits until repeat $1's log shows its VAE's epoch $2.
wait_epoch() {
  for _ in $(seq 600); do
    grep -q "epoch $2/40" "$session/slurm/logs/repeat-$1.out" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "repeat $1 never reached epoch $2" >&2
  return 1
}

# Waits until repeat $1's run says it stopped; prints how long that took since $2 (epoch s).
wait_stop() {
  for _ in $(seq 600); do
    if grep -q "stopped at a safe point" "$session/slurm/logs/repeat-$1.out" 2>/dev/null; then
      echo "repeat $1 stopped $(( $(date +%s) - $2 )) s after the signal"
      return 0
    fi
    sleep 0.2
  done
  echo "repeat $1 never stopped" >&2
  return 1
}

say "task 1: the time-limit warning (USR1 to the batch shell) in the middle of its VAE"
wait_epoch 1 3
sent=$(date +%s)
scancel --signal=USR1 --batch "${job}_1"
wait_stop 1 "$sent"
say "task 2: scontrol requeue in the middle of its VAE"
wait_epoch 2 3
sent=$(date +%s)
scontrol requeue "${job}_2"
wait_stop 2 "$sent"
squeue
"$bin" status "$session" | grep '^repeat [0-9]'

say "the dashboard, attached while the tasks run (as from a login node: it runs nothing)"
tmux -L suggestive-check kill-server 2>/dev/null || true
tmux -L suggestive-check -f /dev/null new-session -d -s watch -x 160 -y 48 \
  "SLURM_CONF=$SLURM_CONF SUGGESTIVE_CACHE_DIR=$SUGGESTIVE_CACHE_DIR $bin tui $session --images halfblocks; sleep 60"
for _ in $(seq 120); do
  tmux -L suggestive-check capture-pane -t watch -p > "$work/attached.txt"
  grep -q "slurm ${job}_[0-9] RUNNING on " "$work/attached.txt" && break
  sleep 0.5
done
# The header and the repeats panel (the left third of the screen).
python3 -c 'import sys; [print(l.rstrip()[:56]) for l in open(sys.argv[1]).read().splitlines()[:12]]' "$work/attached.txt"
grep -q "· attached ·" "$work/attached.txt"
grep -q "slurm ${job}_[0-9] RUNNING on $host" "$work/attached.txt"
tmux -L suggestive-check send-keys -t watch q
sleep 1
tmux -L suggestive-check kill-server 2>/dev/null || true

say "waiting for the tasks and the report"
for _ in $(seq 1200); do
  [ -z "$(squeue -h -j "$job,$report" 2>/dev/null)" ] && break
  sleep 1
done
for r in 1 2 3; do
  echo "-- repeat $r's log (stops and resumes):"
  grep -E "stopped|requeue|started|finished" "$session/slurm/logs/repeat-$r.out" || true
done
"$bin" status "$session" | grep '^repeat [0-9]'
test -s "$session/report/results.json" && echo "the report job wrote $session/report/results.json"

say "the same session run locally"
SUGGESTIVE_SESSIONS_DIR="$work/local" "$bin" run grid >/dev/null 2>&1

say "comparison, repeat by repeat"
python3 - "$session" "$work/local/grid" <<'EOF'
import json, sys, math
def close(a, b, at):
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{at}: {a} vs {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{at}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            close(a[k], b[k], f"{at}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{at}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{at}[{i}]")
    else:
        assert a == b, f"{at}: {a!r} vs {b!r}"
cluster, local = sys.argv[1], sys.argv[2]
for r in (1, 2, 3):
    a = json.load(open(f"{cluster}/repeats/{r:02}/state.json"))
    b = json.load(open(f"{local}/repeats/{r:02}/state.json"))
    for key in ("done", "partial_epochs", "data", "picks", "results"):
        close(a.get(key), b.get(key), f"repeat {r}: {key}")
    print(f"repeat {r}: {a['done']} steps, {len(a['results'])} evaluations, {len(a['picks'])} pick rounds: identical to the local run")
EOF

if [ -z "${KEEP:-}" ]; then
  scontrol shutdown >/dev/null 2>&1 || true
  pkill -x slurmd 2>/dev/null || true
fi
say "done"
