//! `TeaCacheConfig`: the authors' attribute names, their published CogVideoX, FLUX and Wan 2.1 coefficients,
//! validation and the host check.

use cache_core::{ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

/// The authors' published rescaling polynomials (`TeaCache4CogVideoX1.5/teacache_sample_video.py`,
/// `coefficients_dict`; `TeaCache4FLUX/teacache_flux.py` l. 113; `TeaCache4Wan2.1/teacache_generate.py`
/// l. 890–892, text-to-video without `use_ret_steps`, measuring `e`), highest power first, by checkpoint name.
pub const PUBLISHED_COEFFICIENTS: [(&str, [f64; 5]); 8] = [
    ("CogVideoX-2b", [-3.10658903e+01, 2.54732368e+01, -5.92380459e+00, 1.75769064e+00, -3.61568434e-03]),
    ("CogVideoX-5b", [-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02]),
    ("CogVideoX-5b-I2V", [-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02]),
    ("CogVideoX1.5-5B", [2.50210439e+02, -1.65061612e+02, 3.57804877e+01, -7.81551492e-01, 3.58559703e-02]),
    ("CogVideoX1.5-5B-I2V", [1.22842302e+02, -1.04088754e+02, 2.62981677e+01, -3.06009921e-01, 3.71213220e-02]),
    ("FLUX.1-dev", [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01]),
    ("Wan2.1-T2V-1.3B", [2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01]),
    ("Wan2.1-T2V-14B", [-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404]),
];

/// The authors' Wan 2.1 text-to-video polynomials with `use_ret_steps` (`TeaCache4Wan2.1/teacache_generate.py`
/// l. 881–887): they measure `e0` (Wan's `timestep_proj`), compute the first 5 steps of each branch and never
/// cut off ([`TeaCacheConfig::published_ret_steps`]).
pub const PUBLISHED_RET_STEPS_COEFFICIENTS: [(&str, [f64; 5]); 2] = [
    ("Wan2.1-T2V-1.3B", [-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02]),
    ("Wan2.1-T2V-14B", [-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01]),
];

/// TeaCache (the authors' `rel_l1_thresh`, `coefficients`, `num_steps`), plus an opt-in memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeaCacheConfig {
    /// Skip while the accumulated rescaled change stays strictly below this.
    pub rel_l1_thresh: f64,
    /// The rescaling polynomial, highest power first (`np.poly1d` order); any length.
    pub coefficients: Vec<f64>,
    /// Model calls in one generation per cache context (= `num_inference_steps`).
    pub num_steps: usize,
    /// Calls at the start that always compute (default 1: the authors' CogVideoX, Latte and FLUX rule). The
    /// authors' Wan `ret_steps` counts the calls of both branches (`5*2`, `1*2`); this counts one context's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret_steps: Option<usize>,
    /// The call from which every call computes (default `num_steps − 1`: the last call computes). Per context,
    /// as `ret_steps` (the authors' Wan `cutoff_steps`, `sample_steps*2` or `sample_steps*2 − 2`, halved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutoff_steps: Option<usize>,
    /// The host's step signal to measure, by name, where the host offers more than its default
    /// ([`HostInfo::other_step_signals`]; Wan: `timestep_proj`, the authors' `e0` under `use_ret_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_signal: Option<String>,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<usize>,
}

/// The polynomial published for `checkpoint` in `table`, or `Missing` naming what is published.
fn lookup<'t>(table: &'t [(&str, [f64; 5])], checkpoint: &str, what: &str, advice: &str) -> Result<&'t [f64; 5], ConfigError> {
    table.iter().find(|(name, _)| *name == checkpoint).map(|(_, c)| c).ok_or_else(|| {
        let known: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        ConfigError::Missing {
            field: "coefficients",
            hint: format!("no published {what} for {checkpoint:?} (published: {}){advice}", known.join(", ")),
        }
    })
}

impl TeaCacheConfig {
    /// The authors' configuration for a published checkpoint (`CogVideoX-2b`, `CogVideoX-5b`,
    /// `CogVideoX-5b-I2V`, `CogVideoX1.5-5B`, `CogVideoX1.5-5B-I2V`, `FLUX.1-dev`, `Wan2.1-T2V-1.3B`,
    /// `Wan2.1-T2V-14B`).
    pub fn published(checkpoint: &str, rel_l1_thresh: f64, num_steps: usize) -> Result<Self, ConfigError> {
        let c = lookup(&PUBLISHED_COEFFICIENTS, checkpoint, "coefficients", "; fit them with `ditcache calibrate`")?;
        Ok(Self::with_coefficients(rel_l1_thresh, c.to_vec(), num_steps))
    }

    /// The authors' Wan 2.1 text-to-video configuration with `use_ret_steps` (`Wan2.1-T2V-1.3B`,
    /// `Wan2.1-T2V-14B`): their second polynomial, `e0` (`timestep_proj`) measured, the first 5 steps computed,
    /// no cutoff (`teacache_generate.py` l. 880–887).
    pub fn published_ret_steps(checkpoint: &str, rel_l1_thresh: f64, num_steps: usize) -> Result<Self, ConfigError> {
        let c = lookup(&PUBLISHED_RET_STEPS_COEFFICIENTS, checkpoint, "use_ret_steps coefficients", "")?;
        Ok(Self {
            ret_steps: Some(5),
            cutoff_steps: Some(num_steps),
            step_signal: Some("timestep_proj".into()),
            ..Self::with_coefficients(rel_l1_thresh, c.to_vec(), num_steps)
        })
    }

    /// The default rule (first and last call compute, the host's default signal) with this polynomial.
    pub fn with_coefficients(rel_l1_thresh: f64, coefficients: Vec<f64>, num_steps: usize) -> Self {
        Self { rel_l1_thresh, coefficients, num_steps, ret_steps: None, cutoff_steps: None, step_signal: None, memory_budget_bytes: None }
    }

    /// Whether the call with this per-context index always computes: before `ret_steps`, or from
    /// `cutoff_steps` on (teacache_generate.py l. 524, 539; the CogVideoX/FLUX rule `cnt == 0 or
    /// cnt == num_steps − 1` is the default).
    pub fn forced(&self, cnt: usize) -> bool {
        cnt < self.ret_steps.unwrap_or(1) || cnt >= self.cutoff_steps.unwrap_or(self.num_steps.saturating_sub(1))
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
        if let Some(c) = self.cutoff_steps.filter(|&c| c > self.num_steps) {
            return Err(ConfigError::NotHostable(format!(
                "`cutoff_steps` {c} is past the generation's {} calls per context (`num_steps` calls never cut off)",
                self.num_steps
            )));
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
        if let Some(name) = &self.step_signal {
            if host.step_signal.as_ref() != Some(name) && !host.other_step_signals.contains(name) {
                let mut offered: Vec<&str> = host.step_signal.iter().map(String::as_str).collect();
                offered.extend(host.other_step_signals.iter().map(String::as_str));
                return Err(ConfigError::NotHostable(format!(
                    "`step_signal` {name:?}: this model hands TeaCache {}",
                    offered.join(" or ")
                )));
            }
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
        let c = TeaCacheConfig::with_coefficients(0.1, vec![2.0, -3.0, 0.5], 4);
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
    fn forced_calls_follow_the_authors_counters() {
        // CogVideoX / FLUX: `cnt == 0 or cnt == num_steps - 1`.
        let c = TeaCacheConfig::published("CogVideoX-2b", 0.2, 6).unwrap();
        assert_eq!((0..6).map(|i| c.forced(i)).collect::<Vec<_>>(), [true, false, false, false, false, true]);
        // Wan without use_ret_steps: ret_steps 1*2 and cutoff sample_steps*2 - 2 over both branches' calls,
        // i.e. the same per branch (teacache_generate.py l. 893-894).
        let w = TeaCacheConfig::published("Wan2.1-T2V-1.3B", 0.08, 6).unwrap();
        assert_eq!((0..6).map(|i| w.forced(i)).collect::<Vec<_>>(), [true, false, false, false, false, true]);
        assert_eq!(w.step_signal, None);
        // With use_ret_steps: 5*2 calls (5 per branch) computed first, cutoff sample_steps*2 (never).
        let r = TeaCacheConfig::published_ret_steps("Wan2.1-T2V-14B", 0.2, 8).unwrap();
        assert_eq!((0..8).map(|i| r.forced(i)).collect::<Vec<_>>(), [true, true, true, true, true, false, false, false]);
        assert_eq!(r.step_signal.as_deref(), Some("timestep_proj"));
        assert_eq!(r.coefficients[0], -3.03318725e+05);
        assert!(TeaCacheConfig::published_ret_steps("CogVideoX-2b", 0.2, 8).is_err());
    }

    #[test]
    fn a_signal_the_host_does_not_hand_is_refused() {
        let host = |other: Vec<String>| HostInfo {
            sites: vec![],
            num_blocks: 2,
            tensor_format: "BCFHW".into(),
            modules: vec![],
            module_names: vec![],
            step_signal: Some("temb".into()),
            other_step_signals: other,
            per_branch_calls: true,
            hands_sigma: true,
        };
        let r = TeaCacheConfig::published_ret_steps("Wan2.1-T2V-1.3B", 0.2, 8).unwrap();
        r.check_host(&host(vec!["timestep_proj".into()])).unwrap();
        let e = r.check_host(&host(vec![])).unwrap_err();
        assert!(e.to_string().contains("\"timestep_proj\": this model hands TeaCache temb"), "{e}");
        TeaCacheConfig { step_signal: Some("temb".into()), ..r }.check_host(&host(vec![])).unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        let ok = TeaCacheConfig::with_coefficients(0.1, vec![1.0, 0.0], 4);
        ok.validate().unwrap();
        assert!(TeaCacheConfig { rel_l1_thresh: -1.0, ..ok.clone() }.validate().is_err());
        assert!(TeaCacheConfig { coefficients: vec![], ..ok.clone() }.validate().is_err());
        assert!(TeaCacheConfig { coefficients: vec![f64::NAN], ..ok.clone() }.validate().is_err());
        assert!(TeaCacheConfig { num_steps: 0, ..ok.clone() }.validate().is_err());
        assert!(TeaCacheConfig { cutoff_steps: Some(5), ..ok.clone() }.validate().is_err());
        TeaCacheConfig { cutoff_steps: Some(4), ..ok.clone() }.validate().unwrap();
        assert!(ok.check_steps(5).is_err());
        ok.check_steps(4).unwrap();
    }
}
