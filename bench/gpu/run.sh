#!/usr/bin/env bash
# The GPU check, one prepared script (see prepare.sh): writes everything under $OUT.
#  1. suggestive info: CUDA seen by the binary;
#  2. training and selection throughput at the paper's size (256×256, UNet depth 4 / base 64,
#     VAE 4 levels / base 32, batch 16) against PyTorch eager on the same GPU, same losses first;
#  3. the demo session on the GPU, end to end, with its event log (timings per step).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
G=$here
[ -x "$G/suggestive" ] || G=$here/../../.gpu
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export SUGGESTIVE_CACHE_DIR=$OUT/cache SUGGESTIVE_DATA_DIR=$OUT/share SUGGESTIVE_SESSIONS_DIR=$OUT/sessions
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
"$G/suggestive" info --json > "$OUT/info.json" 2>&1; cat "$OUT/info.json"
# DEV=cpu SIZES="64 8 3 16 3 16" dry-runs the script on a CPU machine.
DEV=${DEV:-cuda}
read -r S B UD UB VL VB <<< "${SIZES:-256 16 4 64 4 32}"
w=$(mktemp -d)
timeout 240 "$G/train_bench" "$w" "$S" "$B" "$UD" "$UB" "$VL" "$VB" "$DEV" 10 5 > "$OUT/train_ours.json" 2> "$OUT/train_ours.err"
timeout 240 python3 "$G/reference.py" "$w" "$S" "$B" "$UD" "$VL" "$DEV" 10 5 > "$OUT/train_ref.json" 2> "$OUT/train_ref.err"
cat "$OUT/train_ours.json" "$OUT/train_ref.json"
"$G/suggestive" new gpu --preset demo --set "experiment.device=\"$DEV\"" --set experiment.repeats=1 > /dev/null
/usr/bin/time -v timeout 300 "$G/suggestive" run gpu --jsonl > "$OUT/run.jsonl" 2> "$OUT/run.err"
tail -3 "$OUT/run.jsonl"; grep -E "Elapsed|Maximum resident" "$OUT/run.err"
"$G/suggestive" report gpu --out "$OUT/report" > "$OUT/report.md" 2>&1; cat "$OUT/report.md"
