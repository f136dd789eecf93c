//! Replays FLUX.1 parity cases (`shared/design/parity-cases-flux-wan.md`, `"family": "flux"`): one forward of
//! `FluxTransformer2DModel`, or a `FluxPipeline` generation with a cache engine whose decisions are compared
//! per cache context (`cond`, `uncond`).

use std::collections::BTreeMap;
use std::path::Path;

use cache_core::{Branch, CallContext, Identity, StepContext};
use cache_engines::CacheConfig;
use models::flux::{FluxInput, FluxPipeline};
use models::weights::read_safetensors;
use models::{FluxDenoiseInput, FluxTransformer2DModel, HostTensor, ModelBackend};

use crate::parity::{decisions_diff, read_trace, rel_l2, take, tensor, worst_row_rel_l2, CaseSpec, Measured};

/// `[N, 3]` ids of a case tensor.
fn ids(tensors: &BTreeMap<String, HostTensor>, name: &str) -> Result<Vec<[f32; 3]>, String> {
    let t = take(tensors, name)?;
    if t.shape.len() != 2 || t.shape[1] != 3 || t.data.len() != t.shape[0] * 3 {
        return Err(format!("case.safetensors: `{name}` has shape {:?}, expected [N, 3]", t.shape));
    }
    Ok(t.data.chunks(3).map(|c| [c[0], c[1], c[2]]).collect())
}

/// A forward case: `sample` against our output.
pub(crate) fn run_forward<B: ModelBackend>(dir: &Path, device: &B::Device) -> Result<f64, String> {
    let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
    let model = FluxTransformer2DModel::<B>::from_pretrained(&dir.join("transformer"), device).map_err(|e| e.to_string())?;
    let expected = take(&tensors, "sample")?;
    let hidden = tensor::<B, 3>(&tensors, "hidden_states", device)?;
    let b = hidden.dims()[0];
    let input = FluxInput {
        hidden_states: hidden,
        encoder_hidden_states: tensor::<B, 3>(&tensors, "encoder_hidden_states", device)?,
        pooled_projections: tensor::<B, 2>(&tensors, "pooled_projections", device)?,
        timestep: take(&tensors, "timestep")?.data.clone(),
        guidance: tensors.get("guidance").map(|g| g.data.clone()),
    };
    let positions = model.positions(&ids(&tensors, "txt_ids")?, &ids(&tensors, "img_ids")?, device);
    let t = input.timestep.first().copied().unwrap_or(0.0) as f64;
    let ctx = CallContext::new(StepContext { step: 0, num_steps: 1, timestep: t, sigma: None }, Branch::Unguided, b);
    let out = model.forward(input, &positions, &ctx, &mut Identity).map_err(|e| e.to_string())?;
    let out = HostTensor::from_tensor(out);
    if out.shape != expected.shape {
        return Err(format!("output shape {:?}, expected {:?}", out.shape, expected.shape));
    }
    Ok(rel_l2(&out.data, &expected.data))
}

/// A denoise case: the final packed latents and, with `trace.json`, the decisions.
pub(crate) fn run_denoise<B: ModelBackend>(dir: &Path, spec: &CaseSpec, device: &B::Device) -> Result<Measured, String> {
    let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
    if !dir.join("scheduler").join("scheduler_config.json").exists() {
        return Err(format!("{}: a denoise case needs scheduler/scheduler_config.json", dir.display()));
    }
    let mut pipe = FluxPipeline::<B>::from_pretrained(dir, device).map_err(|e| e.to_string())?;
    let steps = spec.num_inference_steps.ok_or("denoise case without num_inference_steps")?;
    let (height, width) = match (spec.height, spec.width) {
        (Some(h), Some(w)) => (h, w),
        _ => return Err("a FLUX denoise case needs height and width".into()),
    };
    let latents = tensor::<B, 3>(&tensors, "latents", device)?;
    let expected_t = &take(&tensors, "timesteps")?.data;
    let ours_t = pipe.timesteps(steps, latents.dims()[1]).map_err(|e| e.to_string())?;
    if &ours_t != expected_t {
        return Err(format!("timesteps differ: ours {ours_t:?}, diffusers {expected_t:?}"));
    }
    let optional = |name: &str| tensors.contains_key(name).then(|| tensor::<B, 3>(&tensors, name, device)).transpose();
    let optional2 = |name: &str| tensors.contains_key(name).then(|| tensor::<B, 2>(&tensors, name, device)).transpose();
    let input = FluxDenoiseInput {
        latents,
        prompt_embeds: tensor::<B, 3>(&tensors, "prompt_embeds", device)?,
        pooled_prompt_embeds: tensor::<B, 2>(&tensors, "pooled_prompt_embeds", device)?,
        negative_prompt_embeds: optional("negative_prompt_embeds")?,
        negative_pooled_prompt_embeds: optional2("negative_pooled_prompt_embeds")?,
        height,
        width,
        num_inference_steps: steps,
        guidance_scale: spec.guidance_scale.unwrap_or(3.5),
        true_cfg_scale: spec.true_cfg_scale.unwrap_or(1.0),
    };
    let cache: CacheConfig = match &spec.cache {
        None | Some(serde_json::Value::Null) => CacheConfig::None,
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("case.json `cache`: {e}"))?,
    };
    let mut strategy = cache_engines::build::<B>(&cache, &pipe.transformer.host_info()).map_err(|e| e.to_string())?;
    let out = pipe.denoise(input, &mut *strategy, false, None).map_err(|e| e.to_string())?;
    let expected = take(&tensors, "final_latents")?;
    let out = HostTensor::from_tensor::<B, 3>(out);
    if out.shape != expected.shape {
        return Err(format!("final latents shape {:?}, expected {:?}", out.shape, expected.shape));
    }
    let decisions = read_trace(dir)?.map(|t| decisions_diff(&t, &strategy.stats().steps));
    Ok((worst_row_rel_l2(&out.data, &expected.data, out.shape[0]), decisions))
}
