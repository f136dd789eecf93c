#!/usr/bin/env python3
"""Prints the reference numbers of cache-seacache's unit tests, from diffusers 0.42.1's own SeaCache code.

Developer tool, never needed by the tests (they hold the printed numbers):
    .venv/bin/python tools/reference/seacache_filter_values.py

1. `_apply_sea_filter` (hooks/sea_cache.py l. 362-389) on a raw latent `(C, T, H, W) = (2, 3, 4, 5)` moved to
   channels-last as `_build_indicator` does (l. 392-405), printed back in `(C, T, H, W)` order.
2. The gate: decisions of diffusers' real hooks (`apply_sea_cache` on a tiny random `WanTransformer3DModel`, the
   Wan text-to-video adapter, l. 351-359) for a hand-built sequence of latents `[B=2, C=2, F=3, H=4, W=4]` and
   sigmas, called like `WanPipeline` calls the transformer (pipeline_wan.py l. 615-636: one `cache_context` per
   guidance branch with `step_index`, `sigma`, `num_inference_steps`), in two contexts with different latents. A
   call skipped iff its context's `consecutive_cached` is positive after it (l. 875 increments it on a cache hit,
   `_record_full_execution` l. 295 zeroes it on a full run). The per-step SEA distances of each context are
   printed too, from `SeaCacheSharedState.resolve_gate`'s own arithmetic (l. 210-227).
"""
import torch

from diffusers import WanTransformer3DModel
from diffusers.hooks.sea_cache import SeaCacheConfig, _apply_sea_filter

torch.manual_seed(0)


def filter_case(sigma, power_exp):
    c, t, h, w = 2, 3, 4, 5
    n = c * t * h * w
    # The test builds the same f32 values: ((i * 37) % 101) / 50 - 1, i the row-major index in (C, T, H, W).
    raw = torch.tensor([((i * 37) % 101) / 50.0 - 1.0 for i in range(n)], dtype=torch.float32).reshape(c, t, h, w)
    out = _apply_sea_filter(raw.movedim(0, -1), sigma=sigma, power_exp=power_exp).movedim(-1, 0)
    return out.flatten().tolist()


def fmt(values):
    return ", ".join(f"{v:.9e}" for v in values)


for sigma, power in [(0.7, 3.0), (0.2, 2.5)]:
    print(f"# _apply_sea_filter sigma={sigma} power_exp={power}, (C, T, H, W) order")
    print(f"[{fmt(filter_case(sigma, power))}]")

# ---- the gate -----------------------------------------------------------------------------------------------
B, C, F, H, W = 2, 2, 3, 4, 4
N = 12
SIGMAS = [1.0 - (i + 0.5) / N for i in range(N)]
# Per-step drift amplitudes: small changes (cache hits) and a few large ones (forced computes).
DRIFT = {"cond": [0.0, 0.02, 0.03, 0.02, 0.4, 0.01, 0.01, 0.02, 0.5, 0.03, 0.02, 0.01],
         "uncond": [0.0, 0.3, 0.01, 0.01, 0.01, 0.01, 0.6, 0.02, 0.02, 0.02, 0.02, 0.02]}


def latents(context, step):
    # The test builds the same f32 values. Base pattern plus a drift accumulated over the steps so far.
    n = B * C * F * H * W
    shift = 0.5 if context == "uncond" else 0.0
    acc = sum(DRIFT[context][: step + 1])
    vals = []
    for i in range(n):
        base = ((i * 53) % 97) / 48.0 - 1.0 + shift
        wave = ((i * 29 + 7) % 31) / 15.0 - 1.0
        vals.append(base + acc * wave)
    return torch.tensor(vals, dtype=torch.float32).reshape(B, C, F, H, W)


def rel_l1(cur, prev):
    # resolve_gate l. 215-227 on one indicator list.
    d = 0.0
    for a, b in zip(cur, prev):
        num = (a.float() - b.float()).abs().mean()
        den = b.float().abs().mean() + 1e-16
        d += float((num / den).detach().cpu())
    return d / len(cur)


def indicator(x, sigma, power_exp=3.0):
    return [_apply_sea_filter(lat.movedim(0, -1), sigma=sigma, power_exp=power_exp) for lat in x.unbind(0)]


for ctx in ("cond", "uncond"):
    prev = None
    ds = []
    for i in range(N):
        ind = indicator(latents(ctx, i), SIGMAS[i])
        if prev is not None:
            ds.append(rel_l1(ind, prev))
        prev = ind
    print(f"# {ctx}: SEA distance of steps 1..{N - 1} to the previous step")
    print(f"[{fmt(ds)}]")

model = WanTransformer3DModel(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=C,
    out_channels=C,
    text_dim=8,
    freq_dim=16,
    ffn_dim=16,
    num_layers=3,
    rope_max_seq_len=32,
).eval()
text = torch.randn(B, 4, 8)

CONFIGS = {
    "defaults": dict(),
    "threshold0": dict(threshold=0.0),
    "retention3_end3_unlimited": dict(threshold=10.0, retention_steps=3, cache_end_steps=3, max_consecutive_cached=0),
    "max1_order0": dict(threshold=0.5, max_consecutive_cached=1, residual_order=0),
    "threshold0.1": dict(threshold=0.1),
}
for name, kwargs in CONFIGS.items():
    model.enable_cache(SeaCacheConfig(**kwargs))
    registry = model._diffusers_hook
    hook = registry.get_hook("sea_cache_root")
    out = {"cond": [], "uncond": []}
    with torch.no_grad():
        for i in range(N):
            for ctx in ("cond", "uncond"):
                with model.cache_context(ctx, step_index=i, sigma=SIGMAS[i], num_inference_steps=N):
                    model(hidden_states=latents(ctx, i), timestep=torch.full((B,), 1000.0 * SIGMAS[i]),
                          encoder_hidden_states=text, return_dict=False)
                state = hook.state_manager._state_cache[ctx]
                out[ctx].append("S" if state.consecutive_cached > 0 else "C")
    model.disable_cache()
    for ctx in ("cond", "uncond"):
        print(f"# {name} {kwargs} {ctx}")
        print("".join(out[ctx]))
