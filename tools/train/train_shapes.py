#!/usr/bin/env python3
"""Trains a small CogVideoX-architecture model on clips of moving shapes, so that cache engines meet features
that change smoothly from step to step, as they do in trained models (random weights do not).

Developer tool (torch + diffusers, CPU is fine):
    python3 tools/train/train_shapes.py --out models/trained/shapes --minutes 40

Data, generated on the fly: 4 latent frames x 4 channels x 16 x 16; one shape (square or disc) of a size
(small/large) and a colour (4 channel vectors) moving in a direction (right/left/down/up). The "prompt" is 4
tokens, one fixed random embedding per attribute value, padded to max_text_seq_length; dropped to zeros 10 % of
the time so classifier-free guidance has something to guide. v-prediction with CogVideoX's DDIM schedule
(snr_shift_scale 3, zero terminal SNR), as the real model. Writes diffusers' own format (`save_pretrained`,
f16 safetensors), the scheduler config, the attribute embeddings and a loss log.
"""
import argparse
import json
import math
import os
import time

import torch
from safetensors.torch import save_file
from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

CONFIG = dict(
    num_attention_heads=4, attention_head_dim=64, in_channels=4, out_channels=4, time_embed_dim=256,
    text_embed_dim=128, num_layers=4, sample_width=16, sample_height=16, sample_frames=13, patch_size=2,
    max_text_seq_length=8,
)
SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False, num_train_timesteps=1000,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, sample_max_value=1.0, set_alpha_to_one=True,
    snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing",
)
ATTRIBUTES = {
    "shape": ["square", "disc"],
    "size": ["small", "large"],
    "colour": ["red", "green", "blue", "white"],
    "direction": ["right", "left", "down", "up"],
}
COLOURS = torch.tensor([[1.0, -0.6, -0.6, 0.2], [-0.6, 1.0, -0.6, 0.2], [-0.6, -0.6, 1.0, 0.2], [0.8, 0.8, 0.8, 1.0]])
DIRS = [(0, 1), (0, -1), (1, 0), (-1, 0)]
FRAMES, CH, H, W = 4, 4, 16, 16


def embeddings(seed=1234, dim=128):
    g = torch.Generator().manual_seed(seed)
    return {f"{k}.{v}": torch.randn(dim, generator=g) / math.sqrt(dim) * 4 for k, vs in ATTRIBUTES.items() for v in vs}


def prompt(attrs, table, length=8, dim=128):
    tokens = torch.zeros(length, dim)
    for i, k in enumerate(ATTRIBUTES):
        tokens[i] = table[f"{k}.{attrs[k]}"]
    return tokens


def clip(attrs, g):
    size = 3 if attrs["size"] == "small" else 5
    dy, dx = DIRS[ATTRIBUTES["direction"].index(attrs["direction"])]
    y0 = torch.randint(2, H - 2, (1,), generator=g).item()
    x0 = torch.randint(2, W - 2, (1,), generator=g).item()
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    out = torch.full((FRAMES, CH, H, W), -0.8)
    colour = COLOURS[ATTRIBUTES["colour"].index(attrs["colour"])]
    for f in range(FRAMES):
        cy, cx = (y0 + 2 * dy * f) % H, (x0 + 2 * dx * f) % W
        ddy = torch.minimum((yy - cy).abs(), H - (yy - cy).abs())
        ddx = torch.minimum((xx - cx).abs(), W - (xx - cx).abs())
        if attrs["shape"] == "square":
            m = (ddy <= size // 2) & (ddx <= size // 2)
        else:
            m = (ddy**2 + ddx**2) <= (size / 2 + 0.3) ** 2
        out[f][:, m] = colour[:, None]
    return out


def random_attrs(g):
    return {k: vs[torch.randint(len(vs), (1,), generator=g).item()] for k, vs in ATTRIBUTES.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/trained/shapes")
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    table = embeddings()
    model = CogVideoXTransformer3DModel(**CONFIG)
    sched = CogVideoXDDIMScheduler(**SCHEDULER)
    ac = sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    log, start, step = [], time.time(), 0
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    while time.time() - start < args.minutes * 60:
        attrs = [random_attrs(g) for _ in range(args.batch)]
        x0 = torch.stack([clip(a, g) for a in attrs])
        emb = torch.stack([prompt(a, table) for a in attrs])
        drop = torch.rand(args.batch, generator=g) < 0.1
        emb[drop] = 0
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        a = ac[t].view(-1, 1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=g)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        pred = model(hidden_states=xt, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, v)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        frac = (time.time() - start) / (args.minutes * 60)
        for pg in opt.param_groups:  # cosine decay over the time budget
            pg["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        opt.step()
        log.append({"step": step, "seconds": round(time.time() - start, 1), "loss": loss.item()})
        if step % 50 == 0:
            print(f"step {step} t={time.time() - start:.0f}s loss {loss.item():.4f}", flush=True)
        step += 1
    os.makedirs(args.out, exist_ok=True)
    model.to(torch.float16).save_pretrained(os.path.join(args.out, "transformer"), safe_serialization=True)
    sched.save_pretrained(os.path.join(args.out, "scheduler"))
    save_file({k: v.contiguous() for k, v in table.items()}, os.path.join(args.out, "attribute_embeddings.safetensors"))
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"config": CONFIG, "batch": args.batch, "lr": args.lr, "minutes": args.minutes, "log": log}, f)
    print("wrote", args.out, "steps", step)


if __name__ == "__main__":
    main()
