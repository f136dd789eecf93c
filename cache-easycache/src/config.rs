//! `EasyCacheConfig`: the authors' command-line values (`--thresh_t2v`, `--ret_steps`, `--sample_steps`), their
//! defaults, validation and the step-count check.

use cache_core::{ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

fn default_thresh() -> f64 {
    0.05
}
fn default_ret_steps() -> usize {
    10
}
fn default_num_steps() -> usize {
    50
}

/// EasyCache (H-EmbodVis/EasyCache, `EasyCache4Wan2.2/easycache_generate.py`; not in diffusers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EasyCacheConfig {
    /// Reuse while the accumulated predicted output change stays below this (`--thresh_t2v`, default 0.05;
    /// the authors' help: 0.1 for about 2×, 0.2 for about 3×).
    #[serde(default = "default_thresh")]
    pub thresh: f64,
    /// The first `ret_steps` steps always compute (`--ret_steps`; the authors' globals hold `2·ret_steps`
    /// calls).
    #[serde(default = "default_ret_steps")]
    pub ret_steps: usize,
    /// The generation's step count (`--sample_steps`): its last step always computes.
    #[serde(default = "default_num_steps")]
    pub num_steps: usize,
}

impl Default for EasyCacheConfig {
    fn default() -> Self {
        Self { thresh: default_thresh(), ret_steps: default_ret_steps(), num_steps: default_num_steps() }
    }
}

impl EasyCacheConfig {
    /// The authors' defaults for a generation of `num_steps` steps at threshold `thresh`.
    pub fn new(thresh: f64, num_steps: usize) -> Self {
        Self { thresh, num_steps, ..Self::default() }
    }

    /// Checks values: a finite threshold not below zero (zero never reuses), at least one step.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.thresh >= 0.0 && self.thresh.is_finite()) {
            return Err(ConfigError::Negative { field: "thresh", value: self.thresh });
        }
        if self.num_steps == 0 {
            return Err(ConfigError::ZeroSkipRange { field: "num_steps" });
        }
        Ok(())
    }

    /// Refuses a generation of another step count: the forced last step is `num_steps − 1`.
    pub fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        if self.num_steps != num_inference_steps {
            return Err(ConfigError::StepMismatch {
                engine: "EasyCache",
                field: "num_steps",
                configured: self.num_steps,
                generation: num_inference_steps,
                why: "its always-computed last step follows the configured count; set it to the generation's",
            });
        }
        Ok(())
    }

    /// [`EasyCacheConfig::validate`]; every host can take it (it replaces whole denoiser calls).
    pub fn check_host(&self, _host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()
    }
}
