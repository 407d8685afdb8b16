#!/usr/bin/env bash
# The strategy study of docs/results.md: the demo setting on the demo phantom with every arm,
# and the proposed arm under each of the three cone fallback policies.
#
#   bench/study.sh [REPEATS]      (default 10; the folder: $STUDY_DIR or target/study)
#
# Three sessions share the seed, so their splits, VAEs, initial UNets and the random arm are the
# same repeat by repeat; only the proposed arm's fallback policy differs:
#   study-nearest  random, proposed (fallback nearest), oracle, entropy, coreset, full
#   study-widen    random, proposed (fallback widen)
#   study-random   random, proposed (fallback random)
#   study-image    image-wise: random, proposed, oracle, entropy, coreset; 40 initial slices and
#                  2 rounds of 40 (only when named in STUDY_SESSIONS)
#   study-image-adjacent  study-image with selection.avoid_context off: how often picks land
#                  next to a slice already labelled or picked (only when named)
#   study-image-unsmoothed  study-image's random and proposed, the direction from the paper's
#                  Dice loss without the +1 (selection.dice_smoothing = 0; only when named)
# STUDY_SESSIONS names the sessions to run (default: the first three), e.g.
#   STUDY_SESSIONS="study-nearest study-image" bench/study.sh 11
# Repeats are run in turn across the sessions (repeat 1 of each, then repeat 2, ...), so the
# study can be stopped at any point with the same repeats in all three; running the script again
# resumes it. Each session's report goes to its report/ folder.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-10}"
dir="${STUDY_DIR:-target/study}"
mkdir -p "$dir"
sessions="${STUDY_SESSIONS:-study-nearest study-widen study-random}"
exec ./with-torch bash -c '
  set -euo pipefail
  repeats="$1"; dir="$2"; sessions="$3"
  cargo build --release --quiet
  bin=target/release/suggestive
  export SUGGESTIVE_SESSIONS_DIR="$dir"
  common=(--set "experiment.repeats=$repeats" --set "experiment.device=\"cpu\"")
  create() { # NAME FALLBACK ARMS [MORE SETTINGS...]
    [ -e "$dir/$1/session.toml" ] && return 0
    local name="$1" fallback="$2" arms="$3"
    shift 3
    "$bin" new "$name" --preset demo "${common[@]}" \
      --set "selection.fallback=\"$fallback\"" --set "experiment.arms=$arms" "$@"
  }
  all="[\"random\", \"proposed\", \"oracle\", \"entropy\", \"coreset\"]"
  for s in $sessions; do
    case "$s" in
      study-nearest) create study-nearest nearest "${all%]}, \"full\"]" ;;
      study-widen) create study-widen widen "[\"random\", \"proposed\"]" ;;
      study-random) create study-random random "[\"random\", \"proposed\"]" ;;
      study-image) create study-image nearest "$all" --set "experiment.granularity=\"image\"" \
        --set experiment.initial=40 --set experiment.per_round=40 ;;
      study-image-adjacent) create study-image-adjacent nearest "$all" \
        --set "experiment.granularity=\"image\"" --set experiment.initial=40 \
        --set experiment.per_round=40 --set selection.avoid_context=false ;;
      study-image-unsmoothed) create study-image-unsmoothed nearest "[\"random\", \"proposed\"]" \
        --set "experiment.granularity=\"image\"" --set experiment.initial=40 \
        --set experiment.per_round=40 --set selection.dice_smoothing=0.0 ;;
      *) echo "study.sh: unknown session $s" >&2; exit 2 ;;
    esac
  done
  for r in $(seq 1 "$repeats"); do
    for s in $sessions; do
      /usr/bin/time -f "$s repeat $r: %e s" "$bin" run "$s" --repeats "$r" > "$dir/$s.log.$r" 2>&1 \
        || { tail -5 "$dir/$s.log.$r"; exit 1; }
      tail -1 "$dir/$s.log.$r"
    done
  done
  for s in $sessions; do
    "$bin" report "$s" > /dev/null
    echo "== $s: $dir/$s/report/report.md"
  done
' study "$repeats" "$dir" "$sessions"
