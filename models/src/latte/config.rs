//! `LatteTransformer3DModel`'s configuration, read from diffusers' `config.json`.
//!
//! Field names and defaults are diffusers' own
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/latte_transformer_3d.py>).
//! Latte-1 is the only published checkpoint; what it does not use (other `norm_type`s and activations) is
//! refused rather than computed differently.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Configuration of [`crate::LatteTransformer3DModel`], with diffusers' field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct LatteConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    /// Required.
    pub in_channels: Option<usize>,
    /// `in_channels` when absent; Latte-1 has `2·in_channels` (learned variance).
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    /// Training only; ignored at inference, as in diffusers' `eval()` mode.
    pub dropout: f64,
    /// Must equal `num_attention_heads · attention_head_dim`: the caption projection outputs that width.
    pub cross_attention_dim: Option<usize>,
    pub attention_bias: bool,
    pub sample_size: usize,
    /// Required.
    pub patch_size: Option<usize>,
    /// Only `gelu-approximate` (Latte-1's) is implemented.
    pub activation_fn: String,
    /// Not used by `ada_norm_single` blocks (as in diffusers).
    pub num_embeds_ada_norm: Option<usize>,
    /// Only `ada_norm_single` (Latte-1's) is implemented.
    pub norm_type: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    /// Required: the width of the prompt embeddings (T5's 4096 for Latte-1).
    pub caption_channels: Option<usize>,
    /// Frames of the temporal positional table; a video with more than one frame must have exactly this many.
    pub video_length: usize,
    /// diffusers' own keys (`_class_name`, ...) and anything unknown; unknown keys are refused.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for LatteConfig {
    fn default() -> Self {
        Self {
            num_attention_heads: 16,
            attention_head_dim: 88,
            in_channels: None,
            out_channels: None,
            num_layers: 1,
            dropout: 0.0,
            cross_attention_dim: None,
            attention_bias: false,
            sample_size: 64,
            patch_size: None,
            activation_fn: "geglu".into(),
            num_embeds_ada_norm: None,
            norm_type: "layer_norm".into(),
            norm_elementwise_affine: true,
            norm_eps: 1e-5,
            caption_channels: None,
            video_length: 16,
            extra: BTreeMap::new(),
        }
    }
}

impl LatteConfig {
    /// Latte-1 (<https://huggingface.co/maxin-cn/Latte-1/blob/main/transformer/config.json>): 28 layers of
    /// 1152 channels, 16 frames of 64×64 latents, T5-XXL prompts.
    pub fn latte_1() -> Self {
        Self {
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: Some(4),
            out_channels: Some(8),
            num_layers: 28,
            cross_attention_dim: Some(1152),
            attention_bias: true,
            sample_size: 64,
            patch_size: Some(2),
            activation_fn: "gelu-approximate".into(),
            num_embeds_ada_norm: Some(1000),
            norm_type: "ada_norm_single".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: Some(4096),
            video_length: 16,
            ..Self::default()
        }
    }

    /// A Latte-shaped bench model for CPUs: 4 layers of 256 channels, 4 frames of 16×16 latents
    /// (patch 2: 64 tokens per frame), 16-token prompts of width 256. Same structure as Latte-1.
    pub fn bench_latte() -> Self {
        Self {
            num_attention_heads: 4,
            attention_head_dim: 64,
            num_layers: 4,
            cross_attention_dim: Some(256),
            sample_size: 16,
            caption_channels: Some(256),
            video_length: 4,
            ..Self::latte_1()
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

    /// `in_channels` (0 until validated).
    pub fn in_channels(&self) -> usize {
        self.in_channels.unwrap_or(0)
    }

    /// `out_channels`, or `in_channels` when absent.
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels())
    }

    /// `patch_size` (0 until validated).
    pub fn patch_size(&self) -> usize {
        self.patch_size.unwrap_or(0)
    }

    /// `caption_channels` (0 until validated).
    pub fn caption_channels(&self) -> usize {
        self.caption_channels.unwrap_or(0)
    }

    /// Checks every value the model depends on; refuses what it does not implement.
    pub fn validate(&self) -> Result<()> {
        crate::config_file::refuse_unknown("", &self.extra)?;
        for (name, v) in [("in_channels", self.in_channels), ("patch_size", self.patch_size), ("caption_channels", self.caption_channels)] {
            if v.is_none() {
                return Err(ModelError::InvalidConfig(format!("{name} is required")));
            }
        }
        let positive = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels()),
            ("out_channels", self.out_channels()),
            ("num_layers", self.num_layers),
            ("sample_size", self.sample_size),
            ("patch_size", self.patch_size()),
            ("caption_channels", self.caption_channels()),
            ("video_length", self.video_length),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::InvalidConfig(format!("{name} must be positive")));
            }
        }
        if self.inner_dim() % 4 != 0 {
            return Err(ModelError::InvalidConfig(
                "num_attention_heads * attention_head_dim must be divisible by 4 (2-D sin-cos positions)".into(),
            ));
        }
        if self.cross_attention_dim != Some(self.inner_dim()) {
            return Err(ModelError::InvalidConfig(format!(
                "cross_attention_dim must equal num_attention_heads * attention_head_dim = {} (the caption \
                 projection's width), got {:?}",
                self.inner_dim(),
                self.cross_attention_dim
            )));
        }
        if !(self.norm_eps > 0.0) {
            return Err(ModelError::InvalidConfig(format!("norm_eps must be positive, got {}", self.norm_eps)));
        }
        if self.norm_type != "ada_norm_single" {
            return Err(ModelError::Unsupported(format!("norm_type {:?} (Latte uses \"ada_norm_single\")", self.norm_type)));
        }
        if self.activation_fn != "gelu-approximate" {
            return Err(ModelError::Unsupported(format!(
                "activation_fn {:?} (implemented: \"gelu-approximate\", Latte-1's)",
                self.activation_fn
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_bad_configs_are_typed_errors() {
        LatteConfig::latte_1().validate().unwrap();
        LatteConfig::bench_latte().validate().unwrap();
        let c = LatteConfig { norm_type: "layer_norm".into(), ..LatteConfig::latte_1() };
        assert!(matches!(c.validate(), Err(ModelError::Unsupported(_))));
        let c = LatteConfig { cross_attention_dim: Some(64), ..LatteConfig::latte_1() };
        assert!(matches!(c.validate(), Err(ModelError::InvalidConfig(m)) if m.contains("cross_attention_dim")));
        let c = LatteConfig { patch_size: None, ..LatteConfig::latte_1() };
        assert!(matches!(c.validate(), Err(ModelError::InvalidConfig(m)) if m.contains("patch_size")));
        let c: LatteConfig = serde_json::from_str(r#"{"patch_size_t": 2}"#).unwrap();
        assert!(matches!(c.validate(), Err(ModelError::InvalidConfig(m)) if m.contains("patch_size_t")));
    }
}
