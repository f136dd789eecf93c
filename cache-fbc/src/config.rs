//! `FirstBlockCacheConfig`: diffusers' fields and defaults, its validation and host check.

use cache_core::{check_skip, ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

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

impl FirstBlockCacheConfig {
    /// Checks values: a negative threshold, a zero `max_consecutive_skips`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.threshold >= 0.0) {
            return Err(ConfigError::Negative { field: "threshold", value: self.threshold });
        }
        check_skip("max_consecutive_skips", self.max_consecutive_skips)
    }

    /// [`FirstBlockCacheConfig::validate`], then that `host` has a head block and a tail to skip.
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()?;
        if host.num_blocks < 2 {
            return Err(ConfigError::NotHostable("First Block Cache needs at least two blocks".into()));
        }
        Ok(())
    }
}
