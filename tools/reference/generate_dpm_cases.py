#!/usr/bin/env python3
"""Writes CogVideoX denoise cases that run `CogVideoXDPMScheduler` (format: shared/design/parity-cases-dpm.md)
from diffusers 0.42.1 itself.

Developer tool, not a test dependency (same environment as generate_cases.py):
    .venv/bin/python tools/reference/generate_dpm_cases.py --out tests/cases

The scheduler adds noise at every step. The pipeline is given a seeded generator (it reaches the scheduler
through `prepare_extra_step_kwargs`), and every `randn_tensor` draw of the scheduler module is recorded; the
last draw of each step is the one that was added (the second-order branch draws twice and adds the second),
and is written as `step_noise.{i}`. The models, inputs and the FasterCache configuration are those of
generate_cases.py; the FasterCache case records diffusers' decisions in trace.json as the other cases do.
"""
import argparse
import os
import sys

import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline
from diffusers.schedulers import scheduling_dpm_cogvideox as dpm_module

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_cases as cog  # noqa: E402

torch.set_grad_enabled(False)


class NoiseRecorder:
    """The noise each scheduler step added (`added`) and how many draws it made (`draws`)."""

    def __init__(self, scheduler):
        self.added, self.draws, self._step = [], [], []
        self._randn = dpm_module.randn_tensor
        step = scheduler.step

        def recording_randn(*args, **kwargs):
            t = self._randn(*args, **kwargs)
            self._step.append(t.clone())
            return t

        def recording_step(*args, **kwargs):
            self._step = []
            out = step(*args, **kwargs)
            self.added.append(self._step[-1])
            self.draws.append(len(self._step))
            return out

        dpm_module.randn_tensor = recording_randn
        scheduler.step = recording_step

    def restore(self):
        dpm_module.randn_tensor = self._randn


def run_pipeline(model, inputs, steps, guidance, cache=None, seed=0):
    """generate_cases.run_pipeline with CogVideoXDPMScheduler and a seeded generator; also returns the noise
    each step added."""
    latents, prompt, negative = inputs
    scheduler = CogVideoXDPMScheduler(**cog.SCHEDULER)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    videos = latents.shape[0]
    rec = cog.Recorder(pipe, cache, cog.CogVideoXSiteRecorder, ("patch_embed", lambda args: args[1].shape[0] == videos))
    preds = []
    restore_fbc = cog.instrument(scheduler, rec, preds)
    noise = NoiseRecorder(scheduler)
    cfg = cog.diffusers_cache_config(cache, pipe)
    if cfg is not None:
        model.enable_cache(cfg)
    rec.attach(model)
    try:
        frames = latents.shape[1]
        final = pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, latents=latents.clone(),
            height=latents.shape[3] * 8, width=latents.shape[4] * 8, num_frames=(frames - 1) * 4 + 1,
            num_inference_steps=steps, guidance_scale=guidance, output_type="latent", return_dict=False,
            generator=torch.Generator().manual_seed(seed),
        )[0]
    finally:
        noise.restore()
        restore_fbc()
        rec.detach(model)
        if cfg is not None:
            model.disable_cache()
    # One draw on the first step (no old x0) and on a step with prev_timestep < 0, two otherwise.
    print("   draws per step:", noise.draws)
    assert len(noise.added) == steps and noise.draws[0] == 1 and all(d == 2 for d in noise.draws[1:-1]), noise.draws
    return final, preds, rec, scheduler, noise.added


def dpm_case(out, name, model, frames, height, width, text_len, steps, guidance, seed, cache=None):
    inputs = cog.denoise_inputs(model, frames, height, width, text_len, seed)
    final, preds, rec, scheduler, noise = run_pipeline(model, inputs, steps, guidance, cache, seed=seed + 1000)
    latents, prompt, negative = inputs
    tensors = {
        "latents": latents, "prompt_embeds": prompt, "negative_prompt_embeds": negative,
        "timesteps": scheduler.timesteps.to(torch.int64), "final_latents": final,
    }
    for i, (p, n) in enumerate(zip(preds, noise)):
        tensors[f"noise_pred.{i}"] = p
        tensors[f"step_noise.{i}"] = n
    case = {"kind": "denoise", "num_inference_steps": steps, "guidance_scale": guidance, "cache": cache,
            "tolerance": {"rel_l2": 1e-3}}
    trace = {"steps": rec.steps} if cache is not None else None
    cog.write_case(out, name, model, case, tensors, scheduler=scheduler, trace=trace)
    skips = sum(d == "skip" for s in rec.steps for d in [s.get("uncond"), *s.get("attention", {}).values()])
    if cache is not None:
        print("   skips:", skips)
        assert skips, f"{name}: no skip"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/cases")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    sincos = cog.make_model(0)
    # 6 trailing steps: 999 (zero SNR, first order), 832 ... 166 (second order; 166 - 166 = 0 keeps it).
    dpm_case(args.out, "denoise_dpm", sincos, 3, 8, 8, 8, steps=6, guidance=6.0, seed=80)
    # FasterCache reads the timesteps (its ranges) and skips the unconditional half: 12 steps, as the DDIM
    # FasterCache cases, so the decisions have something to skip.
    dpm_case(args.out, "fastercache_dpm", sincos, 2, 8, 8, 8, steps=12, guidance=6.0, seed=81, cache=cog.FASTER)


if __name__ == "__main__":
    main()
