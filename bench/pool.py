"""The BraTS-scale phantom that the selection and end-to-end benchmarks share: 335 patients (the
paper's 260 training patients give the pool of 39,000 slices), at 64×64×155 with small networks
on the CPU and at BraTS size, 240×240×155, with the paper's networks on a GPU. Generated once
into $SELECT_BENCH_DIR (default target/select-bench/), its preprocessed cache next to it."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shape(gpu):
    return "240,240,155" if gpu else "64,64,155"


def nets(gpu):
    """(UNet depth, UNet base, VAE levels, VAE base)."""
    return (4, 64, 4, 32) if gpu else (3, 16, 3, 16)


def phantom(gpu, suggestive):
    """(data folder, cache folder); `suggestive` (a command as a list) generates the phantom if
    it is not there yet."""
    work = os.environ.get("SELECT_BENCH_DIR") or os.path.join(ROOT, "target", "select-bench")
    data = os.path.join(work, f"phantom-{shape(gpu).replace(',', 'x')}")
    if not os.path.exists(os.path.join(data, "name_mapping.csv")):
        subprocess.run([*suggestive, "phantom", "--out", data, "--patients", "335", "--shape", shape(gpu),
                        "--seed", "1"], check=True, stdout=subprocess.DEVNULL)
    return data, os.path.join(work, "cache")
