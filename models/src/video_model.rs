//! One type for the model families (CogVideoX, Latte, FLUX, Wan): loading from a diffusers directory by its
//! `_class_name`, the host each offers to cache engines, one generation, one forward.

use std::path::Path;

use burn::tensor::{FloatDType, Tensor};
use cache_core::{Branch, CacheStrategy, CallContext, HostInfo, Identity, StepContext};

use crate::error::{ModelError, Result};
use crate::{
    denoise, CogVideoXConfig, CogVideoXDDIMScheduler, CogVideoXDDIMSchedulerConfig, CogVideoXScheduler,
    CogVideoXTransformer3DModel, DDIMScheduler, DDIMSchedulerConfig, DenoiseInput, DenoiseOptions, ForwardInput,
    FluxPipeline, LatteConfig, LattePipeline, LatteTransformer3DModel, ModelBackend, WeightSource,
};

/// A transformer and its scheduler, of any family.
#[derive(Debug)]
pub enum VideoModel<B: ModelBackend> {
    /// `CogVideoXTransformer3DModel` with `CogVideoXDDIMScheduler` or `CogVideoXDPMScheduler`
    /// (`CogVideoXPipeline`).
    CogVideoX {
        /// The transformer.
        model: CogVideoXTransformer3DModel<B>,
        /// The scheduler.
        scheduler: CogVideoXScheduler,
    },
    /// `LatteTransformer3DModel` with `DDIMScheduler` (`LattePipeline`).
    Latte(LattePipeline<B>),
    /// `FluxTransformer2DModel` with `FlowMatchEulerDiscreteScheduler` (`FluxPipeline`): an image is a clip of
    /// one frame ([`FluxPipeline::denoise_unpacked`] says how [`DenoiseInput`] maps onto the pipeline's inputs).
    Flux(FluxPipeline<B>),
    /// `WanTransformer3DModel` with `UniPCMultistepScheduler` or `FlowMatchEulerDiscreteScheduler`
    /// (`WanPipeline`; one expert through [`DenoiseInput`]: [`crate::wan::WanPipeline::denoise_shared`]).
    Wan(crate::wan::WanPipeline<B>),
}

impl<B: ModelBackend> VideoModel<B> {
    /// Loads a diffusers directory: a pipeline directory (`transformer/`, optional `scheduler/`) or a model
    /// directory. The family comes from `config.json`'s `_class_name`; without a scheduler config, the
    /// family's published one is used (CogVideoX-2b's, Latte-1's, FLUX.1-dev's). A scheduler config is built as the class
    /// its `_class_name` names, and refused when the pipeline does not run that class
    /// ([`CogVideoXScheduler::from_json_file`], [`LattePipeline::from_pretrained`]).
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::from_dir_as(dir, device, FloatDType::F32)
    }

    /// [`Self::from_dir`] computing in `dtype` (diffusers' `torch_dtype`): float32 for every family, bfloat16 and
    /// float16 for CogVideoX on a backend that has them; anything else is a [`ModelError::UnsupportedDtype`].
    pub fn from_dir_as(dir: &Path, device: &B::Device, dtype: FloatDType) -> Result<Self> {
        let (transformer, class) = Self::class_of(dir)?;
        let config_path = transformer.join("config.json");
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let has_scheduler = scheduler_path.exists();
        Self::check_class_dtype(&class, device, dtype)?;
        match class.as_str() {
            "CogVideoXTransformer3DModel" => {
                let model = CogVideoXTransformer3DModel::from_pretrained_as(&transformer, device, dtype)?;
                let scheduler = if has_scheduler {
                    CogVideoXScheduler::from_json_file(&scheduler_path)?
                } else {
                    CogVideoXDDIMScheduler::new(CogVideoXDDIMSchedulerConfig::cogvideox())?.into()
                };
                Ok(Self::CogVideoX { model, scheduler })
            }
            "LatteTransformer3DModel" if has_scheduler => Ok(Self::Latte(LattePipeline::from_pretrained(dir, device)?)),
            "LatteTransformer3DModel" => {
                let transformer = LatteTransformer3DModel::from_pretrained(&transformer, device)?;
                let scheduler = DDIMScheduler::new(DDIMSchedulerConfig::latte())?;
                Ok(Self::Latte(LattePipeline { transformer, scheduler }))
            }
            "FluxTransformer2DModel" => Ok(Self::Flux(FluxPipeline::from_pretrained(dir, device)?)),
            "WanTransformer3DModel" => Ok(Self::Wan(crate::wan::WanPipeline::from_pretrained(dir, device)?)),
            other => Err(ModelError::Unsupported(format!(
                "{}: model class {other:?} (supported: CogVideoXTransformer3DModel, LatteTransformer3DModel, FluxTransformer2DModel, WanTransformer3DModel)",
                config_path.display()
            ))),
        }
    }

    /// Whether the model of `dir` can compute in `dtype` on `device`, read from its config without loading
    /// weights: the family must run in that dtype (half precision: CogVideoX) and the backend must have it; a
    /// [`ModelError::UnsupportedDtype`] says which is missing.
    pub fn check_dtype(dir: &Path, device: &B::Device, dtype: FloatDType) -> Result<()> {
        let (_, class) = Self::class_of(dir)?;
        Self::check_class_dtype(&class, device, dtype)
    }

    /// [`Self::check_dtype`] for a model class already read.
    fn check_class_dtype(class: &str, device: &B::Device, dtype: FloatDType) -> Result<()> {
        crate::weights::check_dtype::<B>(class, dtype, class == "CogVideoXTransformer3DModel", device)
    }

    /// The transformer directory of `dir` and the `_class_name` of its config (CogVideoX when absent).
    fn class_of(dir: &Path) -> Result<(std::path::PathBuf, String)> {
        let transformer = crate::config_file::transformer_dir(dir);
        let config_path = transformer.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io { path: config_path.clone(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Parse { path: config_path.clone(), reason: e.to_string() })?;
        let class = json.get("_class_name").and_then(|v| v.as_str()).unwrap_or("CogVideoXTransformer3DModel");
        Ok((transformer, class.to_owned()))
    }

    /// A CogVideoX preset with weights from `weights`, and CogVideoX-2b's scheduler.
    pub fn cogvideox(config: &CogVideoXConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self> {
        let model = CogVideoXTransformer3DModel::load(config, weights, device)?;
        let scheduler = CogVideoXDDIMScheduler::new(CogVideoXDDIMSchedulerConfig::cogvideox())?.into();
        Ok(Self::CogVideoX { model, scheduler })
    }

    /// A Latte preset with weights from `weights`, and Latte-1's scheduler.
    pub fn latte(config: &LatteConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self> {
        let transformer = LatteTransformer3DModel::load(config, weights, device)?;
        let scheduler = DDIMScheduler::new(DDIMSchedulerConfig::latte())?;
        Ok(Self::Latte(LattePipeline { transformer, scheduler }))
    }

    /// The dtype the transformer computes in (its weights'): float32, or CogVideoX's half precision
    /// ([`Self::from_dir_as`]).
    pub fn dtype(&self) -> FloatDType {
        let w = match self {
            Self::CogVideoX { model, .. } => model.proj_out.weight.val(),
            Self::Latte(p) => p.transformer.proj_out.weight.val(),
            Self::Flux(p) => p.transformer.proj_out.weight.val(),
            Self::Wan(p) => p.transformer.proj_out.weight.val(),
        };
        w.dtype().into()
    }

    /// The family's diffusers class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::CogVideoX { .. } => "CogVideoXTransformer3DModel",
            Self::Latte(_) => "LatteTransformer3DModel",
            Self::Flux(_) => "FluxTransformer2DModel",
            Self::Wan(_) => "WanTransformer3DModel",
        }
    }

    /// The attention sites and blocks the model offers to cache engines.
    pub fn host_info(&self) -> HostInfo {
        match self {
            Self::CogVideoX { model, .. } => model.host_info(),
            Self::Latte(p) => p.transformer.host_info(),
            Self::Flux(p) => p.transformer.host_info(),
            Self::Wan(p) => p.transformer.host_info(),
        }
    }

    /// The scheduler's timesteps for `steps` steps. FLUX's are fractional and depend on the image size:
    /// [`FluxPipeline::timesteps`] (here a [`ModelError::Unsupported`]).
    pub fn timesteps(&mut self, steps: usize) -> Result<Vec<i64>> {
        let t = match self {
            Self::CogVideoX { scheduler, .. } => scheduler.set_timesteps(steps),
            Self::Latte(p) => p.scheduler.set_timesteps(steps),
            Self::Flux(_) => {
                return Err(ModelError::Unsupported(
                    "FLUX's timesteps are fractional and depend on the image size: FluxPipeline::timesteps".into(),
                ))
            }
            Self::Wan(p) => match &mut p.scheduler {
                crate::wan::WanScheduler::UniPC(s) => s.set_timesteps(steps),
                crate::wan::WanScheduler::FlowMatchEuler(_) => {
                    return Err(ModelError::Unsupported(
                        "FlowMatchEulerDiscreteScheduler's timesteps are fractional: WanPipeline::timesteps".into(),
                    ))
                }
            },
        };
        t.map(<[i64]>::to_vec)
    }

    /// One generation with `strategy` (reset first).
    pub fn denoise(
        &mut self,
        input: DenoiseInput<B>,
        strategy: &mut dyn CacheStrategy<B>,
        options: DenoiseOptions<'_, B>,
    ) -> Result<Tensor<B, 5>> {
        match self {
            Self::CogVideoX { model, scheduler } => denoise(model, scheduler, input, strategy, options),
            Self::Latte(p) => p.denoise(input, strategy, options),
            Self::Flux(p) => p.denoise_unpacked(input, strategy, options),
            Self::Wan(p) => p.denoise_shared(input, strategy, options),
        }
    }

    /// One uncached forward of an unguided batch, positions computed from the input's size.
    ///
    /// # Shapes
    /// `input.hidden_states` in the family's layout (CogVideoX `[B, F, C, H, W]`, Latte and Wan `[B, C, F, H, W]`).
    /// FLUX takes pooled embeddings and ids that [`ForwardInput`] lacks: [`crate::FluxTransformer2DModel::forward`]
    /// (here a [`ModelError::Unsupported`]).
    pub fn forward(&self, input: ForwardInput<B>) -> Result<Tensor<B, 5>> {
        let dims = input.hidden_states.dims();
        let device = input.hidden_states.device();
        let step = StepContext { step: 0, num_steps: 1, timestep: input.timestep.first().copied().unwrap_or(0.0) as f64, sigma: None };
        let ctx = CallContext::new(step, Branch::Unguided, dims[0]);
        match self {
            Self::CogVideoX { model, .. } => {
                let positions = model.positions(dims[1], dims[3], dims[4], &device)?;
                model.forward(input, &positions, &ctx, &mut Identity)
            }
            Self::Latte(p) => {
                let positions = p.transformer.positions(dims[2], dims[3], dims[4], &device)?;
                p.transformer.forward(input, &positions, &ctx, &mut Identity)
            }
            Self::Wan(p) => {
                let positions = p.transformer.positions(p.transformer.grid(dims[2], dims[3], dims[4])?, &device);
                p.transformer.forward(input, &positions, &ctx, &mut Identity)
            }
            Self::Flux(_) => Err(ModelError::Unsupported(
                "a FLUX forward takes pooled embeddings and ids: FluxTransformer2DModel::forward with FluxInput".into(),
            )),
        }
    }
}
