//! `ditcache tune`: the fastest configuration that meets a quality target, by measurement.
//!
//! Search: every single-engine candidate of a grid (FBC, PAB, FasterCache, MagCache and TeaCache with the
//! ratios and polynomial of a calibration measured on the model first, SeaCache, TaylorSeer) is run once; the fastest passing candidate of each engine is then combined
//! with the others (every subset of two or more that a stack accepts); the three fastest passing
//! configurations are timed again (median of `confirm` runs) and the fastest wins.

use cache_core::HostInfo;
use cache_engines::{
    CacheConfig, Calibration, FasterCacheConfig, FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, SeaCacheConfig, WeightSchedule,
};
use indicatif::{ProgressBar, ProgressStyle};
use models::ModelBackend;
use serde::Serialize;

use crate::bench::{generate, psnr, taylorseer, BenchOptions};
use crate::calibrate::measure;
use crate::parity::rel_l2;
use crate::video_model::{BenchModel, VideoModel};

/// A quality target against the uncached latents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// PSNR at least this (dB).
    MinPsnr(f64),
    /// rel_l2 at most this.
    MaxRelL2(f64),
}

/// One evaluated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// Short label.
    pub name: String,
    /// The configuration.
    pub config: CacheConfig,
    /// Seconds per generation.
    pub time_s: f64,
    /// Baseline time ÷ time.
    pub speedup: f64,
    /// Ideal speedup from the skip counts.
    pub ideal_speedup: f64,
    /// PSNR vs uncached, dB.
    pub psnr: f64,
    /// rel_l2 vs uncached.
    pub rel_l2: f64,
    /// Whether it meets the target.
    pub meets: bool,
}

fn grid(host: &HostInfo, cal: &Calibration) -> Vec<Vec<CacheConfig>> {
    let steps = cal.num_inference_steps;
    let fbc = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
        .map(|t| CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: t, ..Default::default() }))
        .to_vec();
    let mut pab = Vec::new();
    for n in [2, 3, 4] {
        for window in [(100.0, 800.0), (0.0, 1000.0)] {
            pab.push(CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
                spatial_attention_block_skip_range: Some(n),
                spatial_attention_timestep_skip_range: window,
                ..Default::default()
            }));
        }
    }
    let mut fc = Vec::new();
    for uncond in [3, 5] {
        for w in [0.3, 0.5] {
            fc.push(CacheConfig::FasterCache(FasterCacheConfig {
                unconditional_batch_skip_range: uncond,
                attention_weight: WeightSchedule::Constant(w),
                ..FasterCacheConfig::for_host(host)
            }));
        }
    }
    let mag = [0.03, 0.06, 0.1, 0.2, 0.4].map(|t| cal.magcache(t, 3, steps)).to_vec();
    let tea: Vec<CacheConfig> = [0.05, 0.1, 0.2, 0.3, 0.5].iter().filter_map(|&t| cal.teacache(t)).collect();
    let sea = [0.1, 0.25, 0.5, 1.0]
        .map(|t| CacheConfig::SeaCache(SeaCacheConfig { threshold: t, ..Default::default() }))
        .to_vec();
    let easy = [0.05, 0.1, 0.2, 0.3].map(|t| crate::bench::easycache(t, steps)).to_vec();
    let mut seer = Vec::new();
    for interval in [2, 3, 4] {
        for order in [1, 2] {
            seer.push(taylorseer(host, interval, order));
        }
    }
    // Families the host refuses (FasterCache on FLUX and Wan, SeaCache where no sigma is handed) are not
    // searched.
    let mut families = vec![fbc, pab, fc, mag, tea, sea, easy, seer];
    for f in &mut families {
        f.retain(|c| c.check_host(host).is_ok());
    }
    families
}

/// Runs the search; returns every candidate evaluated (fastest passing first) and the baseline time.
pub fn tune<B: ModelBackend>(
    model: &mut VideoModel<B>,
    opts: &BenchOptions,
    target: Target,
    confirm: usize,
    device: &B::Device,
) -> Result<(Vec<Candidate>, f64), String> {
    let input = model.bench_inputs(opts, device)?;
    let work = model.work_model();
    let (cal, _) = measure(model, opts, device)?;
    let families = grid(&model.host_info(), &cal);
    let singles: usize = families.iter().map(Vec::len).sum();
    let bar = if opts.progress { ProgressBar::new((3 + singles + 3 * confirm) as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg:>28} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]").expect("template"));
    bar.set_message("baseline");
    generate(model, &input, None)?; // warm-up
    let (base, _, _, base_time) = generate(model, &input, None)?;
    bar.inc(3);

    let mut evaluate = |cfg: CacheConfig, bar: &ProgressBar| -> Result<Candidate, String> {
        let name = cfg.label();
        bar.set_message(name.clone());
        let (data, stats, _, time) = generate(model, &input, Some(&cfg))?;
        bar.inc(1);
        let (p, e) = (psnr(&data, &base), rel_l2(&data, &base));
        let meets = match target {
            Target::MinPsnr(m) => p >= m,
            Target::MaxRelL2(m) => e <= m,
        };
        Ok(Candidate { name, config: cfg, time_s: time, speedup: base_time / time, ideal_speedup: stats.ideal_speedup(&work, opts.steps), psnr: p, rel_l2: e, meets })
    };

    let mut all = Vec::new();
    let mut best_per_family = Vec::new();
    for family in families {
        let mut results = family.into_iter().map(|c| evaluate(c, &bar)).collect::<Result<Vec<_>, _>>()?;
        results.sort_by(|a, b| a.time_s.total_cmp(&b.time_s));
        if let Some(best) = results.iter().find(|c| c.meets && c.ideal_speedup > 1.0) {
            best_per_family.push(best.config.clone());
        }
        all.extend(results);
    }
    // Combinations of the families' best that a stack accepts: FasterCache first (it decides the batch), then
    // the block deciders (FBC, MagCache, TeaCache), then PAB, then TaylorSeer.
    let n = best_per_family.len();
    for mask in 1u32..(1 << n) {
        if mask.count_ones() < 2 {
            continue;
        }
        let mut members: Vec<CacheConfig> = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| best_per_family[i].clone()).collect();
        members.sort_by_key(|c| match c {
            CacheConfig::FasterCache(_) => 0,
            CacheConfig::FirstBlockCache(_) | CacheConfig::MagCache(_) | CacheConfig::TeaCache(_) => 1,
            CacheConfig::PyramidAttentionBroadcast(_) => 2,
            _ => 3,
        });
        let stack = CacheConfig::Stack { strategies: members };
        if stack.validate().is_ok() {
            bar.inc_length(1);
            all.push(evaluate(stack, &bar)?);
        }
    }
    // Confirm the three fastest passing ones that skip any work with repeated timing (a configuration
    // that skips nothing is only "faster" by noise).
    all.sort_by(|a, b| b.meets.cmp(&a.meets).then(a.time_s.total_cmp(&b.time_s)));
    for c in all.iter_mut().filter(|c| c.meets && c.ideal_speedup > 1.0).take(3) {
        bar.set_message(format!("confirm {}", c.name));
        let mut times = vec![c.time_s];
        for _ in 0..confirm {
            times.push(generate(model, &input, Some(&c.config))?.3);
            bar.inc(1);
        }
        times.sort_by(f64::total_cmp);
        c.time_s = times[times.len() / 2];
        c.speedup = base_time / c.time_s;
    }
    bar.finish_and_clear();
    let usable = |c: &Candidate| c.meets && c.ideal_speedup > 1.0;
    all.sort_by(|a, b| usable(b).cmp(&usable(a)).then(a.time_s.total_cmp(&b.time_s)));
    Ok((all, base_time))
}
