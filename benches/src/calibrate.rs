//! `ditcache calibrate`: uncached generations that measure plus a few cached ones that verify, written as a
//! calibration file ([`cache_engines::Calibration`]); `bench` and `sample` make one on first use and keep it
//! outside the source tree.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cache_engines::{fit_polynomial, resolve_presets, LatentLayout, Calibration, Calibrator, ModelId, TeaCacheFit, Verification};
use models::{DenoiseInput, DenoiseOptions, HostTensor, ModelBackend};

use crate::bench::{generate, psnr, BenchOptions, CALIBRATION_SEED_OFFSET};
use crate::video_model::{BenchModel, VideoModel};

/// The prompts calibration runs use on the trained model, one video each: every (shape, size, colour), each
/// direction four times, and none of [`HELD_OUT_PROMPTS`]. Several, because on this model one skipped step
/// costs 20 dB on one prompt and nothing on another (a single skipped step ranges from 20 to 76 dB over four
/// prompts): a preset is verified on the worst of them, with [`cache_engines::MARGIN_DB`] to spare. Calibrated
/// on these 16, the presets met their targets on all 48 other prompts; calibrated on 3 (two choices), they
/// missed a target on 6 and on 4 of the 61 others, and on 4 or 8 on some held-out prompts.
pub const CALIBRATION_PROMPTS: [&str; 16] = [
    "shape=square,size=small,colour=red,direction=right",
    "shape=square,size=small,colour=green,direction=left",
    "shape=square,size=small,colour=blue,direction=down",
    "shape=square,size=small,colour=white,direction=up",
    "shape=square,size=large,colour=red,direction=left",
    "shape=square,size=large,colour=green,direction=down",
    "shape=square,size=large,colour=blue,direction=up",
    "shape=square,size=large,colour=white,direction=right",
    "shape=disc,size=small,colour=red,direction=down",
    "shape=disc,size=small,colour=green,direction=up",
    "shape=disc,size=small,colour=blue,direction=right",
    "shape=disc,size=small,colour=white,direction=left",
    "shape=disc,size=large,colour=red,direction=up",
    "shape=disc,size=large,colour=green,direction=right",
    "shape=disc,size=large,colour=blue,direction=left",
    "shape=disc,size=large,colour=white,direction=down",
];

/// Prompts no calibration sees, for checking presets on the trained model: `bench`'s default prompt and two
/// others (on one of them every single skipped step already falls below 40 dB).
pub const HELD_OUT_PROMPTS: [&str; 3] = [
    crate::shapes::DEFAULT_PROMPT,
    "shape=square,size=large,colour=white,direction=down",
    "shape=disc,size=small,colour=green,direction=left",
];

/// The trained model's prompts no calibration sees: all but [`CALIBRATION_PROMPTS`] (48).
pub fn uncalibrated_prompts() -> Vec<String> {
    crate::shapes::all_prompts().into_iter().filter(|p| !CALIBRATION_PROMPTS.contains(&p.as_str())).collect()
}

/// Videos of a calibration batch on models without a prompt table (each with its own drawn prompt and noise).
pub const CALIBRATION_VIDEOS: usize = 4;

/// Degree of TeaCache's fitted polynomial (the authors fit quartics).
pub const TEACACHE_DEGREE: usize = 4;

/// What a calibration cost.
#[derive(Debug, Clone)]
pub struct CalibrationRun {
    /// The calibration.
    pub calibration: Calibration,
    /// Wall time of the whole calibration, seconds.
    pub seconds: f64,
    /// Wall time of its measuring pass (every calibration video once, uncached), seconds.
    pub uncached_seconds: f64,
    /// The verifying passes (cached, on the calibration videos) run to resolve the presets.
    pub verifications: Vec<Verification>,
    /// Videos the verifying passes generated in all (a miss stops at its first generation below the target).
    pub verifying_videos: usize,
    /// Videos of the measuring pass.
    pub videos: usize,
}

impl CalibrationRun {
    /// The calibration's wall time in uncached single videos: its seconds over the measuring pass's seconds
    /// per video.
    pub fn in_videos(&self) -> f64 {
        self.seconds / (self.uncached_seconds / self.videos.max(1) as f64)
    }
}

/// Videos per generation of a calibration: larger batches are split into generations of this many (on 2 CPU
/// cores a video costs 0.69 s at batch 4, 0.94 s at batch 16 on the trained model).
pub const CALIBRATION_CHUNK: usize = 4;

/// `opts` split into generations of at most [`CALIBRATION_CHUNK`] videos: with a prompt table of one prompt
/// per video, by prompts; with drawn prompts, by seeds (chunk `c` draws from `seed + c`·a large odd number).
fn chunks(opts: &BenchOptions) -> Vec<BenchOptions> {
    let n = opts.batch;
    let per_prompt = opts.prompt.as_ref().map(|(p, _)| p.shape[0] == n).unwrap_or(true);
    if n <= CALIBRATION_CHUNK || !per_prompt {
        return vec![opts.clone()];
    }
    let slice = |t: &HostTensor, from: usize, to: usize| {
        let row = t.data.len() / t.shape[0];
        let mut shape = t.shape.clone();
        shape[0] = to - from;
        HostTensor { shape, data: t.data[from * row..to * row].to_vec() }
    };
    (0..n)
        .step_by(CALIBRATION_CHUNK)
        .enumerate()
        .map(|(c, from)| {
            let to = (from + CALIBRATION_CHUNK).min(n);
            BenchOptions {
                batch: to - from,
                seed: opts.seed.wrapping_add((c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
                prompt: opts.prompt.as_ref().map(|(p, q)| (slice(p, from, to), slice(q, from, to))),
                ..opts.clone()
            }
        })
        .collect()
}

/// Element-wise mean of equally long lists (the chunks' measurements of the same step).
fn mean_of(lists: Vec<Vec<f64>>) -> Vec<f64> {
    let n = lists.len().max(1) as f64;
    let len = lists.iter().map(Vec::len).min().unwrap_or(0);
    (0..len).map(|i| lists.iter().map(|l| l[i]).sum::<f64>() / n).collect()
}

/// One calibration generation: its input and its uncached final latents.
pub struct CalibrationInput<B: ModelBackend> {
    /// The input.
    pub input: DenoiseInput<B>,
    /// The uncached final latents.
    pub reference: Vec<f32>,
}

/// The measuring part of a calibration: uncached generations with a [`Calibrator`] on latents drawn from
/// `opts.seed + CALIBRATION_SEED_OFFSET` (and `opts.prompt`: pass the calibration prompts there), in
/// generations of at most [`CALIBRATION_CHUNK`] videos whose measurements are averaged, and the least-squares
/// quartic for TeaCache. Returns the calibration (no presets yet) and the generations' inputs and latents.
pub fn measure<B: ModelBackend>(
    model: &mut VideoModel<B>,
    opts: &BenchOptions,
    device: &B::Device,
) -> Result<(Calibration, Vec<CalibrationInput<B>>), String> {
    let cal_opts = BenchOptions { seed: opts.seed.wrapping_add(CALIBRATION_SEED_OFFSET), ..opts.clone() };
    let host = model.host_info();
    let mut inputs = Vec::new();
    let mut meters = Vec::new();
    for chunk in chunks(&cal_opts) {
        let input = model.bench_inputs(&chunk, device)?;
        let mut meter = match host.hands_sigma {
            true => Calibrator::<B>::with_sea_layout(LatentLayout::for_host(&host).map_err(|e| e.to_string())?),
            false => Calibrator::<B>::new(),
        };
        let out = model.denoise(input.clone(), &mut meter, DenoiseOptions::default()).map_err(|e| e.to_string())?;
        inputs.push(CalibrationInput { input, reference: HostTensor::from_tensor(out).data });
        meters.push(meter);
    }
    let pick = |f: &dyn Fn(&Calibrator<B>) -> Vec<f64>| mean_of(meters.iter().map(f).collect());
    let signal_changes = pick(&|m| m.signal_changes.clone());
    let output_changes = pick(&|m| m.output_changes.clone());
    let teacache = match host.step_signal {
        Some(_) => {
            let coefficients = fit_polynomial(&signal_changes, &output_changes, TEACACHE_DEGREE)
                .ok_or("TeaCache's fit: no usable (signal change, output change) pairs")?;
            Some(TeaCacheFit { coefficients, signal_changes, output_changes })
        }
        None => None,
    };
    let sites = meters.first().map(|m| m.attention_changes.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let attention_changes = sites
        .into_iter()
        .map(|site| {
            let lists = meters.iter().map(|m| m.attention_changes.get(&site).cloned().unwrap_or_default()).collect();
            (site, mean_of(lists))
        })
        .collect();
    let calibration = Calibration {
        model: ModelId::new(model.class_name(), &host),
        num_inference_steps: opts.steps,
        guidance_scale: opts.guidance,
        first_block_changes: pick(&|m| m.first_block_changes.clone()),
        attention_changes,
        residual_changes: pick(&|m| m.residual_changes.clone()),
        mag_ratios: pick(&|m| m.mag_ratios.clone()),
        teacache,
        sea_distances: host.hands_sigma.then(|| pick(&|m| m.sea_distances.clone())),
        presets: Default::default(),
    };
    Ok((calibration, inputs))
}

/// The worst PSNR over the generations `order` lists, run in that order, stopping after the first one below
/// `need` (the candidate misses whatever the others give). `last[g]` keeps each generation's latest PSNR and
/// `order` is re-sorted by it, so the next verification starts with the generation that came closest to
/// missing.
pub fn worst_first(
    order: &mut [usize],
    last: &mut [f64],
    need: f64,
    mut run: impl FnMut(usize) -> Result<f64, String>,
) -> Result<f64, String> {
    let mut worst = f64::INFINITY;
    for &g in order.iter() {
        last[g] = run(g)?;
        worst = worst.min(last[g]);
        if worst < need {
            break;
        }
    }
    order.sort_by(|a, b| last[*a].total_cmp(&last[*b]));
    Ok(worst)
}

/// Calibrates `model` for `opts`'s schedule: [`measure`], then [`resolve_presets`] with cached generations
/// on the same inputs, each scored by its worst video's PSNR ([`worst_first`]).
pub fn calibrate<B: ModelBackend>(
    model: &mut VideoModel<B>,
    opts: &BenchOptions,
    device: &B::Device,
) -> Result<CalibrationRun, String> {
    let start = Instant::now();
    let (mut calibration, inputs) = measure(model, opts, device)?;
    let uncached_seconds = start.elapsed().as_secs_f64();
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    let mut last = vec![f64::INFINITY; inputs.len()];
    let mut verifying_videos = 0;
    let (presets, verifications) = resolve_presets(&calibration, |config, need| {
        let worst = worst_first(&mut order, &mut last, need, |g| {
            let c = &inputs[g];
            let (data, ..) = generate(model, &c.input, Some(config))?;
            verifying_videos += c.input.videos();
            let per = c.reference.len() / c.input.videos();
            Ok(data.chunks(per).zip(c.reference.chunks(per)).map(|(a, b)| psnr(a, b)).fold(f64::INFINITY, f64::min))
        })?;
        Ok::<_, String>(worst)
    })?;
    calibration.presets = presets;
    let videos = inputs.iter().map(|c| c.input.videos()).sum();
    Ok(CalibrationRun { calibration, seconds: start.elapsed().as_secs_f64(), uncached_seconds, verifications, verifying_videos, videos })
}

#[cfg(test)]
mod tests {
    use super::worst_first;

    #[test]
    fn verification_stops_at_the_first_miss_and_starts_next_time_with_the_closest_call() {
        let psnr = [40.0, 31.0, 20.0, 35.0];
        let mut order = vec![0, 1, 2, 3];
        let mut last = vec![f64::INFINITY; 4];
        // A hit needs every generation: worst 20 ≥ 18, all four ran.
        let mut runs = Vec::new();
        let r = worst_first(&mut order, &mut last, 18.0, |g| {
            runs.push(g);
            Ok(psnr[g])
        });
        assert_eq!((r.unwrap(), runs), (20.0, vec![0, 1, 2, 3]));
        assert_eq!(order, [2, 1, 3, 0]);
        // A miss stops at the first generation below `need`, which is now the first one run.
        let mut runs = Vec::new();
        let r = worst_first(&mut order, &mut last, 25.0, |g| {
            runs.push(g);
            Ok(psnr[g] - 1.0)
        });
        assert_eq!((r.unwrap(), runs), (19.0, vec![2]));
        // Generations not run keep their earlier PSNR for the ordering.
        assert_eq!(last, [40.0, 31.0, 19.0, 35.0]);
        assert_eq!(order, [2, 1, 3, 0]);
        // A miss late in the order still stops there.
        let mut order = vec![0, 3, 1, 2];
        let mut runs = Vec::new();
        let r = worst_first(&mut order, &mut last, 32.0, |g| {
            runs.push(g);
            Ok(psnr[g])
        });
        assert_eq!((r.unwrap(), runs), (31.0, vec![0, 3, 1]));
    }
}

/// Loads the calibration at `path` when it exists (refusing, typed, one made for another model, step count or
/// guidance scale), otherwise calibrates and writes it there. Returns it and whether it was made now.
pub fn load_or_calibrate<B: ModelBackend>(
    path: &Path,
    model: &mut VideoModel<B>,
    opts: &BenchOptions,
    device: &B::Device,
) -> Result<(Calibration, Option<CalibrationRun>), String> {
    if path.exists() {
        let cal = Calibration::from_file(path).map_err(|e| e.to_string())?;
        cal.check(model.class_name(), &model.host_info(), opts.steps, opts.guidance).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((cal, None));
    }
    let run = calibrate(model, opts, device)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, run.calibration.to_toml()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((run.calibration.clone(), Some(run)))
}

/// Where `bench` and `sample` keep a model's calibration when the user names no path: the user's cache
/// directory (`$XDG_CACHE_HOME/ditcache`, else `$HOME/.cache/ditcache`, else the system temp directory), never
/// the source tree. `key` names the model, its weights and the schedule.
pub fn default_calibration_path(key: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let safe: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    base.join("ditcache").join(format!("{safe}.toml"))
}
