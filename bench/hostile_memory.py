"""Memory against hostile files (driven by bench/run; on its own:
./with-torch python3 bench/hostile_memory.py --binary target/release/suggestive).

A few megabytes of hostile NIfTI must cost no more memory than the valid file they imitate. On a
phantom at BraTS size (240x240x155), each command's peak resident memory (ru_maxrss of the child)
is measured side by side with the same command on a valid file (6 patients by default):
  - `import` of a case's segmentation (the reference) against three files of that name: a 1 MB
    gzip whose header claims 1024^3 voxels, the valid volume followed by 1 GiB of zeros inside
    the gzip, and a sparse .nii of 1 GiB apparent size (each must be refused);
  - `dataset --skip-bad` of the phantom (the reference) against the same phantom with one more
    case whose five files claim 1024^3 voxels (the case must be listed as bad).
ratio = reference / hostile: 1 means the hostile file cost what a valid one does."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from results import cpu_device, record

# The hostile files are made as the test suite's corpus makes them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "hostile"))
from corpus import claims_a_gigavoxel, read_raw, write_gz  # noqa: E402


def run_measured(cmd, env, expect_code):
    """Runs `cmd` and reaps it with wait4: its exit status, output and peak RSS (bytes)."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    assert p.returncode == expect_code, f"{cmd}: exit {p.returncode}, expected {expect_code}:\n{text}"
    return usage.ru_maxrss * 1024, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--patients", type=int, default=6)
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)
    work = tempfile.mkdtemp(prefix="suggestive-hostile-")
    env = {**os.environ, "SUGGESTIVE_SESSIONS_DIR": f"{work}/sessions", "SUGGESTIVE_CACHE_DIR": f"{work}/cache"}
    data = f"{work}/data"
    subprocess.run([binary, "phantom", "--out", data, "--patients", str(a.patients), "--seed", "5"],
                   check=True, env=env, capture_output=True)

    # import: a session labelled by people, waiting for round 0.
    subprocess.run([binary, "new", "mem", "--preset", "annotate", "--dataset", data,
                    "--set", "experiment.device=\"cpu\"", "--set", "vae.epochs=1",
                    # The VAE trains before round 0 is asked for: kept small, it is not measured.
                    "--set", "dataset.downsample=4", "--set", "vae.base=4", "--set", "vae.levels=2",
                    "--set", "experiment.initial=2", "--set", "experiment.rounds=1",
                    "--set", "experiment.per_round=1"],
                   check=True, env=env, capture_output=True)
    r = subprocess.run([binary, "run", "mem"], env=env, capture_output=True, text=True)
    assert r.returncode == 3, f"run: exit {r.returncode}\n{r.stderr}"
    worklist = f"{work}/sessions/mem/annotate/round-00/worklist.csv"
    with open(worklist) as fh:
        case = fh.read().splitlines()[1].split(",")[1]
    truth = next(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f == f"{case}_seg.nii.gz")
    raw = read_raw(truth)
    hostile = f"{work}/hostile"
    files = {}
    for name, write in [
        ("a header claiming 1024^3 voxels (1 MB gzip)", lambda p: write_gz(p, claims_a_gigavoxel(raw))),
        ("1 GiB of zeros after the voxels, inside the gzip", lambda p: write_gz(p, raw, zeros_after=1 << 30)),
        ("a sparse .nii of 1 GiB", None),
    ]:
        folder = f"{hostile}/{len(files)}"
        os.makedirs(folder)
        if write is None:
            path = f"{folder}/{case}_seg.nii"
            with open(path, "wb") as fh:
                fh.write(raw)
                fh.truncate(1 << 30)
        else:
            path = f"{folder}/{case}_seg.nii.gz"
            write(path)
        files[name] = path
    results = []
    device = cpu_device()
    refused = {}
    for name, path in files.items():
        refused[name], text = run_measured([binary, "import", "mem", path], env, 1)
        assert "refused: " in text, text
    valid, text = run_measured([binary, "import", "mem", truth], env, 0)
    for name, hostile_peak in refused.items():
        results.append({"name": f"peak RSS of import: {name} (reference: the valid segmentation)",
                        "device": device, "ours": hostile_peak / 1e9, "reference": valid / 1e9,
                        "unit": "GB", "ratio": valid / hostile_peak})

    # dataset: the phantom, then with one more case whose five files claim 1024^3 voxels.
    clean, _ = run_measured([binary, "dataset", data, "--skip-bad", "--cache-dir", f"{work}/cache-clean"], env, 0)
    bad_data = f"{work}/data-bad"
    shutil.copytree(data, bad_data)
    source = os.path.dirname(truth)
    old_id = os.path.basename(source)
    new_id = old_id.replace(old_id.split("_")[2], "999")
    target = os.path.join(os.path.dirname(source).replace(data, bad_data), new_id)
    os.makedirs(target)
    for f in os.listdir(source):
        write_gz(os.path.join(target, f.replace(old_id, new_id)), claims_a_gigavoxel(read_raw(os.path.join(source, f))))
    with_bad, text = run_measured([binary, "dataset", bad_data, "--skip-bad", "--cache-dir", f"{work}/cache-bad"], env, 0)
    assert new_id in text, f"the hostile case {new_id} is not listed as bad:\n{text}"
    results.append({"name": f"peak RSS of dataset --skip-bad: one more case of five files claiming 1024^3 voxels "
                            f"(reference: the {a.patients} valid cases alone)",
                    "device": device, "ours": with_bad / 1e9, "reference": clean / 1e9, "unit": "GB",
                    "ratio": clean / with_bad})
    record(results)
    for r in results:
        print(f"{r['name']}: {r['ours']:.3f} GB against {r['reference']:.3f} GB (ratio {r['ratio']:.2f})")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
