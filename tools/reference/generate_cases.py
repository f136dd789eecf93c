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
from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
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


def denoise_case(out, name, model, frames, height, width, text_len, steps, guidance, seed, cache=None):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, frames, c.in_channels, height, width, generator=g) * scheduler.init_noise_sigma
    prompt = torch.randn(1, text_len, c.text_embed_dim, generator=g)
    negative = torch.randn(1, text_len, c.text_embed_dim, generator=g)
    preds = []
    step = scheduler.step

    def recording_step(model_output, *args, **kwargs):
        preds.append(model_output.clone())
        return step(model_output, *args, **kwargs)

    scheduler.step = recording_step
    final = pipe(
        prompt_embeds=prompt, negative_prompt_embeds=negative, latents=latents.clone(),
        height=height * 8, width=width * 8, num_frames=(frames - 1) * 4 + 1, num_inference_steps=steps,
        guidance_scale=guidance, output_type="latent", return_dict=False,
    )[0]
    del scheduler.step
    tensors = {
        "latents": latents, "prompt_embeds": prompt, "negative_prompt_embeds": negative,
        "timesteps": scheduler.timesteps.to(torch.int64), "final_latents": final,
    }
    for i, p in enumerate(preds):
        tensors[f"noise_pred.{i}"] = p
    case = {"kind": "denoise", "num_inference_steps": steps, "guidance_scale": guidance, "cache": cache,
            "tolerance": {"rel_l2": 1e-3}}
    write_case(out, name, model, case, tensors, scheduler=scheduler)


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


if __name__ == "__main__":
    main()
