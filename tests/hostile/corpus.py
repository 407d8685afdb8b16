#!/usr/bin/env python3
"""Writes a corpus of hostile input: files, names and session files made the way other people's
data could be, each with the command it targets and the error that command must give.

    python3 tests/hostile/corpus.py OUT --data PHANTOM --people SESSION --finished SESSION

PHANTOM is a BraTS 2019 phantom (`suggestive phantom --layout brats2019`), SESSION (--people) a
session labelled by people waiting for round 0's segmentations, and --finished a finished
simulated session. Nothing given is changed: data sets and sessions to damage are copied into
OUT first. OUT/manifest.json lists the cases as
    {"id", "args", "code", "phrase"}
where "args" are the suggestive command's arguments ("{out}" stands for OUT), "code" its exit
status and "phrase" what its output must hold. tests/hostile.rs runs each one and checks that it
is refused with that phrase, that nothing in OUT or the sessions changed, and that no file named
MARKER appeared (the injected commands would make one in the working folder, OUT).

Python's standard library only: NIfTI files are edited as bytes (header fields at the offsets of
the NIfTI-1 standard)."""

import argparse
import gzip
import json
import os
import shutil
import struct

INJECT = "\ntouch MARKER\n"


def read_raw(path):
    with open(path, "rb") as fh:
        data = fh.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def write_gz(path, raw, zeros_after=0):
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(raw)
        block = bytes(1 << 20)
        for _ in range(zeros_after >> 20):
            fh.write(block)


def claims_a_gigavoxel(raw):
    raw = bytearray(raw)
    for d in (1, 2, 3):
        struct.pack_into("<h", raw, 40 + 2 * d, 1024)
    return bytes(raw)


def nan_transform(raw):
    """sform_code 1 (at 254) with a NaN in srow_x (at 280)."""
    raw = bytearray(raw)
    struct.pack_into("<h", raw, 254, 1)
    struct.pack_into("<f", raw, 280, float("nan"))
    return bytes(raw)


def shifted_transform(raw, mm):
    """The file's own transform (sform if set, else the qform's offsets with unit spacing is not
    enough), moved by `mm` in x: sform_code 1 and srow_x's offset changed."""
    raw = bytearray(raw)
    sform = struct.unpack_from("<h", raw, 254)[0]
    if sform == 0:
        pixdim = struct.unpack_from("<8f", raw, 76)
        qoffset = struct.unpack_from("<3f", raw, 268)
        struct.pack_into("<h", raw, 254, 1)
        struct.pack_into("<4f", raw, 280, pixdim[1], 0.0, 0.0, qoffset[0])
        struct.pack_into("<4f", raw, 296, 0.0, pixdim[2], 0.0, qoffset[1])
        struct.pack_into("<4f", raw, 312, 0.0, 0.0, pixdim[3], qoffset[2])
    x = struct.unpack_from("<f", raw, 292)[0]
    struct.pack_into("<f", raw, 292, x + mm)
    return bytes(raw)


def cases(data):
    """Case folders of a BraTS 2019 phantom: {ID: folder}."""
    out = {}
    for grade in ("HGG", "LGG"):
        g = os.path.join(data, grade)
        if os.path.isdir(g):
            for c in sorted(os.listdir(g)):
                out[c] = os.path.join(g, c)
    return out


def data_copy(data, out, name, edit):
    """A copy of the phantom as OUT/NAME with `edit(cases)` applied; its path."""
    target = os.path.join(out, name)
    shutil.copytree(data, target)
    edit(cases(target))
    return target


def rename_case(folder, new_id):
    old_id = os.path.basename(folder)
    new = os.path.join(os.path.dirname(folder), new_id)
    os.rename(folder, new)
    for f in os.listdir(new):
        os.rename(os.path.join(new, f), os.path.join(new, f.replace(old_id, new_id)))


def edit_json(path, edit):
    with open(path) as fh:
        doc = json.load(fh)
    edit(doc)
    with open(path, "w") as fh:
        json.dump(doc, fh)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--data", required=True)
    ap.add_argument("--people", required=True)
    ap.add_argument("--finished", required=True)
    a = ap.parse_args()
    out = a.out
    os.makedirs(out)
    entries = []

    def case(id, args, phrase, code=1):
        entries.append({"id": id, "args": args, "code": code, "phrase": phrase})

    # --- Commands run from data: names that would become script lines. ---
    first = sorted(cases(a.data))[0]
    for label, new_id in [("newline", first + INJECT.rstrip()), ("escape", first + "\x1b]0;owned\x07")]:
        d = data_copy(a.data, out, f"data-case-id-{label}",
                      lambda cs: rename_case(cs[first], new_id))
        case(f"case ID with a {label}", ["dataset", d.replace(out, "{out}")], "holds a control character")
    case("session name with a newline", ["new", "{out}/new-sessions/grid" + INJECT.rstrip()],
         "session name \"grid\\ntouch MARKER\" holds a control character")
    for flag, value in [("--partition", "gpu" + INJECT.rstrip()), ("--account", "lab\rtouch MARKER"),
                        ("--sbatch-arg", "--qos=high" + INJECT.rstrip()), ("--time", "1:00:00\x1b]0;x")]:
        case(f"Slurm {flag} with a control character", ["slurm", a.finished, flag, value, "--dry-run"], "#SBATCH")

    # --- Cost bounded by the header: segmentations offered for import. ---
    worklist = os.path.join(a.people, "annotate", "round-00", "worklist.csv")
    with open(worklist) as fh:
        target = fh.read().splitlines()[1].split(",")[1]
    seg = read_raw(os.path.join(cases(a.data)[target], f"{target}_seg.nii.gz"))

    def offered(name, write):
        folder = os.path.join(out, "import", name)
        os.makedirs(folder)
        path = write(folder)
        return path.replace(out, "{out}")

    def gz(raw, zeros_after=0):
        def write(folder):
            path = os.path.join(folder, f"{target}_seg.nii.gz")
            write_gz(path, raw, zeros_after)
            return path
        return write

    def sparse(folder):
        path = os.path.join(folder, f"{target}_seg.nii")
        with open(path, "wb") as fh:
            fh.write(seg)
            fh.truncate(1 << 30)
        return path

    def fifo(folder):
        path = os.path.join(folder, f"{target}_seg.nii.gz")
        os.mkfifo(path)
        return path

    for name, write, phrase in [
        ("gigavoxel", gz(claims_a_gigavoxel(seg)), "ask for more than"),
        ("data-after", gz(seg, zeros_after=64 << 20), "data after the"),
        ("sparse", sparse, "more than a NIfTI file of shape"),
        ("fifo", fifo, "a named pipe (FIFO), not a NIfTI file: refused"),
        ("nan-transform", gz(nan_transform(seg)), "not finite"),
        ("other-space", gz(shifted_transform(seg, 5.0)), "voxel-to-world transform differs"),
    ]:
        case(f"import: {name}", ["import", a.people, offered(name, write)], phrase)

    # --- Data sets whose files are hostile. ---
    def hostile_files(cs, write):
        folder = cs[first]
        for f in sorted(os.listdir(folder)):
            path = os.path.join(folder, f)
            raw = read_raw(path)
            os.remove(path)
            write(path, raw, f)

    d = data_copy(a.data, out, "data-gigavoxel",
                  lambda cs: hostile_files(cs, lambda p, raw, f: write_gz(p, claims_a_gigavoxel(raw))))
    case("data set: five files claiming 1024^3 voxels", ["dataset", d.replace(out, "{out}")], "ask for more than")
    d = data_copy(a.data, out, "data-fifo",
                  lambda cs: hostile_files(cs, lambda p, raw, f: os.mkfifo(p) if "_t2." in f else write_gz(p, raw)))
    case("data set: a named pipe as a modality", ["dataset", d.replace(out, "{out}")], "a named pipe (FIFO)")
    d = data_copy(a.data, out, "data-other-space",
                  lambda cs: hostile_files(cs, lambda p, raw, f: write_gz(p, shifted_transform(raw, 5.0) if "_t1." in f else raw)))
    case("data set: one modality in another space", ["dataset", d.replace(out, "{out}")], "the case's files are not in one space")

    # --- Session files that do not fit. ---
    def session_copy(source, name, edit):
        target = os.path.join(out, "sessions", name)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("lock"))
        edit(target)
        return target.replace(out, "{out}")

    state = lambda s: os.path.join(s, "repeats", "01", "state.json")

    def set_seed(s):
        path = os.path.join(s, "session.toml")
        with open(path) as fh:
            text = fh.read()
        lines = [("seed = 99" if line.startswith("seed = ") else line) for line in text.splitlines()]
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    s = session_copy(a.finished, "edited-seed", set_seed)
    for command in ("status", "report"):
        case(f"{command}: session.toml edited after the run", [command, s], "(experiment.seed)")
    s = session_copy(a.finished, "dice-5", lambda s: edit_json(state(s), lambda d: d["results"][0].update(dice_mean=5.0)))
    case("report: a Dice of 5", ["report", s], "Dice 5 in the result")
    s = session_copy(a.finished, "dice-twice", lambda s: edit_json(state(s), lambda d: d["results"].append(d["results"][0])))
    case("report: a result row twice", ["report", s], "twice")
    s = session_copy(a.finished, "index", lambda s: edit_json(state(s), lambda d: d["data"]["train"].__setitem__(0, 77)))
    case("export: a patient index out of range", ["export", s, "--out", "{out}/picks.csv"], "patient 77")

    def edited_worklist(s):
        path = os.path.join(s, "annotate", "round-00", "worklist.csv")
        with open(path) as fh:
            lines = fh.read().splitlines()
        with open(state(s)) as fh:
            test_case = json.load(fh)["data"]["test_cases"][0][0]
        lines[1] = lines[1].replace(target, test_case)
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return test_case

    s = session_copy(a.people, "worklist", edited_worklist)
    with open(state(s.replace("{out}", out))) as fh:
        test_case = json.load(fh)["data"]["test_cases"][0][0]
    test_seg = os.path.join(cases(a.data)[test_case], f"{test_case}_seg.nii.gz")
    case("import: a test case written into the worklist", ["import", s, test_seg], "not among round 0's recorded picks")

    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(entries, fh, indent=1)


if __name__ == "__main__":
    main()
