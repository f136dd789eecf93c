#!/usr/bin/env python3
"""Writes a Wan2.1-T2V-1.3B-sized forward parity case (developer check, not committed data) from diffusers 0.42.1.

    .venv/bin/python tools/reference/generate_wan_realsize.py --out /tmp/wan_realsize

`--out DIR` becomes one case directory in the format of shared/design/parity-cases-flux-wan.md (like
tests/cases/wan_forward):
- `DIR/transformer/`: a `WanTransformer3DModel` with Wan2.1-T2V-1.3B's real widths (its diffusers
  transformer/config.json: 12 heads of 128, in/out channels 16, text_dim 4096, freq_dim 256, ffn_dim 8960,
  cross_attn_norm, qk_norm rms_norm_across_heads, eps 1e-6, rope_max_seq_len 1024) but 2 of its 30 blocks (so it
  fits a 24 GB machine), diffusers' default init from a fixed seed, stored in bfloat16 and sharded as a real
  checkpoint is (`save_pretrained(max_shard_size="100MB", safe_serialization=True)`:
  `diffusion_pytorch_model-0000x-of-0000y.safetensors` plus `diffusion_pytorch_model.safetensors.index.json`).
- `DIR/case.json`: `{"family": "wan", "kind": "forward", "tolerance": {"rel_l2": 1e-5}}`.
- `DIR/case.safetensors` (float32): `hidden_states` [1, 16, 3, 30, 52] (9 frames of 240 x 416 pixels: 3 x 15 x 26
  = 1170 tokens), `encoder_hidden_states` [1, 64, 4096], `timestep` [1] = 750 and the expected `sample`: diffusers'
  float32 forward of the checkpoint loaded back with `from_pretrained(DIR/transformer, torch_dtype=torch.float32)`,
  i.e. the float32 computation on the bfloat16-rounded weights.

It prints the sizes, the timings and two conditioning checks: float32 vs float64 (the same bf16-rounded weights,
upcast exactly) must stay below 2e-6 for the 1e-5 tolerance to be meaningful, and the output's sensitivity to the
rounding of the 256 sinusoidal timestep channels (recomputed in float64 from the same float32 arguments and
rounded once), which an implementation with a different `sin`/`cos`/`exp` sees.

Replay against the project (the case directory is DIR itself):
    cargo run --release -p benches --bin ditcache -- parity /tmp/wan_realsize
"""
import argparse
import json
import math
import os
import shutil
import time

import torch
from safetensors.torch import save_file
from diffusers import WanTransformer3DModel
from diffusers.models import embeddings

torch.set_grad_enabled(False)

# Wan2.1-T2V-1.3B-Diffusers' transformer/config.json, with num_layers 30 -> 2.
CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-06, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)
SEED = 300
LATENT = (3, 30, 52)  # 9 frames of 240 x 416 pixels
TEXT_LEN = 64
TIMESTEP = 750.0
SHARD = "100MB"
WELL_CONDITIONED = 2e-6


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dir_size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def timestep_embedding_f64(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1,
                           max_period=10000):
    """diffusers' get_timestep_embedding with the same float32 arguments, each channel evaluated in float64 and
    rounded once to float32."""
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half_dim, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half_dim - downscale_freq_shift)
    freqs = torch.exp(exponent.double()).float()
    args = (scale * (timesteps[:, None].float() * freqs[None, :])).double()
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half_dim:], emb[:, :half_dim]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb.float()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the case directory to (re)create")
    args = ap.parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    t0 = time.time()
    torch.manual_seed(SEED)
    model = WanTransformer3DModel(**CONFIG).eval()
    params = sum(p.numel() for p in model.parameters())
    t1 = time.time()
    model.to(torch.bfloat16).save_pretrained(os.path.join(out, "transformer"), max_shard_size=SHARD,
                                             safe_serialization=True)
    del model
    t2 = time.time()
    print(f"model: {params / 1e6:.1f}M parameters, built in {t1 - t0:.1f}s, saved (bfloat16, sharded) in "
          f"{t2 - t1:.1f}s")

    g = torch.Generator().manual_seed(SEED + 1)
    hidden = torch.randn(1, CONFIG["in_channels"], *LATENT, generator=g)
    enc = torch.randn(1, TEXT_LEN, CONFIG["text_dim"], generator=g)
    tensors = {
        "hidden_states": hidden, "encoder_hidden_states": enc,
        "timestep": torch.tensor([TIMESTEP], dtype=torch.float32),
    }

    t3 = time.time()
    m32 = WanTransformer3DModel.from_pretrained(os.path.join(out, "transformer"), torch_dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in m32.parameters())
    t4 = time.time()
    sample = m32(return_dict=False, **tensors)[0]
    t5 = time.time()
    print(f"float32: loaded in {t4 - t3:.1f}s, forward {t5 - t4:.1f}s; sample {list(sample.shape)}, "
          f"std {sample.std().item():.4f}")

    # Sensitivity to the rounding of the sinusoidal timestep / guidance channels.
    stock = embeddings.get_timestep_embedding
    embeddings.get_timestep_embedding = timestep_embedding_f64
    try:
        sample_sin = m32(return_dict=False, **tensors)[0]
    finally:
        embeddings.get_timestep_embedding = stock

    m64 = m32.double()  # the bf16-rounded weights, exactly
    del m32
    t6 = time.time()
    sample64 = m64(return_dict=False, **{k: v.double() for k, v in tensors.items()})[0]
    t7 = time.time()
    del m64
    f32_vs_f64 = rel_l2(sample, sample64)
    sin_sensitivity = rel_l2(sample_sin, sample)
    print(f"float64: forward {t7 - t6:.1f}s")
    print(f"float32 vs float64 rel_l2: {f32_vs_f64:.3g}"
          + ("" if f32_vs_f64 <= WELL_CONDITIONED else f"  NOT well-conditioned at 1e-5 (> {WELL_CONDITIONED})"))
    print(f"float64-rounded sinusoid channels vs torch's float32 ones, rel_l2: {sin_sensitivity:.3g}")

    tensors["sample"] = sample
    for k, v in tensors.items():
        assert v.dtype == torch.float32, (k, v.dtype)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "case.safetensors"))
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump({"family": "wan", "kind": "forward", "tolerance": {"rel_l2": 1e-5}}, f, indent=2)

    tdir = os.path.join(out, "transformer")
    shards = sorted(f for f in os.listdir(tdir) if f.endswith(".safetensors"))
    for f in sorted(os.listdir(tdir)):
        print(f"   transformer/{f}: {os.path.getsize(os.path.join(tdir, f)) / 2**20:.1f} MiB")
    print(f"   case.safetensors: {os.path.getsize(os.path.join(out, 'case.safetensors')) / 2**20:.2f} MiB")
    print(f"wrote {out}: {len(shards)} shards, {dir_size(out) / 2**30:.3f} GiB in all, {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
