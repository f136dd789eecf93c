#!/usr/bin/env python3
"""Trains a small Wan 2.1-architecture model on clips of moving shapes (the Wan counterpart of train_shapes.py
and train_flux_shapes.py), so that the cache engines meet, on Wan's blocks, features that change smoothly from
step to step as in trained models.

Developer tool (torch + diffusers, CPU is fine):
    .venv/bin/python tools/train/train_wan_shapes.py --out assets/wan_shapes --minutes 20 --threads 1
    .venv/bin/python tools/train/train_wan_shapes.py --expected assets/wan_shapes   # reference generation only

On a shared machine, `--threads 1` trains faster than 2 threads that wait on each other (0.7 s against 1.6-4.4 s
a step here beside a Rust build), and `--checkpoint FILE` keeps the training state every 2 minutes so that a
killed run, started again with the same arguments, goes on from there.

Data, drawn on the fly: train_shapes.py's clips (the same function, so the same pictures and motion) laid out
as Wan's latents, [C, F, H, W] = 4 channels x 4 latent frames x 16 x 16 (13 video frames of 128 x 128 pixels
for WanPipeline, whose VAE compresses time by 4 and space by 8); with patch_size (1, 2, 2) that is 4 x 8 x 8 =
256 tokens. One shape (square or disc) of a size (small/large) and a colour (4 channel vectors) moving in a
direction (right/left/down/up) by 2 latent pixels a frame. The "prompt" is train_shapes.py's: 4 tokens, one
fixed random embedding per attribute value (the same table: same seed), padded with zeros to 8 tokens (as
UMT5's output is zero past the prompt's length in WanPipeline), text_dim 128 = the table's width; dropped to
zeros 10 % of the time so classifier-free guidance has something to guide (the negative prompt at inference is
the same zeros). Rectified flow as Wan: x_t = (1 - s) x0 + s eps, the model predicts eps - x0
(`flow_prediction`) from timestep s * 1000 (WanPipeline passes the scheduler's timesteps, in [0, 1000)), s
uniform then shifted by Wan 2.1's flow_shift 3 (s' = 3 s / (1 + 2 s), the scheduler's shift at inference).
Guidance is ordinary CFG, cond and uncond as separate calls (WanPipeline).

Architecture (`CONFIG`): WanTransformer3DModel with 4 heads of 32 channels (inner dim 128), 5 blocks, FFN 256,
text_dim 128, freq_dim 256, cross-attention norm and q/k RMS norms across heads, eps 1e-6, as Wan 2.1 T2V
(no image embedder). Head dim 32 splits the rotary channels into t/h/w = 12/10/10, unequal as the real model's
128 = 44/42/42, so a Rust port that swaps the axes' widths fails the reference generation.

Writes diffusers' own format (`save_pretrained`, bf16 safetensors in 3 shards with their index, as the
Wan2.1-T2V-Diffusers directories), Wan 2.1's scheduler config (UniPCMultistepScheduler, flow_prediction, flow
sigmas, flow_shift 3, solver order 2), the attribute embeddings, a loss log and the reference generation
(`expected_denoise.*`: an 8-step WanPipeline call with guidance_scale 5, output_type="latent", on the model
loaded back from the bf16 files as float32).

What the committed model learned (20 minutes, 1798 steps of 12 clips, loss 1.08 -> ~0.07): generations from
all 64 prompts have the right colour and size, a compact blob in one place per frame (the square/disc outline is
rough), but the direction of motion is not followed reliably; the features still change smoothly from step to
step, which is what the cache benchmarks need.
"""
import argparse
import json
import math
import os
import time

import torch
from safetensors.torch import load_file, save_file
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

# The CogVideoX model's data: the same attributes, clips and prompt table (same seed), 4 x 4 x 16 x 16.
from train_shapes import CH, FRAMES, H, W, clip, embeddings, prompt, random_attrs

CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=CH, out_channels=CH,
    text_dim=128, freq_dim=256, ffn_dim=256, num_layers=5, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
# Wan2.1-T2V-{1.3B,14B}-Diffusers' scheduler_config.json (the rest are UniPC's defaults, as there).
SCHEDULER = dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    timestep_spacing="linspace", beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
)
TOKENS, DIM = 8, 128
VAE_TEMPORAL, VAE_SPATIAL = 4, 8  # WanPipeline's defaults without a VAE
NUM_FRAMES = VAE_TEMPORAL * (FRAMES - 1) + 1  # 13 video frames for 4 latent frames
EXPECTED_PROMPT = {"shape": "disc", "size": "large", "colour": "red", "direction": "right"}


def video(attrs, g):
    """A train_shapes.py clip ([F, C, H, W]) in Wan's latent layout, [C, F, H, W]."""
    return clip(attrs, g).permute(1, 0, 2, 3).contiguous()


def shift(s, flow_shift=SCHEDULER["flow_shift"]):
    """Wan's flow shift of sigmas (UniPCMultistepScheduler with use_flow_sigmas, FlowMatchEuler's `shift`)."""
    return flow_shift * s / (1 + (flow_shift - 1) * s)


def checkpoint(path, model, opt, g, log, step, seconds):
    """The training state (weights, optimiser, data generator, log, step, seconds trained), written atomically."""
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(), "log": log,
                "step": step, "seconds": seconds}, path + ".tmp")
    os.replace(path + ".tmp", path)


def train(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    table = embeddings()
    model = WanTransformer3DModel(**CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    log, start, step = [], time.time(), 0
    if args.checkpoint and os.path.exists(args.checkpoint):  # a killed run goes on where it was saved
        ck = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["generator"])
        log, step, start = ck["log"], ck["step"], time.time() - ck["seconds"]
        print(f"resumed at step {step}, {ck['seconds']:.0f} s")
    saved = time.time()
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    while time.time() - start < args.minutes * 60:
        attrs = [random_attrs(g) for _ in range(args.batch)]
        x0 = torch.stack([video(a, g) for a in attrs])
        emb = torch.stack([prompt(a, table, TOKENS, DIM) for a in attrs])
        drop = torch.rand(args.batch, generator=g) < 0.1
        emb[drop] = 0
        s = shift(torch.rand(args.batch, generator=g))
        eps = torch.randn(x0.shape, generator=g)
        xt = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * eps
        pred = model(hidden_states=xt, timestep=s * 1000, encoder_hidden_states=emb, return_dict=False)[0]
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
        if args.checkpoint and time.time() - saved > 120:
            checkpoint(args.checkpoint, model, opt, g, log, step, time.time() - start)
            saved = time.time()
    if args.checkpoint:  # the finished state: a resume after this point trains no further
        checkpoint(args.checkpoint, model, opt, g, log, step, max(time.time() - start, args.minutes * 60))
    os.makedirs(args.out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(os.path.join(args.out, "transformer"), safe_serialization=True,
                                             max_shard_size="1MB")
    UniPCMultistepScheduler(**SCHEDULER).save_pretrained(os.path.join(args.out, "scheduler"))
    save_file({k: v.contiguous() for k, v in table.items()}, os.path.join(args.out, "attribute_embeddings.safetensors"))
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"config": CONFIG, "batch": args.batch, "lr": args.lr, "minutes": args.minutes, "log": log}, f)
    print("wrote", args.out, "steps", step)


def load_transformer(d):
    """DIR's transformer as float32: what `WanTransformer3DModel.from_pretrained(..., torch_dtype=torch.float32)`
    gives, done by hand because that call needs `accelerate` for Wan (its `_keep_in_fp32_modules` force
    low_cpu_mem_usage), which the reference environment lacks: the model built from config.json, then every
    tensor of the shards named by the index, bf16 -> float32 (exact), loaded strictly."""
    path = os.path.join(d, "transformer")
    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(path))
    with open(os.path.join(path, "diffusion_pytorch_model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for name in shards:
        state.update(load_file(os.path.join(path, name)))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def generate(d, attrs, latents, steps=8, guidance_scale=5.0):
    """WanPipeline on DIR's transformer (bf16 files loaded as float32) and scheduler, from the attribute prompt
    and [1, C, F, H, W] latents; returns (prompt_embeds, negative_prompt_embeds, final latents)."""
    model = load_transformer(d)
    sched = UniPCMultistepScheduler.from_pretrained(os.path.join(d, "scheduler"))
    table = load_file(os.path.join(d, "attribute_embeddings.safetensors"))
    emb = prompt(attrs, table, TOKENS, DIM)[None]
    neg = torch.zeros_like(emb)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=sched, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    final = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, latents=latents.clone(), height=H * VAE_SPATIAL,
                 width=W * VAE_SPATIAL, num_frames=NUM_FRAMES, num_inference_steps=steps,
                 guidance_scale=guidance_scale, output_type="latent", return_dict=False)[0]
    return emb, neg, final


def expected(d):
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(1, CH, FRAMES, H, W, generator=g)
    emb, neg, final = generate(d, EXPECTED_PROMPT, latents)
    save_file({"latents": latents, "prompt_embeds": emb, "negative_prompt_embeds": neg,
               "final_latents": final.contiguous()}, os.path.join(d, "expected_denoise.safetensors"))
    with open(os.path.join(d, "expected_denoise.json"), "w") as f:
        json.dump({"prompt": EXPECTED_PROMPT, "num_inference_steps": 8, "guidance_scale": 5.0,
                   "height": H * VAE_SPATIAL, "width": W * VAE_SPATIAL, "num_frames": NUM_FRAMES, "latents_seed": 7,
                   "diffusers": "0.42.1"}, f, indent=2)
    print("wrote", os.path.join(d, "expected_denoise.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/wan_shapes")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--checkpoint", metavar="FILE", help="save the training state to FILE every 2 minutes and "
                    "resume from it when it exists (the time budget counts the seconds trained before)")
    ap.add_argument("--expected", metavar="DIR", help="only write DIR's reference generation")
    args = ap.parse_args()
    if args.expected:
        expected(args.expected)
        return
    train(args)
    expected(args.out)


if __name__ == "__main__":
    main()
