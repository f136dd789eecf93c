//! `FluxTransformer2DModel`'s configuration, read from diffusers' `config.json`.
//!
//! Field names and defaults are diffusers' own
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/transformer_flux.py>,
//! `FluxTransformer2DModel.__init__`), so a FLUX.1-dev or -schnell `transformer/config.json` deserialises unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Configuration of [`super::FluxTransformer2DModel`], with diffusers' field names and defaults (FLUX.1's sizes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FluxConfig {
    /// Only widens `proj_out` (`patch_size² · out_channels`); FLUX.1 uses 1 (the pipeline packs 2×2 patches).
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    /// Double-stream blocks (`transformer_blocks`).
    pub num_layers: usize,
    /// Single-stream blocks (`single_transformer_blocks`).
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the prompt embeddings (T5's 4096).
    pub joint_attention_dim: usize,
    /// Width of the pooled prompt embedding (CLIP's 768).
    pub pooled_projection_dim: usize,
    /// FLUX.1-dev: the distilled guidance scale is an input (`time_text_embed.guidance_embedder`).
    pub guidance_embeds: bool,
    /// Rotary widths of the three id axes; they sum to `attention_head_dim`.
    pub axes_dims_rope: Vec<usize>,
    /// Keys diffusers writes for itself (`_class_name`, `_diffusers_version`, ...) and anything unknown;
    /// [`FluxConfig::validate`] refuses unknown keys that do not start with `_`.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for FluxConfig {
    fn default() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
            extra: BTreeMap::new(),
        }
    }
}

impl FluxConfig {
    /// FLUX.1-dev (<https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/transformer/config.json>).
    pub fn flux_1_dev() -> Self {
        Self { guidance_embeds: true, ..Self::default() }
    }

    /// FLUX.1-schnell (<https://huggingface.co/black-forest-labs/FLUX.1-schnell/blob/main/transformer/config.json>).
    pub fn flux_1_schnell() -> Self {
        Self::default()
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

    /// `out_channels`, or `in_channels` when null (diffusers' `out_channels or in_channels`).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Checks the configuration and refuses what this implementation does not compute.
    pub fn validate(&self) -> Result<()> {
        crate::config_file::refuse_unknown("", &self.extra)?;
        let positive = [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::InvalidConfig(format!("{name} must be positive")));
            }
        }
        if self.num_layers + self.num_single_layers == 0 {
            return Err(ModelError::InvalidConfig("num_layers + num_single_layers must be positive".into()));
        }
        if self.axes_dims_rope.len() != 3 {
            return Err(ModelError::InvalidConfig(format!(
                "axes_dims_rope has {} entries; the img_ids/txt_ids have 3 axes",
                self.axes_dims_rope.len()
            )));
        }
        if self.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            return Err(ModelError::InvalidConfig(format!("axes_dims_rope {:?} must be even", self.axes_dims_rope)));
        }
        let sum: usize = self.axes_dims_rope.iter().sum();
        if sum != self.attention_head_dim {
            return Err(ModelError::InvalidConfig(format!(
                "axes_dims_rope {:?} sum to {sum}, attention_head_dim is {}",
                self.axes_dims_rope, self.attention_head_dim
            )));
        }
        Ok(())
    }
}
