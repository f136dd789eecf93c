//! `ditcache`: parity with diffusers, the speed/quality bench of the cache engines, tuning, samples.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use benches::backend::{self, Backend};
use benches::parity::expand_case_dirs;
use burn::tensor::{Distribution, FloatDType, Tensor};
use cache_core::{Branch, CallContext, CfgOrder, Identity, StepContext};
use clap::{Parser, Subcommand};
use benches::bench::{add_comparison, svg_plot, table, BenchOptions};
use cache_engines::CacheConfig;
use models::weights::save_safetensors;
use benches::video_model::{BenchModel, VideoModel};
use models::{CogVideoXConfig, CogVideoXTransformer3DModel, ForwardInput, HostTensor, LatteConfig, ModelBackend, WeightSource};

#[derive(Parser)]
#[command(name = "ditcache", about = "Training-free caching of diffusion transformers on burn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replays parity cases written from diffusers; one JSON line per case, a summary on stderr; exit 1 if any fails
    /// (a case in a dtype this build cannot compute in is refused: counted apart, not a failure).
    Parity {
        /// Case directories, or directories of cases.
        #[arg(required = true)]
        cases: Vec<PathBuf>,
        /// Hold every float32 case to this rel_l2 where it is below the case's own tolerance (the format's
        /// 1e-3 for a generation leaves room for TF32; a float32 backend is held to what it measures: `.ci/run`
        /// passes 1e-5). Half-precision cases keep their own, set from diffusers' measured spread.
        #[arg(long)]
        max_rel_l2: Option<f64>,
    },
    /// Times one forward of a preset model (random weights from a seed) on this build's backend.
    Forward {
        /// `s` (the benchmark model), `2b` or `5b`.
        #[arg(long, default_value = "s")]
        preset: String,
        /// Batch size (2 = one CFG batch).
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Timed repeats after one warm-up.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Weight seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also time each hot operation (`models::ops`): per-forward milliseconds in the JSON (`ops`) and a table
        /// on stderr. Only the CPU backend records them (a GPU backend returns before its kernels finish).
        #[arg(long)]
        profile: bool,
        /// Run the generic burn-op code instead of the CPU kernels (`models::ops::set_cpu_fast_path(false)`),
        /// to compare the two paths.
        #[arg(long)]
        generic_ops: bool,
        /// The compute dtype: `f32`, `bf16` or `f16` (diffusers' `torch_dtype`). Half precision runs on this
        /// build's backend where it has the dtype (CUDA), on burn-flex in the ndarray build.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// The main job: times the uncached baseline and each strategy on one model and prints the table.
    Bench(BenchArgs),
    /// Denoises one clip uncached and with a strategy, and writes both as a PNG strip of frames.
    Sample(SampleArgs),
    /// Searches the engines' parameters for the fastest configuration that meets a quality target.
    Tune(TuneArgs),
    /// Calibrates a model for a step count: uncached generations of the calibration videos measure what every
    /// engine needs (first-block and attention changes, MagCache's ratios, TeaCache's fitted polynomial), a few
    /// cached ones resolve the presets to their quality targets; written as one calibration file (TOML) that
    /// `bench` and `sample` take with `--calibration` and `Calibration::from_file` loads.
    Calibrate(CalibrateArgs),
    /// Writes a preset model with random weights as a diffusers model directory (config.json + safetensors).
    ExportModel {
        /// `s`, `2b`, `5b` (CogVideoX), `latte` (the Latte bench model) or `latte-1`.
        #[arg(long, default_value = "s")]
        preset: String,
        /// Weight seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

/// What a generation runs on: the model, its prompt, seeds, steps and guidance.
#[derive(clap::Args, Clone)]
struct RunArgs {
    /// `shapes` (the trained CogVideoX in assets/shapes), `flux-shapes` (the trained FLUX.1 in
    /// assets/flux_shapes: images, true CFG), `wan-shapes` (the trained Wan 2.1 in assets/wan_shapes), `s` (benchmark model S, random weights), `2b`, `5b`, `latte` (the
    /// Latte bench model, random weights), `latte-1`, or a diffusers model or pipeline directory (CogVideoX,
    /// Latte, FLUX or Wan, told apart by `config.json`'s `_class_name`; FLUX at 1024 × 1024 and Wan at 81
    /// frames of 480 × 832 unless it is a trained shapes model).
    #[arg(long, default_value = "shapes")]
    model: String,
    /// The prompt, for models with attribute embeddings (the trained model; refused for others). Repeat it for
    /// several prompts in one batch (`--batch` videos spread evenly over them, a prompt's videos adjacent, as
    /// diffusers' pipelines lay them out).
    #[arg(long, default_value = benches::shapes::DEFAULT_PROMPT)]
    prompt: Vec<String>,
    /// Videos generated together in one denoising loop (one model call per step for all of them). On the
    /// trained model they are spread over the `--prompt`s (each prompt gets `batch / prompts` videos); models
    /// without a prompt table draw one prompt per video. Every video has its own noise; video 0's is the
    /// batch-1 run's.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Weight seed for preset models (default 0); refused for a model directory, which has its own weights.
    #[arg(long)]
    seed: Option<u64>,
    /// Seed of the initial latents (and of the prompt embeddings of models without a prompt table).
    #[arg(long, default_value_t = 0)]
    input_seed: u64,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale (FLUX: true CFG, or the distilled guidance input of a model with
    /// `guidance_embeds`).
    #[arg(long, default_value_t = 6.0)]
    guidance: f64,
    /// Latent size `FRAMES,HEIGHT,WIDTH` of a preset model's inputs instead of the preset's sample size (e.g.
    /// `--model 2b --latent-size 4,30,44`: CogVideoX-2b's layers on a short, small clip). It is written into the
    /// model's config, so `--export` gives diffusers the same.
    #[arg(long, value_parser = parse_latent_size)]
    latent_size: Option<[usize; 3]>,
}

fn parse_latent_size(s: &str) -> Result<[usize; 3], String> {
    let v: Vec<usize> = s.split(',').map(|p| p.trim().parse::<usize>().map_err(|e| format!("{p:?}: {e}"))).collect::<Result<_, _>>()?;
    match v[..] {
        [f, h, w] if f > 0 && h > 0 && w > 0 => Ok([f, h, w]),
        _ => Err(format!("expected FRAMES,HEIGHT,WIDTH (three positive numbers), got {s:?}")),
    }
}

impl RunArgs {
    /// The model, and the options of a run on it.
    fn load(&self, repeats: usize) -> Result<(VideoModel<Backend>, WeightSource, BenchOptions), String> {
        self.check()?;
        let device = backend::device();
        let (model, weights) = load_model(&self.model, self.weight_seed(), self.latent_size, &device)?;
        let (latents, text) = model.input_shapes();
        check_input_size(latents, text, self.batch)?;
        let prompt = prompt_embeds(&self.model, &model, &self.prompt)?;
        if prompt.is_none() && !self.default_prompt() {
            return Err(format!(
                "--prompt: {} has no prompt table (attribute_embeddings.safetensors), its prompt embeddings are drawn from --input-seed",
                self.model
            ));
        }
        let opts = BenchOptions {
            steps: self.steps,
            guidance: self.guidance,
            repeats,
            seed: self.input_seed,
            progress: true,
            prompt,
            batch: self.batch,
        };
        Ok((model, weights, opts))
    }

    /// Refuses values no generation can run with, before a model is loaded.
    fn check(&self) -> Result<(), String> {
        if self.batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        if self.steps == 0 {
            return Err("--steps must be at least 1".into());
        }
        if !self.guidance.is_finite() {
            return Err(format!("--guidance must be a finite number, got {}", self.guidance));
        }
        if let (Some(seed), Some(_)) = (self.seed, model_dir(&self.model)) {
            return Err(format!("--seed {seed}: {} is a model directory with its own weights; --seed draws a preset model's", self.model));
        }
        Ok(())
    }

    /// The seed of a preset model's drawn weights.
    fn weight_seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    /// Whether the prompts are the default one (which every model accepts, used or not).
    fn default_prompt(&self) -> bool {
        self.prompt.len() == 1 && self.prompt[0] == benches::shapes::DEFAULT_PROMPT
    }
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Timed generations per strategy (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Strategy config files (JSON or TOML); replaces the default list (and so takes no `--calibration` or
    /// `--uncalibrated`). Repeatable.
    #[arg(long = "strategy")]
    strategies: Vec<PathBuf>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw speedup against PSNR as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Add diffusers' times from `tools/reference/peer_timing.py`'s JSON.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Write what `tools/reference/peer_timing.py` needs (model, inputs, strategies) to this directory.
    #[arg(long)]
    export: Option<PathBuf>,
    #[command(flatten)]
    calibration: CalibrationArgs,
}

#[derive(clap::Args)]
struct CalibrateArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The calibration file to write (TOML).
    #[arg(long, default_value = "calibration.toml")]
    out: PathBuf,
    /// Also write a MagCache config with the measured ratios (`.toml` or JSON), for `bench --strategy` and
    /// `CacheConfig::from_file`.
    #[arg(long)]
    magcache_out: Option<PathBuf>,
    /// The threshold of `--magcache-out`'s config (only with it).
    #[arg(long, default_value_t = 0.06, requires = "magcache_out")]
    threshold: f64,
}

fn calibrate(a: CalibrateArgs) -> Result<ExitCode, String> {
    let device = backend::device();
    // Checked before the calibration it would otherwise end.
    if !a.threshold.is_finite() || a.threshold < 0.0 {
        return Err(format!("--threshold must be a finite number of at least 0, got {}", a.threshold));
    }
    let (mut model, _, opts) = a.run.load(1)?;
    let opts = calibration_options(&a.run, &model, &opts)?;
    eprintln!(
        "calibrating {} ({} steps, {} videos): one measuring pass, then the presets' verifying passes",
        a.run.model, opts.steps, opts.batch
    );
    let run = benches::calibrate::calibrate(&mut model, &opts, &device)?;
    std::fs::write(&a.out, run.calibration.to_toml()).map_err(|e| format!("{}: {e}", a.out.display()))?;
    for v in &run.verifications {
        let verdict = if v.psnr_db >= v.need_db { "kept" } else { "missed" };
        eprintln!(
            "verified {} ({} steps skipped, predicted error {:.3}): {:.1} dB, {verdict} {:.0} dB",
            v.label, v.skipped_steps, v.predicted_error, v.psnr_db, v.need_db
        );
    }
    print_calibration(&run.calibration);
    eprintln!("wrote {} in {}", a.out.display(), cost(&run));
    if let Some(path) = &a.magcache_out {
        let cfg = run.calibration.magcache(a.threshold, cache_engines::MagCacheConfig::default().max_skip_steps, opts.steps);
        cfg.validate().map_err(|e| e.to_string())?;
        let text = if path.extension().is_some_and(|e| e == "toml") { toml_string(&cfg)? } else { serde_json::to_string_pretty(&cfg).expect("json") };
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {} (MagCache ratios of {} over {} steps)", path.display(), a.run.model, opts.steps);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a calibration cost, in seconds and in uncached videos.
fn cost(run: &benches::calibrate::CalibrationRun) -> String {
    format!(
        "{:.1} s (the time of {:.0} uncached videos): measuring pass {:.1} s ({} videos, uncached), {} verifying passes ({} videos)",
        run.seconds, run.in_videos(), run.uncached_seconds, run.videos, run.verifications.len(), run.verifying_videos
    )
}

/// The presets of a calibration, one line each.
fn print_calibration(cal: &cache_engines::Calibration) {
    for p in cache_engines::Preset::ALL {
        if let Some(r) = cal.presets.get(p.name()) {
            let psnr = r.calibration_psnr_db.map_or("∞ (nothing cached)".to_string(), |v| format!("{v:.1} dB"));
            println!(
                "{:>8} (≥ {} dB): {} — {} of {} steps skipped, {} on the calibration input",
                p.name(), r.target_psnr_db, r.config.label(), r.skipped_steps, cal.num_inference_steps, psnr
            );
        }
    }
}

/// The options of a calibration run: on the trained model its [`benches::calibrate::CALIBRATION_PROMPTS`]
/// (or the `--prompt`s given, when not the default one), one video each; on other models
/// [`benches::calibrate::CALIBRATION_VIDEOS`] videos with drawn prompts (or `--batch` when larger than 1).
///
/// Refuses a `--batch` other than 1 on a model with a prompt table: its calibration runs one video per prompt.
fn calibration_options(run: &RunArgs, model: &VideoModel<Backend>, opts: &BenchOptions) -> Result<BenchOptions, String> {
    let prompts: Vec<String> = if run.default_prompt() {
        benches::calibrate::CALIBRATION_PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        run.prompt.clone()
    };
    Ok(match prompt_embeds(&run.model, model, &prompts)? {
        Some(_) if run.batch != 1 => {
            return Err(format!(
                "--batch {}: the calibration of {} runs one video per prompt ({} videos), so --batch does not apply; --prompt chooses the prompts",
                run.batch,
                run.model,
                prompts.len()
            ))
        }
        Some(table) => BenchOptions { prompt: Some(table), batch: prompts.len(), progress: false, ..opts.clone() },
        None => {
            let batch = if run.batch > 1 { run.batch } else { benches::calibrate::CALIBRATION_VIDEOS };
            BenchOptions { prompt: None, batch, progress: false, ..opts.clone() }
        }
    })
}

/// Where `bench` and `sample` find (or make) the model's calibration ([`calibration_options`]).
#[derive(clap::Args)]
struct CalibrationArgs {
    /// The model's calibration file: read when it exists (refused when made for another model or step count),
    /// otherwise made there (a measuring pass over the calibration videos plus a few verifying ones). Default:
    /// the user's cache directory (`$XDG_CACHE_HOME/ditcache` or `~/.cache/ditcache`), a file per model, weights
    /// and schedule. Refused with strategy files, which are run as written.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Use the fixed, uncalibrated presets (no quality level; a warning says so). Refused with a strategy file,
    /// which is run as written.
    #[arg(long, conflicts_with = "calibration")]
    uncalibrated: bool,
}

impl CalibrationArgs {
    /// Refuses these flags for a run that takes no calibration (`what` says why, e.g. `--strategy files are
    /// run as written`).
    fn refuse(&self, what: &str) -> Result<(), String> {
        if let Some(p) = &self.calibration {
            return Err(format!("--calibration {}: {what}, so a calibration would go unused", p.display()));
        }
        if self.uncalibrated {
            return Err(format!("--uncalibrated: {what}; the flag applies to presets only"));
        }
        Ok(())
    }

    /// The calibration for this run, made on first use.
    fn load(&self, run: &RunArgs, model: &mut VideoModel<Backend>, opts: &BenchOptions) -> Result<cache_engines::Calibration, String> {
        let key = format!(
            "{}-w{}-{}steps-g{}-{}",
            std::fs::canonicalize(&run.model).map(|p| p.display().to_string()).unwrap_or_else(|_| run.model.clone()),
            run.weight_seed(),
            opts.steps,
            opts.guidance,
            run.latent_size.map(|[f, h, w]| format!("{f}x{h}x{w}")).unwrap_or_else(|| "native".into()),
        );
        let path = self.calibration.clone().unwrap_or_else(|| benches::calibrate::default_calibration_path(&key));
        // Calibrated on the default calibration prompts whatever this run's prompts are (their embeddings are
        // only built when there is no calibration yet).
        let cal_opts = if path.exists() {
            opts.clone()
        } else {
            let base = RunArgs { prompt: vec![benches::shapes::DEFAULT_PROMPT.to_string()], batch: 1, ..run.clone() };
            calibration_options(&base, model, opts)?
        };
        let (cal, made) = benches::calibrate::load_or_calibrate(&path, model, &cal_opts, &backend::device())?;
        match made {
            Some(r) => eprintln!("calibrated {} in {}, wrote {}", run.model, cost(&r), path.display()),
            None => eprintln!("calibration: {}", path.display()),
        }
        Ok(cal)
    }
}

#[derive(clap::Args)]
struct TuneArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Quality target: minimum PSNR (dB) of the final latents vs uncached.
    #[arg(long, conflicts_with = "max_rel_l2")]
    min_psnr: Option<f64>,
    /// Quality target: maximum rel_l2 of the final latents vs uncached.
    #[arg(long)]
    max_rel_l2: Option<f64>,
    /// Extra timed runs of the three fastest passing configurations.
    #[arg(long, default_value_t = 2)]
    confirm: usize,
    /// Write the winning configuration here (`.toml` or JSON).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn tune(a: TuneArgs) -> Result<ExitCode, String> {
    use benches::tune::Target;
    let target = match (a.min_psnr, a.max_rel_l2) {
        // No PSNR meets NaN, no rel_l2 a NaN or negative bound: the search would find nothing.
        (Some(p), None) if p.is_nan() => return Err("--min-psnr must be a number of dB, got NaN".into()),
        (None, Some(e)) if e.is_nan() || e < 0.0 => return Err(format!("--max-rel-l2 must be at least 0, got {e}")),
        (Some(p), None) => Target::MinPsnr(p),
        (None, Some(e)) => Target::MaxRelL2(e),
        _ => return Err("give one quality target: --min-psnr DB or --max-rel-l2 X".into()),
    };
    let device = backend::device();
    let (mut model, _, opts) = a.run.load(1)?;
    let (candidates, base) = benches::tune::tune(&mut model, &opts, target, a.confirm, &device)?;
    println!("baseline {base:.2} s; target {target:?}\n");
    println!("| configuration | time (s) | speedup | ideal | PSNR (dB) | rel_l2 | meets target |\n|---|---:|---:|---:|---:|---:|:-:|");
    for c in &candidates {
        println!(
            "| {} | {:.2} | {:.2}× | {:.2}× | {:.1} | {:.2e} | {} |",
            c.name, c.time_s, c.speedup, c.ideal_speedup, c.psnr, c.rel_l2, if c.meets { "yes" } else { "no" }
        );
    }
    let Some(best) = candidates.iter().find(|c| c.meets && c.ideal_speedup > 1.0 && c.speedup > 1.0) else {
        println!("\nno configuration meets the target faster than the baseline");
        return Ok(ExitCode::FAILURE);
    };
    let text = match &a.out {
        Some(p) if p.extension().is_some_and(|e| e == "toml") => toml_string(&best.config)?,
        _ => serde_json::to_string_pretty(&best.config).expect("json"),
    };
    println!("\nfastest meeting the target: {} ({:.2}× measured)\n{text}", best.name, best.speedup);
    if let Some(p) = &a.out {
        std::fs::write(p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn toml_string(cfg: &CacheConfig) -> Result<String, String> {
    cache_core::to_toml(cfg)
}

/// Refuses a batch whose inputs (one video's latents `[1, C, F, H, W]` or `[1, F, C, H, W]` and `[1, S, D]`
/// prompt and negative embeddings, `f32`; [`BenchModel::input_shapes`]) no allocation can hold, before drawing
/// them would panic on the overflowing size. Sizes that fit but exceed the memory are left to the allocator.
fn check_input_size(latents: [usize; 5], text: [usize; 3], batch: usize) -> Result<(), String> {
    let product = |dims: &[usize]| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let bytes = product(&latents)
        .zip(product(&text).and_then(|t| t.checked_mul(2)))
        .and_then(|(l, t)| l.checked_add(t))
        .and_then(|per_video| per_video.checked_mul(batch)?.checked_mul(std::mem::size_of::<f32>()));
    match bytes {
        Some(b) if b <= isize::MAX as usize => Ok(()),
        _ => {
            let [_, a, b, c, d] = latents;
            Err(format!(
                "--batch {batch} of {a}x{b}x{c}x{d} latents: the inputs do not fit in any allocation (lower the latent size or --batch)"
            ))
        }
    }
}

/// A model directory: a diffusers model directory, or a pipeline directory with `transformer/` (and, for the
/// trained model, `attribute_embeddings.safetensors`). `shapes` is the trained model of this repository.
fn model_dir(name: &str) -> Option<PathBuf> {
    let path = match name {
        "shapes" => benches::shapes::shapes_dir(),
        "flux-shapes" => benches::shapes::flux_shapes_dir(),
        "wan-shapes" => benches::shapes::wan_shapes_dir(),
        _ => PathBuf::from(name),
    };
    let is_model_dir = path.join("transformer").join("config.json").exists() || path.join("config.json").exists();
    is_model_dir.then_some(path)
}

/// `[k, S, D]` (prompt, negative) embeddings of the `prompts`, for a model with a prompt table (the trained
/// model); `None` for others.
fn prompt_embeds(name: &str, model: &VideoModel<Backend>, prompts: &[String]) -> Result<Option<(HostTensor, HostTensor)>, String> {
    let Some(dir) = model_dir(name) else { return Ok(None) };
    let tokens = match model {
        VideoModel::CogVideoX { model, .. } => model.config.max_text_seq_length,
        VideoModel::Flux(_) => benches::video_model::FLUX_BENCH_TEXT_TOKENS,
        VideoModel::Wan(_) => benches::video_model::WAN_BENCH_TEXT_TOKENS,
        VideoModel::Latte(_) => return Ok(None),
    };
    if !dir.join("attribute_embeddings.safetensors").exists() {
        return Ok(None);
    }
    let p = benches::shapes::Prompts::load(&dir, tokens).map_err(|e| format!("--model {name}: {e}"))?;
    let embedded = prompts.iter().map(|q| p.embed(q)).collect::<Result<Vec<_>, _>>()?;
    let negative = vec![p.negative(); prompts.len()];
    let stack = |parts| benches::video_model::rows(parts).ok_or("--prompt: at least one prompt");
    Ok(Some((stack(embedded)?, stack(negative)?)))
}

fn load_model(
    name: &str,
    seed: u64,
    latent_size: Option<[usize; 3]>,
    device: &burn::tensor::Device<Backend>,
) -> Result<(VideoModel<Backend>, WeightSource), String> {
    if let Some(dir) = model_dir(name) {
        if latent_size.is_some() {
            return Err("--latent-size applies to preset models; a model directory has its own config".into());
        }
        let mut model = VideoModel::from_dir(&dir, device).map_err(|e| e.to_string())?;
        // A trained shapes model is generated at the size it was trained at.
        if dir.join("attribute_embeddings.safetensors").exists() {
            match &mut model {
                VideoModel::Flux(p) => p.default_sample_size = benches::shapes::FLUX_SHAPES_SAMPLE_SIZE,
                VideoModel::Wan(p) => p.sample_size = benches::shapes::WAN_SHAPES_SAMPLE_SIZE,
                _ => {}
            }
        }
        return Ok((model, WeightSource::from_tensors(Default::default())));
    }
    match name {
        "shapes" => return Err(format!("the trained model is missing at {}", benches::shapes::shapes_dir().display())),
        "flux-shapes" => {
            return Err(format!("the trained FLUX model is missing at {}", benches::shapes::flux_shapes_dir().display()))
        }
        "wan-shapes" => {
            return Err(format!("the trained Wan model is missing at {}", benches::shapes::wan_shapes_dir().display()))
        }
        _ => {}
    }
    let mut weights = WeightSource::random(seed);
    // The model's load validates the config; a resized one's errors name the option.
    let sized = |e: models::ModelError| if latent_size.is_some() { format!("--latent-size: {e}") } else { e.to_string() };
    let model = match preset(name)? {
        Preset::CogVideoX(cfg) => {
            let cfg = match latent_size {
                Some([f, h, w]) => {
                    let sample_frames = (f - 1)
                        .checked_mul(cfg.temporal_compression_ratio)
                        .and_then(|n| n.checked_add(1))
                        .ok_or_else(|| format!("--latent-size: {f} latent frames are more video frames than a number holds"))?;
                    CogVideoXConfig { sample_frames, sample_height: h, sample_width: w, ..cfg }
                }
                None => cfg,
            };
            VideoModel::cogvideox(&cfg, &mut weights, device).map_err(sized)?
        }
        Preset::Latte(cfg) => {
            let cfg = match latent_size {
                Some([f, h, w]) if h == w => LatteConfig { video_length: f, sample_size: h, ..cfg },
                Some(_) => return Err("--latent-size: Latte's sample size is square (HEIGHT = WIDTH)".into()),
                None => cfg,
            };
            VideoModel::latte(&cfg, &mut weights, device).map_err(sized)?
        }
    };
    Ok((model, weights))
}

/// Writes a model with drawn weights as a diffusers model directory.
fn write_model_dir(model: &VideoModel<Backend>, weights: &WeightSource, out: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut json = match model {
        VideoModel::CogVideoX { model, .. } => serde_json::to_value(&model.config),
        VideoModel::Latte(p) => serde_json::to_value(&p.transformer.config),
        VideoModel::Flux(p) => serde_json::to_value(&p.transformer.config),
        VideoModel::Wan(p) => serde_json::to_value(&p.transformer.config),
    }
    .expect("serialisable");
    json["_class_name"] = model.class_name().into();
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&json).expect("json")).map_err(|e| e.to_string())?;
    let drawn = weights.drawn().ok_or("only preset models with random weights can be exported")?;
    save_safetensors(&out.join("diffusion_pytorch_model.safetensors"), drawn).map_err(|e| e.to_string())
}

fn bench(a: BenchArgs) -> Result<ExitCode, String> {
    let device = backend::device();
    if a.repeats == 0 {
        return Err("--repeats must be at least 1".into());
    }
    if !a.strategies.is_empty() {
        // Only the default table's MagCache, TeaCache and preset rows come from a calibration.
        a.calibration.refuse("--strategy files replace the default table and are run as written")?;
    }
    let (mut model, weights, opts) = a.run.load(a.repeats)?;
    // Refuse inputs the prompts cannot make before anything is calibrated.
    model.bench_inputs(&opts, &device)?;
    let strategies = if a.strategies.is_empty() {
        if a.calibration.uncalibrated {
            return Err("--uncalibrated: the default table's MagCache, TeaCache and preset rows need a calibration; give --strategy files".into());
        }
        let cal = a.calibration.load(&a.run, &mut model, &opts)?;
        let (rows, left_out) = benches::bench::hostable_default_strategies(&model.host_info(), &cal);
        for (name, why) in left_out {
            eprintln!("left out {name}: {why}");
        }
        rows
    } else {
        a.strategies
            .iter()
            .map(|p| {
                let cfg = CacheConfig::from_file(p).map_err(|e| e.to_string())?;
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| cfg.label());
                Ok((name, cfg))
            })
            .collect::<Result<Vec<_>, String>>()?
    };
    if let Some(dir) = &a.export {
        let (flux, family) = match &model {
            VideoModel::CogVideoX { .. } => (None, "cogvideox"),
            VideoModel::Flux(p) => (Some(p.transformer.config.guidance_embeds), "flux"),
            VideoModel::Wan(_) => (None, "wan"),
            VideoModel::Latte(_) => {
                return Err("--export needs a CogVideoX, FLUX or Wan model (tools/reference/peer_timing.py runs CogVideoXPipeline, FluxPipeline and WanPipeline)".into())
            }
        };
        match model_dir(&a.run.model) {
            Some(src) => {
                let t = if src.join("transformer").exists() { src.join("transformer") } else { src.clone() };
                copy_dir(&t, &dir.join("transformer"))?;
                if src.join("scheduler").exists() {
                    copy_dir(&src.join("scheduler"), &dir.join("scheduler"))?;
                }
            }
            None => write_model_dir(&model, &weights, &dir.join("transformer"))?,
        }
        let input = model.bench_inputs(&opts, &device)?;
        // One embedding row per video: the pipelines make one video (image) per prompt row of passed embeddings.
        let v = input.num_videos_per_prompt;
        let per_video = |t| HostTensor::from_tensor(models::per_video(t, v));
        let pooled_rows = |p: burn::tensor::Tensor<Backend, 2>| {
            let [b, d] = p.dims();
            HostTensor::from_tensor(p.repeat_dim(1, v).reshape([b * v, d]))
        };
        let mut t = std::collections::BTreeMap::new();
        let [n, _, c, h, w] = input.latents.dims();
        let latents = match flux {
            // FluxPipeline takes packed latents.
            Some(_) => HostTensor::from_tensor(models::pack_latents(input.latents.clone().reshape([n, c, h, w]))),
            None => HostTensor::from_tensor(input.latents.clone()),
        };
        t.insert("latents".to_string(), latents);
        t.insert("prompt_embeds".to_string(), per_video(input.prompt_embeds.clone()));
        t.insert("negative_prompt_embeds".to_string(), per_video(input.negative_prompt_embeds.clone().expect("cfg")));
        if let (Some(p), Some(np)) = (input.pooled_prompt_embeds.clone(), input.negative_pooled_prompt_embeds.clone()) {
            t.insert("pooled_prompt_embeds".to_string(), pooled_rows(p));
            t.insert("negative_pooled_prompt_embeds".to_string(), pooled_rows(np));
        }
        save_safetensors(&dir.join("inputs.safetensors"), &t).map_err(|e| e.to_string())?;
        let mut spec = serde_json::json!({
            "family": family,
            "steps": opts.steps, "guidance_scale": opts.guidance,
            "strategies": strategies.iter().map(|(n, c)| serde_json::json!({"strategy": n, "cache": c})).collect::<Vec<_>>(),
        });
        if let Some(distilled) = flux {
            // What FluxPipeline::denoise_unpacked runs: the distilled guidance input, or true CFG.
            spec["true_cfg_scale"] = (if distilled { 1.0 } else { opts.guidance }).into();
            spec["height"] = (h * models::flux::pipeline::VAE_SCALE_FACTOR).into();
            spec["width"] = (w * models::flux::pipeline::VAE_SCALE_FACTOR).into();
        }
        std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&spec).expect("json")).map_err(|e| e.to_string())?;
        eprintln!("wrote {}", dir.display());
    }
    let mut report = benches::bench::run(&mut model, &a.run.model, &strategies, &opts, &device)?;
    if let Some(p) = &a.compare {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let peer: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        add_comparison(&mut report, &peer)?;
    }
    println!("{}", table(&report));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report).expect("json")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        std::fs::write(p, svg_plot(&report)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    for e in std::fs::read_dir(src).map_err(|e| format!("{}: {e}", src.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        std::fs::copy(e.path(), dst.join(e.file_name())).map_err(|err| format!("{}: {err}", e.path().display()))?;
    }
    Ok(())
}

#[derive(clap::Args)]
struct SampleArgs {
    #[command(flatten)]
    run: RunArgs,
    /// `quality`, `balanced`, `speed` (resolved from the model's calibration, made on first use), or a config
    /// file.
    #[arg(long, default_value = "balanced")]
    strategy: String,
    #[command(flatten)]
    calibration: CalibrationArgs,
    /// Pixels per latent pixel, at least 1.
    #[arg(long, default_value_t = 8)]
    scale: usize,
    /// The PNG to write: per video, the uncached clip's frames on one row and the strategy's on the next.
    #[arg(long, default_value = "sample.png")]
    out: PathBuf,
}

fn sample(a: SampleArgs) -> Result<ExitCode, String> {
    let device = backend::device();
    if a.scale == 0 {
        return Err("--scale must be at least 1".into());
    }
    let preset = a.strategy.parse::<cache_engines::Preset>();
    if preset.is_err() {
        a.calibration.refuse(&format!("--strategy {} is a config file (not quality, balanced or speed), run as written", a.strategy))?;
    }
    let (mut model, _, opts) = a.run.load(1)?;
    let config = match preset {
        Ok(p) if a.calibration.uncalibrated => {
            let preset = CacheConfig::preset(p, &model.host_info());
            eprintln!("warning: preset {} is uncalibrated: a fixed parameter set, no quality level on this model", p.name());
            preset.config().clone()
        }
        Ok(p) => {
            let cal = a.calibration.load(&a.run, &mut model, &opts)?;
            let preset = cal.preset(p, model.class_name(), &model.host_info(), opts.steps, opts.guidance).map_err(|e| e.to_string())?;
            preset.config().clone()
        }
        Err(_) => CacheConfig::from_file(std::path::Path::new(&a.strategy))
            .map_err(|e| format!("--strategy {}: not a preset (quality, balanced, speed) nor a config file: {e}", a.strategy))?,
    };
    config.check_steps(opts.steps).map_err(|e| e.to_string())?;
    let input = model.bench_inputs(&opts, &device)?;
    let (plain, _, _, t0) = benches::bench::generate(&mut model, &input, None)?;
    let (cached, stats, _, t1) = benches::bench::generate(&mut model, &input, Some(&config))?;
    let [videos, mut f, mut c, h, w]: [usize; 5] = input.latents.dims();
    let per = plain.len() / videos;
    let (mut plain, mut cached): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
        (plain.chunks(per).map(<[f32]>::to_vec).collect(), cached.chunks(per).map(<[f32]>::to_vec).collect());
    if let VideoModel::Latte(_) = model {
        // Latte latents are [C, F, H, W]; the strip reads [F, C, H, W].
        for v in plain.iter_mut().chain(cached.iter_mut()) {
            *v = swap_leading(v, c, f, h * w);
        }
        (f, c) = (c, f);
    }
    // Per video: the uncached clip's row, then the strategy's.
    let strip_rows: Vec<&[f32]> = plain.iter().zip(&cached).flat_map(|(p, q)| [p.as_slice(), q.as_slice()]).collect();
    let (width, height, rgb) = benches::png::strip(&strip_rows, f, c, h, w, a.scale);
    std::fs::write(&a.out, benches::png::encode_rgb(width, height, &rgb)).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let (plain, cached) = (plain.concat(), cached.concat());
    println!(
        "wrote {} ({videos} video(s); uncached {:.2} s, {} {:.2} s; rel_l2 {:.2e}, PSNR {:.1} dB; steps with blocks skipped {}, uncond approximated {}, attention reused {})",
        a.out.display(), t0, a.strategy, t1, benches::parity::rel_l2(&cached, &plain), benches::bench::psnr(&cached, &plain),
        stats.blocks().reused, stats.uncond().reused,
        stats.entries().flat_map(|s| s.attention.values()).filter(|d| **d == cache_core::Decision::Skip).count(),
    );
    Ok(ExitCode::SUCCESS)
}

/// `[a, b, n]` → `[b, a, n]`, row-major.
fn swap_leading(data: &[f32], a: usize, b: usize, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for j in 0..b {
        for i in 0..a {
            out.extend_from_slice(&data[(i * b + j) * n..(i * b + j + 1) * n]);
        }
    }
    out
}

/// A preset model configuration.
enum Preset {
    CogVideoX(CogVideoXConfig),
    Latte(LatteConfig),
}

fn preset(name: &str) -> Result<Preset, String> {
    match name {
        "s" | "S" => Ok(Preset::CogVideoX(CogVideoXConfig::bench_s())),
        "2b" => Ok(Preset::CogVideoX(CogVideoXConfig::cogvideox_2b())),
        "5b" => Ok(Preset::CogVideoX(CogVideoXConfig::cogvideox_5b())),
        "latte" => Ok(Preset::Latte(LatteConfig::bench_latte())),
        "latte-1" => Ok(Preset::Latte(LatteConfig::latte_1())),
        other => Err(format!("unknown preset {other:?} (s, 2b, 5b, latte, latte-1)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parity { cases, max_rel_l2 } => parity(&cases, max_rel_l2),
        Command::Forward { preset: p, batch, repeats, seed, profile, generic_ops, dtype } => {
            models::ops::set_cpu_fast_path(!generic_ops);
            match parse_dtype(&dtype) {
                Ok(FloatDType::F32) => forward::<Backend>(&p, batch, repeats, seed, profile, FloatDType::F32, backend::NAME),
                Ok(half) => forward::<backend::HalfBackend>(&p, batch, repeats, seed, profile, half, backend::HALF_NAME),
                Err(e) => Err(e),
            }
        }
        Command::ExportModel { preset: p, seed, out } => export(&p, seed, &out),
        Command::Bench(a) => bench(a),
        Command::Tune(a) => tune(a),
        Command::Calibrate(a) => calibrate(a),
        Command::Sample(a) => sample(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parity(args: &[PathBuf], max_rel_l2: Option<f64>) -> Result<ExitCode, String> {
    if let Some(m) = max_rel_l2.filter(|m| !(*m >= 0.0 && m.is_finite())) {
        return Err(format!("--max-rel-l2 must be a finite number of at least 0, got {m}"));
    }
    let (mut passed, mut failed, mut refused) = (0, 0, 0);
    for dir in expand_case_dirs(args) {
        let report = backend::replay(&dir, max_rel_l2);
        if report.pass {
            passed += 1;
        } else if report.refused {
            refused += 1;
        } else {
            failed += 1;
        }
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    }
    // On stderr: stdout stays one JSON object per line.
    let floor = backend::TOLERANCE_FLOOR;
    let mut note = if floor > 0.0 { format!(" (tolerances below {floor:e}, this backend's precision floor, raised to it)") } else { String::new() };
    if let Some(m) = max_rel_l2 {
        note.push_str(&format!(" (every float32 case held to rel_l2 ≤ {m:e})"));
    }
    if refused > 0 {
        // A dtype this build cannot compute: reported apart, never run at another precision (each line's
        // `error` names the dtype and what lacks it).
        note.push_str(&format!("; {refused} refused (a dtype this backend or model family does not compute in)"));
    }
    eprintln!("parity on {}: {passed} passed, {failed} failed{note}", backend::NAME);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `--dtype`: torch's short names and long names.
fn parse_dtype(name: &str) -> Result<FloatDType, String> {
    match name {
        "f32" | "float32" => Ok(FloatDType::F32),
        "bf16" | "bfloat16" => Ok(FloatDType::BF16),
        "f16" | "float16" => Ok(FloatDType::F16),
        other => Err(format!("--dtype {other:?}: expected f32, bf16 or f16")),
    }
}

fn forward<B: ModelBackend>(
    p: &str,
    batch: usize,
    repeats: usize,
    seed: u64,
    profile: bool,
    dtype: FloatDType,
    backend_name: &str,
) -> Result<ExitCode, String> {
    if repeats == 0 {
        return Err("--repeats must be at least 1".into());
    }
    if batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let Preset::CogVideoX(cfg) = preset(p)? else { return Err("forward times the CogVideoX presets (s, 2b, 5b)".into()) };
    let frames = cfg.latent_frames();
    let (h, w) = (cfg.sample_height, cfg.sample_width);
    check_input_size([1, frames, cfg.in_channels, h, w], [1, cfg.max_text_seq_length, cfg.text_embed_dim], batch)?;
    let device = backend::device_of::<B>();
    let model = CogVideoXTransformer3DModel::<B>::load(&cfg, &mut WeightSource::random(seed).with_dtype(dtype), &device)
        .map_err(|e| e.to_string())?;
    let positions = model.positions(frames, h, w, &device).map_err(|e| e.to_string())?;
    let hidden = Tensor::<B, 5>::random([batch, frames, cfg.in_channels, h, w], Distribution::Normal(0.0, 1.0), &device)
        .cast(dtype);
    let text = Tensor::<B, 3>::random(
        [batch, cfg.max_text_seq_length, cfg.text_embed_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    )
    .cast(dtype);
    let branch = if batch == 2 { Branch::Cfg(CfgOrder::UncondFirst) } else { Branch::Unguided };
    let ctx = CallContext::new(StepContext { step: 0, num_steps: 1, timestep: 500.0, sigma: None }, branch, batch);
    let mut times = Vec::new();
    for i in 0..=repeats {
        let input =
            ForwardInput { hidden_states: hidden.clone(), encoder_hidden_states: text.clone(), timestep: vec![500.0; batch] };
        if i == 1 {
            models::ops::profile::enable(profile);
        }
        let start = Instant::now();
        let out = model.forward(input, &positions, &ctx, &mut Identity).map_err(|e| e.to_string())?;
        let _ = out.into_data(); // wait for the device
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    models::ops::profile::enable(false);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let ops = profile.then(|| ops_profile(times.len(), mean));
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "backend": backend_name, "dtype": models::weights::dtype_name(dtype), "preset": p, "batch": batch,
            "frames": frames, "height": h, "width": w, "repeats": repeats, "median_s": median, "min_s": times[0],
            // Only ndarray has kernels of its own; every other backend runs the generic ops either way.
            "ops_path": if backend_name == "ndarray" && models::ops::cpu_fast_path() { "cpu-kernels" } else { "generic" },
            "ops": ops,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Per-forward time of each recorded operation over `forwards` forwards of `mean_s` seconds on average, and the
/// rest of the forward (`other`: reshapes, concatenations, residual adds, embeddings); a table on stderr.
fn ops_profile(forwards: usize, mean_s: f64) -> serde_json::Value {
    let per = |secs: f64| secs * 1e3 / forwards as f64;
    // (operation, ms per forward, calls per forward; none for the unrecorded rest)
    let mut rows: Vec<(String, f64, Option<f64>)> = models::ops::profile::totals()
        .iter()
        .map(|(op, d, n)| (op.to_string(), per(d.as_secs_f64()), Some(*n as f64 / forwards as f64)))
        .collect();
    let recorded: f64 = rows.iter().map(|r| r.1).sum();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows.push(("other".into(), (mean_s * 1e3 - recorded).max(0.0), None));
    eprintln!("{:<22} {:>10} {:>7} {:>6}", "op", "ms/forward", "calls", "share");
    for (op, ms, calls) in &rows {
        let calls = calls.map_or("-".to_string(), |c| format!("{c:.0}"));
        eprintln!("{op:<22} {ms:>10.2} {calls:>7} {:>5.1}%", 100.0 * ms / (mean_s * 1e3));
    }
    serde_json::Value::Object(
        rows.into_iter()
            .map(|(op, ms, calls)| (op, serde_json::json!({ "ms_per_forward": ms, "calls_per_forward": calls })))
            .collect(),
    )
}

fn export(p: &str, seed: u64, out: &std::path::Path) -> Result<ExitCode, String> {
    let device = backend::device();
    let (model, weights) = load_model(p, seed, None, &device)?;
    write_model_dir(&model, &weights, out)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
