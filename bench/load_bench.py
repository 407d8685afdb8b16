"""Data-layer benchmark (driven by bench/run): suggestive's cold load + preprocessing against the
same work done by nibabel + numpy (bench/reference_load.py), in the same run on the same machine;
then a cached reload and peak memory. Checks first that both produce the same slices."""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

from results import cpu_device, record

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def warm_page_cache(root):
    # Both loaders read the inputs from the page cache: we time decoding, not the disk.
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    patients = 12 if a.quick else 40
    work = os.environ.get("SUGGESTIVE_BENCH_DIR", os.path.join(HERE, ".data"))
    data = os.path.join(work, f"phantom-240x240x155-{patients}")
    cache = os.path.join(work, "cache")
    ref_out = os.path.join(work, "reference")
    if not os.path.exists(os.path.join(data, "phantom.json")):
        half = patients // 2
        print(f"generating {patients} phantom patients in {data}", file=sys.stderr)
        subprocess.run([a.binary, "phantom", "--out", data, "--sites", f"CBICA={half},TCIA={patients - half}",
                        "--shape", "240,240,155", "--seed", "1"], check=True)
    warm_page_cache(data)
    ds = [a.binary, "dataset", data, "--cache-dir", cache, "--json"]

    cold, cold1, ref = [], [], []
    ref_peak = 0
    summary = None
    for r in range(a.repeats):
        shutil.rmtree(cache, ignore_errors=True)
        s = run_json(ds)
        assert s["cache"]["status"]["state"] == "built", s["cache"]
        cold.append(s["cache"]["seconds"])
        summary = s
        shutil.rmtree(cache, ignore_errors=True)
        s1 = run_json(ds + ["--threads", "1"])
        cold1.append(s1["cache"]["seconds"])
        shutil.rmtree(ref_out, ignore_errors=True)
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "reference_load.py"), data, ref_out],
                             stdout=subprocess.PIPE, text=True)
        out = p.stdout.read().split()
        _, status, usage = os.wait4(p.pid, 0)  # this child's own peak RSS
        assert status == 0, f"reference failed ({status})"
        ref_peak = max(ref_peak, usage.ru_maxrss * 1024)
        ref.append(float(out[0]))
        print(f"  repeat {r + 1}: ours {cold[-1]:.2f} s (1 thread {cold1[-1]:.2f} s), nibabel {ref[-1]:.2f} s",
              file=sys.stderr)

    # Same work? Compare our cache with the reference's arrays (same patient order: sorted IDs).
    ours_img = np.memmap(os.path.join(summary["cache"]["cache_dir"], "images.f16"), np.float16, "r")
    ours_mask = np.memmap(os.path.join(summary["cache"]["cache_dir"], "masks.u8"), np.uint8, "r")
    ref_img = np.load(os.path.join(ref_out, "images.npy"), mmap_mode="r").reshape(-1)
    ref_mask = np.load(os.path.join(ref_out, "masks.npy"), mmap_mode="r").reshape(-1)
    assert ours_img.shape == ref_img.shape, (ours_img.shape, ref_img.shape)
    step = 4099  # a sparse sample keeps the check quick
    diff = np.abs(ours_img[::step].astype(np.float32) - ref_img[::step].astype(np.float32)).max()
    assert diff <= 2e-2, f"images differ from the reference by {diff}"
    assert np.array_equal(ours_mask, ref_mask), "masks differ from the reference"

    # Cached reload: open (index + mmap), and open + read every byte (checksum verify).
    hits, verify = [], []
    for _ in range(a.repeats):
        s = run_json(ds + ["--verify"])
        assert s["cache"]["status"]["state"] == "hit"
        hits.append(s["cache"]["seconds"])
        verify.append(s["cache"]["seconds"] + s["verify_seconds"])
    med = statistics.median
    n = summary["patients"]
    cache_bytes = summary["cache"]["bytes"]
    peak = summary["peak_rss_bytes"]
    device = cpu_device()
    label = f"{n} patients 240x240x155"
    results = [
        {"name": f"cold load + preprocess, {label} (both cores vs nibabel)", "device": device,
         "ours": n / med(cold), "reference": n / med(ref), "unit": "patients/s", "ratio": med(ref) / med(cold)},
        {"name": f"cold load + preprocess, {label} (1 thread vs nibabel)", "device": device,
         "ours": n / med(cold1), "reference": n / med(ref), "unit": "patients/s", "ratio": med(ref) / med(cold1)},
        {"name": f"cached reload, open, {label} (vs our cold load)", "device": device,
         "ours": med(hits), "reference": med(cold), "unit": "s", "ratio": med(cold) / med(hits)},
        {"name": f"cached reload, open + read all bytes, {label} (vs our cold load)", "device": device,
         "ours": med(verify), "reference": med(cold), "unit": "s", "ratio": med(cold) / med(verify)},
        {"name": "cold load peak RSS (reference: cache size; goal ratio >= 0.67)", "device": device,
         "ours": peak / 1e9, "reference": cache_bytes / 1e9, "unit": "GB", "ratio": cache_bytes / peak},
        {"name": "nibabel reference peak RSS (reference: cache size)", "device": device,
         "ours": ref_peak / 1e9, "reference": cache_bytes / 1e9, "unit": "GB", "ratio": cache_bytes / ref_peak},
    ]
    path = record(results)
    print(f"\n{'benchmark':78} {'ours':>9} {'reference':>10} {'unit':>11} {'ratio':>7}")
    for r in results:
        print(f"{r['name']:78} {r['ours']:9.3f} {r['reference']:10.3f} {r['unit']:>11} {r['ratio']:7.2f}")
    print(f"\nmachine: {device}; images max |ours - nibabel| = {diff:.4f} (f16), masks identical; "
          f"median of {a.repeats} runs; written to {path}")


if __name__ == "__main__":
    main()
