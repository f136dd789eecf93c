#!/usr/bin/env python3
"""Writes half-precision parity cases (format: shared/design/parity-cases-half.md) from diffusers itself.

Developer tool, not a test dependency:
    .venv/bin/python tools/reference/generate_half_cases.py --out tests/cases

The small CogVideoX models of generate_cases.py, cast as a user loads them (`.to(torch.bfloat16)`, which is what
`from_pretrained(..., torch_dtype=torch.bfloat16)` does; the class keeps no module in float32) and saved in that
dtype; inputs stored as float32 and cast to the dtype before use; outputs stored as float32.

Each case's tolerance is 3x the distance between diffusers' half-precision result and its float32 run on the same
rounded weights and inputs (two correct half-precision implementations differ by about twice that distance).
Cache decisions are recorded in trace.json as generate_cases.py records them; thresholds are chosen with every
measured change at least 6 % (relative) away, since half-precision rounding moves the measured changes by ~1 %.
"""
import argparse
import copy
import json
import math
import os

import torch

import generate_cases as g

torch.set_grad_enabled(False)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def spread_tolerance(dist):
    """3x the measured distance, rounded up to two significant digits."""
    x = 3 * dist
    unit = 10 ** (math.floor(math.log10(x)) - 1)
    return round(math.ceil(x / unit) * unit, 12)


def rounded(model, dtype):
    """The model cast to `dtype`, and the float32 model holding the same rounded weights."""
    half = copy.deepcopy(model).to(dtype)
    return half, copy.deepcopy(half).float()


def forward_case(out, name, model, dtype_name, batch, frames, height, width, text_len, timesteps, seed):
    dtype = DTYPES[dtype_name]
    half, ref = rounded(model, dtype)
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    hidden = torch.randn(batch, frames, c.in_channels, height, width, generator=gen)
    enc = torch.randn(batch, text_len, c.text_embed_dim, generator=gen)
    t = torch.tensor(timesteps, dtype=torch.int64)
    emb = g.rotary(model, frames, height, width) if c.use_rotary_positional_embeddings else None
    sample = half(hidden_states=hidden.to(dtype), encoder_hidden_states=enc.to(dtype), timestep=t,
                  image_rotary_emb=emb, return_dict=False)[0].float()
    f32 = ref(hidden_states=hidden.to(dtype).float(), encoder_hidden_states=enc.to(dtype).float(), timestep=t,
              image_rotary_emb=emb, return_dict=False)[0]
    tol = spread_tolerance(rel_l2(sample, f32))
    g.write_case(out, name, half, {"kind": "forward", "dtype": dtype_name, "tolerance": {"rel_l2": tol}},
                 {"hidden_states": hidden, "encoder_hidden_states": enc, "timestep": t, "sample": sample})
    print(f"  {name}: half vs float32 {rel_l2(sample, f32):.3e}, tolerance {tol}")


def half_inputs(inputs, dtype):
    return tuple(x.to(dtype) for x in inputs)


def fbc_threshold(half, inputs, steps, guidance, skips_range, margin=0.06):
    """The threshold, on a grid of 0.01, whose skip count is in `skips_range` with every change it meets
    farthest (relative) from it, at least `margin` away. Half-precision changes are quantised (bf16: ~0.6 % per
    ulp at these values) and move by ~1 % between implementations, so the float32 cases' absolute 0.004 is no
    margin here."""
    _, _, rec, _ = g.run_pipeline(half, inputs, steps, guidance, {"type": "first_block_cache", "threshold": 0.0})
    print("  FBC changes at threshold 0:", sorted(round(c, 4) for c in rec.changes))
    best = None
    for t in [round(0.01 * k, 2) for k in range(5, 100)]:
        _, _, r, _ = g.run_pipeline(half, inputs, steps, guidance, {"type": "first_block_cache", "threshold": t})
        nearest = min(abs(c - t) / t for c in r.changes)
        skips = sum(s.get("blocks") == "skip" for s in r.steps)
        if nearest > margin and skips in skips_range and (best is None or nearest > best[0]):
            best = (nearest, t, skips)
    if best is None:
        raise SystemExit(f"no FBC threshold with a {margin:.0%} margin")
    print(f"  FBC threshold {best[1]}: {best[2]} skips, nearest change {best[0]:.1%} away")
    return best[1]


def denoise_case(out, name, model, dtype_name, frames, height, width, text_len, steps, guidance, seed, cache=None,
                 fbc_skips=None):
    dtype = DTYPES[dtype_name]
    half, ref = rounded(model, dtype)
    inputs = g.denoise_inputs(model, frames, height, width, text_len, seed)
    hin = half_inputs(inputs, dtype)
    if fbc_skips is not None:
        cache = {"type": "first_block_cache", "threshold": fbc_threshold(half, hin, steps, guidance, fbc_skips)}
    final, preds, rec, scheduler = g.run_pipeline(half, hin, steps, guidance, cache)
    f32, _, rec32, _ = g.run_pipeline(ref, tuple(x.float() for x in hin), steps, guidance, cache)
    if cache is not None and rec32.steps != rec.steps:
        print("  (the float32 run decides otherwise; the tolerance compares uncached runs)")
        f32, _, _, _ = g.run_pipeline(ref, tuple(x.float() for x in hin), steps, guidance, None)
        unc, _, _, _ = g.run_pipeline(half, hin, steps, guidance, None)
        dist = rel_l2(unc.float(), f32)
    else:
        dist = rel_l2(final.float(), f32)
    g.write_denoise_case(out, name, half, inputs, final.float(), [p.float() for p in preds], rec, scheduler, steps,
                         guidance, cache)
    tol = spread_tolerance(dist)
    path = os.path.join(out, name, "case.json")
    with open(path) as f:
        case = json.load(f)
    case["dtype"] = dtype_name
    case["tolerance"] = {"rel_l2": tol}
    with open(path, "w") as f:
        json.dump(case, f, indent=2)
    skips = sum(s.get("blocks") == "skip" for s in rec.steps)
    print(f"  {name}: half vs float32 {dist:.3e}, tolerance {tol}, skips {skips}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/cases")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    sincos = g.make_model(0)
    rope = g.make_model(1, use_rotary_positional_embeddings=True, attention_bias=False)
    forward_case(args.out, "half_forward_sincos_bf16", sincos, "bfloat16", 2, 3, 8, 8, 8, [999, 401], seed=10)
    forward_case(args.out, "half_forward_rotary_bf16", rope, "bfloat16", 2, 3, 8, 8, 5, [999, 1], seed=12)
    forward_case(args.out, "half_forward_sincos_f16", sincos, "float16", 2, 3, 8, 8, 8, [999, 401], seed=10)
    denoise_case(args.out, "half_denoise_sincos_bf16", sincos, "bfloat16", 3, 8, 8, 8, steps=12, guidance=6.0,
                 seed=20)
    denoise_case(args.out, "half_fbc_bf16", sincos, "bfloat16", 3, 8, 8, 8, steps=12, guidance=6.0, seed=35,
                 fbc_skips=range(2, 10))


if __name__ == "__main__":
    main()
