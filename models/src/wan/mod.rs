//! Wan 2.1 / 2.2 text-to-video (Wan-AI): `WanTransformer3DModel` ([`model`]), its configuration ([`config`]) and
//! the `WanPipeline` denoising loop ([`pipeline`]) with `UniPCMultistepScheduler` ([`crate::scheduler_unipc`]) or
//! `FlowMatchEulerDiscreteScheduler` ([`crate::scheduler_flow_match`]), including Wan 2.2's two experts.

pub mod config;
pub mod model;
pub mod pipeline;

pub use config::WanConfig;
pub use model::{WanPositions, WanTransformer3DModel};
pub use pipeline::{Expert, WanDenoiseInput, WanPipeline, WanScheduler};
