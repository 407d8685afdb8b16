#!/usr/bin/env bash
# The GPU check, one prepared script (build it with bench/gpu/prepare.sh): everything it
# measures goes to $OUT (results.json in bench/results.json's format, plus logs). In order of
# value, each step skipped when the time left (DEADLINE seconds from the start) is too short
# (the BraTS-size phantom and its cache are built in the background from the start, on half the
# cores at low priority, so that steps 3 and 5 find them ready):
#  1. suggestive info: CUDA and cuDNN as the binary sees them;
#  2. training throughput at the paper's size (256×256, UNet depth 4 / base 64, VAE 4 levels /
#     base 32, batch 16), fp32 and fp16 mixed precision, against PyTorch eager on the same GPU
#     (same losses first), with TFLOP/s against the card's peak and peak GPU memory;
#  3. selection at BraTS scale: a 335-patient phantom at 240×240×155, pool of 39,000 slices of
#     256×256 (encode, 1,500 gradients, cone search, the oracle's scoring) against PyTorch;
#  4. the demo session on the GPU in fp32 and in fp16, end to end: wall time and final Dice
#     (after selection: a GPU run has measured it once, selection never);
#  5. one repeat of brats-patient on the BraTS-size phantom with 1 epoch per training (e2e_bench.py), for the
#     time breakdown per step (scale the training lines by the preset's epochs).
# STEPS="2 4" runs only those steps (default: all). DEV=cpu dry-runs it on a CPU machine (small
# sizes). At the end everything but results.json and steps.log is packed into $OUT/all.tgz (the
# device tool brings back only a handful of files).
set -uo pipefail
start=$(date +%s)
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - ($(date +%s) - start))); }
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
WORK=${WORK:-/tmp/suggestive-gpu}
mkdir -p "$WORK"
export SUGGESTIVE_CACHE_DIR=$WORK/cache SUGGESTIVE_DATA_DIR=$WORK/share SUGGESTIVE_SESSIONS_DIR=$WORK/sessions
export BENCH_RESULTS=$OUT/results.json SELECT_BENCH_DIR=$WORK/select
DEV=${DEV:-cuda}
S=$here/suggestive
STEPS=${STEPS:-1 2 3 4 5}
log() { echo "== $* ($(left) s left)" | tee -a "$OUT/steps.log"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
pack() { (cd "$OUT" && tar czf all.tgz --exclude all.tgz --exclude results.json --exclude steps.log . 2> /dev/null &&
  find . -mindepth 1 -maxdepth 1 ! -name all.tgz ! -name results.json ! -name steps.log -exec rm -rf {} +); }

# The BraTS-size phantom and its preprocessed cache (the selection bench's, reused by step 5),
# built while steps 1 and 2 use the GPU: pinned to the upper half of the cores, lowest priority.
shape=240,240,155; [ "$DEV" = cpu ] && shape=64,64,155
data=$SELECT_BENCH_DIR/phantom-${shape//,/x}; cache=$SELECT_BENCH_DIR/cache
half=$(( $(nproc) / 2 )); pin=""; command -v taskset > /dev/null && [ "$half" -ge 1 ] && pin="taskset -c $half-$(( $(nproc) - 1 ))"
prep_pid=
if want 3 || want 5; then
  ( [ -f "$data/name_mapping.csv" ] || $pin nice -n 19 "$S" phantom --out "$data" --patients 335 --shape $shape --seed 1
    $pin nice -n 19 "$S" dataset "$data" --cache-dir "$cache" | tail -1 ) > "$OUT/prep.log" 2>&1 &
  prep_pid=$!
fi
trap 'pkill -P "$prep_pid" 2> /dev/null; kill "$prep_pid" 2> /dev/null; pack' EXIT
# Waits for the preparation while more than $1 seconds are left; true when it has finished.
prep_done() { while kill -0 "$prep_pid" 2> /dev/null && [ "$(left)" -gt "$1" ]; do sleep 2; done
  ! kill -0 "$prep_pid" 2> /dev/null && cat "$OUT/prep.log"; }

log "1. info"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
"$S" info --json > "$OUT/info.json" 2>&1; cat "$OUT/gpu.csv" "$OUT/info.json"

log "2. training throughput"
if want 2 && [ "$(left)" -gt 120 ]; then
  timeout $(($(left) - 60)) python3 "$here/train_bench.py" --device "$DEV" --bin "$here/train_bench" \
    > "$OUT/train.txt" 2>&1; tail -12 "$OUT/train.txt"
fi

log "3. selection at BraTS scale (waits for the phantom and its cache)"
if want 3 && prep_done 200 && [ "$(left)" -gt 200 ]; then
  # (A CPU dry run takes one run of each program, as on a GPU, not the CPU's median of 3.)
  quick=""; [ "$DEV" = cpu ] && quick=--quick
  timeout $(($(left) - 60)) python3 "$here/select_bench.py" --device "$DEV" --bin "$here" $quick > "$OUT/select.txt" 2>&1
  tail -8 "$OUT/select.txt"
fi

for prec in fp32 fp16; do
  log "4. demo session on $DEV, $prec"
  want 4 && [ "$(left)" -gt 150 ] || continue
  [ "$DEV" = cpu ] && [ $prec = fp16 ] && continue
  "$S" new "demo-$prec" --preset demo --set "experiment.device=\"$DEV\"" --set experiment.repeats=1 \
    --set "unet.precision=\"$prec\"" > /dev/null
  /usr/bin/time -v timeout $(($(left) - 100)) "$S" run "demo-$prec" --jsonl > "$OUT/demo-$prec.jsonl" 2> "$OUT/demo-$prec.err"
  grep -E "Elapsed|Maximum resident" "$OUT/demo-$prec.err"
  "$S" report "demo-$prec" --out "$OUT/demo-$prec" > "$OUT/demo-$prec.md" 2>&1; head -40 "$OUT/demo-$prec.md"
done

log "5. brats-patient, one repeat, 1 epoch per training, BraTS-size phantom"
if want 5 && prep_done 90 && [ -f "$data/name_mapping.csv" ] && [ "$(left)" -gt 90 ]; then
  python3 "$here/e2e_bench.py" --device "$DEV" --bin "$here" --timeout $(($(left) - 60)) > "$OUT/e2e.txt" 2>&1
  tail -25 "$OUT/e2e.txt"
fi
log "done"
