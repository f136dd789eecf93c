//! Latte (Vchitect): `LatteTransformer3DModel` ([`model`], spatial, temporal and cross attention), its
//! configuration ([`config`]) and the `LattePipeline` denoising loop ([`pipeline`]) with `DDIMScheduler`
//! ([`crate::scheduler_ddim`]).

pub mod config;
pub mod model;
pub mod pipeline;

pub use config::LatteConfig;
pub use model::{LattePositions, LatteTransformer3DModel};
pub use pipeline::LattePipeline;
