//! FLUX.1 (black-forest-labs): `FluxTransformer2DModel` ([`model`]), its configuration ([`config`]) and the
//! `FluxPipeline` denoising loop ([`pipeline`]) with `FlowMatchEulerDiscreteScheduler`
//! ([`crate::scheduler_flow_match`]).

pub mod config;
pub mod model;
pub mod pipeline;

pub use config::FluxConfig;
pub use model::{FluxInput, FluxPositions, FluxTransformer2DModel};
pub use pipeline::{latent_image_ids, pack_latents, packed_grid, unpack_latents, FluxDenoiseInput, FluxPipeline, DEFAULT_SAMPLE_SIZE};
