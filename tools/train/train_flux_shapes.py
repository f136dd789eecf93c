#!/usr/bin/env python3
"""Trains a small FLUX.1-architecture model on images of shapes (the image counterpart of train_shapes.py), so
that the cache engines meet, on FLUX's double- and single-stream blocks, features that change smoothly from step
to step as in trained models.

Developer tool (torch + diffusers, CPU is fine):
    .venv/bin/python tools/train/train_flux_shapes.py --out assets/flux_shapes --minutes 20
    .venv/bin/python tools/train/train_flux_shapes.py --expected assets/flux_shapes   # reference generation only

Data, drawn on the fly: 4 latent channels x 32 x 32 (a 256 x 256 image for FluxPipeline; 16 x 16 = 256 packed
tokens); one shape (square or disc) of a size (small/large) and a colour (the 4 channel vectors of
train_shapes.py), placed off the centre in a direction (right/left/down/up). The "prompt" is train_shapes.py's:
4 tokens, one fixed random embedding per attribute value (the same table: same seed), padded to 8 tokens; the
pooled embedding (CLIP's place) is the mean of the 4 attribute tokens. Both drop to zeros 10 % of the time so
true classifier-free guidance has something to guide. Rectified flow as FLUX: x_t = (1 - s) x0 + s eps, the
model predicts eps - x0 from timestep s (FluxPipeline passes t / 1000), s uniform then shifted by FLUX.1-dev's
scheduler at this sequence length (mu = calculate_shift(256) = base_shift). No guidance embedding (as
FLUX.1-schnell): guidance is true CFG, two calls per step. Writes diffusers' own format (`save_pretrained`, bf16
safetensors in shards with their index, as FLUX.1-dev's directory), FLUX.1-dev's scheduler config, the attribute
embeddings, a loss log and the reference generation (`expected_denoise.*`: an 8-step FluxPipeline call with
true_cfg_scale 4, output_type="latent").
"""
import argparse
import json
import math
import os
import time

import torch
from safetensors.torch import load_file, save_file
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

# The CogVideoX model's data: the same attributes, colours, directions and prompt table (same seed).
from train_shapes import ATTRIBUTES, COLOURS, DIRS, embeddings, prompt, random_attrs

CONFIG = dict(
    patch_size=1, in_channels=16, out_channels=None, num_layers=2, num_single_layers=4, attention_head_dim=32,
    num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=128, guidance_embeds=False,
    axes_dims_rope=[8, 12, 12],
)
# FLUX.1-dev's scheduler_config.json.
SCHEDULER = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000,
    shift=3.0, use_dynamic_shifting=True,
)
CH, H, W = 4, 32, 32
TOKENS, DIM = 8, 128
EXPECTED_PROMPT = {"shape": "disc", "size": "large", "colour": "red", "direction": "right"}


def pooled(tokens):
    """The pooled embedding of `[..., TOKENS, DIM]` prompt tokens: the mean of the attribute tokens."""
    return tokens[..., : len(ATTRIBUTES), :].mean(-2)


def image(attrs, g):
    size = 5 if attrs["size"] == "small" else 9
    dy, dx = DIRS[ATTRIBUTES["direction"].index(attrs["direction"])]
    cy = H // 2 + 8 * dy + torch.randint(-3, 4, (1,), generator=g).item()
    cx = W // 2 + 8 * dx + torch.randint(-3, 4, (1,), generator=g).item()
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    out = torch.full((CH, H, W), -0.8)
    if attrs["shape"] == "square":
        m = ((yy - cy).abs() <= size // 2) & ((xx - cx).abs() <= size // 2)
    else:
        m = ((yy - cy) ** 2 + (xx - cx) ** 2) <= (size / 2 + 0.3) ** 2
    out[:, m] = COLOURS[ATTRIBUTES["colour"].index(attrs["colour"])][:, None]
    return out


def pack(x):
    """FluxPipeline._pack_latents: [B, C, H, W] -> [B, (H/2)(W/2), 4C]."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def train(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    table = embeddings()
    model = FluxTransformer2DModel(**CONFIG)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, H // 2, W // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(TOKENS, 3)
    mu = SCHEDULER["base_shift"]  # calculate_shift(256, ...) at base_image_seq_len 256
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    log, start, step = [], time.time(), 0
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    while time.time() - start < args.minutes * 60:
        attrs = [random_attrs(g) for _ in range(args.batch)]
        x0 = pack(torch.stack([image(a, g) for a in attrs]))
        emb = torch.stack([prompt(a, table) for a in attrs])
        drop = torch.rand(args.batch, generator=g) < 0.1
        emb[drop] = 0
        u = torch.rand(args.batch, generator=g)
        s = math.exp(mu) / (math.exp(mu) + (1 / u.clamp(min=1e-4) - 1))
        eps = torch.randn(x0.shape, generator=g)
        xt = (1 - s.view(-1, 1, 1)) * x0 + s.view(-1, 1, 1) * eps
        pred = model(hidden_states=xt, encoder_hidden_states=emb, pooled_projections=pooled(emb), timestep=s,
                     img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, eps - x0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        frac = (time.time() - start) / (args.minutes * 60)
        for pg in opt.param_groups:  # cosine decay over the time budget
            pg["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        opt.step()
        log.append({"step": step, "seconds": round(time.time() - start, 1), "loss": round(loss.item(), 5)})
        if step % 50 == 0:
            print(f"step {step} t={time.time() - start:.0f}s loss {loss.item():.4f}", flush=True)
        step += 1
    os.makedirs(args.out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(os.path.join(args.out, "transformer"), safe_serialization=True,
                                             max_shard_size="2MB")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(os.path.join(args.out, "scheduler"))
    save_file({k: v.contiguous() for k, v in table.items()}, os.path.join(args.out, "attribute_embeddings.safetensors"))
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"config": CONFIG, "batch": args.batch, "lr": args.lr, "minutes": args.minutes, "log": log}, f)
    print("wrote", args.out, "steps", step)


def expected(d):
    torch.set_grad_enabled(False)
    model = FluxTransformer2DModel.from_pretrained(os.path.join(d, "transformer"), torch_dtype=torch.float32)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(os.path.join(d, "scheduler"))
    table = load_file(os.path.join(d, "attribute_embeddings.safetensors"))
    emb = prompt(EXPECTED_PROMPT, table)[None]
    neg = torch.zeros_like(emb)
    g = torch.Generator().manual_seed(7)
    latents = pack(torch.randn(1, CH, H, W, generator=g))
    pipe = FluxPipeline(scheduler=sched, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    final = pipe(prompt_embeds=emb, pooled_prompt_embeds=pooled(emb), negative_prompt_embeds=neg,
                 negative_pooled_prompt_embeds=pooled(neg), true_cfg_scale=4.0, latents=latents.clone(),
                 height=H * 8, width=W * 8, num_inference_steps=8, output_type="latent", return_dict=False)[0]
    save_file({"latents": latents, "prompt_embeds": emb, "pooled_prompt_embeds": pooled(emb),
               "final_latents": final.contiguous()}, os.path.join(d, "expected_denoise.safetensors"))
    with open(os.path.join(d, "expected_denoise.json"), "w") as f:
        json.dump({"prompt": EXPECTED_PROMPT, "num_inference_steps": 8, "true_cfg_scale": 4.0, "height": H * 8,
                   "width": W * 8, "latents_seed": 7, "diffusers": "0.42.1"}, f, indent=2)
    print("wrote", os.path.join(d, "expected_denoise.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/flux_shapes")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--expected", metavar="DIR", help="only write DIR's reference generation")
    args = ap.parse_args()
    if args.expected:
        expected(args.expected)
        return
    train(args)
    expected(args.out)


if __name__ == "__main__":
    main()
