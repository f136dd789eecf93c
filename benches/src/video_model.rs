//! One type for the model families the tools run (CogVideoX, Latte): loading from a diffusers directory by
//! its `_class_name`, the hosts they offer, bench inputs, one generation, one forward.

use std::path::Path;

use burn::tensor::Tensor;
use cache_core::{Branch, CacheStrategy, CallContext, HostInfo, Identity, StepContext, WorkModel};
use models::weights::randn;
use models::{
    denoise, CogVideoXConfig, CogVideoXDDIMScheduler, CogVideoXDDIMSchedulerConfig, CogVideoXTransformer3DModel,
    DDIMScheduler, DDIMSchedulerConfig, DenoiseInput, DenoiseOptions, ForwardInput, LatteConfig, LattePipeline,
    LatteTransformer3DModel, ModelBackend, WeightSource,
};

use crate::bench::BenchOptions;

/// Prompt tokens of Latte bench inputs (random embeddings; Latte-1 itself takes up to 120 T5 tokens).
pub const LATTE_BENCH_TEXT_TOKENS: usize = 16;

/// A transformer and its scheduler, of either family.
#[derive(Debug)]
pub enum VideoModel<B: ModelBackend> {
    /// `CogVideoXTransformer3DModel` with `CogVideoXDDIMScheduler` (`CogVideoXPipeline`).
    CogVideoX {
        /// The transformer.
        model: CogVideoXTransformer3DModel<B>,
        /// The scheduler.
        scheduler: CogVideoXDDIMScheduler,
    },
    /// `LatteTransformer3DModel` with `DDIMScheduler` (`LattePipeline`).
    Latte(LattePipeline<B>),
}

impl<B: ModelBackend> VideoModel<B> {
    /// Loads a diffusers directory: a pipeline directory (`transformer/`, optional `scheduler/`) or a model
    /// directory. The family comes from `config.json`'s `_class_name`; without a scheduler config, the
    /// family's published one is used (CogVideoX-2b's, Latte-1's).
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self, String> {
        let transformer = if dir.join("transformer").join("config.json").exists() { dir.join("transformer") } else { dir.to_path_buf() };
        let config_path = transformer.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let class = json.get("_class_name").and_then(|v| v.as_str()).unwrap_or("CogVideoXTransformer3DModel");
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let has_scheduler = scheduler_path.exists();
        let err = |e: models::ModelError| format!("{}: {e}", dir.display());
        match class {
            "CogVideoXTransformer3DModel" => {
                let model = CogVideoXTransformer3DModel::from_pretrained(&transformer, device).map_err(err)?;
                let cfg = if has_scheduler {
                    CogVideoXDDIMSchedulerConfig::from_json_file(&scheduler_path).map_err(err)?
                } else {
                    CogVideoXDDIMSchedulerConfig::cogvideox()
                };
                Ok(Self::CogVideoX { model, scheduler: CogVideoXDDIMScheduler::new(cfg).map_err(err)? })
            }
            "LatteTransformer3DModel" if has_scheduler => Ok(Self::Latte(LattePipeline::from_pretrained(dir, device).map_err(err)?)),
            "LatteTransformer3DModel" => {
                let transformer = LatteTransformer3DModel::from_pretrained(&transformer, device).map_err(err)?;
                let scheduler = DDIMScheduler::new(DDIMSchedulerConfig::latte()).map_err(err)?;
                Ok(Self::Latte(LattePipeline { transformer, scheduler }))
            }
            other => Err(format!(
                "{}: model class {other:?} (supported: CogVideoXTransformer3DModel, LatteTransformer3DModel)",
                config_path.display()
            )),
        }
    }

    /// A CogVideoX preset with weights from `weights`, and CogVideoX-2b's scheduler.
    pub fn cogvideox(config: &CogVideoXConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self, String> {
        let model = CogVideoXTransformer3DModel::load(config, weights, device).map_err(|e| e.to_string())?;
        let scheduler = CogVideoXDDIMScheduler::new(CogVideoXDDIMSchedulerConfig::cogvideox()).map_err(|e| e.to_string())?;
        Ok(Self::CogVideoX { model, scheduler })
    }

    /// A Latte preset with weights from `weights`, and Latte-1's scheduler.
    pub fn latte(config: &LatteConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self, String> {
        let transformer = LatteTransformer3DModel::load(config, weights, device).map_err(|e| e.to_string())?;
        let scheduler = DDIMScheduler::new(DDIMSchedulerConfig::latte()).map_err(|e| e.to_string())?;
        Ok(Self::Latte(LattePipeline { transformer, scheduler }))
    }

    /// The family's diffusers class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::CogVideoX { .. } => "CogVideoXTransformer3DModel",
            Self::Latte(_) => "LatteTransformer3DModel",
        }
    }

    /// The attention sites and blocks the model offers to cache engines.
    pub fn host_info(&self) -> HostInfo {
        match self {
            Self::CogVideoX { model, .. } => model.host_info(),
            Self::Latte(p) => p.transformer.host_info(),
        }
    }

    /// The work model at the model's sample size (bench inputs).
    pub fn work_model(&self) -> WorkModel {
        match self {
            Self::CogVideoX { model, .. } => {
                let c = &model.config;
                let frames = c.latent_frames();
                let tokens = c.max_text_seq_length + frames * (c.sample_height / c.patch_size) * (c.sample_width / c.patch_size);
                WorkModel {
                    num_blocks: c.num_layers,
                    attention_share: model.attention_share(tokens),
                    ff_share: model.ff_share(tokens),
                }
            }
            Self::Latte(p) => {
                let c = &p.transformer.config;
                let patches = (c.sample_size / c.patch_size()).pow(2);
                let (f, t) = (c.video_length, LATTE_BENCH_TEXT_TOKENS);
                WorkModel {
                    num_blocks: 2 * c.num_layers,
                    attention_share: p.transformer.attention_share(f, patches, t),
                    ff_share: p.transformer.ff_share(f, patches, t),
                }
            }
        }
    }

    /// What a bench generation starts from: latents from `opts.seed` at the model's sample size, and the given
    /// (prompt, negative) embeddings or, without them, embeddings drawn from the seed too.
    pub fn bench_inputs(&self, opts: &BenchOptions, device: &B::Device) -> DenoiseInput<B> {
        let seed = opts.seed;
        let (latents, text) = match self {
            Self::CogVideoX { model, .. } => {
                let c = &model.config;
                let frames = c.latent_frames();
                ([1, frames, c.in_channels, c.sample_height, c.sample_width], [1, c.max_text_seq_length, c.text_embed_dim])
            }
            Self::Latte(p) => {
                let c = &p.transformer.config;
                let s = c.sample_size;
                ([1, c.in_channels(), c.video_length, s, s], [1, LATTE_BENCH_TEXT_TOKENS, c.caption_channels()])
            }
        };
        let (prompt, negative) = opts.prompt.clone().unwrap_or_else(|| (randn(seed + 1, &text), randn(seed + 2, &text)));
        DenoiseInput {
            latents: randn(seed, &latents).to_tensor(device),
            prompt_embeds: prompt.to_tensor(device),
            negative_prompt_embeds: Some(negative.to_tensor(device)),
            num_inference_steps: opts.steps,
            guidance_scale: opts.guidance,
        }
    }

    /// The scheduler's timesteps for `steps` steps.
    pub fn timesteps(&mut self, steps: usize) -> Result<Vec<i64>, String> {
        let t = match self {
            Self::CogVideoX { scheduler, .. } => scheduler.set_timesteps(steps),
            Self::Latte(p) => p.scheduler.set_timesteps(steps),
        };
        t.map(<[i64]>::to_vec).map_err(|e| e.to_string())
    }

    /// One generation with `strategy` (reset first).
    pub fn denoise(
        &mut self,
        input: DenoiseInput<B>,
        strategy: &mut dyn CacheStrategy<B>,
        options: DenoiseOptions<'_, B>,
    ) -> Result<Tensor<B, 5>, String> {
        match self {
            Self::CogVideoX { model, scheduler } => denoise(model, scheduler, input, strategy, options),
            Self::Latte(p) => p.denoise(input, strategy, options),
        }
        .map_err(|e| e.to_string())
    }

    /// One uncached forward of an unguided batch, positions computed from the input's size.
    ///
    /// # Shapes
    /// `input.hidden_states` in the family's layout (CogVideoX `[B, F, C, H, W]`, Latte `[B, C, F, H, W]`).
    pub fn forward(&self, input: ForwardInput<B>) -> Result<Tensor<B, 5>, String> {
        let dims = input.hidden_states.dims();
        let device = input.hidden_states.device();
        let step = StepContext { step: 0, num_steps: 1, timestep: input.timestep.first().copied().unwrap_or(0.0) as f64 };
        let ctx = CallContext::new(step, Branch::Unguided, dims[0]);
        match self {
            Self::CogVideoX { model, .. } => {
                let positions = model.positions(dims[1], dims[3], dims[4], &device).map_err(|e| e.to_string())?;
                model.forward(input, &positions, &ctx, &mut Identity)
            }
            Self::Latte(p) => {
                let positions = p.transformer.positions(dims[2], dims[3], dims[4], &device).map_err(|e| e.to_string())?;
                p.transformer.forward(input, &positions, &ctx, &mut Identity)
            }
        }
        .map_err(|e| e.to_string())
    }
}
