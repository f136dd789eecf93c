#!/usr/bin/env python3
"""Writes Latte parity cases (format: docs/parity-cases.md, the Latte additions) from diffusers itself.

Developer tool, not a test dependency (same environment as generate_cases.py):
    .venv/bin/python tools/reference/generate_latte_cases.py --out tests/cases

Every case is a small random `LatteTransformer3DModel` (diffusers' own class, its init plus noise on every
parameter, so the adaLN tables and LayerNorms are not trivial), inputs from fixed seeds, and what diffusers
computes: a forward, or a whole `LattePipeline` call (`DDIMScheduler`, `output_type="latent"`).

First Block Cache cannot run on diffusers' Latte as shipped: `LattePipeline` sets no cache context (FBC's
state lookup raises), and the hooks would subtract the last temporal block's output (`[B*P, F, D]`) from the
first spatial block's (`[B*F, P, D]`). The FBC case therefore runs diffusers' own FBC hooks on the same
blocks with the layout fixed: each temporal block (with the permutes around it and the temporal positional
embedding) is wrapped as one module working in the spatial layout, so the head is `transformer_blocks.0`
and the tail ends in the spatial layout. The generator checks that this rewiring alone changes nothing
(uncached outputs equal bit for bit) before it uses it.
"""
import argparse
import contextlib
import sys
import types
import os

import torch
from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel
from diffusers.hooks import first_block_cache as fbc_module
from diffusers.hooks.hooks import CacheContext
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_cases import (
    Recorder, SiteRecorder, diffusers_cache_config, fbc_thresholds, instrument, write_case, write_denoise_case,
)

torch.set_grad_enabled(False)

SMALL = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
    cross_attention_dim=32, attention_bias=True, sample_size=8, patch_size=2, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    caption_channels=24, video_length=3,
)

# Latte-1's scheduler settings (DDIM, linear betas, no clipping).
SCHEDULER = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False, num_train_timesteps=1000)

FRAMES, HEIGHT, WIDTH, TEXT = 3, 8, 8, 6


def make_model(seed, **overrides):
    torch.manual_seed(seed)
    model = LatteTransformer3DModel(**{**SMALL, **overrides}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for _, p in model.named_parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def forward_case(out, name, model, batch, frames, height, width, text_len, timesteps, seed):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    hidden = torch.randn(batch, c.in_channels, frames, height, width, generator=g)
    enc = torch.randn(batch, text_len, c.caption_channels, generator=g)
    t = torch.tensor(timesteps, dtype=torch.int64)
    sample = model(hidden_states=hidden, encoder_hidden_states=enc, timestep=t, return_dict=False)[0]
    write_case(out, name, model, {"kind": "forward", "tolerance": {"rel_l2": 1e-5}},
               {"hidden_states": hidden, "encoder_hidden_states": enc, "timestep": t, "sample": sample})


class LatteSiteRecorder(SiteRecorder):
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        self.mark()
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask, temb=temb)


class TemporalStep(torch.nn.Module):
    """Latte's temporal half-step (to the temporal layout, + temp_pos_embed before block 0, the temporal
    block, back to the spatial layout) as one module in the spatial layout, so FBC's residuals line up.
    Not a child of the model: FBC's hooks on it share the head block's state."""

    def __init__(self, model, index):
        super().__init__()
        self.index, self.block, self.pos = index, model.temporal_transformer_blocks[index], model.temp_pos_embed

    def forward(self, hidden_states, timestep=None):
        batch, frames = self.batch, self.frames
        h = hidden_states.reshape(batch, -1, hidden_states.shape[-2], hidden_states.shape[-1]).permute(0, 2, 1, 3)
        h = h.reshape(-1, h.shape[-2], h.shape[-1])
        if self.index == 0 and frames > 1:
            h = h + self.pos.to(h.dtype)
        h = self.block(h, None, None, None, timestep, None, None)
        h = h.reshape(batch, -1, h.shape[-2], h.shape[-1]).permute(0, 2, 1, 3)
        return h.reshape(-1, h.shape[-2], h.shape[-1])


TransformerBlockRegistry.register(TemporalStep, TransformerBlockMetadata(return_hidden_states_index=0))


def rewired_forward(model, steps, around=None):
    """diffusers' `LatteTransformer3DModel.forward` (0.42), line for line, with each temporal half-step run as
    a `TemporalStep`. `around(model, hidden_states, t_spatial, blocks)`, when given, runs in place of the block
    loop (`blocks(hidden_states)` runs it), for rules that decide around the whole stack."""
    p = model.config.patch_size

    def forward(self, hidden_states, timestep=None, encoder_hidden_states=None, encoder_attention_mask=None,
                enable_temporal_attentions=True, return_dict=True):
        with contextlib.nullcontext():
            batch_size, channels, num_frame, height, width = hidden_states.shape
            for s in steps:
                s.batch, s.frames = batch_size, num_frame
            hidden_states = hidden_states.permute(0, 2, 1, 3, 4).reshape(-1, channels, height, width)
            height, width = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
            num_patches = height * width
            hidden_states = self.pos_embed(hidden_states)
            added = {"resolution": None, "aspect_ratio": None}
            timestep, embedded_timestep = self.adaln_single(
                timestep, added_cond_kwargs=added, batch_size=batch_size, hidden_dtype=hidden_states.dtype)
            enc = self.caption_projection(encoder_hidden_states)
            enc_spatial = enc.repeat_interleave(num_frame, dim=0).view(-1, enc.shape[-2], enc.shape[-1])
            t_spatial = timestep.repeat_interleave(num_frame, dim=0).view(-1, timestep.shape[-1])
            t_temp = timestep.repeat_interleave(num_patches, dim=0).view(-1, timestep.shape[-1])
            def blocks(hidden_states):
                for spatial_block, step in zip(self.transformer_blocks, steps):
                    hidden_states = spatial_block(hidden_states, None, enc_spatial, encoder_attention_mask,
                                                  t_spatial, None, None)
                    hidden_states = step(hidden_states, t_temp)
                return hidden_states

            hidden_states = blocks(hidden_states) if around is None else around(self, hidden_states, t_spatial, blocks)
            embedded_timestep = embedded_timestep.repeat_interleave(num_frame, dim=0).view(
                -1, embedded_timestep.shape[-1])
            shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
            hidden_states = self.norm_out(hidden_states)
            hidden_states = hidden_states * (1 + scale) + shift
            hidden_states = self.proj_out(hidden_states)
            hidden_states = hidden_states.reshape(shape=(-1, height, width, p, p, self.out_channels))
            hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
            output = hidden_states.reshape(shape=(-1, self.out_channels, height * p, width * p))
            output = output.reshape(batch_size, -1, output.shape[-3], output.shape[-2], output.shape[-1]).permute(
                0, 2, 1, 3, 4)
            return (output,)

    return types.MethodType(forward, model)


def rewire(model, state, head_hook, block_hook, hook_names):
    """Rewires the forward (temporal half-steps as `TemporalStep`s, checked to leave the output bit for bit
    unchanged) and applies a cache's block hooks in call order: `head_hook(block, state)` on
    transformer_blocks.0, `block_hook(block, state, is_tail)` on every later block, the last temporal step as the
    tail. Returns an undo function."""
    steps = [TemporalStep(model, i) for i in range(len(model.temporal_transformer_blocks))]
    g = torch.Generator().manual_seed(99)
    c = model.config
    x = torch.randn(2, c.in_channels, c.video_length, 8, 8, generator=g)
    e = torch.randn(2, 5, c.caption_channels, generator=g)
    t = torch.tensor([900, 100])
    stock = model(hidden_states=x, encoder_hidden_states=e, timestep=t, return_dict=False)[0]
    model.forward = rewired_forward(model, steps)
    assert torch.equal(stock, model(hidden_states=x, encoder_hidden_states=e, timestep=t, return_dict=False)[0])

    # The context Latte's pipeline does not set (CogVideoX's pipeline names its batched call "cond_uncond").
    state.set_context(CacheContext("cond_uncond"))
    order = []
    for spatial, step in zip(model.transformer_blocks, steps):
        order += [spatial, step]
    head_hook(order[0], state)
    for block in order[1:-1]:
        block_hook(block, state, False)
    block_hook(order[-1], state, True)

    def undo():
        del model.forward
        for block in order:
            for name in hook_names:
                if name in block._diffusers_hook.hooks:
                    block._diffusers_hook.remove_hook(name)

    return undo


def apply_fbc(model, threshold):
    """diffusers' FBC hooks on the rewired forward (`rewire`). Returns an undo function."""
    return rewire(
        model, fbc_module.StateManager(fbc_module.FBCSharedBlockState, (), {}),
        lambda block, state: fbc_module._apply_fbc_head_block_hook(block, state, threshold),
        lambda block, state, tail: fbc_module._apply_fbc_block_hook(block, state, is_tail=tail),
        (fbc_module._FBC_LEADER_BLOCK_HOOK, fbc_module._FBC_BLOCK_HOOK))


def call_pipeline(pipe, inputs, steps, guidance, videos_per_prompt=1):
    """`LattePipeline.__call__` on these inputs (one embedding row per prompt), latents out."""
    latents, prompt, negative = inputs
    return pipe(
        prompt_embeds=prompt, negative_prompt_embeds=negative, negative_prompt=None, latents=latents.clone(),
        num_images_per_prompt=videos_per_prompt,
        video_length=latents.shape[2], height=latents.shape[3] * 8, width=latents.shape[4] * 8,
        num_inference_steps=steps, guidance_scale=guidance, output_type="latent", return_dict=False,
    )[0]


def run_pipeline(model, inputs, steps, guidance, cache=None, videos_per_prompt=1):
    """One LattePipeline call (output_type="latent"); returns final latents, guided outputs, recorder."""
    latents = inputs[0]
    scheduler = DDIMScheduler(**SCHEDULER)
    pipe = LattePipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    # pos_embed runs per frame: a conditional-half-only call has each video's frames once, a full call twice.
    frames = latents.shape[0] * latents.shape[2]
    rec = Recorder(pipe, cache, LatteSiteRecorder, ("pos_embed", lambda args: args[0].shape[0] == frames))
    preds = []
    restore_fbc = instrument(scheduler, rec, preds)
    undo = None
    if cache is not None and cache["type"] == "first_block_cache":
        undo = apply_fbc(model, cache["threshold"])
        cfg = None
    else:
        cfg = diffusers_cache_config(cache, pipe)
    if cfg is not None:
        model.enable_cache(cfg)
    rec.attach(model)
    try:
        final = call_pipeline(pipe, inputs, steps, guidance, videos_per_prompt)
    finally:
        restore_fbc()
        rec.detach(model)
        if cfg is not None:
            model.disable_cache()
        if undo is not None:
            undo()
    return final, preds, rec, scheduler


def denoise_inputs(model, frames, height, width, text_len, seed):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    latents = torch.randn(1, c.in_channels, frames, height, width, generator=g)  # init_noise_sigma = 1
    prompt = torch.randn(1, text_len, c.caption_channels, generator=g)
    negative = torch.randn(1, text_len, c.caption_channels, generator=g)
    return latents, prompt, negative


def denoise_case(out, name, model, steps, guidance, seed, cache=None, inputs=None):
    inputs = inputs or denoise_inputs(model, FRAMES, HEIGHT, WIDTH, TEXT, seed)
    final, preds, rec, scheduler = run_pipeline(model, inputs, steps, guidance, cache)
    write_denoise_case(out, name, model, inputs, final, preds, rec, scheduler, steps, guidance, cache)
    skips = {}
    for s in rec.steps:
        for site, d in s.get("attention", {}).items():
            if d == "skip":
                skips[site] = skips.get(site, 0) + 1
        for k in ("blocks", "uncond"):
            if s.get(k) == "skip":
                skips[k] = skips.get(k, 0) + 1
    print("   skips:", skips)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/cases")
    args = ap.parse_args()

    latte = make_model(40)
    affine = make_model(41, norm_elementwise_affine=True, attention_bias=False)
    forward_case(args.out, "latte_forward", latte, 2, FRAMES, 8, 8, TEXT, [999, 401], seed=50)
    forward_case(args.out, "latte_forward_resized", affine, 2, FRAMES, 6, 10, 5, [500, 20], seed=51)
    forward_case(args.out, "latte_forward_one_frame", latte, 1, 1, 8, 8, 4, [250], seed=52)
    denoise_case(args.out, "latte_denoise", latte, 10, 6.0, seed=60)
    denoise_case(args.out, "latte_denoise_noguidance", affine, 6, 1.0, seed=61)

    # PAB with spatial, temporal and cross ranges together. diffusers' default spatial identifier
    # "transformer_blocks" also matches the temporal blocks' names, so with the defaults the temporal sites take
    # the spatial range (and a temporal range would have no effect; ours refuses it); the second case anchors
    # the spatial identifier so the temporal range applies to them.
    pab = {"type": "pyramid_attention_broadcast",
           "spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": [100, 800],
           "cross_attention_block_skip_range": 4, "cross_attention_timestep_skip_range": [0, 1000]}
    denoise_case(args.out, "latte_pab_default_identifiers", latte, 12, 6.0, seed=62, cache=pab)
    denoise_case(args.out, "latte_pab_all_kinds", latte, 12, 6.0, seed=63,
                 cache={**pab, "spatial_attention_block_identifiers": ["^transformer_blocks"],
                        "temporal_attention_block_skip_range": 3,
                        "temporal_attention_timestep_skip_range": [100, 900]})
    faster = {"type": "faster_cache", "spatial_attention_block_skip_range": 2,
              "spatial_attention_timestep_skip_range": [-1, 681],
              "temporal_attention_block_skip_range": 2, "temporal_attention_timestep_skip_range": [-1, 901],
              "attention_weight": 0.3,
              "low_frequency_weight_update_timestep_range": [99, 641],
              "high_frequency_weight_update_timestep_range": [-1, 301], "alpha_low_frequency": 1.1,
              "alpha_high_frequency": 1.1, "unconditional_batch_skip_range": 5,
              "unconditional_batch_timestep_skip_range": [-1, 641], "tensor_format": "BCFHW"}
    denoise_case(args.out, "latte_fastercache", latte, 12, 6.0, seed=64, cache=faster)
    inputs = denoise_inputs(latte, FRAMES, HEIGHT, WIDTH, TEXT, seed=65)
    t = fbc_thresholds(latte, inputs, 12, 6.0, run_pipeline)[0]
    denoise_case(args.out, "latte_fbc", latte, 12, 6.0, seed=65, inputs=inputs,
                 cache={"type": "first_block_cache", "threshold": t})


if __name__ == "__main__":
    main()
