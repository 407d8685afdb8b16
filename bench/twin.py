"""The PyTorch twin of a recorded training run (src/engine/replay.rs): the same network written
in PyTorch (reference.py's functions), started from the same weights, trained with
torch.optim.Adam on the same batches and the same VAE noise, its quality measured the same way.
Writes twin.json beside the recording and prints the comparison with ours.json as one JSON line.

usage: twin.py DIR"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import decode, dice_loss, encode, load_file, unet, vae_loss  # noqa: E402


def vae_quality(p, x, levels, shape):
    """Share of the slices' pixel variance that decode(encoder mean) reproduces."""
    with torch.no_grad():
        err, spread = 0.0, 0.0
        x64 = x.double()
        mean = x64.mean(0, keepdim=True)
        for a in range(0, len(x), 64):
            xb = x[a:a + 64]
            recon = decode(p, encode(p, xb, levels)[0], levels, shape)
            err += (recon.double() - xb.double()).pow(2).sum().item()
            spread += (xb.double() - mean).pow(2).sum().item()
    return 1.0 - err / spread if spread > 0 else 0.0


def unet_quality(p, x, y, depth):
    """Dice at probability 0.5 in evaluation mode, pixels pooled."""
    with torch.no_grad():
        inter, total = 0.0, 0.0
        for a in range(0, len(x), 64):
            pred = (unet(p, x[a:a + 64], depth, False) >= 0).double()
            yb = y[a:a + 64].double()
            inter += (pred * yb).sum().item()
            total += (pred.sum() + yb.sum()).item()
    return 2 * inter / total if total > 0 else 1.0


def replay(d):
    spec = json.load(open(os.path.join(d, "spec.json")))
    data = load_file(os.path.join(d, "data.safetensors"))
    steps = load_file(os.path.join(d, "steps.safetensors"))
    p = load_file(os.path.join(d, "init.safetensors"))
    x, y = data["x"], data["y"]
    n_train = len(spec["train"])
    trainable = [v.requires_grad_(True) for k, v in sorted(p.items()) if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    opt = torch.optim.Adam(trainable, lr=spec["lr"])
    cfg = spec["config"]
    vae = spec["network"] == "vae"
    if vae:
        levels = cfg["levels"]
        shape = (cfg["base"] << (levels - 1), x.shape[-1] >> levels, x.shape[-1] >> levels)
        latent = cfg["latent"]
    else:
        if cfg["norm"] != "batch":
            raise SystemExit(f"twin.py: the UNet twin has batch norm, not {cfg['norm']}")
        depth = cfg["depth"]
    losses, at, eps_at = [], 0, 0
    eps_all = steps["eps"].reshape(-1)
    for n in steps["sizes"].tolist():
        idx = steps["index"][at:at + n]
        at += n
        xb = x[idx]
        opt.zero_grad()
        if vae:
            eps = eps_all[eps_at:eps_at + n * latent].view(n, latent)
            eps_at += n * latent
            loss = vae_loss(p, xb, levels, shape, eps, spec["kl_weight"])
        else:
            loss = dice_loss(unet(p, xb, depth, True), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    per_epoch = len(losses) // max(spec["epochs"], 1)
    epoch_losses = [sum(losses[e * per_epoch:(e + 1) * per_epoch]) / per_epoch for e in range(spec["epochs"])]
    if vae:
        q_train = vae_quality(p, x[:n_train], levels, shape)
        q_held = vae_quality(p, x[n_train:], levels, shape)
    else:
        q_train = unet_quality(p, x[:n_train], y[:n_train], depth)
        q_held = unet_quality(p, x[n_train:], y[n_train:], depth)
    return {"losses": losses, "epoch_losses": epoch_losses, "quality_train": q_train, "quality_held_out": q_held}


def compare(ours, twin):
    """Step by step: the largest relative difference of the losses over the first 10 steps and
    over all steps, each epoch's mean's; the qualities side by side."""
    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-6)
    steps = [rel(a, b) for a, b in zip(ours["losses"], twin["losses"])]
    epochs = [rel(a, b) for a, b in zip(ours["epoch_losses"], twin["epoch_losses"])]
    return {
        "steps": len(steps),
        "max_rel_first_10_steps": max(steps[:10], default=0.0),
        "max_rel_step": max(steps, default=0.0),
        "max_rel_epoch_mean": max(epochs, default=0.0),
        "final_epoch_loss": {"ours": ours["epoch_losses"][-1], "twin": twin["epoch_losses"][-1]},
        "quality_train": {"ours": ours["quality_train"], "twin": twin["quality_train"]},
        "quality_held_out": {"ours": ours["quality_held_out"], "twin": twin["quality_held_out"]},
        "finite": all(math.isfinite(v) for v in twin["losses"]),
    }


def main():
    d = sys.argv[1]
    torch.manual_seed(0)
    twin = replay(d)
    with open(os.path.join(d, "twin.json"), "w") as fh:
        json.dump(twin, fh)
    ours = json.load(open(os.path.join(d, "ours.json")))
    print(json.dumps(compare(ours, twin)))


if __name__ == "__main__":
    main()
