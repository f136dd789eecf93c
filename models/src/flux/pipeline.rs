//! The denoising loop of diffusers' `FluxPipeline.__call__` with `output_type="latent"`
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/pipelines/flux/pipeline_flux.py>):
//! packed latents and their `img_ids` (`_prepare_latent_image_ids`), zero `txt_ids`, the scheduler's sigmas
//! `linspace(1, 1/N, N)` shifted by `mu = calculate_shift(image_seq_len, …)`, the distilled `guidance` input,
//! and true classifier-free guidance (`true_cfg_scale > 1` with negative embeddings) as a second call per step.
//! Each call runs in its own cache context, as the pipeline's `cache_context("cond")` / `("uncond")`:
//! [`Branch::Cond`] and [`Branch::Uncond`], so every engine keeps separate state per branch.

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{Branch, CacheStrategy, CallContext, StepContext};

use super::model::{FluxInput, FluxTransformer2DModel};
use crate::error::{ModelError, Result};
use crate::ops::ModelBackend;
use crate::pipeline::{per_video, progress_bar, DenoiseInput, DenoiseOptions};
use crate::scheduler_flow_match::FlowMatchEulerDiscreteScheduler;
use crate::weights::WeightSource;

/// The VAE's downsampling of FLUX.1 (`2 ** (len(block_out_channels) - 1)`, and the pipeline's default without
/// a VAE).
pub const VAE_SCALE_FACTOR: usize = 8;

/// What one FLUX generation starts from.
///
/// # Shapes
/// - `latents`: `[B, L, C]`, the pipeline's packed `latents` argument (2×2 patches of `[B, C/4, h, w]` noise,
///   `h = 2⌊height/16⌋`, `w = 2⌊width/16⌋`, `L = (h/2)·(w/2)`)
/// - `prompt_embeds`, `negative_prompt_embeds`: `[B, S, joint_attention_dim]`
/// - `pooled_prompt_embeds`, `negative_pooled_prompt_embeds`: `[B, pooled_projection_dim]`
#[derive(Debug, Clone)]
pub struct FluxDenoiseInput<B: Backend> {
    /// Initial packed latents.
    pub latents: Tensor<B, 3>,
    /// Prompt embeddings (T5).
    pub prompt_embeds: Tensor<B, 3>,
    /// Pooled prompt embeddings (CLIP).
    pub pooled_prompt_embeds: Tensor<B, 2>,
    /// For true CFG.
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
    /// For true CFG.
    pub negative_pooled_prompt_embeds: Option<Tensor<B, 2>>,
    /// Image height in pixels, as passed to the pipeline.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of denoising steps.
    pub num_inference_steps: usize,
    /// The distilled guidance handed to the model (FLUX.1-dev: `guidance_embeds`); unused otherwise, as in
    /// diffusers.
    pub guidance_scale: f64,
    /// `> 1` with negative embeddings: true classifier-free guidance, a second call per step.
    pub true_cfg_scale: f64,
}

/// `FluxPipeline`'s transformer and scheduler.
#[derive(Debug)]
pub struct FluxPipeline<B: ModelBackend> {
    /// The transformer.
    pub transformer: FluxTransformer2DModel<B>,
    /// The scheduler.
    pub scheduler: FlowMatchEulerDiscreteScheduler,
    /// diffusers' `default_sample_size`: the latent height and width of an image generated at the default size
    /// (`default_sample_size × VAE_SCALE_FACTOR` pixels; FLUX.1: 128, a 1024 × 1024 image). Loading sets
    /// [`DEFAULT_SAMPLE_SIZE`]; a model trained at another size sets its own.
    pub default_sample_size: usize,
}

/// `FluxPipeline.default_sample_size` (latent pixels).
pub const DEFAULT_SAMPLE_SIZE: usize = 128;

/// `FluxPipeline._prepare_latent_image_ids(height // 2, width // 2)` of a `height × width` latent grid:
/// `(0, row, column)` per packed token, rows first.
pub fn latent_image_ids(height: usize, width: usize) -> Vec<[f32; 3]> {
    (0..height / 2).flat_map(|r| (0..width / 2).map(move |c| [0.0, r as f32, c as f32])).collect()
}

/// The packed token grid of an image of `height × width` pixels: `(h/2, w/2)` with `h = 2⌊height/16⌋`.
pub fn packed_grid(height: usize, width: usize) -> (usize, usize) {
    let (h, w) = (2 * (height / (VAE_SCALE_FACTOR * 2)), 2 * (width / (VAE_SCALE_FACTOR * 2)));
    (h / 2, w / 2)
}

impl<B: ModelBackend> FluxPipeline<B> {
    /// Loads a diffusers pipeline directory (`transformer/`, and `scheduler/` or FLUX.1-dev's scheduler when
    /// absent), or a model directory.
    pub fn from_pretrained(dir: &std::path::Path, device: &B::Device) -> Result<Self> {
        let transformer = FluxTransformer2DModel::from_pretrained(&crate::config_file::transformer_dir(dir), device)?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler = if scheduler_path.exists() {
            FlowMatchEulerDiscreteScheduler::from_json_file(&scheduler_path)?
        } else {
            FlowMatchEulerDiscreteScheduler::new(crate::FlowMatchEulerDiscreteSchedulerConfig::flux_dev())?
        };
        Ok(Self { transformer, scheduler, default_sample_size: DEFAULT_SAMPLE_SIZE })
    }

    /// A pipeline from a weight source and a scheduler.
    pub fn load(
        config: &super::FluxConfig,
        weights: &mut WeightSource,
        scheduler: FlowMatchEulerDiscreteScheduler,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self { transformer: FluxTransformer2DModel::load(config, weights, device)?, scheduler, default_sample_size: DEFAULT_SAMPLE_SIZE })
    }

    /// The scheduler's timesteps for `steps` steps on `image_seq_len` packed tokens, as the pipeline sets them:
    /// sigmas `linspace(1, 1/N, N)` and `mu = calculate_shift(image_seq_len, …)` from the scheduler config.
    pub fn timesteps(&mut self, steps: usize, image_seq_len: usize) -> Result<Vec<f32>> {
        Ok(self.scheduler.set_timesteps_flux(steps, image_seq_len)?.to_vec())
    }

    /// Runs one generation: resets `strategy`, then denoises for `input.num_inference_steps` steps. Returns the
    /// final packed latents `[B, L, C]`. `on_step` (if any) sees each step's index, timestep and the output
    /// the scheduler steps with (after true CFG).
    pub fn denoise<S: CacheStrategy<B> + ?Sized>(
        &mut self,
        input: FluxDenoiseInput<B>,
        strategy: &mut S,
        progress: bool,
        mut on_step: Option<&mut dyn FnMut(usize, f32, &Tensor<B, 3>)>,
    ) -> Result<Tensor<B, 3>> {
        let [b, l, _] = input.latents.dims();
        let device = input.latents.device();
        let (gh, gw) = packed_grid(input.height, input.width);
        if gh * gw != l {
            return Err(ModelError::Shape(format!(
                "latents have {l} tokens; a {}x{} image packs to {gh}x{gw} = {}",
                input.height,
                input.width,
                gh * gw
            )));
        }
        let [pb, s, _] = input.prompt_embeds.dims();
        if pb != b || input.pooled_prompt_embeds.dims()[0] != b {
            return Err(ModelError::Shape(format!("latents have {b} rows, the prompt embeddings {pb}")));
        }
        let negative = match (&input.negative_prompt_embeds, &input.negative_pooled_prompt_embeds) {
            (Some(n), Some(p)) if input.true_cfg_scale > 1.0 => {
                if n.dims() != input.prompt_embeds.dims() || p.dims() != input.pooled_prompt_embeds.dims() {
                    return Err(ModelError::Shape("negative embeddings differ in shape from the prompt's".into()));
                }
                Some((n.clone(), p.clone()))
            }
            (None, None) if input.true_cfg_scale > 1.0 => {
                return Err(ModelError::Shape("true_cfg_scale > 1 needs negative_prompt_embeds and negative_pooled_prompt_embeds".into()))
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(ModelError::Shape("true CFG needs both negative_prompt_embeds and negative_pooled_prompt_embeds".into()))
            }
            _ => None,
        };
        let timesteps = self.timesteps(input.num_inference_steps, l)?;
        let txt_ids = vec![[0.0f32; 3]; s];
        let positions = self.transformer.positions(&txt_ids, &latent_image_ids(2 * gh, 2 * gw), &device);
        // diffusers: `torch.full([1], guidance_scale, dtype=float32)`, used only with a guidance embedder.
        let guidance = self.transformer.config.guidance_embeds.then(|| vec![input.guidance_scale as f32; b]);
        strategy.reset();
        strategy.check_steps(input.num_inference_steps).map_err(ModelError::Cache)?;
        let true_cfg = input.true_cfg_scale as f32;
        let bar = progress_bar(progress, timesteps.len());
        let mut latents = input.latents;
        for (i, &t) in timesteps.iter().enumerate() {
            let step = StepContext { step: i, num_steps: timesteps.len(), timestep: t as f64, sigma: None };
            let call = |embeds: &Tensor<B, 3>, pooled: &Tensor<B, 2>, branch: Branch, strategy: &mut S, latents: &Tensor<B, 3>| {
                let x = FluxInput {
                    hidden_states: latents.clone(),
                    encoder_hidden_states: embeds.clone(),
                    pooled_projections: pooled.clone(),
                    // `timestep = t.expand(B)`, passed as `timestep / 1000` (float32).
                    timestep: vec![t / 1000.0; b],
                    guidance: guidance.clone(),
                };
                self.transformer.forward(x, &positions, &CallContext::new(step, branch, b), strategy)
            };
            let mut noise_pred = call(&input.prompt_embeds, &input.pooled_prompt_embeds, Branch::Cond, strategy, &latents)?;
            if let Some((neg, neg_pooled)) = &negative {
                let neg_pred = call(neg, neg_pooled, Branch::Uncond, strategy, &latents)?;
                noise_pred = neg_pred.clone() + (noise_pred - neg_pred) * true_cfg;
            }
            if let Some(cb) = on_step.as_mut() {
                cb(i, t, &noise_pred);
            }
            latents = self.scheduler.step(noise_pred, i, latents)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(latents)
    }
}

/// `FluxPipeline._pack_latents`: `[B, C, H, W]` → `[B, (H/2)·(W/2), 4C]` (2×2 patches, channels first within a
/// patch). `H` and `W` must be even.
pub fn pack_latents<B: Backend>(latents: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = latents.dims();
    latents.reshape([b, c, h / 2, 2, w / 2, 2]).permute([0, 2, 4, 1, 3, 5]).reshape([b, (h / 2) * (w / 2), 4 * c])
}

/// `FluxPipeline._unpack_latents` of a `h × w` latent grid: `[B, (h/2)·(w/2), 4C]` → `[B, C, h, w]`.
pub fn unpack_latents<B: Backend>(packed: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 4> {
    let [b, _, c4] = packed.dims();
    packed.reshape([b, h / 2, w / 2, c4 / 4, 2, 2]).permute([0, 3, 1, 4, 2, 5]).reshape([b, c4 / 4, h, w])
}

impl<B: ModelBackend> FluxPipeline<B> {
    /// [`FluxPipeline::denoise`] on the shared inputs of every family ([`DenoiseInput`]), so that a FLUX model
    /// runs where the video families run (`VideoModel`, the bench): an image is a clip of one frame.
    ///
    /// - `latents` `[B·V, 1, C, h, w]` (unpacked, `C = in_channels / 4`, `h` and `w` even: an `8h × 8w`
    ///   image) are packed, and the result unpacked, as the pipeline does;
    /// - `pooled_prompt_embeds` is required (and `negative_pooled_prompt_embeds` with negative embeddings);
    ///   prompts and their pooled rows are repeated per image as `num_images_per_prompt` does;
    /// - `guidance_scale`: with `guidance_embeds` (FLUX.1-dev) it is the distilled guidance input and negative
    ///   embeddings are refused (that model is not run with true CFG here: use [`FluxPipeline::denoise`]);
    ///   without (FLUX.1-schnell, the trained bench model) `guidance_scale > 1` is true CFG
    ///   (`true_cfg_scale`) with the negative embeddings, two calls per step in contexts `cond` / `uncond`.
    /// - the scheduler is deterministic: `step_noise` is not used, as for the DDIM schedulers; `on_step` is
    ///   refused (FLUX's timesteps are fractional: [`FluxPipeline::denoise`] hands them out as they are).
    pub fn denoise_unpacked(
        &mut self,
        input: DenoiseInput<B>,
        strategy: &mut dyn CacheStrategy<B>,
        options: DenoiseOptions<'_, B>,
    ) -> Result<Tensor<B, 5>> {
        if options.on_step.is_some() {
            return Err(ModelError::Unsupported(
                "on_step with FLUX through DenoiseInput: its timesteps are fractional; FluxPipeline::denoise hands them to its callback".into(),
            ));
        }
        let [n, f, c, h, w] = input.latents.dims();
        let cin = self.transformer.config.in_channels;
        if f != 1 || 4 * c != cin || h % 2 != 0 || w % 2 != 0 || h == 0 || w == 0 {
            return Err(ModelError::Shape(format!(
                "FLUX latents are [images, 1, {}, h, w] with h and w even (in_channels {cin} / 4), got {:?}",
                cin / 4,
                [n, f, c, h, w]
            )));
        }
        let v = input.num_videos_per_prompt;
        let b = input.prompt_embeds.dims()[0];
        if v == 0 || n != b * v {
            return Err(ModelError::Shape(format!(
                "latents have {n} rows; {b} prompts × num_images_per_prompt {v} need {}",
                b * v
            )));
        }
        let pooled = input
            .pooled_prompt_embeds
            .ok_or_else(|| ModelError::Shape("FLUX needs pooled_prompt_embeds ([prompts, pooled_projection_dim])".into()))?;
        let pooled_rows = |p: Tensor<B, 2>| {
            let [pb, d] = p.dims();
            p.repeat_dim(1, v).reshape([pb * v, d])
        };
        let distilled = self.transformer.config.guidance_embeds;
        let negative = match (input.negative_prompt_embeds, input.negative_pooled_prompt_embeds) {
            (Some(_), _) | (_, Some(_)) if distilled => {
                return Err(ModelError::Shape(
                    "a guidance-distilled FLUX (guidance_embeds) takes guidance_scale as its guidance input, not negative embeddings; FluxPipeline::denoise runs true CFG on it".into(),
                ))
            }
            (Some(neg), Some(neg_pooled)) => Some((per_video(neg, v), pooled_rows(neg_pooled))),
            (None, None) => None,
            _ => return Err(ModelError::Shape("true CFG needs both negative_prompt_embeds and negative_pooled_prompt_embeds".into())),
        };
        let true_cfg_scale = if distilled { 1.0 } else { input.guidance_scale };
        if true_cfg_scale > 1.0 && negative.is_none() {
            return Err(ModelError::Shape("guidance_scale > 1 needs negative_prompt_embeds and negative_pooled_prompt_embeds".into()));
        }
        let (negative_prompt_embeds, negative_pooled_prompt_embeds) = match negative {
            Some((e, p)) if true_cfg_scale > 1.0 => (Some(e), Some(p)),
            _ => (None, None),
        };
        let flux = FluxDenoiseInput {
            latents: pack_latents(input.latents.reshape([n, c, h, w])),
            prompt_embeds: per_video(input.prompt_embeds, v),
            pooled_prompt_embeds: pooled_rows(pooled),
            negative_prompt_embeds,
            negative_pooled_prompt_embeds,
            height: h * VAE_SCALE_FACTOR,
            width: w * VAE_SCALE_FACTOR,
            num_inference_steps: input.num_inference_steps,
            guidance_scale: input.guidance_scale,
            true_cfg_scale,
        };
        let out = self.denoise(flux, strategy, options.progress, None)?;
        Ok(unpack_latents(out, h, w).reshape([n, 1, c, h, w]))
    }
}
