//! CogVideoX (THUDM): `CogVideoXTransformer3DModel` ([`model`]), its configuration ([`config`]) and the
//! `CogVideoXPipeline` denoising loop ([`pipeline`]) with `CogVideoXDDIMScheduler` or `CogVideoXDPMScheduler`
//! ([`crate::scheduler`], [`crate::scheduler_dpm`]).

pub mod config;
pub mod model;
pub mod pipeline;

pub use config::CogVideoXConfig;
pub use model::{CogVideoXTransformer3DModel, Positions};
pub use pipeline::denoise;
