//! `ditcache`: parity with diffusers, timing, and (later) the speed/quality bench of the cache engines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use benches::backend::{self, Backend};
use benches::parity::{expand_case_dirs, run_case};
use burn::tensor::{Distribution, Tensor};
use cache_core::{Branch, CallContext, CfgOrder, Identity, StepContext};
use clap::{Parser, Subcommand};
use models::weights::save_safetensors;
use models::{CogVideoXConfig, CogVideoXTransformer3DModel, ForwardInput, WeightSource};

#[derive(Parser)]
#[command(name = "ditcache", about = "Training-free caching of diffusion transformers on burn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replays parity cases written from diffusers; one JSON line per case; exit 1 if any fails.
    Parity {
        /// Case directories, or directories of cases.
        #[arg(required = true)]
        cases: Vec<PathBuf>,
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
    },
    /// Writes a preset model with random weights as a diffusers model directory (config.json + safetensors).
    ExportModel {
        /// `s`, `2b` or `5b`.
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

fn preset(name: &str) -> Result<CogVideoXConfig, String> {
    match name {
        "s" | "S" => Ok(CogVideoXConfig::bench_s()),
        "2b" => Ok(CogVideoXConfig::cogvideox_2b()),
        "5b" => Ok(CogVideoXConfig::cogvideox_5b()),
        other => Err(format!("unknown preset {other:?} (s, 2b, 5b)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parity { cases } => parity(&cases),
        Command::Forward { preset: p, batch, repeats, seed } => forward(&p, batch, repeats, seed),
        Command::ExportModel { preset: p, seed, out } => export(&p, seed, &out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parity(args: &[PathBuf]) -> Result<ExitCode, String> {
    let device = backend::device();
    let mut failed = 0;
    for dir in expand_case_dirs(args) {
        let report = run_case::<Backend>(&dir, &device);
        if !report.pass {
            failed += 1;
        }
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn forward(p: &str, batch: usize, repeats: usize, seed: u64) -> Result<ExitCode, String> {
    let cfg = preset(p)?;
    let device = backend::device();
    let model = CogVideoXTransformer3DModel::<Backend>::load(&cfg, &mut WeightSource::random(seed), &device)
        .map_err(|e| e.to_string())?;
    let frames = (cfg.sample_frames - 1) / cfg.temporal_compression_ratio + 1;
    let (h, w) = (cfg.sample_height, cfg.sample_width);
    let positions = model.positions(frames, h, w, &device).map_err(|e| e.to_string())?;
    let hidden = Tensor::<Backend, 5>::random([batch, frames, cfg.in_channels, h, w], Distribution::Normal(0.0, 1.0), &device);
    let text = Tensor::<Backend, 3>::random(
        [batch, cfg.max_text_seq_length, cfg.text_embed_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let branch = if batch == 2 { Branch::Cfg(CfgOrder::UncondFirst) } else { Branch::Unguided };
    let ctx = CallContext::new(StepContext { step: 0, num_steps: 1, timestep: 500.0 }, branch, batch);
    let mut times = Vec::new();
    for i in 0..=repeats {
        let input =
            ForwardInput { hidden_states: hidden.clone(), encoder_hidden_states: text.clone(), timestep: vec![500.0; batch] };
        let start = Instant::now();
        let out = model.forward(input, &positions, &ctx, &mut Identity).map_err(|e| e.to_string())?;
        let _ = out.into_data(); // wait for the device
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "backend": backend::NAME, "preset": p, "batch": batch, "frames": frames, "height": h, "width": w,
            "repeats": repeats, "median_s": median, "min_s": times[0],
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn export(p: &str, seed: u64, out: &std::path::Path) -> Result<ExitCode, String> {
    let cfg = preset(p)?;
    let device = backend::device();
    let mut weights = WeightSource::random(seed);
    CogVideoXTransformer3DModel::<Backend>::load(&cfg, &mut weights, &device).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut json = serde_json::to_value(&cfg).expect("serialisable");
    json["_class_name"] = "CogVideoXTransformer3DModel".into();
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&json).expect("json"))
        .map_err(|e| e.to_string())?;
    let drawn = weights.drawn().expect("random source");
    save_safetensors(&out.join("diffusion_pytorch_model.safetensors"), drawn).map_err(|e| e.to_string())?;
    println!("wrote {} ({} tensors)", out.display(), drawn.len());
    Ok(ExitCode::SUCCESS)
}
