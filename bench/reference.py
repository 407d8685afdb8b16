"""PyTorch eager reference for bench/train_bench.rs: the same UNet and VAE (functional, on the
weights suggestive saved), the same batch, the same losses, the same Adam, the same timing.

usage: reference.py DIR SIZE BATCH UNET_DEPTH VAE_LEVELS DEVICE STEPS WINDOWS"""

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def load_file(path):
    """A safetensors file (8-byte header length, JSON header, raw little-endian data): read
    directly, so the reference needs nothing beyond torch (GPU servers without a network)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=DTYPES[info["dtype"]]) if b > a else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def double_conv(p, pre, x, train):
    for i in (1, 2):
        x = F.conv2d(x, p[f"{pre}.c{i}.weight"], p.get(f"{pre}.c{i}.bias"), padding=1)
        n = f"{pre}.n{i}"
        x = F.batch_norm(x, p[f"{n}.running_mean"], p[f"{n}.running_var"], p[f"{n}.weight"], p[f"{n}.bias"],
                         training=train, momentum=0.1, eps=1e-5)
        x = F.relu(x)
    return x


def unet(p, x, depth, train):
    skips = []
    for l in range(depth):
        s = double_conv(p, f"down{l}", x, train)
        x = F.max_pool2d(s, 2)
        skips.append(s)
    x = double_conv(p, "bottom", x, train)
    for l in reversed(range(depth)):
        u = F.conv_transpose2d(x, p[f"up{l}t.weight"], p[f"up{l}t.bias"], stride=2)
        x = double_conv(p, f"up{l}", torch.cat([skips[l], u], 1), train)
    return F.conv2d(x, p["head.weight"], p["head.bias"])


def dice_loss(logits, y):
    pr = torch.sigmoid(logits)
    return 1 - (2 * (pr * y).sum() + 1) / (pr.sum() + y.sum() + 1)


def res(p, pre, x):
    h = F.conv2d(F.relu(x), p[f"{pre}.c1.weight"], p[f"{pre}.c1.bias"], padding=1)
    return x + F.conv2d(F.relu(h), p[f"{pre}.c2.weight"], p[f"{pre}.c2.bias"], padding=1)


def encode(p, x, levels):
    for l in range(levels):
        x = res(p, f"encres{l}", F.relu(F.conv2d(x, p[f"enc{l}.weight"], p[f"enc{l}.bias"], stride=2, padding=1)))
    h = F.relu(x).flatten(1)
    return F.linear(h, p["mu.weight"], p["mu.bias"]), F.linear(h, p["logvar.weight"], p["logvar.bias"])


def decode(p, z, levels, shape):
    h = F.linear(z, p["dec_in.weight"], p["dec_in.bias"]).view(-1, *shape)
    for l in reversed(range(levels)):
        h = F.conv_transpose2d(F.relu(res(p, f"decres{l}", h)), p[f"dec{l}.weight"], p[f"dec{l}.bias"], stride=2, padding=1)
    return F.conv2d(F.relu(h), p["out.weight"], p["out.bias"], padding=1)


def vae_loss(p, x, levels, shape, eps, kl_weight=1.0):
    mu, logvar = encode(p, x, levels)
    z = mu + torch.exp(0.5 * logvar) * eps
    recon = decode(p, z, levels, shape)
    mse = F.mse_loss(recon, x)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
    return mse + kl_weight * kl / (x[0].numel())


def timed(dev, batch, steps, windows, f):
    for _ in range(3):
        f()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(steps):
            f()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - t))
    return statistics.median(rates)


def main():
    d, size, batch, depth, levels, dev, steps, windows = sys.argv[1:9]
    size, batch, depth, levels, steps, windows = map(int, (size, batch, depth, levels, steps, windows))
    dev = torch.device(dev if dev != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = True
    b = {k: v.to(dev) for k, v in load_file(f"{d}/batch.safetensors").items()}
    x, y, eps = b["x"], b["y"], b["eps"]

    def params(name):
        p = {k: v.to(dev) for k, v in load_file(f"{d}/{name}.safetensors").items()}
        for k, v in p.items():
            if not k.endswith(("running_mean", "running_var")):
                v.requires_grad_(True)
        return p

    pu, pv = params("unet"), params("vae")
    base_top = pv[f"dec{levels - 1}.weight"].shape[0]
    shape = (base_top, size >> levels, size >> levels)

    unet_loss = dice_loss(unet(pu, x, depth, True), y).item()
    vae_l = vae_loss(pv, x, levels, shape, eps).item()
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(dice_loss(unet(pu, xg, depth, False), y), [xg])
    grad_norm = g.norm().item()
    pu = params("unet")  # the checks moved the running statistics

    opt = torch.optim.Adam([v for v in pu.values() if v.requires_grad], lr=1e-3)

    def unet_step():
        opt.zero_grad()
        dice_loss(unet(pu, x, depth, True), y).backward()
        opt.step()

    opt_v = torch.optim.Adam(list(pv.values()), lr=1e-4)

    def vae_step():
        opt_v.zero_grad()
        vae_loss(pv, x, levels, shape, torch.randn_like(eps)).backward()
        opt_v.step()

    def select_step():
        xg = x.clone().requires_grad_(True)
        g, = torch.autograd.grad(dice_loss(unet(pu, xg, depth, False), y), [xg])
        with torch.no_grad():
            z = encode(pv, x, levels)[0]
            zp = encode(pv, x + 1e-4 * g, levels)[0]
            (zp - z).sum().item()

    out = {
        "unet_loss": unet_loss, "vae_loss": vae_l, "grad_norm": grad_norm,
        "unet_slices_per_s": timed(dev, batch, steps, windows, unet_step),
        "vae_slices_per_s": timed(dev, batch, steps, windows, vae_step),
        "select_slices_per_s": timed(dev, batch, steps, windows, select_step),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    if dev.type == "cuda":
        # Mixed precision as the PyTorch documentation writes it: autocast + GradScaler.
        p16 = params("unet")
        opt16 = torch.optim.Adam([v for v in p16.values() if v.requires_grad], lr=1e-3)
        scaler = torch.amp.GradScaler("cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            logits = unet(p16, x, depth, True)
        out["unet_fp16_loss"] = dice_loss(logits.float(), y).item()
        p16 = params("unet")
        opt16 = torch.optim.Adam([v for v in p16.values() if v.requires_grad], lr=1e-3)

        def unet_fp16_step():
            opt16.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                logits = unet(p16, x, depth, True)
            scaler.scale(dice_loss(logits.float(), y)).backward()
            scaler.step(opt16)
            scaler.update()

        out["unet_fp16_slices_per_s"] = timed(dev, batch, steps, windows, unet_fp16_step)
    import resource
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
