//! Replays Wan parity cases (`shared/design/parity-cases-flux-wan.md`, `"family": "wan"`): one forward of
//! `WanTransformer3DModel`, or a `WanPipeline` generation (one or two experts) with a cache engine whose
//! decisions are compared per cache context (`cond`, `uncond`) and, with two experts, per model.

use std::path::Path;

use cache_core::{Branch, CallContext, Identity, StepContext, StepTrace};
use cache_engines::CacheConfig;
use models::input::ForwardInput;
use models::wan::{WanDenoiseInput, WanPipeline, WanTransformer3DModel};
use models::weights::read_safetensors;
use models::{HostTensor, ModelBackend};

use crate::parity::{decisions_diff, read_trace, rel_l2, take, tensor, worst_row_rel_l2, CaseSpec, Measured};

/// A forward case: `sample` against our output.
pub(crate) fn run_forward<B: ModelBackend>(dir: &Path, device: &B::Device) -> Result<f64, String> {
    let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
    let model = WanTransformer3DModel::<B>::from_pretrained(&dir.join("transformer"), device).map_err(|e| e.to_string())?;
    let expected = take(&tensors, "sample")?;
    let hidden = tensor::<B, 5>(&tensors, "hidden_states", device)?;
    let [b, _, f, h, w] = hidden.dims();
    let input = ForwardInput {
        hidden_states: hidden,
        encoder_hidden_states: tensor::<B, 3>(&tensors, "encoder_hidden_states", device)?,
        timestep: take(&tensors, "timestep")?.data.clone(),
    };
    let positions = model.positions(model.grid(f, h, w).map_err(|e| e.to_string())?, device);
    let t = input.timestep.first().copied().unwrap_or(0.0) as f64;
    let ctx = CallContext::new(StepContext { step: 0, num_steps: 1, timestep: t, sigma: None }, Branch::Unguided, b);
    let out = model.forward(input, &positions, &ctx, &mut Identity).map_err(|e| e.to_string())?;
    let out = HostTensor::from_tensor(out);
    if out.shape != expected.shape {
        return Err(format!("output shape {:?}, expected {:?}", out.shape, expected.shape));
    }
    Ok(rel_l2(&out.data, &expected.data))
}

/// The steps of two per-model traces as one trace, each entry naming the model that ran it.
fn merged(first: Vec<StepTrace>, second: Vec<StepTrace>) -> Vec<StepTrace> {
    let tag = |mut t: StepTrace, name: &str| {
        t.transformer = Some(name.into());
        t
    };
    let mut all: Vec<StepTrace> =
        first.into_iter().map(|t| tag(t, "transformer")).chain(second.into_iter().map(|t| tag(t, "transformer_2"))).collect();
    all.sort_by_key(|t| t.step);
    all
}

/// A denoise case: the final latents and, with `trace.json`, the decisions.
pub(crate) fn run_denoise<B: ModelBackend>(dir: &Path, spec: &CaseSpec, device: &B::Device) -> Result<Measured, String> {
    let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
    let mut pipe = WanPipeline::<B>::from_pretrained_with(dir, spec.boundary_ratio, device).map_err(|e| e.to_string())?;
    let steps = spec.num_inference_steps.ok_or("denoise case without num_inference_steps")?;
    let latents = tensor::<B, 5>(&tensors, "latents", device)?;
    let [_, _, f, h, w] = latents.dims();
    if let (Some(height), Some(width)) = (spec.height, spec.width) {
        if (height / models::wan::pipeline::VAE_SCALE_FACTOR_SPATIAL, width / models::wan::pipeline::VAE_SCALE_FACTOR_SPATIAL) != (h, w) {
            return Err(format!("case height × width {height} × {width} does not give the latents' {h} × {w}"));
        }
    }
    if let Some(frames) = spec.num_frames {
        if (frames - 1) / models::wan::pipeline::VAE_SCALE_FACTOR_TEMPORAL + 1 != f {
            return Err(format!("case num_frames {frames} does not give the latents' {f} frames"));
        }
    }
    let expected_t = &take(&tensors, "timesteps")?.data;
    let ours_t = pipe.timesteps(steps).map_err(|e| e.to_string())?;
    if &ours_t != expected_t {
        return Err(format!("timesteps differ: ours {ours_t:?}, diffusers {expected_t:?}"));
    }
    let input = WanDenoiseInput {
        latents,
        prompt_embeds: tensor::<B, 3>(&tensors, "prompt_embeds", device)?,
        negative_prompt_embeds: tensors
            .contains_key("negative_prompt_embeds")
            .then(|| tensor::<B, 3>(&tensors, "negative_prompt_embeds", device))
            .transpose()?,
        num_inference_steps: steps,
        guidance_scale: spec.guidance_scale.unwrap_or(5.0),
        guidance_scale_2: spec.guidance_scale_2,
    };
    let cache: CacheConfig = match &spec.cache {
        None | Some(serde_json::Value::Null) => CacheConfig::None,
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("case.json `cache`: {e}"))?,
    };
    let host = pipe.transformer.host_info();
    let (mut strategy, mut strategy_2) = match &pipe.transformer_2 {
        Some(t2) => {
            let (a, b) = cache_engines::build_experts::<B>(&cache, &host, &t2.host_info()).map_err(|e| e.to_string())?;
            (a, Some(b))
        }
        None => (cache_engines::build::<B>(&cache, &host).map_err(|e| e.to_string())?, None),
    };
    let out = pipe.denoise(input, &mut *strategy, strategy_2.as_deref_mut(), false, None).map_err(|e| e.to_string())?;
    let expected = take(&tensors, "final_latents")?;
    let out = HostTensor::from_tensor::<B, 5>(out);
    if out.shape != expected.shape {
        return Err(format!("final latents shape {:?}, expected {:?}", out.shape, expected.shape));
    }
    let ours = match &strategy_2 {
        Some(s2) => merged(strategy.stats().steps, s2.stats().steps),
        None => strategy.stats().steps,
    };
    let decisions = read_trace(dir)?.map(|t| decisions_diff(&t, &ours));
    Ok((worst_row_rel_l2(&out.data, &expected.data, out.shape[0]), decisions))
}
