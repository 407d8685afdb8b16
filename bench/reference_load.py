"""The reference for the data-layer benchmark: what a researcher would write with nibabel and
numpy to load and preprocess a BraTS folder the way suggestive does (z-score over the brain,
drop 2 + 3 slices, zero-pad to 256, half-precision images and u8 whole-tumour masks written to a
memory-mapped file). One process, as such scripts are."""

import glob
import os
import sys
import time

import nibabel as nib
import numpy as np

MODALITIES = ["flair", "t1", "t1ce", "t2"]


def patients(root):
    out = []
    for seg in glob.glob(os.path.join(root, "**", "*_seg.nii.gz"), recursive=True):
        pid = os.path.basename(seg)[: -len("_seg.nii.gz")]
        out.append((pid, os.path.dirname(seg)))
    return sorted(out)


def preprocess(pid, d, pad=256, drop=(2, 3)):
    chans = []
    for m in MODALITIES:
        v = nib.load(os.path.join(d, f"{pid}_{m}.nii.gz")).get_fdata(dtype=np.float32)  # (x, y, z)
        brain = v != 0
        vals = v[brain].astype(np.float64)
        mean, std = vals.mean(), vals.std()
        z = np.where(brain, (v - mean) / std, 0).astype(np.float32)
        chans.append(z)
    seg = np.asarray(nib.load(os.path.join(d, f"{pid}_seg.nii.gz")).dataobj)
    x, y, nz = chans[0].shape
    keep = slice(drop[0], nz - drop[1])
    ox, oy = (pad - x) // 2, (pad - y) // 2
    img = np.zeros((nz - sum(drop), len(MODALITIES), pad, pad), np.float16)
    for c, v in enumerate(chans):
        # (x, y, z) -> (z, y, x): rows are y, columns x, as in suggestive's cache.
        img[:, c, oy : oy + y, ox : ox + x] = v[:, :, keep].transpose(2, 1, 0)
    mask = np.zeros((nz - sum(drop), pad, pad), np.uint8)
    mask[:, oy : oy + y, ox : ox + x] = (seg[:, :, keep] > 0).transpose(2, 1, 0)
    return img, mask


def main():
    root, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    ps = patients(root)
    # Slice counts from the headers, so each patient is written as soon as it is ready.
    counts = [nib.load(os.path.join(d, f"{pid}_flair.nii.gz")).shape[2] - 5 for pid, d in ps]
    n = sum(counts)
    imgs = np.lib.format.open_memmap(os.path.join(out, "images.npy"), "w+", np.float16, (n, 4, 256, 256))
    masks = np.lib.format.open_memmap(os.path.join(out, "masks.npy"), "w+", np.uint8, (n, 256, 256))
    i = 0
    for pid, d in ps:
        img, mask = preprocess(pid, d)
        imgs[i : i + len(img)] = img
        masks[i : i + len(mask)] = mask
        i += len(img)
    imgs.flush()
    masks.flush()
    del imgs, masks
    print(f"{time.perf_counter() - t0:.4f} {len(ps)} {n}")


if __name__ == "__main__":
    main()
