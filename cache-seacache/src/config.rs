//! `SeaCacheConfig`: diffusers' fields and defaults (`hooks/sea_cache.py` l. 80–85 at v0.42.1), its validation
//! (l. 91–113) as typed [`ConfigError`]s, and the host check (a block stack and a 5-D video layout).

use cache_core::{ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

fn default_threshold() -> f64 {
    0.25
}
fn default_residual_order() -> usize {
    1
}
fn default_one() -> usize {
    1
}
fn default_max_consecutive_cached() -> usize {
    2
}
fn default_power_exp() -> f64 {
    3.0
}

/// SeaCache (diffusers' `SeaCacheConfig`, without its `raw_vision_callback`: the host hands its latents through
/// [`cache_core::CacheStrategy::observe_latents`]), plus an opt-in memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeaCacheConfig {
    /// Accumulated relative-L1 budget of the SEA indicator: a call reuses the cached residual while the sum of
    /// the distances since the last full run stays strictly below it (`0` never skips).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// `0` reuses the most recent residual; `1` extrapolates linearly from the two most recent full runs.
    #[serde(default = "default_residual_order")]
    pub residual_order: usize,
    /// Steps `0..retention_steps` always run in full.
    #[serde(default = "default_one")]
    pub retention_steps: usize,
    /// The last `cache_end_steps` steps always run in full.
    #[serde(default = "default_one")]
    pub cache_end_steps: usize,
    /// At most this many consecutive reuses per cache context before a full run; `0`: no limit.
    #[serde(default = "default_max_consecutive_cached")]
    pub max_consecutive_cached: usize,
    /// Exponent of the SEA filter's clean-signal power prior `1 / |f|^power_exp`.
    #[serde(default = "default_power_exp")]
    pub power_exp: f64,
    /// Extra: never hold more than this many bytes of residuals; compute instead of caching past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<usize>,
}

impl Default for SeaCacheConfig {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            residual_order: default_residual_order(),
            retention_steps: default_one(),
            cache_end_steps: default_one(),
            max_consecutive_cached: default_max_consecutive_cached(),
            power_exp: default_power_exp(),
            memory_budget_bytes: None,
        }
    }
}

/// How the host's latents are laid out ([`HostInfo::tensor_format`]); the indicator reads `[C, F, H, W]` per
/// sample, as diffusers' Wan adapter unbinds `[B, C, F, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatentLayout {
    /// `[B, C, F, H, W]` (Wan, Latte).
    #[default]
    Bcfhw,
    /// `[B, F, C, H, W]` (CogVideoX): frames and channels are swapped before filtering.
    Bfchw,
}

impl LatentLayout {
    /// The layout of `host`'s latents; a host whose latents are not a 5-D video (FLUX's packed `BLC` tokens, a
    /// `BCHW` image) is refused.
    pub fn for_host(host: &HostInfo) -> Result<Self, ConfigError> {
        match host.tensor_format.as_str() {
            "BCFHW" => Ok(Self::Bcfhw),
            "BFCHW" => Ok(Self::Bfchw),
            other => Err(ConfigError::NotHostable(format!(
                "SeaCache filters 5-D video latents (BCFHW or BFCHW) over frames, height and width; this model's \
                 latents are {other}"
            ))),
        }
    }
}

impl SeaCacheConfig {
    /// diffusers' checks (l. 91–113): `threshold` finite and not negative, `residual_order` 0 or 1,
    /// `power_exp` finite and positive (the step counts are unsigned here, so never negative).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.threshold >= 0.0 && self.threshold.is_finite()) {
            return Err(ConfigError::Negative { field: "threshold", value: self.threshold });
        }
        if self.residual_order > 1 {
            return Err(ConfigError::NotHostable(format!("`residual_order` must be 0 or 1, got {}", self.residual_order)));
        }
        if self.power_exp < 0.0 || self.power_exp.is_nan() {
            return Err(ConfigError::Negative { field: "power_exp", value: self.power_exp });
        }
        if !(self.power_exp > 0.0 && self.power_exp.is_finite()) {
            return Err(ConfigError::NotHostable(format!("`power_exp` must be positive and finite, got {}", self.power_exp)));
        }
        Ok(())
    }

    /// [`SeaCacheConfig::validate`], then that `host` has a block stack to skip and 5-D video latents to filter
    /// ([`LatentLayout::for_host`]).
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()?;
        if host.num_blocks == 0 {
            return Err(ConfigError::NotHostable("SeaCache needs a block stack".into()));
        }
        if !host.hands_sigma {
            // diffusers' SeaCache runs every call in full ("fail-open") without the sigma; a host that never
            // hands one would cache nothing, so it is refused instead (diffusers 0.42.1 adapts Wan only).
            return Err(ConfigError::NotHostable(
                "SeaCache's gate needs the scheduler's sigma of every step, which this model's pipeline does not hand \
                 (diffusers' SeaCache adapts Wan text-to-video only)"
                    .into(),
            ));
        }
        LatentLayout::for_host(host).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(format: &str, num_blocks: usize) -> HostInfo {
        HostInfo {
            sites: vec![],
            num_blocks,
            tensor_format: format.into(),
            modules: vec![],
            module_names: vec![],
            step_signal: None,
            other_step_signals: Vec::new(),
            per_branch_calls: true,
            hands_sigma: true,
        }
    }

    #[test]
    fn defaults_and_names_are_diffusers() {
        let c: SeaCacheConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, SeaCacheConfig::default());
        assert_eq!(
            (c.threshold, c.residual_order, c.retention_steps, c.cache_end_steps, c.max_consecutive_cached, c.power_exp),
            (0.25, 1, 1, 1, 2, 3.0)
        );
        let text = r#"{"threshold": 0.1, "residual_order": 0, "retention_steps": 2, "cache_end_steps": 3,
                       "max_consecutive_cached": 0, "power_exp": 2.5}"#;
        let c: SeaCacheConfig = serde_json::from_str(text).unwrap();
        assert_eq!((c.threshold, c.residual_order, c.retention_steps, c.cache_end_steps), (0.1, 0, 2, 3));
        assert_eq!((c.max_consecutive_cached, c.power_exp), (0, 2.5));
        c.validate().unwrap();
        // Unknown fields, a boolean or negative count (diffusers refuses `max_consecutive_cached=True` too).
        assert!(serde_json::from_str::<SeaCacheConfig>(r#"{"thresh": 0.1}"#).is_err());
        assert!(serde_json::from_str::<SeaCacheConfig>(r#"{"max_consecutive_cached": true}"#).is_err());
        assert!(serde_json::from_str::<SeaCacheConfig>(r#"{"retention_steps": -1}"#).is_err());
    }

    #[test]
    fn refusals_are_typed() {
        let bad = |c: SeaCacheConfig| c.validate().unwrap_err();
        let d = SeaCacheConfig::default;
        assert!(matches!(bad(SeaCacheConfig { threshold: -0.1, ..d() }), ConfigError::Negative { field: "threshold", .. }));
        assert!(matches!(bad(SeaCacheConfig { threshold: f64::INFINITY, ..d() }), ConfigError::Negative { field: "threshold", .. }));
        assert!(matches!(bad(SeaCacheConfig { threshold: f64::NAN, ..d() }), ConfigError::Negative { field: "threshold", .. }));
        assert!(matches!(bad(SeaCacheConfig { residual_order: 2, ..d() }), ConfigError::NotHostable(m) if m.contains("residual_order")));
        assert!(matches!(bad(SeaCacheConfig { power_exp: -1.0, ..d() }), ConfigError::Negative { field: "power_exp", .. }));
        assert!(matches!(bad(SeaCacheConfig { power_exp: 0.0, ..d() }), ConfigError::NotHostable(m) if m.contains("power_exp")));
        assert!(matches!(bad(SeaCacheConfig { power_exp: f64::INFINITY, ..d() }), ConfigError::NotHostable(m) if m.contains("power_exp")));
        // Threshold 0 is valid (it never skips).
        SeaCacheConfig { threshold: 0.0, ..d() }.validate().unwrap();
    }

    #[test]
    fn hosts_need_a_block_stack_and_video_latents() {
        let c = SeaCacheConfig::default();
        c.check_host(&host("BCFHW", 30)).unwrap();
        assert_eq!(LatentLayout::for_host(&host("BFCHW", 2)).unwrap(), LatentLayout::Bfchw);
        assert!(matches!(c.check_host(&host("BLC", 19)), Err(ConfigError::NotHostable(m)) if m.contains("BLC")));
        assert!(matches!(c.check_host(&host("BCHW", 4)), Err(ConfigError::NotHostable(m)) if m.contains("BCHW")));
        assert!(matches!(c.check_host(&host("BCFHW", 0)), Err(ConfigError::NotHostable(m)) if m.contains("block stack")));
        // Values are checked before the host.
        let bad = SeaCacheConfig { threshold: -1.0, ..c };
        assert!(matches!(bad.check_host(&host("BLC", 0)), Err(ConfigError::Negative { .. })));
    }
}
