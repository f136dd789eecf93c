//! # models
//!
//! diffusers-exact diffusion transformers on burn, with hook points for the cache engines of
//! [`cache_core`]: the CogVideoX transformer ([`CogVideoXTransformer3DModel`]), its DDIM and DPM schedulers
//! ([`CogVideoXDDIMScheduler`], [`CogVideoXDPMScheduler`], either one a [`CogVideoXScheduler`]) and the
//! `CogVideoXPipeline` denoising loop ([`pipeline`]); the Latte
//! transformer ([`LatteTransformer3DModel`], spatial, temporal and cross attention) with `DDIMScheduler` and
//! the `LattePipeline` loop ([`LattePipeline`]).

mod host;
pub mod cogvideox;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod input;
pub mod latte;
pub mod latte_config;
pub mod latte_pipeline;
pub mod nn;
pub mod ops;
pub mod pipeline;
pub mod scheduler;
pub mod scheduler_ddim;
pub mod scheduler_dpm;
pub mod video_model;
pub mod weights;

pub use cogvideox::{CogVideoXTransformer3DModel, Positions};
pub use input::ForwardInput;
pub use ops::ModelBackend;
pub use config::CogVideoXConfig;
pub use error::{ModelError, Result};
pub use pipeline::{denoise, per_video, DenoiseInput, DenoiseOptions, StepNoise};
pub use latte::{LattePositions, LatteTransformer3DModel};
pub use latte_config::LatteConfig;
pub use latte_pipeline::LattePipeline;
pub use scheduler_ddim::{DDIMScheduler, DDIMSchedulerConfig};
pub use scheduler::{CogVideoXDDIMScheduler, CogVideoXDDIMSchedulerConfig, CogVideoXScheduler};
pub use scheduler_dpm::{CogVideoXDPMScheduler, CogVideoXDPMSchedulerConfig};
pub use video_model::VideoModel;
pub use weights::{HostTensor, WeightSource};
