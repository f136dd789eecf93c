#!/usr/bin/env python3
"""Writes the trained model's reference generation from diffusers, for the test that loads the committed
checkpoint: `assets/shapes/expected_denoise.safetensors` (initial latents, prompt and negative embeddings,
final latents of an 8-step CogVideoXPipeline call with output_type="latent", guidance 6).

    python3 tools/train/expected.py assets/shapes
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

ORDER = ["shape", "size", "colour", "direction"]
PROMPT = {"shape": "disc", "size": "large", "colour": "red", "direction": "right"}


def main():
    d = sys.argv[1]
    torch.set_grad_enabled(False)
    model = CogVideoXTransformer3DModel.from_pretrained(os.path.join(d, "transformer"), torch_dtype=torch.float32)
    sched = CogVideoXDDIMScheduler.from_pretrained(os.path.join(d, "scheduler"))
    table = load_file(os.path.join(d, "attribute_embeddings.safetensors"))
    c = model.config
    prompt = torch.zeros(1, c.max_text_seq_length, c.text_embed_dim)
    for i, k in enumerate(ORDER):
        prompt[0, i] = table[f"{k}.{PROMPT[k]}"]
    negative = torch.zeros_like(prompt)
    frames = (c.sample_frames - 1) // c.temporal_compression_ratio + 1
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(1, frames, c.in_channels, c.sample_height, c.sample_width, generator=g)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    final = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, latents=latents.clone(),
                 height=c.sample_height * 8, width=c.sample_width * 8, num_frames=c.sample_frames,
                 num_inference_steps=8, guidance_scale=6.0, output_type="latent", return_dict=False)[0]
    save_file({"latents": latents, "prompt_embeds": prompt, "negative_prompt_embeds": negative,
               "final_latents": final.contiguous()}, os.path.join(d, "expected_denoise.safetensors"))
    with open(os.path.join(d, "expected_denoise.json"), "w") as f:
        json.dump({"prompt": PROMPT, "num_inference_steps": 8, "guidance_scale": 6.0, "latents_seed": 7,
                   "diffusers": "0.42.1"}, f, indent=2)
    print("wrote", os.path.join(d, "expected_denoise.safetensors"))


if __name__ == "__main__":
    main()
