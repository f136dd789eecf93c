#!/usr/bin/env python3
"""Times diffusers on what `ditcache bench --export DIR` wrote: the same model weights, the same initial latents
and prompt embeddings, the same steps, guidance and strategies. Writes JSON for `ditcache bench --compare`.

    cargo run --release -p benches --bin ditcache -- bench --export /tmp/s-bench --repeats 1
    python3 tools/reference/peer_timing.py /tmp/s-bench --threads 2 --out /tmp/diffusers.json
    cargo run --release -p benches --bin ditcache -- bench --compare /tmp/diffusers.json

A FLUX export (`bench.json` `"family": "flux"`, e.g. `--model flux-shapes`) runs FluxPipeline with the exported
scheduler config, packed latents, pooled embeddings and `true_cfg_scale` as `ditcache` runs it.

`--device cuda` runs diffusers on the GPU, each timed generation ending with `torch.cuda.synchronize()`; float32
with TF32 off unless `--tf32` (burn 0.21's CUDA matmuls run float32 through tensor cores at TF32 precision, so
`--tf32` is the like-for-like speed comparison); `tools/gpu/check.sh` uses it.

A Wan export (`"family": "wan"`, e.g. `--model wan-shapes`) runs WanPipeline (separate cond / uncond calls in
cache contexts) with the exported scheduler config; SeaCache rows apply diffusers' `apply_sea_cache`.

A stack is applied as diffusers' hooks one after the other (apply_faster_cache, apply_first_block_cache,
apply_pyramid_attention_broadcast, apply_mag_cache, apply_taylorseer_cache), in the stack's order.
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
from safetensors.torch import load_file
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_faster_cache,
    apply_first_block_cache,
    apply_mag_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.hooks.sea_cache import SeaCacheConfig, apply_sea_cache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False, num_train_timesteps=1000,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, sample_max_value=1.0, set_alpha_to_one=True,
    snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing",
)

# Fields of ours that diffusers does not have (extras, off by default).
EXTRAS = {"warmup_steps", "max_consecutive_skips", "per_sample", "memory_budget_bytes", "compound_frequency_weights"}


def apply(model, cache, pipe):
    if cache["type"] == "none":
        return
    if cache["type"] == "stack":
        for c in cache["strategies"]:
            apply(model, c, pipe)
        return
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cache.items() if k != "type" and k not in EXTRAS}
    ts = lambda: pipe.current_timestep  # noqa: E731
    if cache["type"] == "first_block_cache":
        apply_first_block_cache(model, FirstBlockCacheConfig(**kw))
    elif cache["type"] == "pyramid_attention_broadcast":
        apply_pyramid_attention_broadcast(model, PyramidAttentionBroadcastConfig(current_timestep_callback=ts, **kw))
    elif cache["type"] == "faster_cache":
        w = kw.pop("attention_weight", 0.5)
        if isinstance(w, dict):
            raise ValueError("linear attention_weight schedules are ours only")
        apply_faster_cache(model, FasterCacheConfig(current_timestep_callback=ts, attention_weight_callback=lambda _: w,
                                                    **kw))
    elif cache["type"] == "mag_cache":
        kw["mag_ratios"] = list(kw["mag_ratios"])
        apply_mag_cache(model, MagCacheConfig(**kw))
    elif cache["type"] == "taylorseer_cache":
        kw["taylor_factors_dtype"] = DTYPES[kw.get("taylor_factors_dtype", "bfloat16")]
        for k in ("cache_identifiers", "skip_predict_identifiers"):
            if k in kw:
                kw[k] = list(kw[k])
        apply_taylorseer_cache(model, TaylorSeerCacheConfig(**kw))
    elif cache["type"] == "sea_cache":
        apply_sea_cache(model, SeaCacheConfig(**kw))
    else:
        raise ValueError(cache["type"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="diffusers_timing.json")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tf32", action="store_true",
                    help="CUDA: allow TF32 in matrix products, the precision burn 0.21's CUDA matmuls run float32 at")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    if device.type == "cuda":
        # float32 by default; `--tf32` matches burn's CUDA matmuls (tensor cores at TF32, docs/backends.md).
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spec = json.load(open(os.path.join(args.dir, "bench.json")))
    inputs = {k: v.to(device) for k, v in load_file(os.path.join(args.dir, "inputs.safetensors")).items()}
    rows = []
    strategies = [{"strategy": "baseline", "cache": {"type": "none"}}] + spec["strategies"]
    warm = True
    flux = spec.get("family") == "flux"
    wan = spec.get("family") == "wan"
    for s in strategies:
        if wan:
            model = WanTransformer3DModel.from_pretrained(os.path.join(args.dir, "transformer"),
                                                          torch_dtype=torch.float32).eval().to(device)
            sched_dir = os.path.join(args.dir, "scheduler")
            sched = (UniPCMultistepScheduler.from_pretrained(sched_dir) if os.path.isdir(sched_dir)
                     else UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0, num_train_timesteps=1000))
            pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=sched, transformer=model)
        elif flux:
            model = FluxTransformer2DModel.from_pretrained(os.path.join(args.dir, "transformer"),
                                                           torch_dtype=torch.float32).eval().to(device)
            sched_dir = os.path.join(args.dir, "scheduler")
            sched = (FlowMatchEulerDiscreteScheduler.from_pretrained(sched_dir) if os.path.isdir(sched_dir)
                     else FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                          max_shift=1.15, shift=3.0, use_dynamic_shifting=True))
            pipe = FluxPipeline(scheduler=sched, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                tokenizer_2=None, transformer=model)
        else:
            model = CogVideoXTransformer3DModel.from_pretrained(os.path.join(args.dir, "transformer"),
                                                                torch_dtype=torch.float32).eval().to(device)
            pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                                     scheduler=CogVideoXDDIMScheduler(**SCHEDULER))
        pipe.set_progress_bar_config(disable=True)
        try:
            apply(model, s["cache"], pipe)
        except Exception as e:  # a configuration diffusers cannot express
            print(f"{s['strategy']}: not run in diffusers ({e})")
            rows.append({"strategy": s["strategy"], "time_s": None, "error": str(e)})
            continue
        lat = inputs["latents"]

        def gen_flux():
            neg = spec["true_cfg_scale"] > 1
            return pipe(prompt_embeds=inputs["prompt_embeds"], pooled_prompt_embeds=inputs["pooled_prompt_embeds"],
                        negative_prompt_embeds=inputs["negative_prompt_embeds"] if neg else None,
                        negative_pooled_prompt_embeds=inputs["negative_pooled_prompt_embeds"] if neg else None,
                        true_cfg_scale=spec["true_cfg_scale"], guidance_scale=spec["guidance_scale"],
                        latents=lat.clone(), height=spec["height"], width=spec["width"],
                        num_inference_steps=spec["steps"], output_type="latent", return_dict=False)[0]

        def gen_wan():
            cfg = spec["guidance_scale"] > 1
            return pipe(prompt_embeds=inputs["prompt_embeds"],
                        negative_prompt_embeds=inputs["negative_prompt_embeds"] if cfg else None,
                        latents=lat.clone(), height=lat.shape[3] * 8, width=lat.shape[4] * 8,
                        num_frames=(lat.shape[2] - 1) * 4 + 1, num_inference_steps=spec["steps"],
                        guidance_scale=spec["guidance_scale"], output_type="latent", return_dict=False)[0]

        def gen():
            if flux:
                return gen_flux()
            if wan:
                return gen_wan()
            return pipe(prompt_embeds=inputs["prompt_embeds"], negative_prompt_embeds=inputs["negative_prompt_embeds"],
                        latents=lat.clone(), height=lat.shape[3] * 8, width=lat.shape[4] * 8,
                        num_frames=(lat.shape[1] - 1) * 4 + 1, num_inference_steps=spec["steps"],
                        guidance_scale=spec["guidance_scale"], output_type="latent", return_dict=False)[0]

        times = []
        try:
            if warm:
                gen()
                sync()
                warm = False
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                gen()
                sync()
                times.append(time.perf_counter() - t0)
        except Exception as e:  # diffusers' hooks do not all compose (e.g. FasterCache with FBC)
            print(f"{s['strategy']}: failed in diffusers ({type(e).__name__}: {e})")
            rows.append({"strategy": s["strategy"], "time_s": None, "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append({"strategy": s["strategy"], "time_s": statistics.median(times), "times": times})
        print(f"{s['strategy']}: {statistics.median(times):.2f} s")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    out = {"impl": "diffusers", "torch": torch.__version__, "device": args.device, "tf32": args.tf32, "threads": args.threads,
           "machine": machine, "steps": spec["steps"], "repeats": args.repeats, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
