#!/usr/bin/env python3
"""Writes batched denoise parity cases (format: shared/design/parity-cases-batched.md, documented in
docs/parity-cases.md) from diffusers 0.42.1: several prompts, and several videos per prompt, in one loop.

Developer tool, not a test dependency (same environment as generate_cases.py):
    .venv/bin/python tools/reference/generate_batched_cases.py --out tests/cases

Every case holds two prompts with different embeddings and different noise per video; one CogVideoX and one
Latte case also make two videos per prompt. Latte's pipeline repeats passed-in embeddings itself
(`num_images_per_prompt`); CogVideoX's sets `num_videos_per_prompt = 1` for passed-in embeddings, so its
two-per-prompt case hands the pipeline the repeated [B*V] embeddings (what diffusers' own repetition gives) and
stores the [B] ones. The engines decide as diffusers' hooks do: once per step for the whole CFG batch.

First Block Cache pools its change over the batch. Its cases' thresholds are chosen so that at some step the
two videos' own changes lie on opposite sides of the threshold (a per-video rule would split) while the pooled
change stays at least 0.004 away from it, so the pooled decisions cannot flip on float32 differences.
"""
import argparse
import os
import sys

import torch
from diffusers.hooks import first_block_cache as fbc_module

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_cases as cog  # noqa: E402
import generate_latte_cases as latte  # noqa: E402
import generate_more_cases as more  # noqa: E402

torch.set_grad_enabled(False)


def batch_inputs(layout, prompts, videos_per_prompt, text_len, text_dim, seed):
    """[B*V, ...] latents (own noise per video), [B, S, D] prompt and negative embeddings (own per prompt)."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(prompts * videos_per_prompt, *layout, generator=g)
    prompt = torch.randn(prompts, text_len, text_dim, generator=g)
    negative = torch.randn(prompts, text_len, text_dim, generator=g)
    return latents, prompt, negative


def cog_inputs(model, prompts, videos_per_prompt, frames, height, width, text_len, seed):
    c = model.config
    return batch_inputs((frames, c.in_channels, height, width), prompts, videos_per_prompt, text_len,
                        c.text_embed_dim, seed)


def latte_inputs(model, prompts, videos_per_prompt, seed):
    c = model.config
    return batch_inputs((c.in_channels, latte.FRAMES, latte.HEIGHT, latte.WIDTH), prompts, videos_per_prompt,
                        latte.TEXT, c.caption_channels, seed)


def repeated(inputs, videos_per_prompt):
    """The [B*V] embeddings diffusers' `repeat(1, V, 1).view(B*V, S, D)` makes (a prompt's copies adjacent)."""
    latents, prompt, negative = inputs

    def rep(e):
        b, s, d = e.shape
        return e.repeat(1, videos_per_prompt, 1).view(b * videos_per_prompt, s, d)

    return latents, rep(prompt), rep(negative)


class PerVideo:
    """Records, beside FBC's pooled change, each video's own change (its rows in both CFG halves; a Latte video
    has one row per frame in the spatial layout, `frames`)."""
    changes = []
    frames = 1

    @classmethod
    def install(cls):
        original = fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks

        def should_compute(hook, residual):
            prev = hook.state_manager.get_state().head_block_residual
            if prev is not None:
                f = cls.frames
                n = residual.shape[0] // (2 * f)
                per = []
                for j in range(n):
                    rows = list(range(j * f, (j + 1) * f)) + list(range((n + j) * f, (n + j + 1) * f))
                    per.append(((residual[rows] - prev[rows]).abs().mean() / prev[rows].abs().mean()).item())
                cls.changes.append(per)
            return original(hook, residual)

        fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks = should_compute


def run_cog(model, inputs, steps, guidance, cache, videos_per_prompt=1):
    return more.run_cog(model, repeated(inputs, videos_per_prompt), steps, guidance, cache)


def run_latte(model, inputs, steps, guidance, cache, videos_per_prompt=1):
    if cache is not None and cache["type"] in ("mag_cache", "taylorseer_cache"):
        assert videos_per_prompt == 1
        return more.run_latte(model, inputs, steps, guidance, cache)
    return latte.run_pipeline(model, inputs, steps, guidance, cache, videos_per_prompt)


def pooled_threshold(run, model, inputs, steps, guidance):
    """A threshold with some skips at which, at some step, the videos' own changes fall on both sides of it,
    while every pooled change it meets is at least 0.004 away."""
    PerVideo.changes = []
    _, _, rec, _ = run(model, inputs, steps, guidance, {"type": "first_block_cache", "threshold": 0.0})
    pooled = sorted(rec.changes)
    print("   pooled changes (threshold 0):", [round(c, 4) for c in rec.changes])
    print("   per-video changes:", [[round(c, 4) for c in v] for v in PerVideo.changes])
    candidates = sorted({round((a + b) / 2, 4) for a, b in zip(pooled, pooled[1:])})
    best = None
    for t in candidates:
        PerVideo.changes = []
        _, _, r, _ = run(model, inputs, steps, guidance, {"type": "first_block_cache", "threshold": t})
        margin = min(abs(c - t) for c in r.changes)
        skips = sum(s.get("blocks") == "skip" for s in r.steps)
        split = sum(1 for v in PerVideo.changes if min(v) < t < max(v))
        if margin > 0.004 and skips > 0 and split > 0 and (best is None or split > best[0]):
            best = (split, skips, t)
    assert best is not None, "no threshold where the videos' own changes split"
    print("   FBC threshold (steps split per video, skips, threshold):", best)
    return best[2]


def case(out, name, run, model, inputs, steps, guidance, cache=None, videos_per_prompt=1):
    final, preds, rec, scheduler = run(model, inputs, steps, guidance, cache, videos_per_prompt)
    cog.write_denoise_case(out, name, model, inputs, final, preds, rec, scheduler, steps, guidance, cache,
                           videos_per_prompt)
    counts = {}
    for s in rec.steps:
        for k in ("blocks", "uncond"):
            if s.get(k) == "skip":
                counts[k] = counts.get(k, 0) + 1
        for site, d in s.get("attention", {}).items():
            if d == "skip":
                counts[site] = counts.get(site, 0) + 1
    print("   skips:", counts)
    assert cache is None or counts, f"{name}: no skip"
    return final


def check_rows_independent(run, model, inputs, steps, guidance, final, videos_per_prompt=1):
    """Without a cache each video equals its own batch-1 run (the design note's claim, checked here)."""
    latents, prompt, negative = inputs
    for j in range(latents.shape[0]):
        b = j // videos_per_prompt
        one = (latents[j:j + 1], prompt[b:b + 1], negative[b:b + 1])
        alone = run(model, one, steps, guidance, None)[0]
        err = ((alone - final[j:j + 1]).norm() / alone.norm()).item()
        assert err < 1e-5, (j, err)
    print("   every video equals its batch-1 run")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/cases")
    args = ap.parse_args()
    more.Probes.install()
    PerVideo.install()
    out = args.out

    sincos = cog.make_model(0)
    rope = cog.make_model(1, use_rotary_positional_embeddings=True, attention_bias=False)

    # Uncached: two prompts under guidance, two prompts unguided, two prompts × two videos.
    inputs = cog_inputs(sincos, 2, 1, 3, 8, 8, 8, seed=80)
    final = case(out, "batch_denoise_sincos", run_cog, sincos, inputs, 8, 6.0)
    check_rows_independent(run_cog, sincos, inputs, 8, 6.0, final)
    inputs = cog_inputs(sincos, 2, 1, 2, 8, 8, 8, seed=81)
    case(out, "batch_denoise_noguidance", run_cog, sincos, inputs, 6, 1.0)
    inputs = cog_inputs(rope, 2, 2, 2, 6, 8, 6, seed=82)
    final = case(out, "batch_denoise_rotary_videos2", run_cog, rope, inputs, 8, 5.0, videos_per_prompt=2)
    check_rows_independent(run_cog, rope, inputs, 8, 5.0, final, videos_per_prompt=2)

    # Each engine on two prompts (12 steps, the schedule of the batch-1 cases).
    inputs = cog_inputs(sincos, 2, 1, 3, 8, 8, 8, seed=83)
    t = pooled_threshold(run_cog, sincos, inputs, 12, 6.0)
    case(out, "batch_fbc", run_cog, sincos, inputs, 12, 6.0, {"type": "first_block_cache", "threshold": t})
    inputs = cog_inputs(sincos, 2, 1, 3, 8, 8, 8, seed=84)
    case(out, "batch_pab", run_cog, sincos, inputs, 12, 6.0,
         {"type": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2,
          "spatial_attention_timestep_skip_range": [100, 800]})
    faster = cog.FASTER
    inputs = cog_inputs(rope, 2, 1, 2, 10, 10, 6, seed=85)
    case(out, "batch_fastercache", run_cog, rope, inputs, 12, 5.0, faster)
    inputs = cog_inputs(sincos, 2, 1, 3, 8, 8, 8, seed=86)
    ratios = more.calibrate(run_cog, sincos, inputs, 12, 6.0)
    t = more.mag_threshold(ratios, 12, 0.2, 2)
    case(out, "batch_magcache", run_cog, sincos, inputs, 12, 6.0,
         {"type": "mag_cache", "threshold": t, "max_skip_steps": 2, "retention_ratio": 0.2,
          "num_inference_steps": 12, "mag_ratios": ratios})
    inputs = cog_inputs(rope, 2, 1, 2, 6, 8, 6, seed=87)
    case(out, "batch_taylorseer", run_cog, rope, inputs, 12, 5.0,
         {"type": "taylorseer_cache", "cache_interval": 3, "disable_cache_before_step": 2,
          "disable_cache_after_step": None, "max_order": 2, "taylor_factors_dtype": "float32",
          "cache_identifiers": [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]})

    # Latte: two prompts × two videos uncached (the pipeline repeats the embeddings), pooled FBC, FasterCache.
    lmodel = latte.make_model(40)
    inputs = latte_inputs(lmodel, 2, 2, seed=90)
    final = case(out, "latte_batch_videos2", run_latte, lmodel, inputs, 8, 6.0, videos_per_prompt=2)
    check_rows_independent(run_latte, lmodel, inputs, 8, 6.0, final, videos_per_prompt=2)
    inputs = latte_inputs(lmodel, 2, 1, seed=91)
    PerVideo.frames = latte.FRAMES
    t = pooled_threshold(run_latte, lmodel, inputs, 12, 6.0)
    case(out, "latte_batch_fbc", run_latte, lmodel, inputs, 12, 6.0, {"type": "first_block_cache", "threshold": t})
    inputs = latte_inputs(lmodel, 2, 1, seed=92)
    case(out, "latte_batch_fastercache", run_latte, lmodel, inputs, 12, 6.0,
         {**faster, "temporal_attention_block_skip_range": 2, "temporal_attention_timestep_skip_range": [-1, 901],
          "tensor_format": "BCFHW"})


if __name__ == "__main__":
    main()
