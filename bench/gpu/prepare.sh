#!/usr/bin/env bash
# Builds everything the GPU check needs and puts it in .gpu/ (listed in .gitignore), for a device
# machine that has python3 with torch 2.11 (CUDA) but no Rust toolchain:
#   bench/gpu/prepare.sh        then run  bash .gpu/run.sh  there, from the repository root,
# with OUT set to the folder that should receive the results (run.sh sets LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/../.."
./with-torch cargo build --release --quiet
./with-torch cargo bench --no-run --quiet --bench train_bench --bench select_bench
rm -rf .gpu && mkdir -p .gpu
cp target/release/suggestive .gpu/
for b in train_bench select_bench; do
  exe=$(find target/release/deps -maxdepth 1 -type f -executable -name "$b-*" -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
  cp "$exe" ".gpu/$b"
done
strip --strip-debug .gpu/suggestive .gpu/train_bench .gpu/select_bench   # the carry limit is 64 MiB
cp bench/results.py bench/train_bench.py bench/reference.py bench/select_bench.py bench/reference_select.py \
   bench/e2e_bench.py bench/pool.py bench/gpu/run.sh .gpu/
for f in .gpu/suggestive .gpu/train_bench .gpu/select_bench; do
  readelf -d "$f" | grep -q 'libtorch_cuda.so' || { echo "$f: libtorch_cuda.so is not NEEDED: it would not see the GPU" >&2; exit 1; }
done
du -sh .gpu
