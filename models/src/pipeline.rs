//! The denoising loop of diffusers' `CogVideoXPipeline` with `output_type="latent"`: classifier-free guidance
//! batched as `[uncond, cond]`, `scale_model_input`, the transformer, guidance, the scheduler step.
//! No text encoder and no VAE: prompt embeddings and latents come in, latents go out.

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{Branch, CacheStrategy, CallContext, CfgOrder, StepContext};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cogvideox::{CogVideoXTransformer3DModel, ForwardInput};
use crate::error::{ModelError, Result};
use crate::scheduler::CogVideoXDDIMScheduler;

/// What one generation starts from.
///
/// # Shapes
/// - `latents`: `[1, F, C, H, W]`, already multiplied by the scheduler's `init_noise_sigma`
/// - `prompt_embeds`, `negative_prompt_embeds`: `[1, S, text_embed_dim]`
#[derive(Debug, Clone)]
pub struct DenoiseInput<B: Backend> {
    /// Initial noisy latents.
    pub latents: Tensor<B, 5>,
    /// Prompt embeddings.
    pub prompt_embeds: Tensor<B, 3>,
    /// Negative prompt embeddings; needed when `guidance_scale > 1`.
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
    /// Number of denoising steps.
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale; `> 1` runs the batched `[uncond, cond]` pass.
    pub guidance_scale: f64,
}

/// Options of [`denoise`].
#[derive(Default)]
pub struct DenoiseOptions<'a, B: Backend> {
    /// Draw a progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
    /// Called after each step with the step index, its timestep and the guided model output.
    pub on_step: Option<&'a mut dyn FnMut(usize, i64, &Tensor<B, 5>)>,
}

/// Runs one generation: resets `strategy`, then denoises for `input.num_inference_steps` steps.
/// Returns the final latents `[1, F, C, H, W]`.
pub fn denoise<B: Backend, S: CacheStrategy<B> + ?Sized>(
    model: &CogVideoXTransformer3DModel<B>,
    scheduler: &mut CogVideoXDDIMScheduler,
    input: DenoiseInput<B>,
    strategy: &mut S,
    mut options: DenoiseOptions<'_, B>,
) -> Result<Tensor<B, 5>> {
    let [b, f, _, h, w] = input.latents.dims();
    if b != 1 {
        return Err(ModelError::Shape(format!("denoise takes one sample (batch 1), got {b}")));
    }
    let cfg = input.guidance_scale > 1.0;
    let encoder = if cfg {
        let neg = input.negative_prompt_embeds.clone().ok_or_else(|| {
            ModelError::Shape("guidance_scale > 1 needs negative_prompt_embeds".into())
        })?;
        if neg.dims() != input.prompt_embeds.dims() {
            return Err(ModelError::Shape(format!(
                "negative_prompt_embeds {:?} and prompt_embeds {:?} differ in shape",
                neg.dims(),
                input.prompt_embeds.dims()
            )));
        }
        Tensor::cat(vec![neg, input.prompt_embeds.clone()], 0)
    } else {
        input.prompt_embeds.clone()
    };
    let batch = if cfg { 2 } else { 1 };
    let branch = if cfg { Branch::Cfg(CfgOrder::UncondFirst) } else { Branch::Unguided };
    let timesteps = scheduler.set_timesteps(input.num_inference_steps)?.to_vec();
    let device = input.latents.device();
    let positions = model.positions(f, h, w, &device)?;
    strategy.reset();

    let bar = if options.progress {
        let bar = ProgressBar::new(timesteps.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}]")
                .expect("valid template"),
        );
        bar.set_prefix("denoise");
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut latents = input.latents;
    for (i, &t) in timesteps.iter().enumerate() {
        let model_input = if cfg { Tensor::cat(vec![latents.clone(), latents.clone()], 0) } else { latents.clone() };
        let model_input = scheduler.scale_model_input(model_input, t);
        let step = StepContext { step: i, num_steps: timesteps.len(), timestep: t as f64 };
        let ctx = CallContext::new(step, branch, batch);
        let call = ForwardInput {
            hidden_states: model_input,
            encoder_hidden_states: encoder.clone(),
            timestep: vec![t as f32; batch],
        };
        let noise_pred = model.forward(call, &positions, &ctx, strategy)?;
        let noise_pred = if cfg {
            let [uncond, text]: [Tensor<B, 5>; 2] = noise_pred.chunk(2, 0).try_into().expect("two halves");
            uncond.clone() + (text - uncond) * (input.guidance_scale as f32)
        } else {
            noise_pred
        };
        if let Some(cb) = options.on_step.as_mut() {
            cb(i, t, &noise_pred);
        }
        latents = scheduler.step(noise_pred, t, latents)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(latents)
}
