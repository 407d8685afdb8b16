"""PyTorch eager reference for bench/select_bench.rs: the same four selection stages on the same
cache files and weights, written as a PyTorch user would (batched, vectorised), timed the same.

usage: reference_select.py OUT_DIR UNET_DEPTH VAE_LEVELS DEVICE < ours.json"""

import json
import sys
import time

import numpy as np
import torch

from reference import dice_loss, encode, load_file, unet

BATCH, ALPHA, CONE_DEGREES = 32, 1e-4, 45.0


def main():
    out, depth, levels, dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dev = torch.device(dev)
    torch.backends.cudnn.benchmark = True
    ours = json.load(sys.stdin)
    n, c, s, m = ours["slices"], ours["channels"], ours["size"], ours["labelled"]
    images = np.memmap(ours["cache_images"], dtype=np.float16, mode="r", shape=(n, c, s, s))
    masks = np.memmap(ours["cache_masks"], dtype=np.uint8, mode="r", shape=(n, 1, s, s))
    pu = {k: v.to(dev) for k, v in load_file(f"{out}/unet.safetensors").items()}
    pv = {k: v.to(dev) for k, v in load_file(f"{out}/vae.safetensors").items()}
    pv64 = {k: v.double() for k, v in pv.items()}

    def batch(idx):
        return torch.from_numpy(images[idx]).to(dev).float()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # 1. encode every slice
    t = time.perf_counter()
    with torch.no_grad():
        z = torch.cat([encode(pv, batch(np.arange(a, min(a + BATCH, n))), levels)[0] for a in range(0, n, BATCH)])
    z = z.double().cpu()
    t_encode = time.perf_counter() - t

    # 2. directions of the labelled slices, float64 where float32 cannot resolve the step
    labelled = [i * n // m for i in range(m)]
    losses, dirs = [], []
    t = time.perf_counter()
    for a in range(0, m, BATCH):
        idx = labelled[a:a + BATCH]
        x = batch(idx).requires_grad_(True)
        y = torch.from_numpy(masks[idx]).to(dev).float()
        p = torch.sigmoid(unet(pu, x, depth, False)).flatten(1)
        yy = y.flatten(1)
        loss = 1 - (2 * (p * yy).sum(1) + 1) / (p.sum(1) + yy.sum(1) + 1)
        g, = torch.autograd.grad(loss.sum(), [x])
        with torch.no_grad():
            x = x.detach()
            g = g * (x.abs().sum(1, keepdim=True) > 0).float()
            rel = ALPHA * g.double().square().sum((1, 2, 3)).sqrt() / x.double().square().sum((1, 2, 3)).sqrt()
            small = rel < 1e-6
            d = torch.zeros(len(idx), z.shape[1], dtype=torch.float64, device=dev)
            if bool(small.any()):
                x64, g64 = x[small].double(), g[small].double()
                d[small] = encode(pv64, x64 + ALPHA * g64, levels)[0] - encode(pv64, x64, levels)[0]
            if not bool(small.all()):
                xb, gb = x[~small], g[~small]
                d[~small] = (encode(pv, xb + ALPHA * gb, levels)[0] - encode(pv, xb, levels)[0]).double()
        losses += loss.double().cpu().tolist()
        dirs.append(d.cpu())
    sync()
    t_grad = time.perf_counter() - t
    dirs = torch.cat(dirs)

    # 3. cone search, sources hardest first, each taking the best unpicked candidate of its cone
    order = sorted(range(m), key=lambda i: (-losses[i], labelled[i]))
    t = time.perf_counter()
    free = torch.ones(n, dtype=torch.bool)
    free[labelled] = False
    cos_t = np.cos(np.radians(CONE_DEGREES))
    picks, fallbacks = [], 0
    for i in order:
        zi, d = z[labelled[i]], dirs[i]
        v = z - zi
        dd = (v - d).square().sum(1)
        vn, dn = v.norm(dim=1), d.norm()
        cone = free & (vn > 0) & (dn > 0) & ((v @ d) / (vn * dn) >= cos_t)
        pool = cone if bool(cone.any()) else free
        fallbacks += not bool(cone.any())
        j = int(torch.where(pool, dd, torch.full_like(dd, float("inf"))).argmin())
        free[j] = False
        picks.append(j)
    t_cone = time.perf_counter() - t

    # 4. the oracle's scoring: 3D Dice of every pool patient, the UNet in eval mode (logit > 0 is
    # sigmoid > 0.5), the counts summed per slice on the device and per patient at the end
    sync()
    t = time.perf_counter()
    counts = []
    with torch.no_grad():
        for a in range(0, n, BATCH):
            idx = np.arange(a, min(a + BATCH, n))
            p = (unet(pu, batch(idx), depth, False) > 0).float()
            y = torch.from_numpy(masks[idx]).to(dev).float()
            counts.append(torch.stack([(p * y).sum((1, 2, 3)), p.sum((1, 2, 3)), y.sum((1, 2, 3))], 1))
    counts = torch.cat(counts).double().cpu().numpy()
    per_patient = np.add.reduceat(counts, np.cumsum([0] + ours["patient_slices"][:-1]), axis=0)
    both = per_patient[:, 1] + per_patient[:, 2]
    dice = np.where(both > 0, 2 * per_patient[:, 0] / np.maximum(both, 1), 1.0)
    t_oracle = time.perf_counter() - t

    print(json.dumps({"encode_s": t_encode, "gradients_s": t_grad, "cone_s": t_cone, "oracle_s": t_oracle,
                      "dice": dice.tolist(),
                      "z_head": z[:4].flatten().tolist(), "losses": losses, "directions": dirs.tolist(),
                      "picks": picks, "fallbacks": fallbacks, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
