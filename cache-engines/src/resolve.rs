//! Presets from measurements: a preset is defined by a target — PSNR of the final latents against the uncached
//! ones, [`Preset::target_psnr_db`] — not by parameters. [`candidates`] lists the skip schedules TeaCache,
//! MagCache, SeaCache and First Block Cache can make on the calibrated schedule (their decisions follow from the
//! measurements), each with a predicted error (the residual drift its skips reuse); [`resolve_presets`] verifies
//! the cheapest candidate predicted to meet each target (`PSNR ≈ K − 20·log10 error`, `K` from the nearest
//! verified candidate) with real cached generations, moving to safer candidates while it misses. What is stored
//! is verified: each preset's PSNR on the calibration input.

use std::collections::BTreeMap;

use crate::{CacheConfig, CalibratedPreset, Calibration, Preset};

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
/// MagCache (calibrated ratios; `max_skip_steps` 2, 3, 4, 6), SeaCache (measured indicator distances, its
/// default configuration otherwise; hosts that hand sigma) and First Block Cache, each with the threshold in
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
    if let Some(distances) = &cal.sea_distances {
        let total: f64 = distances.iter().sum();
        for t in grid(1e-4, total.max(1e-3) * 2.0, 400) {
            let c = crate::SeaCacheConfig { threshold: t, ..Default::default() };
            add(1.0, cache_seacache::schedule(&c, n, distances), CacheConfig::SeaCache(c));
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
    /// The PSNR it needed (dB): its preset's target plus [`MARGIN_DB`].
    pub need_db: f64,
    /// The PSNR it reached (dB); below `need_db`, possibly only on the videos run before the first miss.
    pub psnr_db: f64,
}

/// Resolves the three presets. A first generation verifies the cheapest candidate that still runs two thirds
/// of the work, which fixes the prediction's offset; then for each target (speed first) the fastest candidate whose
/// predicted PSNR meets target + [`MARGIN_DB`] is verified with `measure(config, need)` (cached generations on
/// the calibration input returning their worst PSNR against the uncached ones; it may stop at the first video
/// below `need`, since the candidate misses whatever the others give); a miss refits the prediction and moves
/// to the next safer candidate. A target no candidate meets (the one skipping least is tried last) resolves to
/// no cache. Every stored preset reached `need` on every video. Returns the presets and the verifications run.
pub fn resolve_presets<E>(
    cal: &Calibration,
    mut measure: impl FnMut(&CacheConfig, f64) -> Result<f64, E>,
) -> Result<(BTreeMap<String, CalibratedPreset>, Vec<Verification>), E> {
    let cands = candidates(cal);
    let log_error = |i: usize| cands[i].error.max(1e-12).log10();
    let mut measured: BTreeMap<usize, f64> = BTreeMap::new();
    let mut log = Vec::new();
    let mut verify = |i: usize, need: f64, measured: &mut BTreeMap<usize, f64>, log: &mut Vec<Verification>| -> Result<f64, E> {
        let p = measure(&cands[i].config, need)?;
        measured.insert(i, p);
        let c = &cands[i];
        log.push(Verification { label: c.config.label(), skipped_steps: c.skipped(), predicted_error: c.error, need_db: need, psnr_db: p });
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
        // Judged against the loosest target first, so it may stop early only where every preset would miss.
        verify(first, Preset::Speed.target_psnr_db() + MARGIN_DB, &mut measured, &mut log)?;
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
                None if log.len() < MAX_VERIFICATIONS && predict(&measured, i) >= need => verify(i, need, &mut measured, &mut log)?,
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
                None if log.len() < MAX_VERIFICATIONS => Some(verify(l, need, &mut measured, &mut log)?),
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
    use crate::calibration::tests::calibration;

    #[test]
    fn seacache_schedules_come_from_the_measured_distances() {
        let mut cal = calibration(10);
        let sea = |cands: &[Candidate]| -> Vec<(crate::SeaCacheConfig, Vec<bool>)> {
            cands
                .iter()
                .filter_map(|c| match &c.config {
                    CacheConfig::SeaCache(s) => Some((s.clone(), c.skips.clone())),
                    _ => None,
                })
                .collect()
        };
        assert!(sea(&candidates(&cal)).is_empty(), "no distances, no SeaCache");
        // Distance 0.1 per step: a threshold in (0.1, 0.2] skips every other step after the retained first
        // (acc 0.1 < t, then 0.2 >= t computes), up to max_consecutive_cached, the last step computing.
        cal.sea_distances = Some(vec![0.1; 9]);
        let found = sea(&candidates(&cal));
        assert!(!found.is_empty());
        let (c, skips) = found.iter().find(|(c, _)| c.threshold > 0.1 && c.threshold <= 0.2).expect("a threshold in (0.1, 0.2]");
        assert_eq!(c.residual_order, crate::SeaCacheConfig::default().residual_order);
        let want: Vec<bool> = (0..10).map(|i| i % 2 == 1 && i < 9).collect();
        assert_eq!(skips, &want);
        for (c, skips) in &found {
            assert_eq!(skips, &cache_seacache::schedule(c, 10, &[0.1; 9]), "{c:?}");
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
        let (presets, log) = resolve_presets(&cal, |c, _| Ok::<_, ()>(psnr_of(c))).unwrap();
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
        let (none, _) = resolve_presets(&cal, |_, _| Ok::<_, ()>(5.0)).unwrap();
        assert!(none.values().all(|r| r.config == CacheConfig::None && r.calibration_psnr_db.is_none()));
        // A measure that stops at its first video below `need` (here one 10 dB under it) and reports that video
        // only: the presets still keep their targets on every video, and each needs more than the one before.
        let (stopped, log) = resolve_presets(&cal, |c, need| {
            let p = psnr_of(c);
            Ok::<_, ()>(if p < need { need - 10.0 } else { p })
        })
        .unwrap();
        assert!(log.windows(2).all(|w| w[0].need_db <= w[1].need_db), "{log:?}");
        assert!(stopped.values().any(|r| r.config != CacheConfig::None), "{stopped:?}");
        for p in Preset::ALL {
            let r = &stopped[p.name()];
            if r.config != CacheConfig::None {
                assert!(psnr_of(&r.config) >= p.target_psnr_db() + MARGIN_DB, "{p:?}: {}", r.config.label());
                assert_eq!(r.calibration_psnr_db, Some(psnr_of(&r.config)));
            }
        }
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
