//! Serde configurations of the engines, with diffusers' field names and defaults, their validation, the
//! check that a model can host them, and the `quality` / `balanced` / `speed` presets.
//!
//! The JSON form is the `cache` object of the parity cases: `{"type": "first_block_cache", "threshold": 0.05}`.
//! TOML works the same way (`type = "faster_cache"`). A stack is `{"type": "stack", "strategies": [...]}`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::context::{AttentionKind, AttentionSite};

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A threshold below zero.
    #[error("`{field}` must not be negative, got {value}")]
    Negative {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// A skip range (a period) of zero.
    #[error("`{field}` must be at least 1")]
    ZeroSkipRange {
        /// The field.
        field: &'static str,
    },
    /// A timestep window whose low end is not below its high end.
    #[error("`{field}` = ({lo}, {hi}): the low end must be below the high end")]
    EmptyRange {
        /// The field.
        field: &'static str,
        /// Low end.
        lo: f64,
        /// High end.
        hi: f64,
    },
    /// `tensor_format` other than BCFHW, BFCHW, BCHW.
    #[error("unknown tensor_format {0:?} (expected BCFHW, BFCHW or BCHW)")]
    UnknownTensorFormat(String),
    /// A block identifier that is not a valid regular expression.
    #[error("invalid block identifier {pattern:?}: {reason}")]
    BadIdentifier {
        /// The pattern.
        pattern: String,
        /// The regex error.
        reason: String,
    },
    /// The model has nothing the configuration asks to cache.
    #[error("the model cannot host this strategy: {0}")]
    NotHostable(String),
    /// Two strategies of a stack would both decide the same thing.
    #[error("conflicting strategies in a stack: {0}")]
    Conflict(String),
    /// The file could not be read or parsed.
    #[error("cannot read cache config {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

fn default_fbc_threshold() -> f64 {
    0.05
}

/// First Block Cache (diffusers' `FirstBlockCacheConfig`), plus opt-in extras that are off by default so
/// that parity holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBlockCacheConfig {
    /// Skip the tail when `mean|r − r_prev| / mean|r_prev|` of the first block's residual is not above this.
    #[serde(default = "default_fbc_threshold")]
    pub threshold: f64,
    /// Extra: always compute the first `warmup_steps` steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Extra: compute after this many skips in a row.
    #[serde(default)]
    pub max_consecutive_skips: Option<usize>,
    /// Extra: decide per batch element (the tail still runs for the whole batch when any element needs it;
    /// elements that decided to skip take their cached residual).
    #[serde(default)]
    pub per_sample: bool,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    #[serde(default)]
    pub memory_budget_bytes: Option<usize>,
}

impl Default for FirstBlockCacheConfig {
    fn default() -> Self {
        Self { threshold: 0.05, warmup_steps: 0, max_consecutive_skips: None, per_sample: false, memory_budget_bytes: None }
    }
}

/// A timestep window `(low, high)`; a timestep is inside when `low < t < high` (strictly, as diffusers).
pub type TimestepRange = (f64, f64);

/// Whether `t` is strictly inside `range`.
pub fn in_range(range: TimestepRange, t: f64) -> bool {
    range.0 < t && t < range.1
}

fn default_pab_range() -> TimestepRange {
    (100.0, 800.0)
}

fn default_spatial_ids() -> Vec<String> {
    ["blocks", "transformer_blocks", "single_transformer_blocks", "layers", "visual_transformer_blocks"]
        .map(String::from)
        .to_vec()
}

/// `^`-anchored copies of identifiers.
fn anchored(ids: &[String]) -> Vec<String> {
    ids.iter().map(|i| format!("^{i}")).collect()
}

fn default_temporal_ids() -> Vec<String> {
    vec!["temporal_transformer_blocks".into()]
}

fn default_cross_ids() -> Vec<String> {
    ["blocks", "transformer_blocks", "layers"].map(String::from).to_vec()
}

/// Pyramid Attention Broadcast (diffusers' `PyramidAttentionBroadcastConfig`).
///
/// Sites are classified as diffusers does: by a regular-expression search of the identifiers in the site's
/// name, spatial first, then temporal, then cross (cross only for cross-attention sites, the others only for
/// self-attention sites).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PyramidAttentionBroadcastConfig {
    pub spatial_attention_block_skip_range: Option<usize>,
    pub temporal_attention_block_skip_range: Option<usize>,
    pub cross_attention_block_skip_range: Option<usize>,
    pub spatial_attention_timestep_skip_range: TimestepRange,
    pub temporal_attention_timestep_skip_range: TimestepRange,
    pub cross_attention_timestep_skip_range: TimestepRange,
    pub spatial_attention_block_identifiers: Vec<String>,
    pub temporal_attention_block_identifiers: Vec<String>,
    pub cross_attention_block_identifiers: Vec<String>,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    pub memory_budget_bytes: Option<usize>,
}

impl Default for PyramidAttentionBroadcastConfig {
    fn default() -> Self {
        Self {
            spatial_attention_block_skip_range: None,
            temporal_attention_block_skip_range: None,
            cross_attention_block_skip_range: None,
            spatial_attention_timestep_skip_range: default_pab_range(),
            temporal_attention_timestep_skip_range: default_pab_range(),
            cross_attention_timestep_skip_range: default_pab_range(),
            spatial_attention_block_identifiers: default_spatial_ids(),
            temporal_attention_block_identifiers: default_temporal_ids(),
            cross_attention_block_identifiers: default_cross_ids(),
            memory_budget_bytes: None,
        }
    }
}

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
        fc.tensor_format = host.tensor_format.clone();
        fc
    }
}

/// A cache strategy's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CacheConfig {
    /// No caching.
    None,
    /// First Block Cache.
    FirstBlockCache(FirstBlockCacheConfig),
    /// Pyramid Attention Broadcast.
    PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig),
    /// FasterCache.
    FasterCache(FasterCacheConfig),
    /// Several strategies, consulted in this order at every hook.
    Stack {
        /// The members.
        strategies: Vec<CacheConfig>,
    },
}

/// What a model offers to cache engines (its attention sites and whether it has a block stack).
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// Every attention site, in call order within a step.
    pub sites: Vec<AttentionSite>,
    /// Blocks in the stack that First Block Cache splits into head and tail.
    pub num_blocks: usize,
    /// The layout of the model's output, as FasterCache's `tensor_format` names it (`BFCHW` for CogVideoX,
    /// `BCFHW` for Latte); presets use it. The engines' results do not depend on it for 5-D outputs (the
    /// frequency split acts on each `[H, W]` plane), so a config stating another 5-D layout is accepted.
    pub tensor_format: String,
}

/// The three presets of the seed article.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// FBC 0.02, PAB spatial 1 / temporal 2, no FasterCache.
    Quality,
    /// FBC 0.05, PAB spatial 2 / temporal 3, FasterCache (CogVideoX settings).
    Balanced,
    /// FBC 0.1, PAB spatial 3 / temporal 4, FasterCache (CogVideoX settings).
    Speed,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "quality" => Ok(Self::Quality),
            "balanced" => Ok(Self::Balanced),
            "speed" => Ok(Self::Speed),
            other => Err(format!("unknown preset {other:?} (quality, balanced, speed)")),
        }
    }
}

fn check_skip(field: &'static str, v: Option<usize>) -> Result<(), ConfigError> {
    if v == Some(0) {
        return Err(ConfigError::ZeroSkipRange { field });
    }
    Ok(())
}

fn check_range(field: &'static str, r: TimestepRange) -> Result<(), ConfigError> {
    if !(r.0 < r.1) {
        return Err(ConfigError::EmptyRange { field, lo: r.0, hi: r.1 });
    }
    Ok(())
}

/// Compiled identifier patterns (diffusers matches with `re.search`).
#[derive(Debug, Clone)]
pub struct Identifiers(Vec<regex::Regex>);

impl Identifiers {
    /// Compiles the patterns.
    pub fn new(patterns: &[String]) -> Result<Self, ConfigError> {
        patterns
            .iter()
            .map(|p| {
                regex::Regex::new(p).map_err(|e| ConfigError::BadIdentifier { pattern: p.clone(), reason: e.to_string() })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether any pattern is found in `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.is_match(name))
    }
}

/// How an attention-level engine treats one site: which of its three classes, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteClass {
    /// Spatial self-attention settings apply.
    Spatial,
    /// Temporal self-attention settings apply.
    Temporal,
    /// Cross-attention settings apply.
    Cross,
}

/// diffusers' classification: spatial if a spatial identifier matches a self-attention site and a spatial
/// range is set; else temporal likewise; else cross for cross-attention sites.
pub fn classify(
    site: &AttentionSite,
    spatial: Option<&Identifiers>,
    temporal: Option<&Identifiers>,
    cross: Option<&Identifiers>,
) -> Option<SiteClass> {
    let name = site.to_string();
    let is_cross = site.kind == AttentionKind::Cross;
    if !is_cross && spatial.is_some_and(|i| i.matches(&name)) {
        Some(SiteClass::Spatial)
    } else if !is_cross && temporal.is_some_and(|i| i.matches(&name)) {
        Some(SiteClass::Temporal)
    } else if is_cross && cross.is_some_and(|i| i.matches(&name)) {
        Some(SiteClass::Cross)
    } else {
        None
    }
}

impl PyramidAttentionBroadcastConfig {
    /// The classes of the model's sites under this configuration.
    pub fn classes(&self, sites: &[AttentionSite]) -> Result<Vec<Option<SiteClass>>, ConfigError> {
        let ids = |set: Option<usize>, p: &[String]| set.map(|_| Identifiers::new(p)).transpose();
        let s = ids(self.spatial_attention_block_skip_range, &self.spatial_attention_block_identifiers)?;
        let t = ids(self.temporal_attention_block_skip_range, &self.temporal_attention_block_identifiers)?;
        let c = ids(self.cross_attention_block_skip_range, &self.cross_attention_block_identifiers)?;
        Ok(sites.iter().map(|site| classify(site, s.as_ref(), t.as_ref(), c.as_ref())).collect())
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
}

fn require_class(
    classes: &[Option<SiteClass>],
    class: SiteClass,
    set: Option<usize>,
    field: &str,
) -> Result<(), ConfigError> {
    if set.is_some() && !classes.contains(&Some(class)) {
        // diffusers would ignore the field silently; say why it would have no effect.
        let hint = if class == SiteClass::Temporal && classes.contains(&Some(SiteClass::Spatial)) {
            " (sites are classified spatial first, and diffusers' default spatial identifier \
             `transformer_blocks` also matches `temporal_transformer_blocks`: anchor it as `^transformer_blocks`)"
        } else {
            ""
        };
        return Err(ConfigError::NotHostable(format!(
            "`{field}` is set but no attention site of the model matches its {class:?} identifiers{hint}"
        )));
    }
    Ok(())
}

impl CacheConfig {
    /// Reads a JSON or TOML file (by extension; anything but `.toml` is read as JSON) and validates it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::Parse { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: Self = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A preset, restricted to what `host` has (no temporal PAB on a model without temporal attention).
    pub fn preset(preset: Preset, host: &HostInfo) -> Self {
        let (threshold, spatial, temporal, cross, faster) = match preset {
            Preset::Quality => (0.02, 1, 2, 3, false),
            Preset::Balanced => (0.05, 2, 3, 4, true),
            Preset::Speed => (0.1, 3, 4, 6, true),
        };
        let has = |kind: AttentionKind| host.sites.iter().any(|s| s.kind == kind);
        let pab = PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: Some(spatial),
            // Anchored, so that temporal blocks (`temporal_transformer_blocks`) get the temporal range.
            spatial_attention_block_identifiers: anchored(&default_spatial_ids()),
            temporal_attention_block_skip_range: has(AttentionKind::Temporal).then_some(temporal),
            cross_attention_block_skip_range: has(AttentionKind::Cross).then_some(cross),
            ..Default::default()
        };
        let mut strategies = Vec::new();
        if faster {
            strategies.push(CacheConfig::FasterCache(FasterCacheConfig::for_host(host)));
        }
        strategies.push(CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold, ..Default::default() }));
        strategies.push(CacheConfig::PyramidAttentionBroadcast(pab));
        CacheConfig::Stack { strategies }
    }

    /// Checks values: negative thresholds, zero skip ranges, empty windows, unknown formats, bad identifiers,
    /// and stacks with two strategies deciding the same thing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            CacheConfig::None => Ok(()),
            CacheConfig::FirstBlockCache(c) => {
                if !(c.threshold >= 0.0) {
                    return Err(ConfigError::Negative { field: "threshold", value: c.threshold });
                }
                check_skip("max_consecutive_skips", c.max_consecutive_skips)
            }
            CacheConfig::PyramidAttentionBroadcast(c) => {
                check_skip("spatial_attention_block_skip_range", c.spatial_attention_block_skip_range)?;
                check_skip("temporal_attention_block_skip_range", c.temporal_attention_block_skip_range)?;
                check_skip("cross_attention_block_skip_range", c.cross_attention_block_skip_range)?;
                check_range("spatial_attention_timestep_skip_range", c.spatial_attention_timestep_skip_range)?;
                check_range("temporal_attention_timestep_skip_range", c.temporal_attention_timestep_skip_range)?;
                check_range("cross_attention_timestep_skip_range", c.cross_attention_timestep_skip_range)?;
                c.classes(&[]).map(|_| ())
            }
            CacheConfig::FasterCache(c) => {
                check_skip("spatial_attention_block_skip_range", c.spatial_attention_block_skip_range)?;
                check_skip("temporal_attention_block_skip_range", c.temporal_attention_block_skip_range)?;
                check_skip("unconditional_batch_skip_range", Some(c.unconditional_batch_skip_range))?;
                check_range("spatial_attention_timestep_skip_range", c.spatial_attention_timestep_skip_range)?;
                check_range("temporal_attention_timestep_skip_range", c.temporal_attention_timestep_skip_range)?;
                check_range(
                    "low_frequency_weight_update_timestep_range",
                    c.low_frequency_weight_update_timestep_range,
                )?;
                check_range(
                    "high_frequency_weight_update_timestep_range",
                    c.high_frequency_weight_update_timestep_range,
                )?;
                check_range("unconditional_batch_timestep_skip_range", c.unconditional_batch_timestep_skip_range)?;
                for (f, v) in [("alpha_low_frequency", c.alpha_low_frequency), ("alpha_high_frequency", c.alpha_high_frequency)] {
                    if !(v >= 0.0) {
                        return Err(ConfigError::Negative { field: f, value: v });
                    }
                }
                TensorFormat::parse(&c.tensor_format)?;
                c.classes(&[]).map(|_| ())
            }
            CacheConfig::Stack { strategies } => {
                let count = |pred: fn(&CacheConfig) -> bool| strategies.iter().filter(|s| pred(s)).count();
                if count(|s| matches!(s, CacheConfig::FirstBlockCache(_))) > 1 {
                    return Err(ConfigError::Conflict("two First Block Caches decide the same tail".into()));
                }
                if count(|s| matches!(s, CacheConfig::FasterCache(_))) > 1 {
                    return Err(ConfigError::Conflict("two FasterCaches rebuild the same unconditional branch".into()));
                }
                if strategies.iter().any(|s| matches!(s, CacheConfig::Stack { .. })) {
                    return Err(ConfigError::Conflict("stacks do not nest; list the strategies in one stack".into()));
                }
                strategies.iter().try_for_each(CacheConfig::validate)
            }
        }
    }

    /// [`CacheConfig::validate`], then checks that `host` has what the configuration asks to cache.
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()?;
        match self {
            CacheConfig::None => Ok(()),
            CacheConfig::FirstBlockCache(_) => {
                if host.num_blocks < 2 {
                    return Err(ConfigError::NotHostable("First Block Cache needs at least two blocks".into()));
                }
                Ok(())
            }
            CacheConfig::PyramidAttentionBroadcast(c) => {
                let classes = c.classes(&host.sites)?;
                require_class(&classes, SiteClass::Spatial, c.spatial_attention_block_skip_range, "spatial_attention_block_skip_range")?;
                require_class(&classes, SiteClass::Temporal, c.temporal_attention_block_skip_range, "temporal_attention_block_skip_range")?;
                require_class(&classes, SiteClass::Cross, c.cross_attention_block_skip_range, "cross_attention_block_skip_range")
            }
            CacheConfig::FasterCache(c) => {
                let classes = c.classes(&host.sites)?;
                require_class(&classes, SiteClass::Spatial, c.spatial_attention_block_skip_range, "spatial_attention_block_skip_range")?;
                require_class(&classes, SiteClass::Temporal, c.temporal_attention_block_skip_range, "temporal_attention_block_skip_range")
            }
            CacheConfig::Stack { strategies } => strategies.iter().try_for_each(|s| s.check_host(host)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cogvideox_host() -> HostInfo {
        let sites = (0..2)
            .map(|i| AttentionSite { stack: "transformer_blocks", index: i, attn: "attn1", kind: AttentionKind::Spatial })
            .collect();
        HostInfo { sites, num_blocks: 2, tensor_format: "BFCHW".into() }
    }

    #[test]
    fn json_uses_diffusers_names_and_defaults() {
        let c: CacheConfig = serde_json::from_str(
            r#"{"type": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2}"#,
        )
        .unwrap();
        let CacheConfig::PyramidAttentionBroadcast(p) = &c else { panic!("{c:?}") };
        assert_eq!(p.spatial_attention_timestep_skip_range, (100.0, 800.0));
        assert_eq!(p.temporal_attention_block_skip_range, None);
        let c: CacheConfig = serde_json::from_str(r#"{"type": "faster_cache", "attention_weight": 0.3}"#).unwrap();
        let CacheConfig::FasterCache(f) = &c else { panic!() };
        assert_eq!((f.attention_weight, f.unconditional_batch_skip_range), (WeightSchedule::Constant(0.3), 5));
        let c: CacheConfig = toml::from_str("type = \"first_block_cache\"\nthreshold = 0.1\n").unwrap();
        assert_eq!(c, CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.1, ..Default::default() }));
        assert!(serde_json::from_str::<CacheConfig>(r#"{"type": "first_block_cache", "treshold": 0.1}"#).is_err());
    }

    #[test]
    fn validation_errors_are_typed() {
        let fbc = CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: -0.1, ..Default::default() });
        assert!(matches!(fbc.validate(), Err(ConfigError::Negative { field: "threshold", .. })));
        let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: Some(0),
            ..Default::default()
        });
        assert!(matches!(pab.validate(), Err(ConfigError::ZeroSkipRange { .. })));
        let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: Some(2),
            spatial_attention_timestep_skip_range: (800.0, 100.0),
            ..Default::default()
        });
        assert!(matches!(pab.validate(), Err(ConfigError::EmptyRange { lo, hi, .. }) if lo == 800.0 && hi == 100.0));
        let fc = CacheConfig::FasterCache(FasterCacheConfig { tensor_format: "BHWC".into(), ..Default::default() });
        assert_eq!(fc.validate(), Err(ConfigError::UnknownTensorFormat("BHWC".into())));
    }

    #[test]
    fn temporal_attention_on_a_model_without_any_is_refused() {
        let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
            temporal_attention_block_skip_range: Some(2),
            ..Default::default()
        });
        assert!(matches!(pab.check_host(&cogvideox_host()), Err(ConfigError::NotHostable(m)) if m.contains("temporal")));
        // Presets drop what the model lacks, so they always fit.
        for p in [Preset::Quality, Preset::Balanced, Preset::Speed] {
            CacheConfig::preset(p, &cogvideox_host()).check_host(&cogvideox_host()).unwrap();
        }
    }

    #[test]
    fn diffusers_identifier_quirk_temporal_blocks_match_spatial_first() {
        // "transformer_blocks" is found inside "temporal_transformer_blocks": diffusers classifies such a
        // site as spatial when a spatial range is set.
        let site = AttentionSite { stack: "temporal_transformer_blocks", index: 0, attn: "attn1", kind: AttentionKind::Temporal };
        let pab = PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: Some(2),
            temporal_attention_block_skip_range: Some(3),
            ..Default::default()
        };
        assert_eq!(pab.classes(&[site]).unwrap(), vec![Some(SiteClass::Spatial)]);
    }
}
