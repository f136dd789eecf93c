//! Calibration files: what one model and schedule measured (per-step changes for every engine, MagCache's
//! ratios, TeaCache's fitted polynomial) and the presets resolved from them to quality targets.
//!
//! A preset is defined by a target — PSNR of the final latents against the uncached ones, [`Preset::target_psnr_db`]
//! — not by parameters. [`resolve_presets`] turns measurements into configurations: it lists the whole-stack
//! schedules TeaCache and MagCache can make on this schedule (their decisions follow from the measurements
//! alone), predicts each one's PSNR from the residual changes it reuses (`PSNR ≈ K − 20·log10 E`, `E` the summed
//! relative residual error of the skipped steps, `K` fitted to verification runs), and verifies the fastest
//! candidate predicted to meet each target with a real cached generation, moving to safer candidates while it
//! misses. What is stored is verified: each preset's PSNR on the calibration input.

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
    /// Guidance scale of the calibration run (informational).
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

    /// The file's text: TOML (TOML has no null: unset optional fields are left out).
    pub fn to_toml(&self) -> String {
        fn strip(v: serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Object(m) => {
                    serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip(v))).collect())
                }
                serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip).collect()),
                other => other,
            }
        }
        toml::to_string(&strip(serde_json::to_value(self).expect("serialisable"))).expect("TOML")
    }

    /// Refuses a model or a step count the calibration was not made for (typed, naming the mismatch).
    pub fn check(&self, class: &str, host: &HostInfo, num_inference_steps: usize) -> Result<(), ConfigError> {
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
        if self.num_inference_steps != num_inference_steps {
            return mismatch(
                "num_inference_steps",
                self.num_inference_steps.to_string(),
                format!("{num_inference_steps} (presets and TeaCache's polynomial are per schedule; MagCache's ratios interpolate: `Calibration::magcache`)"),
            );
        }
        Ok(())
    }

    /// The preset resolved for this model and step count (after [`Calibration::check`]).
    pub fn preset(&self, preset: Preset, class: &str, host: &HostInfo, num_inference_steps: usize) -> Result<PresetConfig, ConfigError> {
        self.check(class, host, num_inference_steps)?;
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
        Some(CacheConfig::TeaCache(TeaCacheConfig {
            rel_l1_thresh,
            coefficients: fit.coefficients.clone(),
            num_steps: self.num_inference_steps,
            memory_budget_bytes: None,
        }))
    }
}

/// One skip schedule a calibrated engine makes, with its predicted cost and error.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The configuration.
    pub config: CacheConfig,
    /// Skip decision per step.
    pub skips: Vec<bool>,
    /// Share of the block stack's work a skip saves: 1 for TeaCache and MagCache (the whole stack),
    /// `(blocks − 1) / blocks` for First Block Cache (its tail).
    pub saved_per_skip: f64,
    /// Predicted error ([`predicted_error`], scaled by `saved_per_skip`).
    pub error: f64,
}

impl Candidate {
    /// Skipped steps.
    pub fn skipped(&self) -> usize {
        self.skips.iter().filter(|s| **s).count()
    }

    /// Predicted share of the uncached block-stack work the schedule runs.
    pub fn cost(&self) -> f64 {
        1.0 - self.skipped() as f64 * self.saved_per_skip / self.skips.len().max(1) as f64
    }
}

/// The error of a schedule: for each skipped step `t`, the residual changes between the last computed step
/// and `t` (triangle inequality), summed over skipped steps.
pub fn predicted_error(skips: &[bool], residual_changes: &[f64]) -> f64 {
    let mut total = 0.0;
    let mut since = 0.0;
    for (t, &skip) in skips.iter().enumerate() {
        if t == 0 {
            continue;
        }
        since += residual_changes.get(t - 1).copied().unwrap_or(0.0);
        if skip {
            total += since;
        } else {
            since = 0.0;
        }
    }
    total
}

/// First Block Cache's decisions approximated from the consecutive first-block changes: it compares against
/// the last *computed* step, whose distance the sum of the changes since then bounds from above.
fn fbc_schedule(threshold: f64, changes: &[f64], steps: usize) -> Vec<bool> {
    let mut since = 0.0;
    (0..steps)
        .map(|t| {
            if t == 0 {
                return false;
            }
            since += changes.get(t - 1).copied().unwrap_or(f64::INFINITY);
            let skip = !(since > threshold);
            if !skip {
                since = 0.0;
            }
            skip
        })
        .collect()
}

/// Geometric grid of `n` values from `lo` to `hi`.
fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f64> {
    (0..n).map(move |i| lo * (hi / lo).powf(i as f64 / (n - 1) as f64))
}

/// The schedules the calibrated engines can make on the calibrated schedule: TeaCache (fitted polynomial),
/// MagCache (calibrated ratios; `max_skip_steps` 2, 3, 4, 6) and First Block Cache, each with the threshold in
/// the middle of the grid interval that gives it; per engine family and number of skipped steps only the
/// candidate of least predicted error. Cheapest first.
pub fn candidates(cal: &Calibration) -> Vec<Candidate> {
    let n = cal.num_inference_steps;
    let blocks = cal.model.num_blocks.max(1) as f64;
    let tail = (blocks - 1.0) / blocks;
    // (saved per skip, schedule) → the configurations giving it, in threshold order.
    let mut found: Vec<((u64, Vec<bool>), Vec<CacheConfig>)> = Vec::new();
    let mut add = |saved: f64, skips: Vec<bool>, config: CacheConfig| {
        if !skips.iter().any(|s| *s) {
            return;
        }
        let key = (saved.to_bits(), skips);
        match found.iter_mut().find(|(k, _)| *k == key) {
            Some((_, configs)) => configs.push(config),
            None => found.push((key, vec![config])),
        }
    };
    if let (Some(fit), Some(CacheConfig::TeaCache(poly))) = (&cal.teacache, cal.teacache(0.0)) {
        let total: f64 = fit.signal_changes.iter().map(|&x| poly.rescale(x).abs()).sum();
        for t in grid(1e-4, total.max(1e-3) * 2.0, 400) {
            let Some(CacheConfig::TeaCache(c)) = cal.teacache(t) else { continue };
            add(1.0, cache_teacache::schedule(&c, &fit.signal_changes), CacheConfig::TeaCache(c));
        }
    }
    for max_skip in [2, 3, 4, 6] {
        for t in grid(1e-4, 10.0, 400) {
            let config = cal.magcache(t, max_skip, n);
            let CacheConfig::MagCache(c) = &config else { unreachable!() };
            add(1.0, cache_magcache::schedule(c), config);
        }
    }
    if blocks > 1.0 {
        for t in grid(1e-3, 4.0, 400) {
            let config = CacheConfig::FirstBlockCache(crate::FirstBlockCacheConfig { threshold: t, ..Default::default() });
            add(tail, fbc_schedule(t, &cal.first_block_changes, n), config);
        }
    }
    let mut best: BTreeMap<(u64, usize), Candidate> = BTreeMap::new();
    for ((saved, skips), configs) in found {
        // The middle configuration of the run of grid thresholds that give this schedule: farthest from the
        // thresholds where it would change.
        let config = configs[configs.len() / 2].clone();
        let saved_per_skip = f64::from_bits(saved);
        let error = predicted_error(&skips, &cal.residual_changes) * saved_per_skip;
        let c = Candidate { config, skips, saved_per_skip, error };
        let key = (saved, c.skipped());
        if best.get(&key).is_none_or(|b| c.error < b.error) {
            best.insert(key, c);
        }
    }
    let mut v: Vec<Candidate> = best.into_values().collect();
    v.sort_by(|a, b| a.cost().total_cmp(&b.cost()).then(a.error.total_cmp(&b.error)));
    v
}

/// Safety margin (dB) a verified preset keeps above its target on the calibration input, so that other inputs
/// of the model (other prompts, other noise) still meet the target.
pub const MARGIN_DB: f64 = 3.0;

/// Most verification generations [`resolve_presets`] runs.
pub const MAX_VERIFICATIONS: usize = 6;

/// One verification generation of [`resolve_presets`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// The configuration's label.
    pub label: String,
    /// Steps it skips (as predicted from the calibration).
    pub skipped_steps: usize,
    /// Its predicted error ([`predicted_error`]).
    pub predicted_error: f64,
    /// The PSNR it reached (dB).
    pub psnr_db: f64,
}

/// Resolves the three presets. A first generation verifies the cheapest candidate that still runs two thirds
/// of the work, which fixes the prediction's offset; then for each target (speed first) the fastest candidate whose
/// predicted PSNR meets target + [`MARGIN_DB`] is verified with `measure` (a cached generation on the
/// calibration input returning its PSNR against the uncached one); a miss refits the prediction and moves to
/// the next safer candidate. A target no candidate meets (the one skipping least is tried last) resolves to no
/// cache. Returns the presets and the verifications run.
pub fn resolve_presets<E>(
    cal: &Calibration,
    mut measure: impl FnMut(&CacheConfig) -> Result<f64, E>,
) -> Result<(BTreeMap<String, CalibratedPreset>, Vec<Verification>), E> {
    let cands = candidates(cal);
    let log_error = |i: usize| cands[i].error.max(1e-12).log10();
    let mut measured: BTreeMap<usize, f64> = BTreeMap::new();
    let mut log = Vec::new();
    let mut verify = |i: usize, measured: &mut BTreeMap<usize, f64>, log: &mut Vec<Verification>| -> Result<f64, E> {
        let p = measure(&cands[i].config)?;
        measured.insert(i, p);
        log.push(Verification { label: cands[i].config.label(), skipped_steps: cands[i].skipped(), predicted_error: cands[i].error, psnr_db: p });
        Ok(p)
    };
    // PSNR ≈ K − 20·log10(error), K from the verified candidate nearest in log error.
    let predict = |measured: &BTreeMap<usize, f64>, i: usize| -> f64 {
        let (j, p) = measured
            .iter()
            .min_by(|a, b| (log_error(*a.0) - log_error(i)).abs().total_cmp(&(log_error(*b.0) - log_error(i)).abs()))
            .expect("the first probe is measured");
        p + 20.0 * (log_error(*j) - log_error(i))
    };
    if let Some(first) = cands.iter().position(|c| c.cost() >= 2.0 / 3.0).or(cands.len().checked_sub(1)) {
        verify(first, &mut measured, &mut log)?;
    }
    let mut presets = BTreeMap::new();
    let mut floor = 0; // candidates before it are too lossy for every remaining (stricter) target
    for preset in [Preset::Speed, Preset::Balanced, Preset::Quality] {
        let target = preset.target_psnr_db();
        let need = target + MARGIN_DB;
        let mut chosen = None;
        for i in floor..cands.len() {
            let p = match measured.get(&i) {
                Some(&p) => p,
                None if log.len() < MAX_VERIFICATIONS && predict(&measured, i) >= need => verify(i, &mut measured, &mut log)?,
                None => continue,
            };
            if p >= need {
                chosen = Some(i);
                break;
            }
        }
        // Nothing predicted to meet the target: the candidate that skips least is the last one worth a try.
        if let (None, Some(l)) = (chosen, cands.len().checked_sub(1).filter(|l| *l >= floor)) {
            let p = match measured.get(&l) {
                Some(&p) => Some(p),
                None if log.len() < MAX_VERIFICATIONS => Some(verify(l, &mut measured, &mut log)?),
                None => None,
            };
            chosen = p.filter(|p| *p >= need).map(|_| l);
        }
        let resolved = match chosen {
            Some(i) => {
                floor = i;
                CalibratedPreset {
                    target_psnr_db: target,
                    calibration_psnr_db: Some(measured[&i]),
                    skipped_steps: cands[i].skipped(),
                    config: cands[i].config.clone(),
                }
            }
            None => CalibratedPreset { target_psnr_db: target, calibration_psnr_db: None, skipped_steps: 0, config: CacheConfig::None },
        };
        presets.insert(preset.name().to_string(), resolved);
    }
    Ok((presets, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration(n: usize) -> Calibration {
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
            presets: BTreeMap::new(),
        }
    }

    #[test]
    fn presets_are_the_fastest_verified_candidates_and_slow_down_with_the_target() {
        let cal = calibration(20);
        let cands = candidates(&cal);
        assert!(cands.windows(2).all(|w| w[0].cost() <= w[1].cost()), "cheapest first");
        // A fake model: PSNR falls 6 dB per skipped step from 70 dB, whichever engine skips.
        let psnr_of = |config: &CacheConfig| {
            let c = cands.iter().find(|c| &c.config == config).expect("verifies candidates only");
            70.0 - 6.0 * c.skipped() as f64 * c.saved_per_skip
        };
        let (presets, log) = resolve_presets(&cal, |c| Ok::<_, ()>(psnr_of(c))).unwrap();
        assert!(log.len() <= MAX_VERIFICATIONS && !log.is_empty());
        let mut last_cost = f64::INFINITY;
        for p in Preset::ALL {
            let r = &presets[p.name()];
            let db = r.calibration_psnr_db.unwrap();
            assert_eq!(db, psnr_of(&r.config), "{p:?}: the stored PSNR is the verified one");
            assert!(db >= p.target_psnr_db() + MARGIN_DB, "{p:?}: {db}");
            // No verified candidate that is cheaper would also meet the target.
            let cost = cands.iter().find(|c| c.config == r.config).unwrap().cost();
            for v in &log {
                let c = cands.iter().find(|c| c.config.label() == v.label).unwrap();
                assert!(!(c.cost() < cost && v.psnr_db >= p.target_psnr_db() + MARGIN_DB), "{p:?}: {} was cheaper", v.label);
            }
            // quality, balanced, speed: each at least as fast as the one before.
            assert!(cost <= last_cost, "{p:?}");
            last_cost = cost;
        }
        // A model where every skip loses the video: no preset caches anything.
        let (none, _) = resolve_presets(&cal, |_| Ok::<_, ()>(5.0)).unwrap();
        assert!(none.values().all(|r| r.config == CacheConfig::None && r.calibration_psnr_db.is_none()));
    }

    #[test]
    fn a_calibration_is_refused_for_another_model_or_step_count() {
        let cal = calibration(20);
        let host = HostInfo {
            sites: vec![],
            num_blocks: 4,
            tensor_format: "BFCHW".into(),
            modules: vec![],
            module_names: vec![],
            step_signal: None,
        };
        let e = cal.check("LatteTransformer3DModel", &host, 20).unwrap_err();
        assert!(matches!(&e, ConfigError::Mismatch { what: "model class", found, .. } if found == "LatteTransformer3DModel"), "{e}");
        let e = cal.check("CogVideoXTransformer3DModel", &HostInfo { num_blocks: 2, ..host.clone() }, 20).unwrap_err();
        assert!(matches!(e, ConfigError::Mismatch { what: "block count", .. }));
        let no_sites = Calibration { model: ModelId { attention_sites: vec![], ..cal.model.clone() }, ..cal.clone() };
        let e = no_sites.preset(Preset::Speed, "CogVideoXTransformer3DModel", &host, 30).unwrap_err();
        assert!(matches!(&e, ConfigError::Mismatch { what: "num_inference_steps", calibrated, .. } if calibrated == "20"), "{e}");
        // Sites differ (the calibration names one, this host none).
        assert!(matches!(cal.check("CogVideoXTransformer3DModel", &host, 20), Err(ConfigError::Mismatch { what: "attention sites", .. })));
        // MagCache's ratios interpolate to any step count.
        let CacheConfig::MagCache(m) = cal.magcache(0.1, 3, 30) else { panic!() };
        assert_eq!(m.step_ratios().len(), 30);
        // A round trip through TOML keeps everything.
        let text = cal.to_toml();
        let back: Calibration = toml::from_str(&text).unwrap();
        assert_eq!(back, cal);
    }

    #[test]
    fn predicted_error_sums_the_changes_since_the_last_computed_step() {
        // Steps: C S S C S; changes into steps 1..4: 0.1 0.2 0.3 0.4.
        let skips = [false, true, true, false, true];
        // Step 1 reuses step 0: 0.1; step 2 reuses step 0: 0.1 + 0.2; step 4 reuses step 3: 0.4.
        let e = predicted_error(&skips, &[0.1, 0.2, 0.3, 0.4]);
        assert!((e - (0.1 + 0.3 + 0.4)).abs() < 1e-12);
    }
}
