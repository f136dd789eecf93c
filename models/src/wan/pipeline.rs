//! The denoising loop of diffusers' `WanPipeline.__call__` with `output_type="latent"`
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/pipelines/wan/pipeline_wan.py>,
//! l. 554–660): `scheduler.set_timesteps(N)`, then per step the conditional call in cache context `cond` and,
//! when `guidance_scale > 1`, the unconditional call in `uncond` ([`Branch::Cond`] / [`Branch::Uncond`]: every
//! engine keeps separate state per context), each told the step index, the scheduler's sigma of the step and
//! the step count (l. 615–619: `StepContext::sigma`), `noise_uncond + g · (noise_pred − noise_uncond)`, and
//! `scheduler.step`. Wan 2.2's two experts (l. 585–604): with `boundary_ratio`, steps whose timestep is at least
//! `boundary_ratio · num_train_timesteps` run `transformer` at `guidance_scale`, the others `transformer_2` at
//! `guidance_scale_2` (default: `guidance_scale`); each model has its own cache engine (EasyCache's two share one
//! state, as its authors' globals do: `cache_engines::build_experts` makes such a pair).

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{Branch, CacheStrategy, CallContext, StepContext};

use super::model::WanTransformer3DModel;
use crate::error::{ModelError, Result};
use crate::input::ForwardInput;
use crate::ops::ModelBackend;
use crate::pipeline::progress_bar;
use crate::scheduler_flow_match::FlowMatchEulerDiscreteScheduler;
use crate::scheduler_unipc::UniPCMultistepScheduler;

/// The VAE's spatial downsampling of Wan 2.1 (`vae_scale_factor_spatial`).
pub const VAE_SCALE_FACTOR_SPATIAL: usize = 8;
/// The VAE's temporal downsampling (`vae_scale_factor_temporal`): `F` latent frames are `4(F − 1) + 1` frames.
pub const VAE_SCALE_FACTOR_TEMPORAL: usize = 4;

/// The schedulers Wan's published pipelines ship, chosen by `_class_name`.
#[derive(Debug)]
pub enum WanScheduler {
    /// `UniPCMultistepScheduler` (`prediction_type="flow_prediction"`, `use_flow_sigmas`, `flow_shift`): Wan's
    /// default.
    UniPC(UniPCMultistepScheduler),
    /// `FlowMatchEulerDiscreteScheduler` (static shift; dynamic shifting needs a `mu` `WanPipeline` never passes).
    FlowMatchEuler(FlowMatchEulerDiscreteScheduler),
}

impl WanScheduler {
    /// Reads `scheduler_config.json`, dispatching on `_class_name`; any other class is refused.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let json = crate::config_file::read_json(path)?;
        match json.get("_class_name").and_then(|v| v.as_str()) {
            Some("UniPCMultistepScheduler") => Ok(Self::UniPC(UniPCMultistepScheduler::from_json_file(path)?)),
            Some("FlowMatchEulerDiscreteScheduler") => {
                Ok(Self::FlowMatchEuler(FlowMatchEulerDiscreteScheduler::from_json_file(path)?))
            }
            Some(other) => Err(ModelError::Unsupported(format!(
                "{}: scheduler class {other}; Wan runs UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler",
                path.display()
            ))),
            None => Err(ModelError::InvalidConfig(format!("{}: no `_class_name`", path.display()))),
        }
    }

    /// `set_timesteps(N)` as `WanPipeline` calls it; the timesteps as float (UniPC's are integers).
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<Vec<f32>> {
        match self {
            Self::UniPC(s) => Ok(s.set_timesteps(num_inference_steps)?.iter().map(|&t| t as f32).collect()),
            Self::FlowMatchEuler(s) => Ok(s.set_timesteps(num_inference_steps, None, None)?.to_vec()),
        }
    }

    /// The sigmas after [`Self::set_timesteps`] (float32, the final one included).
    pub fn sigmas(&self) -> &[f32] {
        match self {
            Self::UniPC(s) => s.sigmas(),
            Self::FlowMatchEuler(s) => s.sigmas(),
        }
    }

    /// `num_train_timesteps` of the config (the two-expert boundary is a fraction of it).
    pub fn num_train_timesteps(&self) -> usize {
        match self {
            Self::UniPC(s) => s.config().num_train_timesteps,
            Self::FlowMatchEuler(s) => s.config().num_train_timesteps,
        }
    }

    /// `scheduler.step(model_output, t, sample)` at step `step_index` (steps taken in order, once each).
    pub fn step<B: Backend, const D: usize>(
        &mut self,
        model_output: Tensor<B, D>,
        step_index: usize,
        sample: Tensor<B, D>,
    ) -> Result<Tensor<B, D>> {
        match self {
            Self::UniPC(s) => s.step(model_output, sample),
            Self::FlowMatchEuler(s) => s.step(model_output, step_index, sample),
        }
    }
}

/// What one Wan generation starts from, as passed to `WanPipeline` (embeddings given, one row per video).
///
/// # Shapes
/// - `latents`: `[N, C, F, H, W]` (`C = in_channels`; `F` latent frames of a `4(F − 1) + 1`-frame video,
///   `8H × 8W` pixels)
/// - `prompt_embeds`, `negative_prompt_embeds`: `[N, S, text_dim]`
#[derive(Debug, Clone)]
pub struct WanDenoiseInput<B: Backend> {
    /// Initial latents.
    pub latents: Tensor<B, 5>,
    /// Prompt embeddings (UMT5), one row per video.
    pub prompt_embeds: Tensor<B, 3>,
    /// Needed when `guidance_scale > 1`.
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
    /// Number of denoising steps.
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale (of `transformer`); `> 1` runs the unconditional call.
    pub guidance_scale: f64,
    /// The scale of `transformer_2`'s steps (Wan 2.2); `None`: `guidance_scale`. Refused without two experts.
    pub guidance_scale_2: Option<f64>,
}

/// `WanPipeline`'s transformer(s) and scheduler.
#[derive(Debug)]
pub struct WanPipeline<B: ModelBackend> {
    /// The transformer (Wan 2.2: the high-noise expert).
    pub transformer: WanTransformer3DModel<B>,
    /// Wan 2.2's low-noise expert.
    pub transformer_2: Option<WanTransformer3DModel<B>>,
    /// The scheduler.
    pub scheduler: WanScheduler,
    /// Wan 2.2: the fraction of `num_train_timesteps` below which `transformer_2` runs.
    pub boundary_ratio: Option<f64>,
    /// The latent `(frames, height, width)` of a video at the pipeline's default size (`WanPipeline`'s
    /// 81 frames of 480 × 832: [`DEFAULT_SAMPLE_SIZE`]); a model trained at another size sets its own. Only the
    /// bench reads it: [`WanPipeline::denoise`] takes the latents' size.
    pub sample_size: [usize; 3],
}

/// `WanPipeline.__call__`'s defaults as latents: 81 frames (21 latent frames) of 480 × 832 pixels.
pub const DEFAULT_SAMPLE_SIZE: [usize; 3] = [21, 60, 104];

/// The model that ran a step: `"transformer"` or `"transformer_2"`, diffusers' attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expert {
    /// `transformer`.
    First,
    /// `transformer_2`.
    Second,
}

impl Expert {
    /// diffusers' attribute name.
    pub fn name(self) -> &'static str {
        match self {
            Expert::First => "transformer",
            Expert::Second => "transformer_2",
        }
    }
}

impl<B: ModelBackend> WanPipeline<B> {
    /// Loads a diffusers pipeline directory: `transformer/`, `transformer_2/` when present, `scheduler/`, and
    /// `boundary_ratio` from `model_index.json` when present (Wan 2.2). `expand_timesteps` (Wan 2.2 TI2V) is
    /// refused.
    pub fn from_pretrained(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::from_pretrained_with(dir, None, device)
    }

    /// [`Self::from_pretrained`] with `boundary_ratio` given (it then overrides `model_index.json`'s, as
    /// `WanPipeline.from_pretrained(..., boundary_ratio=...)` does; a parity case's directory has no index).
    pub fn from_pretrained_with(dir: &Path, boundary_ratio: Option<f64>, device: &B::Device) -> Result<Self> {
        let transformer = WanTransformer3DModel::from_pretrained(&crate::config_file::transformer_dir(dir), device)?;
        let second = dir.join("transformer_2");
        let transformer_2 =
            if second.join("config.json").exists() { Some(WanTransformer3DModel::from_pretrained(&second, device)?) } else { None };
        let scheduler = WanScheduler::from_json_file(&dir.join("scheduler").join("scheduler_config.json"))?;
        let index = dir.join("model_index.json");
        let boundary_ratio = if index.exists() {
            let json = crate::config_file::read_json(&index)?;
            if json.get("expand_timesteps").and_then(|v| v.as_bool()) == Some(true) {
                return Err(ModelError::Unsupported(
                    "expand_timesteps (Wan 2.2 TI2V's per-token timesteps) is not implemented".into(),
                ));
            }
            boundary_ratio.or_else(|| json.get("boundary_ratio").and_then(|v| v.as_f64()))
        } else {
            boundary_ratio
        };
        let pipe = Self { transformer, transformer_2, scheduler, boundary_ratio, sample_size: DEFAULT_SAMPLE_SIZE };
        pipe.check_experts()?;
        Ok(pipe)
    }

    fn check_experts(&self) -> Result<()> {
        match (self.boundary_ratio, &self.transformer_2) {
            (Some(r), Some(_)) if (0.0..=1.0).contains(&r) => Ok(()),
            (Some(r), Some(_)) => Err(ModelError::InvalidConfig(format!("boundary_ratio {r} is not in [0, 1]"))),
            (Some(_), None) => Err(ModelError::InvalidConfig("boundary_ratio without transformer_2".into())),
            (None, Some(_)) => Err(ModelError::InvalidConfig(
                "transformer_2 without boundary_ratio: WanPipeline would never run it".into(),
            )),
            (None, None) => Ok(()),
        }
    }

    /// The expert of a step at timestep `t`.
    pub fn expert(&self, t: f32) -> Expert {
        match self.boundary_ratio {
            // `t >= boundary_ratio * num_train_timesteps`: a float64 Python product against the timestep tensor.
            Some(r) if (t as f64) < r * self.scheduler.num_train_timesteps() as f64 => Expert::Second,
            _ => Expert::First,
        }
    }

    /// The scheduler's timesteps for `steps` steps (as `WanPipeline` sets them).
    pub fn timesteps(&mut self, steps: usize) -> Result<Vec<f32>> {
        self.scheduler.set_timesteps(steps)
    }

    /// Runs one generation: resets the strategies, then denoises for `input.num_inference_steps` steps; returns
    /// the final latents `[N, C, F, H, W]`. `strategy` serves `transformer`, `strategy_2` (required with two
    /// experts) `transformer_2`. `on_step` (if any) sees each step's index, timestep, expert and guided output.
    pub fn denoise<S: CacheStrategy<B> + ?Sized, S2: CacheStrategy<B> + ?Sized>(
        &mut self,
        input: WanDenoiseInput<B>,
        strategy: &mut S,
        mut strategy_2: Option<&mut S2>,
        progress: bool,
        mut on_step: Option<&mut dyn FnMut(usize, f32, Expert, &Tensor<B, 5>)>,
    ) -> Result<Tensor<B, 5>> {
        self.check_experts()?;
        let [n, _, f, h, w] = input.latents.dims();
        let grid = self.transformer.grid(f, h, w)?;
        if let Some(t2) = &self.transformer_2 {
            if t2.config.patch_size != self.transformer.config.patch_size
                || t2.config.attention_head_dim != self.transformer.config.attention_head_dim
            {
                return Err(ModelError::InvalidConfig("transformer_2's patch_size or attention_head_dim differs from transformer's".into()));
            }
            if strategy_2.is_none() {
                return Err(ModelError::Strategy("two experts need a strategy for transformer_2 (each has its own state)".into()));
            }
        } else if input.guidance_scale_2.is_some() {
            return Err(ModelError::InvalidConfig("guidance_scale_2 is only used with two experts (boundary_ratio)".into()));
        }
        let [pb, _, _] = input.prompt_embeds.dims();
        if pb != n {
            return Err(ModelError::Shape(format!("latents have {n} rows, prompt_embeds {pb} (one row per video)")));
        }
        let cfg = input.guidance_scale > 1.0;
        let negative = match (&input.negative_prompt_embeds, cfg) {
            (Some(neg), true) if neg.dims() != input.prompt_embeds.dims() => {
                return Err(ModelError::Shape(format!(
                    "negative_prompt_embeds {:?} and prompt_embeds {:?} differ in shape",
                    neg.dims(),
                    input.prompt_embeds.dims()
                )))
            }
            (Some(neg), true) => Some(neg.clone()),
            (None, true) => return Err(ModelError::Shape("guidance_scale > 1 needs negative_prompt_embeds".into())),
            _ => None,
        };
        let timesteps = self.scheduler.set_timesteps(input.num_inference_steps)?;
        let sigmas: Vec<f32> = self.scheduler.sigmas().to_vec();
        let device = input.latents.device();
        let positions = self.transformer.positions(grid, &device);
        strategy.reset();
        strategy.check_steps(input.num_inference_steps).map_err(ModelError::Cache)?;
        if let Some(s2) = strategy_2.as_deref_mut() {
            s2.reset();
            s2.check_steps(input.num_inference_steps).map_err(ModelError::Cache)?;
        }
        let bar = progress_bar(progress, timesteps.len());
        let mut latents = input.latents;
        for (i, &t) in timesteps.iter().enumerate() {
            let expert = self.expert(t);
            let step = StepContext { step: i, num_steps: timesteps.len(), timestep: t as f64, sigma: Some(sigmas[i] as f64) };
            let (model, scale) = match expert {
                Expert::First => (&self.transformer, input.guidance_scale),
                Expert::Second => (
                    self.transformer_2.as_ref().ok_or_else(|| ModelError::InvalidConfig("no transformer_2".into()))?,
                    input.guidance_scale_2.unwrap_or(input.guidance_scale),
                ),
            };
            let mut call = |embeds: &Tensor<B, 3>, branch: Branch| -> Result<Tensor<B, 5>> {
                let x = ForwardInput { hidden_states: latents.clone(), encoder_hidden_states: embeds.clone(), timestep: vec![t; n] };
                let ctx = CallContext::new(step, branch, n);
                match expert {
                    Expert::First => model.forward(x, &positions, &ctx, &mut *strategy),
                    Expert::Second => match strategy_2.as_deref_mut() {
                        Some(s2) => model.forward(x, &positions, &ctx, s2),
                        None => Err(ModelError::Strategy("no strategy for transformer_2".into())),
                    },
                }
            };
            let mut noise_pred = call(&input.prompt_embeds, Branch::Cond)?;
            if let Some(neg) = &negative {
                let uncond = call(neg, Branch::Uncond)?;
                noise_pred = uncond.clone() + (noise_pred - uncond) * (scale as f32);
            }
            if let Some(cb) = on_step.as_mut() {
                cb(i, t, expert, &noise_pred);
            }
            latents = self.scheduler.step(noise_pred, i, latents)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(latents)
    }
}

impl<B: ModelBackend> WanPipeline<B> {
    /// [`WanPipeline::denoise`] on the shared inputs of every family ([`DenoiseInput`]), so that a Wan model runs
    /// where the other families run (`VideoModel`, the bench):
    ///
    /// - `latents` `[B·V, C, F, H, W]`; prompts (and negative prompts) are repeated per video as
    ///   `num_videos_per_prompt` does (diffusers repeats the embeddings it encodes);
    /// - one expert only: a Wan 2.2 pipeline needs a strategy per expert, which [`WanPipeline::denoise`] takes;
    /// - the schedulers are deterministic (`step_noise` is not used); `on_step` gets the integer timesteps of
    ///   `UniPCMultistepScheduler` and is refused with `FlowMatchEulerDiscreteScheduler`'s fractional ones.
    pub fn denoise_shared(
        &mut self,
        input: crate::pipeline::DenoiseInput<B>,
        strategy: &mut dyn CacheStrategy<B>,
        options: crate::pipeline::DenoiseOptions<'_, B>,
    ) -> Result<Tensor<B, 5>> {
        if self.transformer_2.is_some() {
            return Err(ModelError::Unsupported(
                "a two-expert Wan 2.2 pipeline needs a strategy per expert: WanPipeline::denoise".into(),
            ));
        }
        if input.pooled_prompt_embeds.is_some() || input.negative_pooled_prompt_embeds.is_some() {
            return Err(ModelError::Shape("pooled prompt embeddings are FLUX's input; Wan takes none".into()));
        }
        let v = input.num_videos_per_prompt;
        let [b, _, _] = input.prompt_embeds.dims();
        let n = input.latents.dims()[0];
        if v == 0 || b == 0 || n != b * v {
            return Err(ModelError::Shape(format!(
                "latents have {n} rows; {b} prompts × num_videos_per_prompt {v} need {} (one row per video)",
                b * v
            )));
        }
        let euler = matches!(self.scheduler, WanScheduler::FlowMatchEuler(_));
        let mut on_step = options.on_step;
        if on_step.is_some() && euler {
            return Err(ModelError::Unsupported(
                "on_step with FlowMatchEulerDiscreteScheduler: its timesteps are fractional; WanPipeline::denoise hands them out".into(),
            ));
        }
        let wan = WanDenoiseInput {
            latents: input.latents,
            prompt_embeds: crate::pipeline::per_video(input.prompt_embeds, v),
            negative_prompt_embeds: input.negative_prompt_embeds.map(|e| crate::pipeline::per_video(e, v)),
            num_inference_steps: input.num_inference_steps,
            guidance_scale: input.guidance_scale,
            guidance_scale_2: None,
        };
        let mut forward = |i: usize, t: f32, _: Expert, pred: &Tensor<B, 5>| {
            if let Some(cb) = on_step.as_mut() {
                cb(i, t as i64, pred);
            }
        };
        self.denoise::<dyn CacheStrategy<B>, dyn CacheStrategy<B>>(wan, strategy, None, options.progress, Some(&mut forward))
    }
}
