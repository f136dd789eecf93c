//! `FasterCacheConfig`: diffusers' fields and defaults, the documented CogVideoX settings, validation and
//! host check.

use cache_core::{
    check_range, check_skip, classify, require_class, AttentionKind, AttentionSite, ConfigError, HostInfo,
    Identifiers, SiteClass, TimestepRange,
};
use serde::{Deserialize, Serialize};

/// The weight of FasterCache's attention extrapolation `t + (t − t₋₂)·w`, per step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WeightSchedule {
    /// The same weight every step (diffusers' default callback returns 0.5).
    Constant(f64),
    /// Linear in the step index: `start` at step 0, `end` at the last step.
    Linear {
        /// Weight at step 0.
        start: f64,
        /// Weight at the last step.
        end: f64,
    },
}

impl WeightSchedule {
    /// The weight at `step` of `num_steps`.
    pub fn at(&self, step: usize, num_steps: usize) -> f64 {
        match *self {
            WeightSchedule::Constant(w) => w,
            WeightSchedule::Linear { start, end } => {
                let f = if num_steps > 1 { step as f64 / (num_steps - 1) as f64 } else { 0.0 };
                start + (end - start) * f
            }
        }
    }
}

/// Layout of the denoiser output that FasterCache's frequency split sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorFormat {
    /// `[B, C, F, H, W]`.
    Bcfhw,
    /// `[B, F, C, H, W]` (CogVideoX).
    Bfchw,
    /// `[B, C, H, W]` (images).
    Bchw,
}

impl TensorFormat {
    /// Parses diffusers' names.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "BCFHW" => Ok(Self::Bcfhw),
            "BFCHW" => Ok(Self::Bfchw),
            "BCHW" => Ok(Self::Bchw),
            other => Err(ConfigError::UnknownTensorFormat(other.into())),
        }
    }
}

fn default_fc_attention_ids() -> Vec<String> {
    ["^blocks.*attn", "^transformer_blocks.*attn", "^single_transformer_blocks.*attn"].map(String::from).to_vec()
}

fn default_fc_temporal_ids() -> Vec<String> {
    vec!["^temporal_transformer_blocks.*attn".into()]
}

/// FasterCache (diffusers' `FasterCacheConfig`). `attention_weight` stands for `attention_weight_callback`
/// (diffusers' default callback returns 0.5); the low/high-frequency weights follow diffusers' default
/// callbacks (`alpha_*` inside their windows, else 1).
///
/// diffusers multiplies the stored frequency deltas by those weights *in place* on every skipped step, so
/// consecutive skips compound (1.1⁴ after four); this engine does the same by default, and
/// `compound_frequency_weights: false` applies each weight once to the deltas of the last computed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FasterCacheConfig {
    pub spatial_attention_block_skip_range: Option<usize>,
    pub temporal_attention_block_skip_range: Option<usize>,
    pub spatial_attention_timestep_skip_range: TimestepRange,
    pub temporal_attention_timestep_skip_range: TimestepRange,
    pub low_frequency_weight_update_timestep_range: TimestepRange,
    pub high_frequency_weight_update_timestep_range: TimestepRange,
    pub alpha_low_frequency: f64,
    pub alpha_high_frequency: f64,
    pub unconditional_batch_skip_range: usize,
    pub unconditional_batch_timestep_skip_range: TimestepRange,
    pub spatial_attention_block_identifiers: Vec<String>,
    pub temporal_attention_block_identifiers: Vec<String>,
    pub attention_weight: WeightSchedule,
    /// `BCFHW`, `BFCHW` or `BCHW`.
    pub tensor_format: String,
    pub is_guidance_distilled: bool,
    /// Extra (default true = diffusers): compound the frequency weights over consecutive skipped steps.
    pub compound_frequency_weights: bool,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    pub memory_budget_bytes: Option<usize>,
}

impl Default for FasterCacheConfig {
    fn default() -> Self {
        Self {
            spatial_attention_block_skip_range: Some(2),
            temporal_attention_block_skip_range: None,
            spatial_attention_timestep_skip_range: (-1.0, 681.0),
            temporal_attention_timestep_skip_range: (-1.0, 681.0),
            low_frequency_weight_update_timestep_range: (99.0, 901.0),
            high_frequency_weight_update_timestep_range: (-1.0, 301.0),
            alpha_low_frequency: 1.1,
            alpha_high_frequency: 1.1,
            unconditional_batch_skip_range: 5,
            unconditional_batch_timestep_skip_range: (-1.0, 641.0),
            spatial_attention_block_identifiers: default_fc_attention_ids(),
            temporal_attention_block_identifiers: default_fc_temporal_ids(),
            attention_weight: WeightSchedule::Constant(0.5),
            tensor_format: "BCFHW".into(),
            is_guidance_distilled: false,
            compound_frequency_weights: true,
            memory_budget_bytes: None,
        }
    }
}

impl FasterCacheConfig {
    /// diffusers' documented CogVideoX example (`docs/source/en/api/cache.md`): attention reuse every other
    /// step below t=681 with weight 0.3, the unconditional branch approximated 4 steps in 5 below t=641.
    pub fn cogvideox() -> Self {
        Self {
            spatial_attention_block_skip_range: Some(2),
            spatial_attention_timestep_skip_range: (-1.0, 681.0),
            low_frequency_weight_update_timestep_range: (99.0, 641.0),
            high_frequency_weight_update_timestep_range: (-1.0, 301.0),
            unconditional_batch_skip_range: 5,
            unconditional_batch_timestep_skip_range: (-1.0, 641.0),
            attention_weight: WeightSchedule::Constant(0.3),
            tensor_format: "BFCHW".into(),
            ..Self::default()
        }
    }

    /// [`FasterCacheConfig::cogvideox`] fitted to a model: the same reuse on its temporal sites when it has
    /// any (Latte), and its output layout.
    pub fn for_host(host: &HostInfo) -> Self {
        let mut fc = Self::cogvideox();
        if host.sites.iter().any(|s| s.kind == AttentionKind::Temporal) {
            fc.temporal_attention_block_skip_range = fc.spatial_attention_block_skip_range;
            fc.temporal_attention_timestep_skip_range = fc.spatial_attention_timestep_skip_range;
        }
        // FLUX's `[B, L, C]` is no FasterCache layout: the mode it may run in (`is_guidance_distilled`) does not
        // use one, so the default stays.
        if host.tensor_format != "BLC" {
            fc.tensor_format = host.tensor_format.clone();
        }
        fc
    }
}

impl FasterCacheConfig {
    /// The classes of the model's sites under this configuration (FasterCache has no cross class).
    pub fn classes(&self, sites: &[AttentionSite]) -> Result<Vec<Option<SiteClass>>, ConfigError> {
        let ids = |set: Option<usize>, p: &[String]| set.map(|_| Identifiers::new(p)).transpose();
        let s = ids(self.spatial_attention_block_skip_range, &self.spatial_attention_block_identifiers)?;
        let t = ids(self.temporal_attention_block_skip_range, &self.temporal_attention_block_identifiers)?;
        Ok(sites.iter().map(|site| classify(site, s.as_ref(), t.as_ref(), None)).collect())
    }

    /// Checks values: zero skip ranges, empty windows, negative weights, unknown formats, bad identifiers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_skip("spatial_attention_block_skip_range", self.spatial_attention_block_skip_range)?;
        check_skip("temporal_attention_block_skip_range", self.temporal_attention_block_skip_range)?;
        check_skip("unconditional_batch_skip_range", Some(self.unconditional_batch_skip_range))?;
        check_range("spatial_attention_timestep_skip_range", self.spatial_attention_timestep_skip_range)?;
        check_range("temporal_attention_timestep_skip_range", self.temporal_attention_timestep_skip_range)?;
        check_range("low_frequency_weight_update_timestep_range", self.low_frequency_weight_update_timestep_range)?;
        check_range("high_frequency_weight_update_timestep_range", self.high_frequency_weight_update_timestep_range)?;
        check_range("unconditional_batch_timestep_skip_range", self.unconditional_batch_timestep_skip_range)?;
        for (f, v) in [("alpha_low_frequency", self.alpha_low_frequency), ("alpha_high_frequency", self.alpha_high_frequency)] {
            if !(v >= 0.0) {
                return Err(ConfigError::Negative { field: f, value: v });
            }
        }
        TensorFormat::parse(&self.tensor_format)?;
        self.classes(&[]).map(|_| ())
    }

    /// [`FasterCacheConfig::validate`], then that `tensor_format` is the layout `host` produces and that every
    /// range set has a site of `host` to act on.
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()?;
        // FLUX and Wan call the model once per guidance branch (cache contexts `cond` / `uncond`), not in the
        // batched CFG call FasterCache's unconditional-branch cache and frequency split are written for (and
        // diffusers' FasterCache keeps one state per module, not per context). Its attention-only mode
        // (`is_guidance_distilled`, diffusers' setting for FLUX.1-dev) runs no unconditional branch.
        if host.per_branch_calls && !self.is_guidance_distilled {
            return Err(ConfigError::NotHostable(
                "FasterCache's unconditional-branch cache on a model called once per guidance branch (FLUX's true \
                 CFG, Wan) is not what diffusers runs; set is_guidance_distilled (attention only, as diffusers does \
                 for FLUX.1-dev), or use first_block_cache, mag_cache, sea_cache, taylorseer_cache or \
                 pyramid_attention_broadcast"
                    .into(),
            ));
        }
        // FLUX's packed `[B, L, C]` is no FasterCache layout: the attention-only mode does not use one, so it is
        // not checked there (case flux_fastercache_distilled).
        if host.tensor_format != "BLC"
            && TensorFormat::parse(&self.tensor_format)? != TensorFormat::parse(&host.tensor_format)? {
            // The engine takes the host's output as it comes; a config that states another layout describes
            // another model (a 4-D BCHW one, or frames and channels swapped), so it is refused, not reinterpreted.
            return Err(ConfigError::TensorFormatMismatch {
                config: self.tensor_format.clone(),
                host: host.tensor_format.clone(),
            });
        }
        let classes = self.classes(&host.sites)?;
        require_class(&classes, SiteClass::Spatial, self.spatial_attention_block_skip_range, "spatial_attention_block_skip_range")?;
        require_class(&classes, SiteClass::Temporal, self.temporal_attention_block_skip_range, "temporal_attention_block_skip_range")
    }
}
