#!/usr/bin/env python3
"""Writes MagCache and TaylorSeer parity cases (format: shared/design/parity-cases-more-strategies.md) from
diffusers 0.42.1 itself, on CogVideoX (sin-cos and rotary) and Latte.

Developer tool, not a test dependency (same environment as generate_cases.py):
    .venv/bin/python tools/reference/generate_more_cases.py --out tests/cases

MagCache: each model is first run with `MagCacheConfig(calibrate=True)` (diffusers' own calibration; the ratios
it prints are stored verbatim), then a threshold is picked whose decisions skip some steps but not all, at
least 0.01 away from every accumulated error the rule meets (decisions depend on the configuration only, so no
float32 difference between implementations can flip them). Latte runs diffusers' MagCache hooks on the same
rewiring as the Latte FBC case (generate_latte_cases.py: each temporal half-step wrapped as one module in the
spatial layout), because on the stock Latte the hooks would subtract the last temporal block's output
(`[B*P, F, D]`) from the first spatial block's input (`[B*F, P, D]`).

TaylorSeer: diffusers' default patterns hook nothing on either family (their attention modules end in `attn1`),
so every case sets `cache_identifiers` (attention and feed-forward modules), one sets `skip_predict_identifiers`
and one keeps the default `bfloat16` factors. Latte's pipeline sets no cache context; the generator sets
`cond_uncond` (the batched CFG call), as the CogVideoX pipeline does.
"""
import argparse
import os
import sys

import numpy as np
import torch
from diffusers import MagCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks import mag_cache as mag_module
from diffusers.hooks import taylorseer_cache as ts_module
from diffusers.hooks.hooks import CacheContext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_cases as cog  # noqa: E402
import generate_latte_cases as latte  # noqa: E402

torch.set_grad_enabled(False)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def diffusers_config(cache):
    if cache is None:
        return None
    kw = {k: v for k, v in cache.items() if k != "type"}
    if cache["type"] == "mag_cache":
        return MagCacheConfig(**kw)
    if cache["type"] == "taylorseer_cache":
        kw["taylor_factors_dtype"] = DTYPES[kw["taylor_factors_dtype"]]
        return TaylorSeerCacheConfig(**kw)
    return None


class Probes:
    """Records MagCache's per-step decision and calibration ratios, and TaylorSeer's per-module decisions, into
    the active recorder (`Probes.rec`)."""
    rec = None
    ratios = []

    @classmethod
    def install(cls):
        head = mag_module.MagCacheHeadHook.new_forward

        def mag_head(hook, module, *args, **kwargs):
            out = head(hook, module, *args, **kwargs)
            if cls.rec is not None:
                cls.rec.entry()["blocks"] = "compute" if hook.state_manager.get_state().should_compute else "skip"
            return out

        mag_module.MagCacheHeadHook.new_forward = mag_head
        calib = mag_module.MagCacheBlockHook._perform_calibration_step

        def calibration(hook, state, residual):
            calib(hook, state, residual)
            cls.ratios.append(state.calibration_ratios[-1])

        mag_module.MagCacheBlockHook._perform_calibration_step = calibration
        measure = ts_module.TaylorSeerCacheHook._measure_should_compute

        def ts_measure(hook):
            should, state = measure(hook)
            if cls.rec is not None:
                cls.rec.entry().setdefault("attention", {})[hook._case_name] = "compute" if should else "skip"
            return should, state

        ts_module.TaylorSeerCacheHook._measure_should_compute = ts_measure


def name_taylorseer_hooks(model, context=None):
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.hooks.get(ts_module._TAYLORSEER_CACHE_HOOK) if registry is not None else None
        if hook is not None:
            hook._case_name = name
            if context is not None:
                hook.state_manager.set_context(CacheContext(context))


def run_cog(model, inputs, steps, guidance, cache):
    """generate_cases.run_pipeline with the new engines enabled through `enable_cache`."""
    original = cog.diffusers_cache_config

    def config(c, pipe):
        cfg = diffusers_config(c)
        return cfg if cfg is not None else original(c, pipe)

    cog.diffusers_cache_config = config
    enable = type(model).enable_cache

    def enable_and_name(self, cfg):
        enable(self, cfg)
        name_taylorseer_hooks(self)

    type(model).enable_cache = enable_and_name
    try:
        rec_holder = {}
        Recorder = cog.Recorder

        class Rec(Recorder):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                Probes.rec = self
                rec_holder["rec"] = self

        cog.Recorder = Rec
        try:
            return cog.run_pipeline(model, inputs, steps, guidance, cache)
        finally:
            cog.Recorder = Recorder
    finally:
        cog.diffusers_cache_config = original
        type(model).enable_cache = enable
        Probes.rec = None


def apply_mag_latte(model, cfg):
    """diffusers' MagCache hooks on the rewired Latte (generate_latte_cases.rewire). Returns an undo function."""
    return latte.rewire(
        model, mag_module.StateManager(mag_module.MagCacheState, (), {}),
        lambda block, state: mag_module._apply_mag_cache_head_hook(block, state, cfg),
        lambda block, state, tail: mag_module._apply_mag_cache_block_hook(block, state, cfg, is_tail=tail),
        (mag_module._MAG_CACHE_LEADER_BLOCK_HOOK, mag_module._MAG_CACHE_BLOCK_HOOK))


def run_latte(model, inputs, steps, guidance, cache):
    """generate_latte_cases.run_pipeline, with MagCache on the rewiring and TaylorSeer in a set context."""
    from diffusers import DDIMScheduler, LattePipeline

    latents = inputs[0]
    scheduler = DDIMScheduler(**latte.SCHEDULER)
    pipe = LattePipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    frames = latents.shape[0] * latents.shape[2]
    rec = cog.Recorder(pipe, cache, latte.LatteSiteRecorder, ("pos_embed", lambda args: args[0].shape[0] == frames))
    Probes.rec = rec
    preds = []
    restore = cog.instrument(scheduler, rec, preds)
    undo = None
    cfg = diffusers_config(cache)
    if cache["type"] == "mag_cache":
        undo = apply_mag_latte(model, cfg)
    else:
        model.enable_cache(cfg)
        name_taylorseer_hooks(model, "cond_uncond")
    try:
        final = latte.call_pipeline(pipe, inputs, steps, guidance)
    finally:
        restore()
        Probes.rec = None
        if undo is not None:
            undo()
        else:
            model.disable_cache()
    return final, preds, rec, scheduler


def calibrate(run, model, inputs, steps, guidance):
    Probes.ratios = []
    run(model, inputs, steps, guidance, {"type": "mag_cache", "calibrate": True, "num_inference_steps": steps})
    assert len(Probes.ratios) == steps, Probes.ratios
    print("   MagCache ratios:", [round(r, 4) for r in Probes.ratios])
    return list(Probes.ratios)


def interp(ratios, n):
    r = torch.tensor(ratios)
    return mag_module.nearest_interp(r, n).tolist() if len(ratios) != n else r.tolist()


def mag_errors(ratios, n, retention_ratio, threshold, max_skip):
    """The MagCache rule in float32: (skips, accumulated errors met)."""
    r = np.array(interp(ratios, n), dtype=np.float32)
    retention = int(retention_ratio * n + 0.5)
    acc_ratio, acc_steps, acc_err, has_res = np.float32(1), 0, np.float32(0), False
    skips, errs = 0, []
    for i in range(n):
        skip = False
        if i >= retention:
            acc_ratio = np.float32(acc_ratio * r[i])
            acc_steps += 1
            acc_err = np.float32(acc_err + np.float32(abs(np.float32(1) - acc_ratio)))
            errs.append(float(acc_err))
            if has_res and acc_err <= np.float32(threshold) and acc_steps <= max_skip:
                skip = True
            else:
                acc_ratio, acc_steps, acc_err = np.float32(1), 0, np.float32(0)
        if skip:
            skips += 1
        else:
            has_res = True
    return skips, errs


def mag_threshold(ratios, n, retention_ratio, max_skip):
    """A threshold with some skips but not all, far from every accumulated error."""
    best = None
    for t in np.round(np.arange(0.005, 3.0, 0.005), 3):
        skips, errs = mag_errors(ratios, n, retention_ratio, float(t), max_skip)
        margin = min(abs(e - t) for e in errs) if errs else 0
        if 0 < skips < n - int(retention_ratio * n + 0.5) and margin > 0.01:
            if best is None or skips > best[0]:
                best = (skips, float(t))
            if skips >= (n // 3):
                break
    assert best is not None, "no threshold with some skips"
    print("   MagCache threshold (skips, threshold):", best)
    return best[1]


def case(out, name, run, write, model, inputs, steps, guidance, cache):
    final, preds, rec, scheduler = run(model, inputs, steps, guidance, cache)
    write(out, name, model, inputs, final, preds, rec, scheduler, steps, guidance, cache)
    counts = {}
    for s in rec.steps:
        if s.get("blocks") == "skip":
            counts["blocks"] = counts.get("blocks", 0) + 1
        for site, d in s.get("attention", {}).items():
            if d == "skip":
                counts[site] = counts.get(site, 0) + 1
    print("   skips:", counts)
    assert counts, f"{name}: no skip"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/cases")
    args = ap.parse_args()
    Probes.install()
    out = args.out

    sincos = cog.make_model(0)
    rope = cog.make_model(1, use_rotary_positional_embeddings=True, attention_bias=False)
    write_cog = cog.write_denoise_case

    # MagCache on CogVideoX sin-cos: 12 steps, ratios calibrated on 12.
    inputs = cog.denoise_inputs(sincos, 3, 8, 8, 8, seed=70)
    ratios = calibrate(run_cog, sincos, inputs, 12, 6.0)
    t = mag_threshold(ratios, 12, 0.2, 2)
    case(out, "magcache_sincos", run_cog, write_cog, sincos, inputs, 12, 6.0,
         {"type": "mag_cache", "threshold": t, "max_skip_steps": 2, "retention_ratio": 0.2,
          "num_inference_steps": 12, "mag_ratios": ratios})

    # MagCache on CogVideoX rotary: ratios calibrated on 12 steps, used (interpolated) on 10.
    inputs = cog.denoise_inputs(rope, 2, 6, 8, 6, seed=71)
    ratios = calibrate(run_cog, rope, inputs, 12, 5.0)
    t = mag_threshold(ratios, 10, 0.25, 3)
    case(out, "magcache_rotary_interpolated", run_cog, write_cog, rope, inputs, 10, 5.0,
         {"type": "mag_cache", "threshold": t, "max_skip_steps": 3, "retention_ratio": 0.25,
          "num_inference_steps": 10, "mag_ratios": ratios})

    # TaylorSeer on CogVideoX: attention and feed-forward, first order, float32 factors.
    ids = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]
    inputs = cog.denoise_inputs(sincos, 3, 8, 8, 8, seed=72)
    case(out, "taylorseer_sincos", run_cog, write_cog, sincos, inputs, 12, 6.0,
         {"type": "taylorseer_cache", "cache_interval": 3, "disable_cache_before_step": 2,
          "disable_cache_after_step": None, "max_order": 1, "taylor_factors_dtype": "float32",
          "cache_identifiers": ids})
    # Second order, a cool-down, one feed-forward zeroed on predicted steps.
    inputs = cog.denoise_inputs(rope, 2, 6, 8, 6, seed=73)
    case(out, "taylorseer_rotary_order2", run_cog, write_cog, rope, inputs, 12, 5.0,
         {"type": "taylorseer_cache", "cache_interval": 4, "disable_cache_before_step": 3,
          "disable_cache_after_step": 10, "max_order": 2, "taylor_factors_dtype": "float32",
          "cache_identifiers": [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.0\.ff"],
          "skip_predict_identifiers": [r"transformer_blocks\.1\.ff"]})
    # diffusers' default factor dtype (bfloat16).
    inputs = cog.denoise_inputs(sincos, 3, 8, 8, 8, seed=74)
    case(out, "taylorseer_bfloat16", run_cog, write_cog, sincos, inputs, 12, 6.0,
         {"type": "taylorseer_cache", "cache_interval": 2, "disable_cache_before_step": 2,
          "disable_cache_after_step": None, "max_order": 1, "taylor_factors_dtype": "bfloat16",
          "cache_identifiers": [r"transformer_blocks\.\d+\.attn1"]})

    # Latte.
    lmodel = latte.make_model(40)
    write_latte = cog.write_denoise_case
    inputs = latte.denoise_inputs(lmodel, latte.FRAMES, latte.HEIGHT, latte.WIDTH, latte.TEXT, seed=75)
    ratios = calibrate(run_latte, lmodel, inputs, 12, 6.0)
    t = mag_threshold(ratios, 12, 0.2, 2)
    case(out, "latte_magcache", run_latte, write_latte, lmodel, inputs, 12, 6.0,
         {"type": "mag_cache", "threshold": t, "max_skip_steps": 2, "retention_ratio": 0.2,
          "num_inference_steps": 12, "mag_ratios": ratios})
    inputs = latte.denoise_inputs(lmodel, latte.FRAMES, latte.HEIGHT, latte.WIDTH, latte.TEXT, seed=76)
    case(out, "latte_taylorseer", run_latte, write_latte, lmodel, inputs, 12, 6.0,
         {"type": "taylorseer_cache", "cache_interval": 3, "disable_cache_before_step": 2,
          "disable_cache_after_step": None, "max_order": 2, "taylor_factors_dtype": "float32",
          "cache_identifiers": [r"transformer_blocks\.\d+\.attn[12]", r"temporal_transformer_blocks\.\d+\.attn1",
                                r"(temporal_)?transformer_blocks\.\d+\.ff"]})


if __name__ == "__main__":
    main()
