//! Criterion benches: the denoise loop per strategy, on a tiny model (quick), the S model and the Latte
//! bench model.
//! Backend by the crate's features (`ndarray` default, `wgpu`, `cuda`).
//!
//!     cargo bench -p benches                  # everything (a few minutes on 2 cores)
//!     cargo bench -p benches -- tiny          # the tiny model only

use std::time::Duration;

use benches::backend::{device, Backend};
use benches::bench::{default_strategies, BenchOptions};
use benches::calibrate::calibrate;
use benches::video_model::{BenchModel, VideoModel};
use cache_core::{CacheStrategy, Identity};
use cache_engines::{build, CacheConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use models::{CogVideoXConfig, DenoiseOptions, LatteConfig, WeightSource};

fn tiny() -> CogVideoXConfig {
    CogVideoXConfig {
        num_attention_heads: 2,
        attention_head_dim: 16,
        in_channels: 4,
        out_channels: Some(4),
        time_embed_dim: 32,
        text_embed_dim: 24,
        num_layers: 4,
        sample_width: 8,
        sample_height: 8,
        sample_frames: 9,
        max_text_seq_length: 8,
        ..CogVideoXConfig::default()
    }
}

fn bench_model(c: &mut Criterion, name: &str, mut model: VideoModel<Backend>, steps: usize, samples: usize) {
    let dev = device();
    let opts = BenchOptions { steps, guidance: 6.0, repeats: 1, seed: 0, progress: false, prompt: None, batch: 1 };
    let input = model.bench_inputs(&opts, &dev).unwrap();
    let mut group = c.benchmark_group(format!("denoise/{name}-{steps}steps"));
    group.sample_size(samples).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let mut rows = vec![("baseline".to_string(), CacheConfig::None)];
    let calibration = calibrate(&mut model, &opts, &dev).unwrap().calibration;
    rows.extend(default_strategies(&model.host_info(), &calibration));
    for (label, cfg) in rows {
        // The id names the strategy and its parameters, so criterion compares like with like across runs.
        let id = format!("{label} {}", serde_json::to_string(&cfg).unwrap());
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let mut s: Box<dyn CacheStrategy<Backend>> = match &cfg {
                    CacheConfig::None => Box::new(Identity),
                    other => build::<Backend>(other, &model.host_info()).unwrap(),
                };
                model.denoise(input.clone(), &mut *s, DenoiseOptions::default()).unwrap()
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let dev = device();
    let cog = |cfg: CogVideoXConfig| VideoModel::cogvideox(&cfg, &mut WeightSource::random(0), &dev).unwrap();
    bench_model(c, "tiny", cog(tiny()), 12, 20);
    bench_model(c, "S", cog(CogVideoXConfig::bench_s()), 4, 10);
    let latte = VideoModel::latte(&LatteConfig::bench_latte(), &mut WeightSource::random(0), &dev).unwrap();
    bench_model(c, "latte", latte, 4, 10);
}

criterion_group!(denoise_benches, benches);
criterion_main!(denoise_benches);
