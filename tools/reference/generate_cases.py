#!/usr/bin/env python3
"""Writes parity cases (format: shared/design/parity-cases.md) from diffusers itself.

Developer tool, not a test dependency:
    python3 -m venv .venv && .venv/bin/pip install torch diffusers==0.42.1 safetensors
    .venv/bin/python tools/reference/generate_cases.py --out tests/cases

Every case is a small random CogVideoX transformer (diffusers' own class, its init plus noise on the 1-D
parameters so LayerNorm weights and biases are not the trivial 1/0), inputs drawn from fixed seeds, and what
diffusers computes: a forward, or a whole `CogVideoXPipeline` call with `output_type="latent"`.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FasterCacheConfig,
    FirstBlockCacheConfig,
    PyramidAttentionBroadcastConfig,
)
from diffusers.hooks import first_block_cache as fbc_module
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

torch.set_grad_enabled(False)

SMALL = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
    text_embed_dim=24, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
    max_text_seq_length=8,
)

SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False, num_train_timesteps=1000,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, sample_max_value=1.0, set_alpha_to_one=True,
    snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing",
)


# The FasterCache configuration of the CogVideoX cases (diffusers' CogVideoX example with a shorter schedule).
FASTER = {"type": "faster_cache", "spatial_attention_block_skip_range": 2,
          "spatial_attention_timestep_skip_range": [-1, 681], "attention_weight": 0.3,
          "low_frequency_weight_update_timestep_range": [99, 641],
          "high_frequency_weight_update_timestep_range": [-1, 301], "alpha_low_frequency": 1.1,
          "alpha_high_frequency": 1.1, "unconditional_batch_skip_range": 5,
          "unconditional_batch_timestep_skip_range": [-1, 641], "tensor_format": "BFCHW"}


def make_model(seed, **overrides):
    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(**{**SMALL, **overrides}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for _, p in model.named_parameters():
        if p.ndim == 1:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def rotary(model, frames, height, width):
    """The pipeline's `_prepare_rotary_positional_embeddings` for latents of frames x height x width."""
    c = model.config
    gh, gw = height // c.patch_size, width // c.patch_size
    crops = get_resize_crop_region_for_grid((gh, gw), c.sample_width // c.patch_size, c.sample_height // c.patch_size)
    return get_3d_rotary_pos_embed(
        embed_dim=c.attention_head_dim, crops_coords=crops, grid_size=(gh, gw), temporal_size=frames
    )


def write_case(out, name, model, case, tensors, scheduler=None, trace=None):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model.save_pretrained(os.path.join(d, "transformer"), safe_serialization=True)
    if scheduler is not None:
        scheduler.save_pretrained(os.path.join(d, "scheduler"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "case.safetensors"))
    if trace is not None:
        with open(os.path.join(d, "trace.json"), "w") as f:
            json.dump(trace, f, indent=1)
    print("wrote", d)


def forward_case(out, name, model, batch, frames, height, width, text_len, timesteps, seed):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    hidden = torch.randn(batch, frames, c.in_channels, height, width, generator=g)
    enc = torch.randn(batch, text_len, c.text_embed_dim, generator=g)
    t = torch.tensor(timesteps, dtype=torch.int64)
    emb = rotary(model, frames, height, width) if c.use_rotary_positional_embeddings else None
    sample = model(hidden_states=hidden, encoder_hidden_states=enc, timestep=t, image_rotary_emb=emb,
                   return_dict=False)[0]
    write_case(out, name, model, {"kind": "forward", "tolerance": {"rel_l2": 1e-5}},
               {"hidden_states": hidden, "encoder_hidden_states": enc, "timestep": t, "sample": sample})


class Recorder:
    """Records the decisions of diffusers' hooks per step, in trace.json's shape.

    `site_recorder` wraps an attention processor (its signature is the model's processor's); `uncond_probe` is
    (submodule name, whether that submodule's positional args show a conditional-half-only call)."""

    def __init__(self, pipe, cache, site_recorder, uncond_probe):
        self.pipe, self.kind = pipe, cache["type"] if cache else None
        self.site_recorder, self.uncond_probe = site_recorder, uncond_probe
        self.steps, self.step, self.changes, self.sites, self.handles = [], 0, [], [], []

    def entry(self):
        while len(self.steps) <= self.step:
            e = {"step": len(self.steps), "timestep": int(self.pipe.current_timestep)}
            if self.sites:
                # A site the hook skipped never reaches its processor: skipped unless the processor runs.
                e["attention"] = {n: "skip" for n in self.sites}
            self.steps.append(e)
        return self.steps[self.step]

    def attach(self, model):
        # The sites diffusers hooked: exactly those whose decisions the trace records.
        for name, module in model.named_modules():
            registry = getattr(module, "_diffusers_hook", None)
            hooked = registry is not None and any(
                k in registry.hooks for k in ("pyramid_attention_broadcast", "faster_cache_block"))
            if hooked:
                self.sites.append(name)
                module.processor = self.site_recorder(self, name, module.processor)
        if self.kind == "faster_cache":
            submodule, cond_only = self.uncond_probe

            def pre(module, args):
                self.entry()["uncond"] = "skip" if cond_only(args) else "compute"

            self.handles.append(getattr(model, submodule).register_forward_pre_hook(pre))

    def detach(self, model):
        for _, module in model.named_modules():
            if isinstance(getattr(module, "processor", None), SiteRecorder):
                module.processor = module.processor.inner
        for h in self.handles:
            h.remove()


class SiteRecorder:
    """Marks an attention site computed when its processor runs; subclasses spell out the processor's
    signature, since Attention filters kwargs by it."""

    def __init__(self, rec, name, inner):
        self.rec, self.name, self.inner = rec, name, inner

    def mark(self):
        self.rec.entry()["attention"][self.name] = "compute"


class CogVideoXSiteRecorder(SiteRecorder):
    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        self.mark()
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask,
                          image_rotary_emb=image_rotary_emb)


def diffusers_cache_config(cache, pipe):
    if cache is None:
        return None
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cache.items() if k != "type"}
    if cache["type"] == "first_block_cache":
        return FirstBlockCacheConfig(**kw)
    if cache["type"] == "pyramid_attention_broadcast":
        return PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: pipe.current_timestep, **kw)
    if cache["type"] == "faster_cache":
        w = kw.pop("attention_weight", 0.5)
        return FasterCacheConfig(current_timestep_callback=lambda: pipe.current_timestep,
                                 attention_weight_callback=lambda _: w, **kw)
    raise ValueError(cache["type"])


def instrument(scheduler, rec, preds):
    """Records each step's guided model output (in `preds`) and First Block Cache's measured changes and
    decisions (in `rec`); returns the function that undoes the FBC patch."""
    step = scheduler.step

    def recording_step(model_output, *args, **kwargs):
        preds.append(model_output.clone())
        rec.entry()
        rec.step += 1
        return step(model_output, *args, **kwargs)

    scheduler.step = recording_step
    original_should_compute = fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks

    def should_compute(hook, residual):
        state = hook.state_manager.get_state()
        if state.head_block_residual is not None:
            prev = state.head_block_residual
            rec.changes.append(((residual - prev).abs().mean() / prev.abs().mean()).item())
        result = original_should_compute(hook, residual)
        rec.entry()["blocks"] = "compute" if result else "skip"
        return result

    fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks = should_compute

    def restore():
        fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks = original_should_compute

    return restore


def write_denoise_case(out, name, model, inputs, final, preds, rec, scheduler, steps, guidance, cache,
                       videos_per_prompt=1):
    """`inputs` holds one embedding row per prompt (before the pipeline's `videos_per_prompt` repetition)."""
    latents, prompt, negative = inputs
    tensors = {
        "latents": latents, "prompt_embeds": prompt, "negative_prompt_embeds": negative,
        "timesteps": scheduler.timesteps.to(torch.int64), "final_latents": final,
    }
    for i, p in enumerate(preds):
        tensors[f"noise_pred.{i}"] = p
    case = {"kind": "denoise", "num_inference_steps": steps, "guidance_scale": guidance, "cache": cache,
            "tolerance": {"rel_l2": 1e-3}}
    if videos_per_prompt != 1:
        case["num_videos_per_prompt"] = videos_per_prompt
    trace = {"steps": rec.steps} if cache is not None else None
    write_case(out, name, model, case, tensors, scheduler=scheduler, trace=trace)


def run_pipeline(model, inputs, steps, guidance, cache=None):
    """One CogVideoXPipeline call (output_type="latent"); returns final latents, guided outputs, recorder."""
    latents, prompt, negative = inputs
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    # patch_embed(text, video): a conditional-half-only call has one video row per video, a full call two.
    videos = latents.shape[0]
    rec = Recorder(pipe, cache, CogVideoXSiteRecorder, ("patch_embed", lambda args: args[1].shape[0] == videos))
    preds = []
    restore_fbc = instrument(scheduler, rec, preds)
    cfg = diffusers_cache_config(cache, pipe)
    if cfg is not None:
        model.enable_cache(cfg)
    rec.attach(model)
    try:
        frames = latents.shape[1]
        final = pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, latents=latents.clone(),
            height=latents.shape[3] * 8, width=latents.shape[4] * 8, num_frames=(frames - 1) * 4 + 1,
            num_inference_steps=steps, guidance_scale=guidance, output_type="latent", return_dict=False,
        )[0]
    finally:
        restore_fbc()
        rec.detach(model)
        if cfg is not None:
            model.disable_cache()
    return final, preds, rec, scheduler


def denoise_inputs(model, frames, height, width, text_len, seed):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    latents = torch.randn(1, frames, c.in_channels, height, width, generator=g)  # init_noise_sigma = 1
    prompt = torch.randn(1, text_len, c.text_embed_dim, generator=g)
    negative = torch.randn(1, text_len, c.text_embed_dim, generator=g)
    return latents, prompt, negative


def denoise_case(out, name, model, frames, height, width, text_len, steps, guidance, seed, cache=None):
    inputs = denoise_inputs(model, frames, height, width, text_len, seed)
    final, preds, rec, scheduler = run_pipeline(model, inputs, steps, guidance, cache)
    write_denoise_case(out, name, model, inputs, final, preds, rec, scheduler, steps, guidance, cache)
    return rec


def fbc_thresholds(model, inputs, steps, guidance, run_pipeline=run_pipeline):
    """Two thresholds whose decisions differ, fewest skips first, each at least 0.004 away from every residual
    change it meets (float32 differences between implementations are ~1e-6, so no decision can flip)."""
    _, _, rec, _ = run_pipeline(model, inputs, steps, guidance, {"type": "first_block_cache", "threshold": 0.0})
    changes = sorted(rec.changes)
    print("FBC residual changes (threshold 0):", [round(c, 4) for c in changes])
    picked = {}
    candidates = [round((a + b) / 2, 4) for a, b in zip(changes, changes[1:])]
    candidates += [round(changes[-1] * f, 4) for f in (1.2, 1.5, 2.0)]
    for t in candidates:
        _, _, r, _ = run_pipeline(model, inputs, steps, guidance, {"type": "first_block_cache", "threshold": t})
        margin = min(abs(c - t) for c in r.changes)
        skips = sum(s.get("blocks") == "skip" for s in r.steps)
        if margin > 0.004 and skips > 0 and skips not in picked:
            picked[skips] = t
    chosen = sorted(picked.items())[:2]
    print("FBC thresholds (skips, threshold):", chosen)
    return [t for _, t in chosen]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/cases")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    sincos = make_model(0)
    forward_case(args.out, "forward_sincos", sincos, 2, 3, 8, 8, 8, [999, 401], seed=10)
    forward_case(args.out, "forward_sincos_resized", sincos, 2, 2, 6, 10, 8, [500, 20], seed=11)
    rope = make_model(1, use_rotary_positional_embeddings=True, attention_bias=False)
    forward_case(args.out, "forward_rotary", rope, 2, 3, 8, 8, 5, [999, 1], seed=12)
    forward_case(args.out, "forward_rotary_resized", rope, 2, 2, 6, 12, 7, [250, 750], seed=13)
    denoise_case(args.out, "denoise_sincos", sincos, 3, 8, 8, 8, steps=12, guidance=6.0, seed=20)
    denoise_case(args.out, "denoise_rotary", rope, 2, 6, 8, 6, steps=8, guidance=5.0, seed=21)
    denoise_case(args.out, "denoise_sincos_noguidance", sincos, 2, 8, 8, 8, steps=6, guidance=1.0, seed=22)

    # Cache strategies, each on the 12-step schedule of diffusers-behaviour.md.
    inputs = denoise_inputs(sincos, 3, 8, 8, 8, seed=30)
    for i, t in enumerate(fbc_thresholds(sincos, inputs, 12, 6.0)):
        denoise_case(args.out, f"fbc_{i}", sincos, 3, 8, 8, 8, 12, 6.0, seed=30,
                     cache={"type": "first_block_cache", "threshold": t})
    denoise_case(args.out, "pab_default_window", sincos, 3, 8, 8, 8, 12, 6.0, seed=31,
                 cache={"type": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2,
                        "spatial_attention_timestep_skip_range": [100, 800]})
    denoise_case(args.out, "pab_whole_range", rope, 2, 6, 8, 6, 12, 5.0, seed=32,
                 cache={"type": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 3,
                        "spatial_attention_timestep_skip_range": [0, 1000]})
    denoise_case(args.out, "fastercache_sincos", sincos, 3, 8, 8, 8, 12, 6.0, seed=33, cache=FASTER)
    denoise_case(args.out, "fastercache_rotary", rope, 2, 10, 10, 6, 12, 5.0, seed=34, cache=FASTER)


if __name__ == "__main__":
    main()
