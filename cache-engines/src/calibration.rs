//! Calibration files: what one model and schedule measured (per-step changes for every engine, MagCache's
//! ratios, TeaCache's fitted polynomial) and the presets resolved from them to quality targets
//! ([`crate::resolve_presets`]); the typed refusal of a file made for another model or step count.

use std::collections::BTreeMap;
use std::path::Path;

use cache_core::{ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

use crate::{CacheConfig, MagCacheConfig, Preset, TeaCacheConfig};

/// The model a calibration was made for: what its decisions and measurements depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelId {
    /// diffusers' class name (`CogVideoXTransformer3DModel`, `LatteTransformer3DModel`).
    pub class: String,
    /// Blocks in the stack.
    pub num_blocks: usize,
    /// The attention sites, in call order.
    pub attention_sites: Vec<String>,
    /// What the model hands TeaCache ([`HostInfo::step_signal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_signal: Option<String>,
}

impl ModelId {
    /// The identity of a model of class `class` offering `host`.
    pub fn new(class: &str, host: &HostInfo) -> Self {
        Self {
            class: class.into(),
            num_blocks: host.num_blocks,
            attention_sites: host.sites.iter().map(|s| s.to_string()).collect(),
            step_signal: host.step_signal.clone(),
        }
    }
}

/// TeaCache's calibration: the measured pairs and the polynomial fitted to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeaCacheFit {
    /// The fitted polynomial, highest power first.
    pub coefficients: Vec<f64>,
    /// The step signal's relative L1 change per call from the second on (the fit's `x`).
    pub signal_changes: Vec<f64>,
    /// The block stack's output relative L1 change per call from the second on (the fit's `y`).
    pub output_changes: Vec<f64>,
}

/// A preset resolved for the calibrated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibratedPreset {
    /// The target it was resolved for (dB).
    pub target_psnr_db: f64,
    /// The PSNR its configuration reached on the calibration input (dB); absent when it caches nothing
    /// (no configuration met the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_psnr_db: Option<f64>,
    /// Steps whose block stack the configuration skipped on the calibration input.
    pub skipped_steps: usize,
    /// The configuration.
    pub config: CacheConfig,
}

/// What `ditcache calibrate` measured for one model and step count, and the presets resolved from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The model it was made for.
    pub model: ModelId,
    /// The generation's step count.
    pub num_inference_steps: usize,
    /// Guidance scale of the calibration run: the measured changes and the presets' verified quality hold at
    /// this guidance only (the unconditional branch FasterCache rebuilds, and the scale that amplifies every
    /// error, depend on it), so a generation at another scale is refused.
    pub guidance_scale: f64,
    /// First-block residual change per step from the second on (what First Block Cache thresholds).
    pub first_block_changes: Vec<f64>,
    /// Attention output change per site, per step from the second on (what PAB and FasterCache bet on).
    pub attention_changes: BTreeMap<String, Vec<f64>>,
    /// Block-stack residual change per step from the second on, relative to the stack output.
    pub residual_changes: Vec<f64>,
    /// MagCache's per-step magnitude ratios (diffusers' calibration measure).
    pub mag_ratios: Vec<f64>,
    /// TeaCache's measured pairs and fitted polynomial (absent for a model without a step signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacache: Option<TeaCacheFit>,
    /// SeaCache's indicator distance per step from the second on, at the default `power_exp` (absent for a
    /// model whose pipeline hands no sigma: SeaCache cannot run there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sea_distances: Option<Vec<f64>>,
    /// Presets by name (`quality`, `balanced`, `speed`).
    #[serde(default)]
    pub presets: BTreeMap<String, CalibratedPreset>,
}

/// A preset's configuration, and whether it was resolved for this model (typed, so a caller cannot miss
/// that an uncalibrated preset promises no quality level).
#[derive(Debug, Clone, PartialEq)]
pub enum PresetConfig {
    /// Resolved from a calibration of this model and step count.
    Calibrated {
        /// The preset.
        preset: Preset,
        /// What it was resolved to.
        resolved: CalibratedPreset,
    },
    /// The fixed parameter set of [`CacheConfig::preset`]: no quality level on an unknown model.
    Uncalibrated {
        /// The preset.
        preset: Preset,
        /// The fixed configuration.
        config: CacheConfig,
    },
}

impl PresetConfig {
    /// The configuration to build.
    pub fn config(&self) -> &CacheConfig {
        match self {
            Self::Calibrated { resolved, .. } => &resolved.config,
            Self::Uncalibrated { config, .. } => config,
        }
    }

    /// Whether it was resolved for the model.
    pub fn is_calibrated(&self) -> bool {
        matches!(self, Self::Calibrated { .. })
    }
}

impl Calibration {
    /// Reads a calibration file (TOML, or JSON for any other extension).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let cal: Self = cache_core::read_config_file(path)?;
        for p in cal.presets.values() {
            p.config.validate()?;
        }
        Ok(cal)
    }

    /// The file's text: TOML (unset optional fields left out).
    pub fn to_toml(&self) -> String {
        cache_core::to_toml(self).expect("a calibration is plain data")
    }

    /// Refuses a model, a step count or a guidance scale the calibration was not made for (typed, naming the
    /// mismatch).
    pub fn check(&self, class: &str, host: &HostInfo, num_inference_steps: usize, guidance_scale: f64) -> Result<(), ConfigError> {
        let found = ModelId::new(class, host);
        let m = &self.model;
        let mismatch = |what, calibrated: String, found: String| Err(ConfigError::Mismatch { what, calibrated, found });
        if m.class != found.class {
            return mismatch("model class", m.class.clone(), found.class);
        }
        if m.num_blocks != found.num_blocks {
            return mismatch("block count", m.num_blocks.to_string(), found.num_blocks.to_string());
        }
        if m.attention_sites != found.attention_sites {
            return mismatch("attention sites", m.attention_sites.join(","), found.attention_sites.join(","));
        }
        if m.step_signal != found.step_signal {
            let name = |s: &Option<String>| s.clone().unwrap_or_else(|| "none".into());
            return mismatch("step signal", name(&m.step_signal), format!("{} (TeaCache's polynomial is fitted to it)", name(&found.step_signal)));
        }
        // Exact: the scale is a user's number, written back as it was read.
        if self.guidance_scale != guidance_scale {
            return mismatch(
                "guidance_scale",
                self.guidance_scale.to_string(),
                format!("{guidance_scale} (the presets' quality was verified at the calibrated scale; calibrate at this one)"),
            );
        }
        if self.num_inference_steps != num_inference_steps {
            return mismatch(
                "num_inference_steps",
                self.num_inference_steps.to_string(),
                format!("{num_inference_steps} (presets and TeaCache's polynomial are per schedule; MagCache's ratios interpolate: `Calibration::magcache`)"),
            );
        }
        Ok(())
    }

    /// The preset resolved for this model, step count and guidance scale (after [`Calibration::check`]).
    pub fn preset(
        &self,
        preset: Preset,
        class: &str,
        host: &HostInfo,
        num_inference_steps: usize,
        guidance_scale: f64,
    ) -> Result<PresetConfig, ConfigError> {
        self.check(class, host, num_inference_steps, guidance_scale)?;
        let resolved = self.presets.get(preset.name()).cloned().ok_or_else(|| ConfigError::Missing {
            field: "presets",
            hint: format!("the calibration has no `{}` preset; run `ditcache calibrate` again", preset.name()),
        })?;
        Ok(PresetConfig::Calibrated { preset, resolved })
    }

    /// MagCache with the calibrated ratios for any step count (diffusers interpolates them).
    pub fn magcache(&self, threshold: f64, max_skip_steps: usize, num_inference_steps: usize) -> CacheConfig {
        CacheConfig::MagCache(MagCacheConfig {
            threshold,
            max_skip_steps,
            num_inference_steps,
            mag_ratios: Some(self.mag_ratios.clone()),
            ..Default::default()
        })
    }

    /// TeaCache with the fitted polynomial, for the calibrated step count.
    pub fn teacache(&self, rel_l1_thresh: f64) -> Option<CacheConfig> {
        let fit = self.teacache.as_ref()?;
        Some(CacheConfig::TeaCache(TeaCacheConfig::with_coefficients(
            rel_l1_thresh,
            fit.coefficients.clone(),
            self.num_inference_steps,
        )))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A calibration of a 4-block CogVideoX over `n` steps with measurements that make every engine's
    /// thresholds matter.
    pub(crate) fn calibration(n: usize) -> Calibration {
        Calibration {
            model: ModelId { class: "CogVideoXTransformer3DModel".into(), num_blocks: 4, attention_sites: vec!["a".into()], step_signal: None },
            num_inference_steps: n,
            guidance_scale: 6.0,
            // Changes that grow along the schedule: thresholds from skipping one step to skipping most.
            first_block_changes: (1..n).map(|i| 0.02 * i as f64).collect(),
            attention_changes: BTreeMap::new(),
            residual_changes: vec![0.05; n - 1],
            // Residuals shrinking faster and faster along the schedule.
            mag_ratios: (0..n).map(|i| 1.0 - 0.005 * i as f64).collect(),
            teacache: None,
            sea_distances: None,
            presets: BTreeMap::new(),
        }
    }

    #[test]
    fn a_calibration_is_refused_for_another_model_step_count_signal_or_guidance() {
        let cal = calibration(20);
        let host = HostInfo {
            sites: vec![],
            num_blocks: 4,
            tensor_format: "BFCHW".into(),
            modules: vec![],
            module_names: vec![],
            step_signal: None,
            other_step_signals: Vec::new(),
            per_branch_calls: false,
            hands_sigma: false,
        };
        let e = cal.check("LatteTransformer3DModel", &host, 20, 6.0).unwrap_err();
        assert!(matches!(&e, ConfigError::Mismatch { what: "model class", found, .. } if found == "LatteTransformer3DModel"), "{e}");
        let e = cal.check("CogVideoXTransformer3DModel", &HostInfo { num_blocks: 2, ..host.clone() }, 20, 6.0).unwrap_err();
        assert!(matches!(e, ConfigError::Mismatch { what: "block count", .. }));
        let no_sites = Calibration { model: ModelId { attention_sites: vec![], ..cal.model.clone() }, ..cal.clone() };
        let e = no_sites.preset(Preset::Speed, "CogVideoXTransformer3DModel", &host, 30, 6.0).unwrap_err();
        assert!(matches!(&e, ConfigError::Mismatch { what: "num_inference_steps", calibrated, .. } if calibrated == "20"), "{e}");
        // Sites differ (the calibration names one, this host none).
        assert!(matches!(cal.check("CogVideoXTransformer3DModel", &host, 20, 6.0), Err(ConfigError::Mismatch { what: "attention sites", .. })));
        // A step signal it was not fitted on, and another guidance scale: refused, naming both values.
        let signal = HostInfo { step_signal: Some("emb".into()), ..host.clone() };
        let e = no_sites.check("CogVideoXTransformer3DModel", &signal, 20, 6.0).unwrap_err();
        assert!(matches!(&e, ConfigError::Mismatch { what: "step signal", calibrated, found } if calibrated == "none" && found.starts_with("emb")), "{e}");
        let e = no_sites.preset(Preset::Quality, "CogVideoXTransformer3DModel", &host, 20, 4.5).unwrap_err();
        assert!(matches!(&e, ConfigError::Mismatch { what: "guidance_scale", calibrated, found } if calibrated == "6" && found.starts_with("4.5")), "{e}");
        no_sites.check("CogVideoXTransformer3DModel", &host, 20, 6.0).unwrap();
        // MagCache's ratios interpolate to any step count.
        let CacheConfig::MagCache(m) = cal.magcache(0.1, 3, 30) else { panic!() };
        assert_eq!(m.step_ratios().len(), 30);
        // A round trip through TOML keeps everything.
        let text = cal.to_toml();
        let back: Calibration = toml::from_str(&text).unwrap();
        assert_eq!(back, cal);
    }
}
