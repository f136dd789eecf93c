//! The denoising loop of diffusers' `CogVideoXPipeline` with `output_type="latent"`: classifier-free guidance
//! batched as `[uncond, cond]`, `scale_model_input`, the transformer, guidance, the scheduler step.
//! No text encoder and no VAE: prompt embeddings and latents come in, latents go out.
//!
//! With `CogVideoXDPMScheduler` the step is diffusers' DPM branch (`pipeline_cogvideox.py` l. 751–761 at
//! v0.42.1): it passes the previous step's `x₀` and timestep back, and adds noise ([`crate::StepNoise`]).

use burn::tensor::Tensor;
use cache_core::{CacheStrategy, CallContext};

use super::model::CogVideoXTransformer3DModel;
use crate::error::{ModelError, Result};
use crate::input::ForwardInput;
use crate::ops::ModelBackend;
use crate::pipeline::{guided_steps, guided_steps_indexed, DenoiseInput, DenoiseOptions, Guidance};
use crate::scheduler::CogVideoXScheduler;

/// Runs one generation of every video of `input` in one loop: resets `strategy`, then denoises for
/// `input.num_inference_steps` steps with either scheduler class (`CogVideoXDPMScheduler` adds
/// `options.step_noise`). Returns the final latents `[B·V, F, C, H, W]`.
pub fn denoise<B: ModelBackend, S: CacheStrategy<B> + ?Sized>(
    model: &CogVideoXTransformer3DModel<B>,
    scheduler: &mut CogVideoXScheduler,
    input: DenoiseInput<B>,
    strategy: &mut S,
    mut options: DenoiseOptions<'_, B>,
) -> Result<Tensor<B, 5>> {
    let guidance = Guidance::new(&input)?;
    let dims = input.latents.dims();
    let [_, f, _, h, w] = dims;
    let device = input.latents.device();
    let timesteps = scheduler.set_timesteps(input.num_inference_steps)?.to_vec();
    let positions = model.positions(f, h, w, &device)?;
    let noise = std::mem::take(&mut options.step_noise);
    if matches!(scheduler, CogVideoXScheduler::Dpm(_)) {
        noise.check(timesteps.len(), dims)?;
    }
    strategy.reset();
    strategy.check_steps(input.num_inference_steps).map_err(ModelError::Cache)?;
    let scheduler = &*scheduler;
    let predict = |mut call: ForwardInput<B>, ctx: &CallContext| {
        call.hidden_states = scheduler.scale_model_input(call.hidden_states, ctx.step.timestep as i64);
        model.forward(call, &positions, ctx, strategy)
    };
    match scheduler {
        CogVideoXScheduler::Ddim(s) => {
            let step = |pred, t, latents| s.step(pred, t, latents);
            guided_steps(&guidance, &timesteps, input.latents, options, predict, step)
        }
        CogVideoXScheduler::Dpm(s) => {
            let mut old_pred_original_sample = None;
            guided_steps_indexed(&guidance, &timesteps, input.latents, options, predict, |i, pred, t, latents| {
                let back = i.checked_sub(1).map(|j| timesteps[j]);
                let noise = noise.at(i, dims, &device);
                let (prev, x0) = s.step(pred, old_pred_original_sample.take(), t, back, latents, noise)?;
                old_pred_original_sample = Some(x0);
                Ok(prev)
            })
        }
    }
}
