//! `WanTransformer3DModel`'s configuration, read from diffusers' `config.json`.
//!
//! Field names and defaults are diffusers' own
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/transformer_wan.py>,
//! `WanTransformer3DModel.__init__`), so a Wan2.1 / Wan2.2 text-to-video `transformer/config.json` deserialises
//! unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Configuration of [`super::WanTransformer3DModel`], with diffusers' field names and defaults (Wan2.1-14B's
/// sizes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WanConfig {
    /// `(t, h, w)` patch of the 3-D patch embedding.
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// `None` (JSON null): `in_channels`.
    pub out_channels: Option<usize>,
    /// Width of the prompt embeddings (UMT5's 4096).
    pub text_dim: usize,
    /// Sinusoidal channels of the timestep embedding.
    pub freq_dim: usize,
    /// Hidden width of each block's feed-forward.
    pub ffn_dim: usize,
    pub num_layers: usize,
    /// A LayerNorm (with affine parameters) before the cross-attention (`norm2`); identity when false.
    pub cross_attn_norm: bool,
    /// diffusers builds every attention with RMS q/k norms across heads whatever this says (the argument is
    /// passed to `WanTransformerBlock` and not read there); kept as written, computed as diffusers does.
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Image-to-video: CLIP image embedding width. Refused ([`WanConfig::validate`]).
    pub image_dim: Option<usize>,
    /// Image-to-video: the cross-attention's image key/value projections. Refused.
    pub added_kv_proj_dim: Option<usize>,
    /// Rotary table length per axis (frames, rows, columns after patching).
    pub rope_max_seq_len: usize,
    /// Wan2.1 FLF2V's image position embedding. Refused.
    pub pos_embed_seq_len: Option<usize>,
    /// Keys diffusers writes for itself (`_class_name`, `_diffusers_version`, ...) and anything unknown;
    /// [`WanConfig::validate`] refuses unknown keys that do not start with `_`.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for WanConfig {
    fn default() -> Self {
        Self {
            patch_size: [1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
            extra: BTreeMap::new(),
        }
    }
}

impl WanConfig {
    /// Wan2.1-T2V-1.3B (<https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/blob/main/transformer/config.json>):
    /// 12 heads of 128, 30 layers, ffn 8960.
    pub fn wan_2_1_t2v_1_3b() -> Self {
        Self { num_attention_heads: 12, ffn_dim: 8960, num_layers: 30, ..Self::default() }
    }

    /// Wan2.1-T2V-14B: diffusers' defaults.
    pub fn wan_2_1_t2v_14b() -> Self {
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
        self.out_channels.filter(|&c| c > 0).unwrap_or(self.in_channels)
    }

    /// The rotary widths of the `(frame, row, column)` axes: `h = w = 2·⌊hd/6⌋`, `t = hd − h − w`
    /// (`WanRotaryPosEmbed`).
    pub fn rope_dims(&self) -> [usize; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }

    /// Checks the configuration and refuses what this implementation does not compute.
    pub fn validate(&self) -> Result<()> {
        crate::config_file::refuse_unknown("", &self.extra)?;
        let positive = [
            ("patch_size[0]", self.patch_size[0]),
            ("patch_size[1]", self.patch_size[1]),
            ("patch_size[2]", self.patch_size[2]),
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
            ("ffn_dim", self.ffn_dim),
            ("num_layers", self.num_layers),
            ("rope_max_seq_len", self.rope_max_seq_len),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::InvalidConfig(format!("{name} must be positive")));
            }
        }
        if self.freq_dim % 2 != 0 {
            return Err(ModelError::InvalidConfig(format!("freq_dim {} must be even (sin and cos halves)", self.freq_dim)));
        }
        // The three rotary widths must be even (pairs) and the t width non-negative: hd even and ≥ 6 gives both.
        if self.attention_head_dim % 2 != 0 || self.attention_head_dim < 6 {
            return Err(ModelError::InvalidConfig(format!(
                "attention_head_dim {} must be even and at least 6 (three rotary axes of pairs)",
                self.attention_head_dim
            )));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(ModelError::InvalidConfig(format!("eps must be positive, got {}", self.eps)));
        }
        let i2v = [("image_dim", self.image_dim), ("added_kv_proj_dim", self.added_kv_proj_dim), ("pos_embed_seq_len", self.pos_embed_seq_len)];
        if let Some((name, Some(v))) = i2v.into_iter().find(|(_, v)| v.is_some()) {
            return Err(ModelError::Unsupported(format!(
                "{name} = {v}: image-to-video conditioning (Wan I2V / FLF2V) is not implemented; text-to-video models only"
            )));
        }
        Ok(())
    }
}
