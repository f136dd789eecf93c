//! `ditcache bench`: the uncached baseline and a list of strategies, timed and compared on one model.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use burn::tensor::Tensor;
use cache_core::{AttentionKind, CacheStats, CacheStrategy, Decision, HostInfo, Identity};
use cache_engines::{
    build, CacheConfig, Calibration, FasterCacheConfig, FirstBlockCacheConfig, Preset,
    PyramidAttentionBroadcastConfig, SeaCacheConfig, TaylorSeerCacheConfig,
};
use indicatif::{ProgressBar, ProgressStyle};
use models::{DenoiseInput, DenoiseOptions, HostTensor, ModelBackend};
use serde::{Deserialize, Serialize};

use crate::parity::rel_l2;
use crate::video_model::{BenchModel, VideoModel};

/// The default strategy list: FBC 0.05 / 0.1 / 0.2, PAB spatial 2, FasterCache ([`FasterCacheConfig::for_host`]),
/// MagCache at two thresholds with the calibrated ratios, TaylorSeer at two settings on every attention and
/// feed-forward site, TeaCache at two thresholds with the calibrated polynomial (models with a step signal),
/// SeaCache at two thresholds (models whose pipeline hands the sigma), EasyCache at two thresholds
/// ([`easycache`]), and the three presets as the calibration resolved them (`quality ≥40dB`, ...).
pub fn default_strategies(host: &HostInfo, calibration: &Calibration) -> Vec<(String, CacheConfig)> {
    let steps = calibration.num_inference_steps;
    let fbc = |t| CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: t, ..Default::default() });
    let mut v = vec![
        ("fbc(0.05)".to_string(), fbc(0.05)),
        ("fbc(0.1)".to_string(), fbc(0.1)),
        ("fbc(0.2)".to_string(), fbc(0.2)),
        (
            "pab(s2)".to_string(),
            CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
                spatial_attention_block_skip_range: Some(2),
                ..Default::default()
            }),
        ),
        ("fastercache".to_string(), CacheConfig::FasterCache(FasterCacheConfig::for_host(host))),
    ];
    for (threshold, max_skip_steps) in MAGCACHE_DEFAULTS {
        let cfg = calibration.magcache(threshold, max_skip_steps, steps);
        v.push((cfg.label(), cfg));
    }
    for (cache_interval, max_order) in TAYLORSEER_DEFAULTS {
        let cfg = taylorseer(host, cache_interval, max_order);
        v.push((cfg.label(), cfg));
    }
    for threshold in TEACACHE_DEFAULTS {
        if let Some(cfg) = calibration.teacache(threshold) {
            v.push((cfg.label(), cfg));
        }
    }
    for threshold in SEACACHE_DEFAULTS {
        let cfg = CacheConfig::SeaCache(SeaCacheConfig { threshold, ..Default::default() });
        v.push((cfg.label(), cfg));
    }
    for thresh in EASYCACHE_DEFAULTS {
        let cfg = easycache(thresh, steps);
        v.push((cfg.label(), cfg));
    }
    v.extend(preset_rows(calibration));
    v
}

/// [`default_strategies`] split into the rows `host` can run and, for the others, the row's name and why the
/// host refuses it (FasterCache on FLUX: [`cache_engines::ConfigError::NotHostable`]), so that a table can
/// say what it leaves out.
pub fn hostable_default_strategies(host: &HostInfo, calibration: &Calibration) -> (Vec<(String, CacheConfig)>, Vec<(String, String)>) {
    let mut left_out = Vec::new();
    let rows = default_strategies(host, calibration)
        .into_iter()
        .filter(|(name, cfg)| match cfg.check_host(host) {
            Ok(()) => true,
            Err(e) => {
                left_out.push((name.clone(), e.to_string()));
                false
            }
        })
        .collect();
    (rows, left_out)
}

/// The calibration's presets as table rows, `quality ≥40dB` etc., safest first.
pub fn preset_rows(calibration: &Calibration) -> Vec<(String, CacheConfig)> {
    Preset::ALL
        .iter()
        .filter_map(|p| calibration.presets.get(p.name()).map(|r| (format!("{} ≥{}dB", p.name(), r.target_psnr_db), r.config.clone())))
        .collect()
}

/// TeaCache rows of the default table: `rel_l1_thresh` with the calibrated polynomial (the authors' slow and
/// fast settings for CogVideoX are 0.1 and 0.2–0.3).
pub const TEACACHE_DEFAULTS: [f64; 2] = [0.1, 0.3];

/// SeaCache rows of the default table (hosts that hand the sigma: Wan): diffusers' default threshold 0.25 and a
/// faster 0.5, order 1, the other fields diffusers' defaults.
pub const SEACACHE_DEFAULTS: [f64; 2] = [0.25, 0.5];

/// EasyCache rows of the default table: the authors' `--thresh_t2v` for about 2× and 3× on Wan2.1 (their help
/// text: 0.1, 0.2).
pub const EASYCACHE_DEFAULTS: [f64; 2] = [0.1, 0.2];

/// EasyCache at `thresh` for a generation of `steps` steps, warming up for the authors' share of the steps
/// (10 of 50 on Wan: `ret_steps = round(steps / 5)`).
pub fn easycache(thresh: f64, steps: usize) -> CacheConfig {
    CacheConfig::EasyCache(cache_engines::EasyCacheConfig { thresh, ret_steps: (steps + 2) / 5, num_steps: steps })
}

/// MagCache rows of the default table: (threshold, max_skip_steps).
pub const MAGCACHE_DEFAULTS: [(f64, usize); 2] = [(0.1, 3), (0.3, 3)];
/// TaylorSeer rows of the default table: (cache_interval, max_order).
pub const TAYLORSEER_DEFAULTS: [(usize, usize); 2] = [(2, 1), (3, 2)];

/// A TaylorSeer configuration that predicts every attention and feed-forward site of `host` (float32 factors;
/// diffusers' other defaults).
pub fn taylorseer(host: &HostInfo, cache_interval: usize, max_order: usize) -> CacheConfig {
    CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig {
        cache_interval,
        max_order,
        taylor_factors_dtype: cache_engines::FactorDtype::Float32,
        cache_identifiers: Some(cache_engines::cache_taylorseer_patterns(host)),
        ..Default::default()
    })
}

/// Seed offset of the calibration run's latents: calibrated on other latents than the ones evaluated.
pub const CALIBRATION_SEED_OFFSET: u64 = 1000;

/// One row of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Strategy name.
    pub strategy: String,
    /// Median wall time of one generation (every video of the batch), seconds.
    pub time_s: f64,
    /// `time_s` ÷ videos per generation: what batching buys.
    #[serde(default)]
    pub time_per_video_s: f64,
    /// Baseline time ÷ this time.
    pub speedup: f64,
    /// The speedup the skip counts imply.
    pub ideal_speedup: f64,
    /// speedup ÷ ideal_speedup.
    pub efficiency: f64,
    /// ‖ours − baseline‖ / ‖baseline‖ of the final latents.
    pub rel_l2: f64,
    /// PSNR of the final latents vs the baseline's, dB (peak = max |baseline|); infinite (JSON `null`) when
    /// equal.
    #[serde(deserialize_with = "null_is_infinite")]
    pub psnr: f64,
    /// Most bytes the strategy held at once.
    pub cache_peak_bytes: usize,
    /// Attention sites computed.
    pub attention_computed: usize,
    /// Attention sites reused or extrapolated.
    pub attention_reused: usize,
    /// `attention_reused` per attention kind (`spatial`, `temporal`, `cross`).
    #[serde(default)]
    pub attention_reused_by_kind: BTreeMap<String, usize>,
    /// Other module sites (feed-forwards) predicted instead of computed.
    #[serde(default)]
    pub modules_predicted: usize,
    /// Steps whose block stack (all of it, MagCache; all but the first block, FBC) was skipped.
    pub blocks_skipped: usize,
    /// Steps whose unconditional branch was approximated.
    pub uncond_approximated: usize,
    /// The configuration.
    pub config: CacheConfig,
    /// diffusers' time for the same strategy, when compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diffusers_time_s: Option<f64>,
    /// On wgpu and CUDA: the device memory the pool reserved over one generation of this row, started with
    /// the pool's free pages handed back ([`crate::backend::DeviceMemory::reserved`]: an upper bound of the
    /// generation's peak, model weights included). `None` on ndarray.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_peak_bytes: Option<u64>,
    /// The share of the generation's time spent inside the engine's hooks (median over the rounds,
    /// [`crate::engine_time::Timed`]): the engine's own arithmetic, which the ideal speedup does not count.
    /// `None` on wgpu and CUDA, whose hooks only queue work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_share: Option<f64>,
}

/// `ditcache bench --json` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// CPU model and core count.
    pub machine: String,
    /// Backend of this build.
    pub backend: String,
    /// Model name.
    pub model: String,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance_scale: f64,
    /// Timed repeats per row (median taken).
    pub repeats: usize,
    /// Videos per generation (prompts × videos per prompt).
    #[serde(default = "one")]
    pub batch: usize,
    /// Model calls per step, each in its own cache context (FLUX's true CFG: 2, `cond` and `uncond`; a
    /// batched CFG call: 1). The counts of skipped blocks are over all calls.
    #[serde(default = "one")]
    pub calls_per_step: usize,
    /// Rows, the baseline first.
    pub rows: Vec<Row>,
    /// Seconds of the first (untimed) generation of the process: on GPU backends it includes compiling every
    /// kernel and autotuning every new shape, which the next process finds cached
    /// ([`crate::backend::kernel_cache_dir`]); the rows' times are warm.
    #[serde(default)]
    pub first_generation_s: f64,
    /// On wgpu and CUDA: the device memory after the first generation and after the last timed one (the
    /// live tensors and the pool). Equal live bytes mean the generations left nothing behind. `None` on
    /// ndarray.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<[crate::backend::DeviceMemory; 2]>,
    /// On ndarray: where the uncached generation's time goes, timed between the hooks, beside what the work
    /// model behind the `ideal` column assumes. `None` on wgpu and CUDA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_shares: Option<WorkShares>,
}

/// Shares of the uncached generation's time ([`Report::work_shares`]): measured between the hooks, and as the
/// work model ([`cache_core::WorkModel`], multiply-adds) counts them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkShares {
    /// Attention sites' share of the block stack's time, measured.
    pub attention: f64,
    /// Feed-forward (module) sites' share of the block stack's time, measured.
    pub ff: f64,
    /// The block stack's share of the generation's time, measured.
    pub stack: f64,
    /// Attention sites' share of the block stack in the work model.
    pub model_attention: f64,
    /// Feed-forward sites' share of the block stack in the work model.
    pub model_ff: f64,
}

/// serde_json writes an infinite PSNR as `null`; read it back as infinite.
fn null_is_infinite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

fn one() -> usize {
    1
}

/// The machine, as `CPU model (N cores)`.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu} ({cores} cores)")
}

/// PSNR in dB with peak = max |reference|.
pub fn psnr(ours: &[f32], reference: &[f32]) -> f64 {
    let peak = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let mse = ours.iter().zip(reference).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>() / reference.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (peak * peak / mse).log10()
    }
}

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// Timed repeats per row.
    pub repeats: usize,
    /// Input seed.
    pub seed: u64,
    /// Draw a progress bar.
    pub progress: bool,
    /// (prompt, negative prompt) embeddings `[k, S, D]`, one row per prompt; drawn from the seed, one per
    /// video, when absent.
    pub prompt: Option<(HostTensor, HostTensor)>,
    /// Videos generated together in one loop (spread evenly over the prompts), at least 1.
    pub batch: usize,
}

/// The speedup `stats`' skip counts imply. With measured [`WorkShares`] (ndarray) the skipped sites and
/// blocks are weighed by their timed shares and the work outside the block stack (embeddings, final
/// layers, the scheduler) counts as never skipped; otherwise by the work model's multiply-add counts, the
/// block stack standing for the whole generation.
pub fn ideal_speedup(stats: &CacheStats, work: &cache_core::WorkModel, shares: Option<&WorkShares>, host: &HostInfo, steps: usize) -> f64 {
    let Some(w) = shares else { return stats.ideal_speedup(work, steps) };
    let blocks = work.num_blocks.max(1) as f64;
    let timed = cache_core::WorkModel {
        num_blocks: work.num_blocks,
        attention_share: if host.sites.is_empty() { 0.0 } else { w.attention * blocks / host.sites.len() as f64 },
        ff_share: if host.modules.is_empty() { 0.0 } else { w.ff * blocks / host.modules.len() as f64 },
    };
    let stack = stats.ideal_speedup(&timed, steps);
    1.0 / ((1.0 - w.stack) + w.stack / stack)
}

/// One generation with a strategy (`None`: uncached): final latents, stats, peak bytes, seconds.
pub fn generate<B: ModelBackend>(
    model: &mut VideoModel<B>,
    input: &DenoiseInput<B>,
    config: Option<&CacheConfig>,
) -> Result<(Vec<f32>, CacheStats, usize, f64), String> {
    generate_timed(model, input, config).map(|(data, stats, peak, secs, ..)| (data, stats, peak, secs))
}

/// [`generate`], with what [`crate::engine_time::Timed`] measured last: the seconds spent inside the
/// engine's hooks (uncached: the no-op [`Identity`]'s) and the model's compute between them.
pub fn generate_timed<B: ModelBackend>(
    model: &mut VideoModel<B>,
    input: &DenoiseInput<B>,
    config: Option<&CacheConfig>,
) -> Result<(Vec<f32>, CacheStats, usize, f64, f64, crate::engine_time::SiteTimes), String> {
    let start = Instant::now();
    let mut engine: Box<dyn CacheStrategy<B>> = match config {
        None => Box::new(Identity),
        Some(cfg) => build::<B>(cfg, &model.host_info()).map_err(|e| e.to_string())?,
    };
    let mut timed = crate::engine_time::Timed::new(&mut *engine);
    let out: Tensor<B, 5> = model.denoise(input.clone(), &mut timed, DenoiseOptions::default()).map_err(|e| e.to_string())?;
    let (spent, sites) = (timed.spent().as_secs_f64(), timed.site_times());
    let (stats, peak) = match config {
        None => (CacheStats::default(), 0),
        Some(_) => (engine.stats(), engine.peak_bytes()),
    };
    let data = HostTensor::from_tensor(out).data;
    Ok((data, stats, peak, start.elapsed().as_secs_f64(), spent, sites))
}

/// Runs the baseline and each strategy `repeats` times (after one warm-up generation), in rounds that run
/// every row once, and builds the report; on wgpu and CUDA one more generation per row measures its device
/// memory.
pub fn run<B: ModelBackend>(
    model: &mut VideoModel<B>,
    model_name: &str,
    strategies: &[(String, CacheConfig)],
    opts: &BenchOptions,
    device: &B::Device,
) -> Result<Report, String> {
    for (name, cfg) in strategies {
        cfg.check_host(&model.host_info()).map_err(|e| format!("{name}: {e}"))?;
        cfg.check_steps(opts.steps).map_err(|e| format!("{name}: {e}"))?;
    }
    let input = model.bench_inputs(opts, device)?;
    let videos = input.videos();
    let work = model.work_model();
    let host = model.host_info();
    let kinds: HashMap<String, AttentionKind> = host.sites.iter().map(|s| (s.to_string(), s.kind)).collect();
    let kind_of = |name: &str| kinds.get(name).copied();
    let total = (1 + (strategies.len() + 1) * opts.repeats) as u64;
    let bar = if opts.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg:>14} {bar:30} {pos}/{len} generations [{elapsed_precise}<{eta_precise}]").expect("template"));
    bar.set_message(if crate::backend::COMPILES_KERNELS { "first use: compiling and tuning kernels" } else { "warm-up" });
    let first_generation_s = generate(model, &input, None)?.3;
    let after_first = crate::backend::device_memory::<B>(device);
    bar.inc(1);

    // Rounds: every row once per round, so that a drift of the machine's speed over the table (other load,
    // clock changes) reaches every row alike and the speedups and efficiencies compare like with like.
    let all: Vec<(String, Option<&CacheConfig>)> =
        std::iter::once(("baseline".to_string(), None)).chain(strategies.iter().map(|(n, c)| (n.clone(), Some(c)))).collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut engine_times: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut base_sites = Vec::new();
    let mut firsts: Vec<Option<(Vec<f32>, CacheStats, usize)>> = vec![None; all.len()];
    for round in 0..opts.repeats {
        for (i, (name, cfg)) in all.iter().enumerate() {
            bar.set_message(format!("{name} ({}/{})", round + 1, opts.repeats));
            let (data, stats, peak, secs, engine, sites) = generate_timed(model, &input, *cfg)?;
            times[i].push(secs);
            engine_times[i].push(engine);
            if i == 0 {
                base_sites.push((secs, sites));
            }
            firsts[i].get_or_insert((data, stats, peak));
            bar.inc(1);
        }
    }
    let after_last = crate::backend::device_memory::<B>(device);
    // Each row's device peak from one more, untimed generation (handing the free pages back first costs
    // allocations, which the timed rounds must not pay).
    let mut peaks: Vec<Option<u64>> = vec![None; all.len()];
    if after_last.is_some() {
        for (i, (name, cfg)) in all.iter().enumerate() {
            bar.set_message(format!("{name} (device memory)"));
            crate::backend::release_free_device_memory::<B>(device);
            generate(model, &input, *cfg)?;
            peaks[i] = crate::backend::device_memory::<B>(device).map(|m| m.reserved);
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let work_shares = (!crate::backend::COMPILES_KERNELS).then(|| {
        let total: f64 = base_sites.iter().map(|(t, _)| t).sum();
        let sum = |f: &dyn Fn(&crate::engine_time::SiteTimes) -> std::time::Duration| {
            base_sites.iter().map(|(_, s)| f(s).as_secs_f64()).sum::<f64>()
        };
        let stack = sum(&|s| s.stack).max(f64::MIN_POSITIVE);
        let blocks = work.num_blocks.max(1) as f64;
        WorkShares {
            attention: sum(&|s| s.attention) / stack,
            ff: sum(&|s| s.modules) / stack,
            stack: stack / total,
            model_attention: host.sites.len() as f64 * work.attention_share / blocks,
            model_ff: host.modules.len() as f64 * work.ff_share / blocks,
        }
    });
    let base_time = median(&mut times[0]);
    let base = firsts[0].as_ref().expect("repeats >= 1").0.clone();
    let mut rows = Vec::new();
    let rows_in = all.into_iter().zip(times).zip(engine_times).zip(firsts).zip(peaks);
    for (((((name, cfg), mut t), mut engine_t), first), device_peak_bytes) in rows_in {
        let time = median(&mut t);
        let engine_s = median(&mut engine_t);
        let (data, stats, peak) = first.expect("repeats >= 1");
        let ideal = ideal_speedup(&stats, &work, work_shares.as_ref(), &host, opts.steps);
        let speedup = base_time / time;
        // The trace's `attention` map also holds the other module sites (feed-forwards) a TaylorSeer hooks.
        let count = |attention: bool| {
            let entries = stats.entries().flat_map(|s| s.attention.iter());
            entries.filter(|(n, _)| kinds.contains_key(n.as_str()) == attention).fold((0, 0), |(c, r), (_, d)| match d {
                Decision::Compute => (c + 1, r),
                Decision::Skip => (c, r + 1),
            })
        };
        let attn: (usize, usize) = count(true);
        let modules_predicted = count(false).1;
        let attention_reused_by_kind =
            stats.attention_by_kind(kind_of).into_iter().map(|(k, c)| (k, c.reused)).collect();
        rows.push(Row {
            strategy: name,
            time_s: time,
            time_per_video_s: time / videos as f64,
            speedup,
            ideal_speedup: ideal,
            efficiency: speedup / ideal,
            rel_l2: rel_l2(&data, &base),
            psnr: psnr(&data, &base),
            cache_peak_bytes: peak,
            attention_computed: attn.0,
            attention_reused: attn.1,
            attention_reused_by_kind,
            modules_predicted,
            blocks_skipped: stats.blocks().reused,
            uncond_approximated: stats.uncond().reused,
            config: cfg.cloned().unwrap_or(CacheConfig::None),
            diffusers_time_s: None,
            device_peak_bytes,
            // A hook on wgpu or CUDA only queues work: its time says nothing there.
            engine_share: (!crate::backend::COMPILES_KERNELS).then_some(engine_s / time),
        });
    }
    bar.finish_and_clear();
    Ok(Report {
        machine: machine(),
        backend: crate::backend::NAME.into(),
        model: model_name.into(),
        steps: opts.steps,
        guidance_scale: opts.guidance,
        repeats: opts.repeats,
        batch: videos,
        calls_per_step: model.calls_per_step(opts.guidance),
        rows,
        first_generation_s,
        device_memory: after_first.zip(after_last).map(|(a, b)| [a, b]),
        work_shares,
    })
}

fn bytes(n: usize) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// The report as a Markdown table.
/// `spatial 48 · temporal 48 · cross 36`.
fn kinds(by_kind: &BTreeMap<String, usize>) -> String {
    by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(" · ")
}

pub fn table(report: &Report) -> String {
    let compare = report.rows.iter().any(|r| r.diffusers_time_s.is_some());
    let device = report.rows.iter().any(|r| r.device_peak_bytes.is_some());
    let engine = report.rows.iter().any(|r| r.engine_share.is_some());
    // Per-kind counts only for models with more than one kind of attention.
    let by_kind = report.rows.iter().any(|r| r.attention_reused_by_kind.len() > 1);
    let mut s = format!(
        "model {} · {} video{} per generation · {} steps{} · guidance {} · backend {} · {} · median of {} interleaved rounds{}\n\n",
        report.model,
        report.batch,
        if report.batch == 1 { "" } else { "s" },
        report.steps,
        if report.calls_per_step > 1 { format!(" × {} calls (one per cache context)", report.calls_per_step) } else { String::new() },
        report.guidance_scale,
        report.backend,
        report.machine,
        report.repeats,
        match report.first_generation_s {
            t if t > 0.0 && crate::backend::COMPILES_KERNELS => format!(" · first generation {t:.2} s (kernel compilation and autotuning)"),
            _ => String::new(),
        }
    );
    if let Some([first, last]) = report.device_memory {
        s += &format!(
            "device memory: {} live / {} reserved after the first generation, {} live / {} reserved after the last timed one\n\n",
            bytes(first.in_use as usize),
            bytes(first.reserved as usize),
            bytes(last.in_use as usize),
            bytes(last.reserved as usize)
        );
    }
    if let Some(w) = report.work_shares {
        s += &format!(
            "uncached, timed between the hooks: attention {:.0} % and feed-forwards {:.0} % of the block stack (multiply-add counts: {:.0} % and {:.0} %), the block stack {:.0} % of the generation; `ideal` weighs what a row skips by these timed shares, `engine time` is the share of its time spent inside the engine's hooks\n\n",
            100.0 * w.attention,
            100.0 * w.ff,
            100.0 * w.model_attention,
            100.0 * w.model_ff,
            100.0 * w.stack
        );
    }
    s += "| strategy | time (s) | s/video | speedup | ideal | efficiency | attn computed/reused | ff predicted | blocks skipped | uncond approx. | rel_l2 | PSNR (dB) | cache peak |";
    if engine {
        s += " engine time |";
    }
    if device {
        s += " device peak |";
    }
    if compare {
        s += " diffusers (s) | ours ÷ diffusers |";
    }
    s += "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";
    if engine {
        s += "---:|";
    }
    if device {
        s += "---:|";
    }
    if compare {
        s += "---:|---:|";
    }
    s += "\n";
    for r in &report.rows {
        s += &format!(
            "| {} | {:.2} | {:.3} | {:.2}× | {:.2}× | {:.2} | {}/{}{} | {} | {}/{} | {}/{} | {:.2e} | {} | {} |",
            r.strategy,
            r.time_s,
            r.time_per_video_s,
            r.speedup,
            r.ideal_speedup,
            r.efficiency,
            r.attention_computed,
            r.attention_reused,
            if by_kind && r.attention_reused > 0 { format!(" ({})", kinds(&r.attention_reused_by_kind)) } else { String::new() },
            r.modules_predicted,
            r.blocks_skipped,
            report.steps * report.calls_per_step,
            r.uncond_approximated,
            report.steps,
            r.rel_l2,
            if r.psnr.is_finite() { format!("{:.1}", r.psnr) } else { "∞".into() },
            bytes(r.cache_peak_bytes),
        );
        if engine {
            s += &format!(" {} |", r.engine_share.map(|e| format!("{:.1} %", 100.0 * e)).unwrap_or_else(|| "–".into()));
        }
        if device {
            s += &format!(" {} |", r.device_peak_bytes.map(|b| bytes(b as usize)).unwrap_or_else(|| "–".into()));
        }
        if compare {
            match r.diffusers_time_s {
                Some(d) => s += &format!(" {:.2} | {:.2} |", d, r.time_s / d),
                None => s += " – | – |",
            }
        }
        s += "\n";
    }
    s
}

/// Fills `diffusers_time_s` from `tools/reference/peer_timing.py`'s JSON (`{"rows": [{"strategy", "time_s"}]}`).
pub fn add_comparison(report: &mut Report, peer: &serde_json::Value) -> Result<(), String> {
    let rows = peer.get("rows").and_then(|r| r.as_array()).ok_or("comparison file has no `rows` array")?;
    for r in &mut report.rows {
        r.diffusers_time_s = rows
            .iter()
            .find(|p| p.get("strategy").and_then(|s| s.as_str()) == Some(r.strategy.as_str()))
            .and_then(|p| p.get("time_s")).and_then(|t| t.as_f64());
    }
    Ok(())
}

/// Speedup against PSNR as an SVG scatter plot.
pub fn svg_plot(report: &Report) -> String {
    let pts: Vec<(&str, f64, f64)> = report
        .rows
        .iter()
        .skip(1)
        .map(|r| (r.strategy.as_str(), r.speedup, if r.psnr.is_finite() { r.psnr } else { 100.0 }))
        .collect();
    let (w, h, m) = (720.0, 480.0, 60.0);
    let xmax = pts.iter().map(|p| p.2).fold(20.0f64, f64::max) * 1.1;
    let xmin = pts.iter().map(|p| p.2).fold(xmax, f64::min).min(20.0) * 0.9;
    let ymax = pts.iter().map(|p| p.1).fold(1.5f64, f64::max) * 1.1;
    let ymin = 0.0;
    let x = |v: f64| m + (v - xmin) / (xmax - xmin) * (w - 2.0 * m);
    let y = |v: f64| h - m - (v - ymin) / (ymax - ymin) * (h - 2.0 * m);
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#);
    s += &format!(r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    s += &format!(r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - m, w - m, h - m);
    s += &format!(r#"<line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#, h - m);
    s += &format!(r#"<line x1="{m}" y1="{0}" x2="{1}" y2="{0}" stroke="gray" stroke-dasharray="4"/>"#, y(1.0), w - m);
    for i in 0..=5 {
        let v = xmin + (xmax - xmin) * i as f64 / 5.0;
        s += &format!(r#"<text x="{}" y="{}" text-anchor="middle">{v:.0}</text>"#, x(v), h - m + 18.0);
        let u = ymin + (ymax - ymin) * i as f64 / 5.0;
        s += &format!(r#"<text x="{}" y="{}" text-anchor="end">{u:.2}×</text>"#, m - 6.0, y(u) + 4.0);
    }
    s += &format!(r#"<text x="{}" y="{}" text-anchor="middle">PSNR vs uncached latents (dB)</text>"#, w / 2.0, h - 15.0);
    s += &format!(r#"<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">speedup (wall time)</text>"#, h / 2.0, h / 2.0);
    s += &format!(
        r#"<text x="{}" y="25" text-anchor="middle">{} · {} steps · {} · {}</text>"#,
        w / 2.0, report.model, report.steps, report.backend, report.machine
    );
    for (name, sp, p) in pts {
        s += &format!(r#"<circle cx="{}" cy="{}" r="5" fill="steelblue"/>"#, x(p), y(sp));
        s += &format!(r#"<text x="{}" y="{}">{name}</text>"#, x(p) + 8.0, y(sp) - 6.0);
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::{ideal_speedup, WorkShares};
    use cache_core::{AttentionKind, AttentionSite, CacheStats, Decision, HostInfo, ModuleSite, WorkModel};

    #[test]
    fn the_timed_ideal_weighs_skips_by_measured_shares_and_never_skips_the_rest() {
        // Two blocks, one attention and one feed-forward site each; 2 steps.
        let host = HostInfo {
            sites: (0..2).map(|index| AttentionSite { stack: "blocks", index, attn: "attn1", kind: AttentionKind::Spatial }).collect(),
            modules: (0..2).map(|index| ModuleSite { stack: "blocks", index, name: "ff" }).collect(),
            num_blocks: 2,
            tensor_format: "BFCHW".into(),
            module_names: Vec::new(),
            step_signal: None,
            other_step_signals: Vec::new(),
            per_branch_calls: false,
            hands_sigma: false,
        };
        let work = WorkModel { num_blocks: 2, attention_share: 0.25, ff_share: 0.75 };
        let shares = WorkShares { attention: 0.4, ff: 0.5, stack: 0.9, model_attention: 0.25, model_ff: 0.75 };
        // Step 1 skips the whole stack: the stack's ideal is 2, and 10 % of the time is outside it:
        // 1 / (0.1 + 0.9 / 2).
        let mut whole = CacheStats::default();
        whole.step_mut(1, 0.0).blocks = Some(Decision::Skip);
        whole.step_mut(1, 0.0).whole_stack = true;
        assert!((ideal_speedup(&whole, &work, Some(&shares), &host, 2) - 1.0 / 0.55).abs() < 1e-12);
        // Without shares, the multiply-add model and the stack as the whole generation.
        assert!((ideal_speedup(&whole, &work, None, &host, 2) - 2.0).abs() < 1e-12);
        // One feed-forward predicted: it is half of the stack's 50 % feed-forward time, 25 % of one step's stack,
        // 12.5 % of the stack over two steps: stack ideal 1 / 0.875; the multiply-add model says 1 / (1 − 0.1875).
        let mut ff = CacheStats::default();
        ff.step_mut(0, 0.0).attention.insert("blocks.1.ff".into(), Decision::Skip);
        let stack = 1.0 / 0.875;
        assert!((ideal_speedup(&ff, &work, Some(&shares), &host, 2) - 1.0 / (0.1 + 0.9 / stack)).abs() < 1e-12);
        assert!((ideal_speedup(&ff, &work, None, &host, 2) - 1.0 / 0.8125).abs() < 1e-12);
    }
}
