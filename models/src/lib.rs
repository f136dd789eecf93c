//! # models
//!
//! diffusers-exact diffusion transformers on burn, with hook points for the cache engines of
//! [`cache_core`]: the CogVideoX transformer ([`CogVideoXTransformer3DModel`]), its DDIM and DPM schedulers
//! ([`CogVideoXDDIMScheduler`], [`CogVideoXDPMScheduler`], either one a [`CogVideoXScheduler`]) and the
//! `CogVideoXPipeline` denoising loop ([`denoise`]), in [`cogvideox`]; the Latte
//! transformer ([`LatteTransformer3DModel`], spatial, temporal and cross attention) with `DDIMScheduler` and
//! the `LattePipeline` loop ([`LattePipeline`]), in [`latte`]; the FLUX.1 text-to-image transformer ([`FluxTransformer2DModel`],
//! double- and single-stream blocks) with `FlowMatchEulerDiscreteScheduler` and the `FluxPipeline` loop ([`flux`]);
//! the Wan 2.1 / 2.2 text-to-video transformer ([`WanTransformer3DModel`]) with `UniPCMultistepScheduler`
//! ([`UniPCMultistepScheduler`]) or `FlowMatchEulerDiscreteScheduler` and the `WanPipeline` loop, two experts
//! included ([`WanPipeline`]), in [`wan`].
//!
//! One folder per family (config, model, pipeline); the schedulers, layers ([`nn`], [`ops`]), weights and the
//! pipelines' shared loop ([`pipeline`]) beside them.

mod host;
pub mod cogvideox;
mod config_file;
pub mod embeddings;
pub mod error;
pub mod flux;
pub mod input;
pub mod latte;
pub mod nn;
pub mod ops;
pub mod pipeline;
pub mod scheduler;
pub mod scheduler_ddim;
pub mod scheduler_dpm;
pub mod scheduler_flow_match;
pub mod scheduler_unipc;
pub mod video_model;
pub mod wan;
pub mod weights;

pub use cogvideox::{denoise, CogVideoXConfig, CogVideoXTransformer3DModel, Positions};
pub use error::{ModelError, Result};
pub use flux::{pack_latents, unpack_latents, FluxConfig, FluxDenoiseInput, FluxPipeline, FluxTransformer2DModel};
pub use input::ForwardInput;
pub use latte::{LatteConfig, LattePipeline, LattePositions, LatteTransformer3DModel};
pub use ops::ModelBackend;
pub use pipeline::{per_video, DenoiseInput, DenoiseOptions, StepNoise};
pub use scheduler_ddim::{DDIMScheduler, DDIMSchedulerConfig};
pub use scheduler::{CogVideoXDDIMScheduler, CogVideoXDDIMSchedulerConfig, CogVideoXScheduler};
pub use scheduler_dpm::{CogVideoXDPMScheduler, CogVideoXDPMSchedulerConfig};
pub use scheduler_flow_match::{FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerConfig, calculate_shift};
pub use scheduler_unipc::{UniPCMultistepScheduler, UniPCMultistepSchedulerConfig};
pub use video_model::VideoModel;
pub use wan::{WanConfig, WanDenoiseInput, WanPipeline, WanTransformer3DModel};
pub use weights::{HostTensor, WeightSource};
