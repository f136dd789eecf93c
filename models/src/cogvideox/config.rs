//! `CogVideoXTransformer3DModel`'s configuration, read from diffusers' `config.json`.
//!
//! Field names and defaults are diffusers' own
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/cogvideox_transformer_3d.py>),
//! so a checkpoint's `config.json` deserialises unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Configuration of [`crate::CogVideoXTransformer3DModel`], with diffusers' field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CogVideoXConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub flip_sin_to_cos: bool,
    pub freq_shift: i64,
    pub time_embed_dim: usize,
    /// CogVideoX 1.5 I2V only; refused.
    pub ofs_embed_dim: Option<usize>,
    pub text_embed_dim: usize,
    pub num_layers: usize,
    /// Training only; ignored at inference, as in diffusers' `eval()` mode.
    pub dropout: f64,
    pub attention_bias: bool,
    pub sample_width: usize,
    pub sample_height: usize,
    pub sample_frames: usize,
    pub patch_size: usize,
    /// CogVideoX 1.5 temporal patching; refused.
    pub patch_size_t: Option<usize>,
    pub temporal_compression_ratio: usize,
    pub max_text_seq_length: usize,
    pub activation_fn: String,
    pub timestep_activation_fn: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    pub spatial_interpolation_scale: f64,
    pub temporal_interpolation_scale: f64,
    pub use_rotary_positional_embeddings: bool,
    /// CogVideoX 1.5 / 5b-I2V learned positions; refused.
    pub use_learned_positional_embeddings: bool,
    pub patch_bias: bool,
    /// Keys diffusers writes for itself (`_class_name`, `_diffusers_version`, ...) and anything unknown;
    /// [`CogVideoXConfig::validate`] refuses unknown keys that do not start with `_`.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for CogVideoXConfig {
    fn default() -> Self {
        Self {
            num_attention_heads: 30,
            attention_head_dim: 64,
            in_channels: 16,
            out_channels: Some(16),
            flip_sin_to_cos: true,
            freq_shift: 0,
            time_embed_dim: 512,
            ofs_embed_dim: None,
            text_embed_dim: 4096,
            num_layers: 30,
            dropout: 0.0,
            attention_bias: true,
            sample_width: 90,
            sample_height: 60,
            sample_frames: 49,
            patch_size: 2,
            patch_size_t: None,
            temporal_compression_ratio: 4,
            max_text_seq_length: 226,
            activation_fn: "gelu-approximate".into(),
            timestep_activation_fn: "silu".into(),
            norm_elementwise_affine: true,
            norm_eps: 1e-5,
            spatial_interpolation_scale: 1.875,
            temporal_interpolation_scale: 1.0,
            use_rotary_positional_embeddings: false,
            use_learned_positional_embeddings: false,
            patch_bias: true,
            extra: BTreeMap::new(),
        }
    }
}

impl CogVideoXConfig {
    /// CogVideoX-2b (<https://huggingface.co/THUDM/CogVideoX-2b/blob/main/transformer/config.json>).
    pub fn cogvideox_2b() -> Self {
        Self { num_layers: 30, num_attention_heads: 30, sample_frames: 49, ..Self::default() }
    }

    /// CogVideoX-5b (<https://huggingface.co/THUDM/CogVideoX-5b/blob/main/transformer/config.json>):
    /// 42 layers of 48 heads, rotary positions, no attention bias.
    pub fn cogvideox_5b() -> Self {
        Self {
            num_layers: 42,
            num_attention_heads: 48,
            use_rotary_positional_embeddings: true,
            attention_bias: true,
            ..Self::default()
        }
    }

    /// The project's benchmark model **S**: 6 layers, 6 heads × 64, 16 channels, sin-cos positions,
    /// 13 frames (4 latent frames) × 16 × 16 latents, patch 2, 32 text tokens of 4096.
    pub fn bench_s() -> Self {
        Self {
            num_layers: 6,
            num_attention_heads: 6,
            attention_head_dim: 64,
            in_channels: 16,
            out_channels: Some(16),
            time_embed_dim: 512,
            text_embed_dim: 4096,
            max_text_seq_length: 32,
            sample_frames: 13,
            sample_height: 16,
            sample_width: 16,
            patch_size: 2,
            ..Self::default()
        }
    }

    /// Reads and validates a diffusers `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let cfg: Self = crate::config_file::read_config(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `num_attention_heads * attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Latent frames of a `sample_frames` video (the VAE's temporal compression, as the pipeline computes it).
    pub fn latent_frames(&self) -> usize {
        (self.sample_frames - 1) / self.temporal_compression_ratio + 1
    }

    /// Output channels (`out_channels`, or `in_channels` when null, as diffusers' pipelines assume).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Checks the configuration and refuses what this implementation does not compute.
    pub fn validate(&self) -> Result<()> {
        crate::config_file::refuse_unknown("", &self.extra)?;
        let positive = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("time_embed_dim", self.time_embed_dim),
            ("text_embed_dim", self.text_embed_dim),
            ("num_layers", self.num_layers),
            ("patch_size", self.patch_size),
            ("temporal_compression_ratio", self.temporal_compression_ratio),
            ("max_text_seq_length", self.max_text_seq_length),
            ("sample_width", self.sample_width),
            ("sample_height", self.sample_height),
            ("sample_frames", self.sample_frames),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::InvalidConfig(format!("{name} must be positive")));
            }
        }
        if self.inner_dim() % 2 != 0 {
            return Err(ModelError::InvalidConfig("num_attention_heads * attention_head_dim must be even".into()));
        }
        if !(self.norm_eps > 0.0) {
            return Err(ModelError::InvalidConfig(format!("norm_eps must be positive, got {}", self.norm_eps)));
        }
        if self.patch_size_t.is_some() {
            return Err(ModelError::Unsupported("patch_size_t (CogVideoX 1.5 temporal patching)".into()));
        }
        if self.ofs_embed_dim.is_some() {
            return Err(ModelError::Unsupported("ofs_embed_dim (CogVideoX 1.5 I2V ofs embedding)".into()));
        }
        if self.use_learned_positional_embeddings {
            return Err(ModelError::Unsupported("use_learned_positional_embeddings (CogVideoX I2V)".into()));
        }
        if self.activation_fn != "gelu-approximate" {
            return Err(ModelError::Unsupported(format!("activation_fn {:?}", self.activation_fn)));
        }
        if self.timestep_activation_fn != "silu" {
            return Err(ModelError::Unsupported(format!(
                "timestep_activation_fn {:?}",
                self.timestep_activation_fn
            )));
        }
        if self.use_rotary_positional_embeddings {
            if self.attention_head_dim % 8 != 0 {
                return Err(ModelError::InvalidConfig(
                    "rotary embeddings need attention_head_dim divisible by 8".into(),
                ));
            }
        } else if self.inner_dim() % 16 != 0 {
            return Err(ModelError::InvalidConfig("sin-cos embeddings need an inner dim divisible by 16".into()));
        }
        Ok(())
    }
}
