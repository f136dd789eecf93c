//! `ditcache calibrate`: one measuring generation plus a few verifying ones, written as a calibration file
//! ([`cache_engines::Calibration`]); `bench` and `sample` make one on first use and keep it outside the
//! source tree.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cache_engines::{fit_polynomial, resolve_presets, Calibration, Calibrator, ModelId, TeaCacheFit, Verification};
use models::{DenoiseInput, DenoiseOptions, HostTensor, ModelBackend};

use crate::bench::{generate, psnr, BenchOptions, CALIBRATION_SEED_OFFSET};
use crate::video_model::{BenchModel, VideoModel};

/// The prompts calibration runs use on the trained model, one video each in one batch: every (shape, size,
/// colour), each direction four times, and none of [`HELD_OUT_PROMPTS`]. Several, because on this model one
/// skipped step costs 20 dB on one prompt and nothing on another (a single skipped step ranges from 20 to
/// 76 dB over four prompts): a preset is verified on the worst of them, with [`cache_engines::MARGIN_DB`] to
/// spare. With 4 or 8 prompts, presets verified that way missed their targets on held-out prompts.
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
    /// Wall time of its measuring (uncached) generation, seconds.
    pub uncached_seconds: f64,
    /// The cached generations run to verify the presets.
    pub verifications: Vec<Verification>,
}

/// The measuring part of a calibration: one uncached generation with a [`Calibrator`] on latents drawn from
/// `opts.seed + CALIBRATION_SEED_OFFSET` (and `opts.prompt`: pass the calibration prompts there), and the
/// least-squares quartic for TeaCache. Returns the calibration (no presets yet), its input and the uncached
/// final latents.
pub fn measure<B: ModelBackend>(
    model: &mut VideoModel<B>,
    opts: &BenchOptions,
    device: &B::Device,
) -> Result<(Calibration, DenoiseInput<B>, Vec<f32>), String> {
    let cal_opts = BenchOptions { seed: opts.seed.wrapping_add(CALIBRATION_SEED_OFFSET), ..opts.clone() };
    let input = model.bench_inputs(&cal_opts, device)?;
    let host = model.host_info();
    let mut meter = Calibrator::<B>::new();
    let out = model.denoise(input.clone(), &mut meter, DenoiseOptions::default()).map_err(|e| e.to_string())?;
    let reference = HostTensor::from_tensor(out).data;
    let teacache = match host.step_signal {
        Some(_) => {
            let coefficients = fit_polynomial(&meter.signal_changes, &meter.output_changes, TEACACHE_DEGREE)
                .ok_or("TeaCache's fit: no usable (signal change, output change) pairs")?;
            Some(TeaCacheFit {
                coefficients,
                signal_changes: meter.signal_changes.clone(),
                output_changes: meter.output_changes.clone(),
            })
        }
        None => None,
    };
    let calibration = Calibration {
        model: ModelId::new(model.class_name(), &host),
        num_inference_steps: opts.steps,
        guidance_scale: opts.guidance,
        first_block_changes: meter.first_block_changes,
        attention_changes: meter.attention_changes,
        residual_changes: meter.residual_changes,
        mag_ratios: meter.mag_ratios,
        teacache,
        presets: Default::default(),
    };
    Ok((calibration, input, reference))
}

/// Calibrates `model` for `opts`'s schedule: [`measure`], then [`resolve_presets`] with cached generations
/// on the same input, each scored by its worst video's PSNR.
pub fn calibrate<B: ModelBackend>(
    model: &mut VideoModel<B>,
    opts: &BenchOptions,
    device: &B::Device,
) -> Result<CalibrationRun, String> {
    let start = Instant::now();
    let (mut calibration, input, reference) = measure(model, opts, device)?;
    let uncached_seconds = start.elapsed().as_secs_f64();
    let per = reference.len() / input.videos();
    let (presets, verifications) = resolve_presets(&calibration, |config| {
        let (data, ..) = generate(model, &input, Some(config))?;
        let worst = data.chunks(per).zip(reference.chunks(per)).map(|(a, b)| psnr(a, b)).fold(f64::INFINITY, f64::min);
        Ok::<_, String>(worst)
    })?;
    calibration.presets = presets;
    Ok(CalibrationRun { calibration, seconds: start.elapsed().as_secs_f64(), uncached_seconds, verifications })
}

/// Loads the calibration at `path` when it exists (refusing, typed, one made for another model or step
/// count), otherwise calibrates and writes it there. Returns it and whether it was made now.
pub fn load_or_calibrate<B: ModelBackend>(
    path: &Path,
    model: &mut VideoModel<B>,
    opts: &BenchOptions,
    device: &B::Device,
) -> Result<(Calibration, Option<CalibrationRun>), String> {
    if path.exists() {
        let cal = Calibration::from_file(path).map_err(|e| e.to_string())?;
        cal.check(model.class_name(), &model.host_info(), opts.steps).map_err(|e| format!("{}: {e}", path.display()))?;
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
