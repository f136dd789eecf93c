//! # models
//!
//! diffusers-exact diffusion transformers on burn, with hook points for the cache engines of
//! [`cache_core`]: the CogVideoX transformer ([`CogVideoXTransformer3DModel`]), its DDIM scheduler
//! ([`CogVideoXDDIMScheduler`]) and the `CogVideoXPipeline` denoising loop ([`pipeline`]).

pub mod cogvideox;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod nn;
pub mod pipeline;
pub mod scheduler;
pub mod weights;

pub use cogvideox::{CogVideoXTransformer3DModel, ForwardInput, Positions};
pub use config::CogVideoXConfig;
pub use error::{ModelError, Result};
pub use pipeline::{denoise, DenoiseInput, DenoiseOptions};
pub use scheduler::{CogVideoXDDIMScheduler, CogVideoXDDIMSchedulerConfig};
pub use weights::{HostTensor, WeightSource};
