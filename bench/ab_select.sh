#!/usr/bin/env bash
# Side by side: the selection benchmark's binary at commit OLD against this tree's, alternating,
# N runs of each (default 3), on the selection benchmark's CPU phantom (generate it first with
# `./with-torch python3 bench/select_bench.py --quick`), each binary with its own cache folder
# (cache formats may differ). Prints one line per run: seconds per stage and the mean oracle Dice
# (equal for both when the change keeps the results).
#
#   bench/ab_select.sh OLD_COMMIT [N]
#
# The old tree is a git worktree under target/ab/ with its own target folder: sharing this
# tree's would make cargo take the old build's outputs for this tree's (same unit names, and
# this tree's sources older than them). Its first build compiles libtorch's wrapper (minutes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?usage: bench/ab_select.sh OLD_COMMIT [N]}
n=${2:-3}
work=$root/target/ab
data=$root/target/select-bench/phantom-64x64x155
[ -f "$data/name_mapping.csv" ] || { echo "no phantom at $data: run bench/select_bench.py --quick first" >&2; exit 1; }
mkdir -p "$work"
if [ -d "$work/tree" ]; then git -C "$work/tree" checkout -q --detach "$old"
else git -C "$root" worktree add -q --detach "$work/tree" "$old"; fi

newest() { find "$1/release/deps" -maxdepth 1 -type f -executable -name 'select_bench-*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2; }
(cd "$work/tree" && CARGO_TARGET_DIR=$work/target "$root/with-torch" cargo bench --no-run --quiet --bench select_bench)
(cd "$root" && ./with-torch cargo bench --no-run --quiet --bench select_bench)
cp "$(newest "$work/target")" "$work/select_bench-old"
cp "$(newest "$root/target")" "$work/select_bench-new"

for i in $(seq "$n"); do
  for v in old new; do
    mkdir -p "$work/out-$v"
    "$root/with-torch" "$work/select_bench-$v" "$data" "$work/cache-$v" "$work/out-$v" cpu 3 16 3 16 1500 260 2> /dev/null |
      tail -1 | python3 -c "
import json, sys
d = json.loads(sys.stdin.read())
dice = d.get('dice') or [float('nan')]
print('$v run $i: encode %.2f s, gradients %.2f s, cone %.2f s, oracle %s s, mean oracle Dice %.6f' % (
    d['encode_s'], d['gradients_s'], d['cone_s'], '%.2f' % d['oracle_s'] if 'oracle_s' in d else '-', sum(dice) / len(dice)))"
  done
done
