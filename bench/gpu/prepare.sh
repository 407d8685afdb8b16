#!/usr/bin/env bash
# Builds everything the GPU check needs and puts it in .gpu/ (listed in .gitignore), for a device
# machine that has python3 with torch 2.11 (CUDA) but no Rust toolchain:
#   bench/gpu/prepare.sh        then run  bench/gpu/run.sh  there, from the repository root,
# with LD_LIBRARY_PATH pointing at that machine's torch/lib (run.sh sets it).
set -euo pipefail
cd "$(dirname "$0")/../.."
./with-torch cargo build --release --quiet
./with-torch cargo bench --no-run --quiet --bench train_bench 2>/dev/null || ./with-torch cargo bench --no-run --bench train_bench
rm -rf .gpu && mkdir -p .gpu
cp target/release/suggestive .gpu/
exe=$(find target/release/deps -maxdepth 1 -type f -executable -name 'train_bench-*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
cp "$exe" .gpu/train_bench
strip --strip-debug .gpu/suggestive .gpu/train_bench   # the device carry limit is 64 MiB
cp bench/reference.py bench/gpu/run.sh .gpu/
readelf -d .gpu/suggestive | grep -q 'libtorch_cuda.so' || { echo "libtorch_cuda.so is not NEEDED: the binary would not see the GPU" >&2; exit 1; }
du -sh .gpu
