//! `MagCacheConfig`: diffusers' fields and defaults, the ratio interpolation, validation and host check.

use cache_core::{ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

fn default_threshold() -> f64 {
    0.06
}
fn default_max_skip_steps() -> usize {
    3
}
fn default_retention_ratio() -> f64 {
    0.2
}
fn default_num_inference_steps() -> usize {
    28
}

/// MagCache (diffusers' `MagCacheConfig`), plus an opt-in memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MagCacheConfig {
    /// Skip while the accumulated error `Σ|1 − Π ratio|` stays at or below this.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// At most this many consecutive skipped steps.
    #[serde(default = "default_max_skip_steps")]
    pub max_skip_steps: usize,
    /// The first `int(retention_ratio · num_inference_steps + 0.5)` steps always compute.
    #[serde(default = "default_retention_ratio")]
    pub retention_ratio: f64,
    /// The generation's step count (the ratios are interpolated to it; the state resets after it).
    #[serde(default = "default_num_inference_steps")]
    pub num_inference_steps: usize,
    /// Per-step magnitude ratios of the model (from a calibration run); any length, interpolated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mag_ratios: Option<Vec<f64>>,
    /// Calibration mode: never skip, measure the ratios ([`crate::MagCache::calibrated_ratios`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub calibrate: bool,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<usize>,
}

impl Default for MagCacheConfig {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            max_skip_steps: default_max_skip_steps(),
            retention_ratio: default_retention_ratio(),
            num_inference_steps: default_num_inference_steps(),
            mag_ratios: None,
            calibrate: false,
            memory_budget_bytes: None,
        }
    }
}

/// diffusers' `FLUX_MAG_RATIOS` (`hooks/mag_cache.py` l. 35–65 at v0.42.1, from the MagCache authors): the
/// magnitude ratios of FLUX.1 (dev and schnell) over 28 steps, interpolated to any step count.
pub const FLUX_MAG_RATIOS: [f64; 28] = [
    1.0, 1.21094, 1.11719, 1.07812, 1.0625, 1.03906, 1.03125, 1.03906, 1.02344, 1.03125, 1.02344, 0.98047, 1.01562,
    1.00781, 1.0, 1.00781, 1.0, 1.00781, 1.0, 1.0, 0.99609, 0.99609, 0.98047, 0.98828, 0.96484, 0.95703, 0.93359,
    0.89062,
];

impl MagCacheConfig {
    /// diffusers' defaults with the built-in [`FLUX_MAG_RATIOS`], for a FLUX.1 generation of
    /// `num_inference_steps` steps.
    pub fn flux(num_inference_steps: usize) -> Self {
        Self { num_inference_steps, mag_ratios: Some(FLUX_MAG_RATIOS.to_vec()), ..Self::default() }
    }

    /// A calibration config for `num_inference_steps` steps.
    pub fn calibration(num_inference_steps: usize) -> Self {
        Self { num_inference_steps, calibrate: true, ..Self::default() }
    }

    /// The ratio of each step as the engine uses it: diffusers' `nearest_interp` of `mag_ratios` (float32) to
    /// `num_inference_steps` entries. Empty in calibration mode.
    pub fn step_ratios(&self) -> Vec<f32> {
        let Some(src) = self.mag_ratios.as_ref().filter(|_| !self.calibrate) else { return Vec::new() };
        let src: Vec<f32> = src.iter().map(|&r| r as f32).collect();
        let (l, n) = (src.len(), self.num_inference_steps);
        if l == n || l == 0 {
            return src;
        }
        if n == 1 {
            return vec![src[l - 1]];
        }
        // torch: float32 grid times the float64 scale taken as float32, rounded half to even.
        let scale = ((l - 1) as f64 / (n - 1) as f64) as f32;
        (0..n).map(|i| src[((i as f32) * scale).round_ties_even() as usize]).collect()
    }

    /// The first step that may skip: `int(retention_ratio · num_inference_steps + 0.5)`.
    pub fn retention_step(&self) -> usize {
        (self.retention_ratio * self.num_inference_steps as f64 + 0.5) as usize
    }

    /// Checks values: ratios present unless calibrating (diffusers raises the same), finite and not negative;
    /// a negative threshold or retention ratio; zero steps.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_inference_steps == 0 {
            return Err(ConfigError::ZeroSkipRange { field: "num_inference_steps" });
        }
        for (field, value) in [("threshold", self.threshold), ("retention_ratio", self.retention_ratio)] {
            if !(value >= 0.0) {
                return Err(ConfigError::Negative { field, value });
            }
        }
        if self.calibrate {
            return Ok(());
        }
        let hint = "the ratios are model- and schedule-dependent: measure them with `ditcache calibrate --model M \
                    --steps N` (it writes a config file with them), or run once with `calibrate: true`";
        match &self.mag_ratios {
            None => Err(ConfigError::Missing { field: "mag_ratios", hint: hint.into() }),
            Some(r) if r.is_empty() => Err(ConfigError::Missing { field: "mag_ratios", hint: hint.into() }),
            Some(r) => match r.iter().find(|v| !(**v >= 0.0 && v.is_finite())) {
                Some(&value) => Err(ConfigError::Negative { field: "mag_ratios", value }),
                None => Ok(()),
            },
        }
    }

    /// Refuses a generation of another step count than `num_inference_steps`: the ratios, the retention steps
    /// and the self-reset all follow the configuration's count (diffusers runs such a mismatch silently).
    pub fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        if self.num_inference_steps != num_inference_steps {
            return Err(ConfigError::StepMismatch {
                engine: "MagCache",
                field: "num_inference_steps",
                configured: self.num_inference_steps,
                generation: num_inference_steps,
                why: "its ratios, retention steps and reset follow the configured count; set it to the generation's",
            });
        }
        Ok(())
    }

    /// [`MagCacheConfig::validate`], then that `host` has a block stack to skip.
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()?;
        if host.num_blocks == 0 {
            return Err(ConfigError::NotHostable("MagCache needs a block stack".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_interpolated_as_diffusers_nearest_interp() {
        // 12 -> 10: indices 0 1 2 4 5 6 7 9 10 11 (round half to even), per the design notes.
        let ratios: Vec<f64> = (0..12).map(|i| i as f64).collect();
        let c = MagCacheConfig { num_inference_steps: 10, mag_ratios: Some(ratios), ..Default::default() };
        assert_eq!(c.step_ratios(), vec![0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 9.0, 10.0, 11.0]);
        let one = MagCacheConfig { num_inference_steps: 1, ..c.clone() };
        assert_eq!(one.step_ratios(), vec![11.0]);
        assert_eq!(MagCacheConfig { retention_ratio: 0.2, num_inference_steps: 12, ..c.clone() }.retention_step(), 2);
        assert_eq!(MagCacheConfig { retention_ratio: 0.25, num_inference_steps: 10, ..c }.retention_step(), 3);
    }

    #[test]
    fn ratios_are_required_unless_calibrating() {
        let e = MagCacheConfig::default().validate().unwrap_err();
        assert!(matches!(&e, ConfigError::Missing { field: "mag_ratios", hint } if hint.contains("ditcache calibrate")));
        MagCacheConfig::calibration(12).validate().unwrap();
        let bad = MagCacheConfig { mag_ratios: Some(vec![1.0, f64::NAN]), ..Default::default() };
        assert!(matches!(bad.validate(), Err(ConfigError::Negative { field: "mag_ratios", .. })));
    }
}
