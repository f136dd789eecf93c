//! `TeaCacheConfig`: the authors' attribute names, their published CogVideoX coefficients, validation and the
//! host check.

use cache_core::{ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

/// The authors' published rescaling polynomials (`TeaCache4CogVideoX1.5/teacache_sample_video.py`,
/// `coefficients_dict`; `TeaCache4FLUX/teacache_flux.py` l. 113), highest power first, by checkpoint name.
pub const PUBLISHED_COEFFICIENTS: [(&str, [f64; 5]); 6] = [
    ("CogVideoX-2b", [-3.10658903e+01, 2.54732368e+01, -5.92380459e+00, 1.75769064e+00, -3.61568434e-03]),
    ("CogVideoX-5b", [-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02]),
    ("CogVideoX-5b-I2V", [-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02]),
    ("CogVideoX1.5-5B", [2.50210439e+02, -1.65061612e+02, 3.57804877e+01, -7.81551492e-01, 3.58559703e-02]),
    ("CogVideoX1.5-5B-I2V", [1.22842302e+02, -1.04088754e+02, 2.62981677e+01, -3.06009921e-01, 3.71213220e-02]),
    ("FLUX.1-dev", [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01]),
];

/// TeaCache (the authors' `rel_l1_thresh`, `coefficients`, `num_steps`), plus an opt-in memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeaCacheConfig {
    /// Skip while the accumulated rescaled change stays strictly below this.
    pub rel_l1_thresh: f64,
    /// The rescaling polynomial, highest power first (`np.poly1d` order); any length.
    pub coefficients: Vec<f64>,
    /// Model calls in one generation (= `num_inference_steps`): the first and the last always compute.
    pub num_steps: usize,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<usize>,
}

impl TeaCacheConfig {
    /// The authors' configuration for a published checkpoint (`CogVideoX-2b`, `CogVideoX-5b`,
    /// `CogVideoX-5b-I2V`, `CogVideoX1.5-5B`, `CogVideoX1.5-5B-I2V`, `FLUX.1-dev`).
    pub fn published(checkpoint: &str, rel_l1_thresh: f64, num_steps: usize) -> Result<Self, ConfigError> {
        let (_, c) = PUBLISHED_COEFFICIENTS.iter().find(|(name, _)| *name == checkpoint).ok_or_else(|| {
            let known: Vec<&str> = PUBLISHED_COEFFICIENTS.iter().map(|(n, _)| *n).collect();
            ConfigError::Missing {
                field: "coefficients",
                hint: format!(
                    "no published coefficients for {checkpoint:?} (published: {}); fit them with `ditcache calibrate`",
                    known.join(", ")
                ),
            }
        })?;
        Ok(Self { rel_l1_thresh, coefficients: c.to_vec(), num_steps, memory_budget_bytes: None })
    }

    /// The polynomial at `x`, Horner in float64 as `np.poly1d` evaluates it (no clamping).
    pub fn rescale(&self, x: f64) -> f64 {
        self.coefficients.iter().fold(0.0, |acc, c| acc * x + c)
    }

    /// Checks values: a finite, non-negative threshold; finite coefficients, at least one; `num_steps ≥ 1`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.rel_l1_thresh >= 0.0 && self.rel_l1_thresh.is_finite()) {
            return Err(ConfigError::Negative { field: "rel_l1_thresh", value: self.rel_l1_thresh });
        }
        if self.num_steps == 0 {
            return Err(ConfigError::ZeroSkipRange { field: "num_steps" });
        }
        if self.coefficients.is_empty() {
            return Err(ConfigError::Missing {
                field: "coefficients",
                hint: "the rescaling polynomial is model-dependent: fit it with `ditcache calibrate --model M`, or \
                       use the authors' published CogVideoX or FLUX.1-dev ones"
                    .into(),
            });
        }
        if let Some(&value) = self.coefficients.iter().find(|c| !c.is_finite()) {
            return Err(ConfigError::NotHostable(format!("`coefficients` must be finite, got {value}")));
        }
        Ok(())
    }

    /// [`TeaCacheConfig::validate`], then that `host` has a block stack and hands over the tensor TeaCache
    /// measures.
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()?;
        if host.num_blocks == 0 {
            return Err(ConfigError::NotHostable("TeaCache needs a block stack".into()));
        }
        if host.step_signal.is_none() {
            return Err(ConfigError::NotHostable(
                "TeaCache measures a tensor its authors define per model family (CogVideoX's `emb`, Latte's and \
                 FLUX's first modulated input); this model hands none to the engines"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses a generation of another step count than `num_steps` (the forced first and last calls would
    /// fall elsewhere).
    pub fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        if self.num_steps != num_inference_steps {
            return Err(ConfigError::StepMismatch {
                engine: "TeaCache",
                field: "num_steps",
                configured: self.num_steps,
                generation: num_inference_steps,
                why: "the authors set it to num_inference_steps; its call counter would wrap at the wrong call",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_is_highest_power_first() {
        let c = TeaCacheConfig { rel_l1_thresh: 0.1, coefficients: vec![2.0, -3.0, 0.5], num_steps: 4, memory_budget_bytes: None };
        // 2·x² − 3·x + 0.5 at x = 0.25 and at 2.
        assert_eq!(c.rescale(0.25), 2.0 * 0.0625 - 0.75 + 0.5);
        assert_eq!(c.rescale(2.0), 2.5);
        // The 2b polynomial is negative below ~0.0021 (the design note's numbers).
        let p = TeaCacheConfig::published("CogVideoX-2b", 0.2, 50).unwrap();
        assert!(p.rescale(0.001) < 0.0 && p.rescale(0.003) > 0.0);
        assert!((p.rescale(0.48) - 0.64).abs() < 0.01);
        assert!(matches!(TeaCacheConfig::published("Flux", 0.2, 50), Err(ConfigError::Missing { .. })));
    }

    #[test]
    fn bad_values_are_refused() {
        let ok = TeaCacheConfig { rel_l1_thresh: 0.1, coefficients: vec![1.0, 0.0], num_steps: 4, memory_budget_bytes: None };
        ok.validate().unwrap();
        assert!(TeaCacheConfig { rel_l1_thresh: -1.0, ..ok.clone() }.validate().is_err());
        assert!(TeaCacheConfig { coefficients: vec![], ..ok.clone() }.validate().is_err());
        assert!(TeaCacheConfig { coefficients: vec![f64::NAN], ..ok.clone() }.validate().is_err());
        assert!(TeaCacheConfig { num_steps: 0, ..ok.clone() }.validate().is_err());
        assert!(ok.check_steps(5).is_err());
        ok.check_steps(4).unwrap();
    }
}
