//! The denoising loop of diffusers' `LattePipeline` with `output_type="latent"`
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/pipelines/latte/pipeline_latte.py>):
//! classifier-free guidance batched as `[uncond, cond]`, the transformer, guidance on all output channels,
//! then the first half of the channels (the learned variance is dropped, as diffusers does for a scheduler
//! without a learned `variance_type`), then the scheduler step.
//!
//! Schedulers: `DDIMScheduler` (Latte-1's). A pipeline directory naming another scheduler class is refused.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use cache_core::CacheStrategy;

use crate::error::{ModelError, Result};
use super::model::LatteTransformer3DModel;
use crate::ops::ModelBackend;
use crate::pipeline::{guided_steps, DenoiseInput, DenoiseOptions, Guidance};
use crate::scheduler_ddim::{DDIMScheduler, DDIMSchedulerConfig};

/// The scheduler classes [`LattePipeline`] runs.
pub const SUPPORTED_SCHEDULERS: &[&str] = &["DDIMScheduler"];

/// A Latte transformer and its scheduler.
#[derive(Debug)]
pub struct LattePipeline<B: Backend> {
    /// `transformer`.
    pub transformer: LatteTransformer3DModel<B>,
    /// `scheduler`.
    pub scheduler: DDIMScheduler,
}

impl<B: ModelBackend> LattePipeline<B> {
    /// Loads `transformer/` and `scheduler/scheduler_config.json` from a diffusers pipeline directory (the
    /// text encoder and VAE are not needed: prompts come in as embeddings and latents go out).
    pub fn from_pretrained(dir: &Path, device: &B::Device) -> Result<Self> {
        let transformer = LatteTransformer3DModel::from_pretrained(&dir.join("transformer"), device)?;
        let path = dir.join("scheduler").join("scheduler_config.json");
        let config = DDIMSchedulerConfig::from_json_file(&path)?;
        let class = config.extra.get("_class_name").and_then(|v| v.as_str()).unwrap_or("DDIMScheduler");
        if !SUPPORTED_SCHEDULERS.contains(&class) {
            return Err(ModelError::Unsupported(format!(
                "{}: scheduler {class} (LattePipeline supports {})",
                path.display(),
                SUPPORTED_SCHEDULERS.join(", ")
            )));
        }
        Ok(Self { transformer, scheduler: DDIMScheduler::new(config)? })
    }

    /// Runs one generation of every video of `input` in one loop: resets `strategy`, then denoises for
    /// `input.num_inference_steps` steps.
    ///
    /// # Shapes
    /// `input.latents`: `[B·V, C, F, H, W]` → the final latents, the same shape
    pub fn denoise<S: CacheStrategy<B> + ?Sized>(
        &mut self,
        input: DenoiseInput<B>,
        strategy: &mut S,
        options: DenoiseOptions<'_, B>,
    ) -> Result<Tensor<B, 5>> {
        let model = &self.transformer;
        let guidance = Guidance::new(&input)?;
        let [_, c, f, h, w] = input.latents.dims();
        let out_c = model.config.out_channels();
        if out_c != 2 * c {
            return Err(ModelError::Shape(format!(
                "LattePipeline keeps the first half of the model's {out_c} output channels (diffusers' \
                 `noise_pred.chunk(2, dim=1)[0]`), which must equal the latents' {c} channels"
            )));
        }
        let timesteps = self.scheduler.set_timesteps(input.num_inference_steps)?.to_vec();
        let positions = model.positions(f, h, w, &input.latents.device())?;
        strategy.reset();
        strategy.check_steps(input.num_inference_steps).map_err(ModelError::Cache)?;
        let scheduler = &self.scheduler;
        guided_steps(
            &guidance,
            &timesteps,
            input.latents,
            options,
            |mut call, ctx| {
                call.hidden_states = scheduler.scale_model_input(call.hidden_states, ctx.step.timestep as i64);
                // Guidance acts per channel, so keeping the first `c` channels before it is the same as after.
                Ok(model.forward(call, &positions, ctx, strategy)?.narrow(1, 0, c))
            },
            |pred, t, latents| scheduler.step(pred, t, latents),
        )
    }
}
