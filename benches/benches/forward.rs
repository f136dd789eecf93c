//! Criterion benches of one uncached forward (batch 2: one CFG batch) of the S model, the trained model's
//! shape and the Latte bench model, on the backend of this build (`ndarray` default, `wgpu`, `cuda`), so a
//! regression in the models' operations shows. On ndarray each model is also timed on the generic burn-op
//! path (`models::ops::set_cpu_fast_path(false)`), the code every other backend runs.
//!
//!     cargo bench -p benches --bench forward
//!     cargo bench -p benches --no-default-features --features wgpu --bench forward

use std::time::Duration;

use benches::backend::{device, Backend, NAME};
use benches::video_model::LATTE_BENCH_TEXT_TOKENS;
use burn::tensor::{Distribution, Tensor};
use cache_core::{Branch, CallContext, CfgOrder, Identity, StepContext};
use criterion::{criterion_group, criterion_main, Criterion};
use models::{
    CogVideoXConfig, CogVideoXTransformer3DModel, ForwardInput, LatteConfig, LatteTransformer3DModel, WeightSource,
};

const BATCH: usize = 2;

fn ctx() -> CallContext {
    CallContext::new(StepContext { step: 0, num_steps: 1, timestep: 500.0, sigma: None }, Branch::Cfg(CfgOrder::UncondFirst), BATCH)
}

fn input(latents: [usize; 5], text: [usize; 3]) -> ForwardInput<Backend> {
    let dev = device();
    ForwardInput {
        hidden_states: Tensor::random(latents, Distribution::Normal(0.0, 1.0), &dev),
        encoder_hidden_states: Tensor::random(text, Distribution::Normal(0.0, 1.0), &dev),
        timestep: vec![500.0; BATCH],
    }
}

/// The paths this build can time: the backend's own, and on ndarray the generic one too.
fn paths() -> Vec<(&'static str, bool)> {
    if NAME == "ndarray" {
        vec![("cpu-kernels", true), ("generic", false)]
    } else {
        vec![("generic", true)]
    }
}

/// One group per model: `forward` on each path of this build.
fn group<T>(c: &mut Criterion, name: &str, forward: impl Fn() -> T) {
    let mut group = c.benchmark_group(format!("forward/{NAME}/{name}"));
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for (path, fast) in paths() {
        models::ops::set_cpu_fast_path(fast);
        group.bench_function(path, |b| b.iter(&forward));
    }
    models::ops::set_cpu_fast_path(true);
    group.finish();
}

fn cogvideox(c: &mut Criterion, name: &str, cfg: CogVideoXConfig) {
    let dev = device();
    let model = CogVideoXTransformer3DModel::<Backend>::load(&cfg, &mut WeightSource::random(0), &dev).unwrap();
    let (f, h, w) = (cfg.latent_frames(), cfg.sample_height, cfg.sample_width);
    let positions = model.positions(f, h, w, &dev).unwrap();
    let x = input([BATCH, f, cfg.in_channels, h, w], [BATCH, cfg.max_text_seq_length, cfg.text_embed_dim]);
    group(c, name, || model.forward(x.clone(), &positions, &ctx(), &mut Identity).unwrap().into_data());
}

fn latte(c: &mut Criterion) {
    let dev = device();
    let cfg = LatteConfig::bench_latte();
    let model = LatteTransformer3DModel::<Backend>::load(&cfg, &mut WeightSource::random(0), &dev).unwrap();
    let (f, h, w) = (cfg.video_length, cfg.sample_size, cfg.sample_size);
    let positions = model.positions(f, h, w, &dev).unwrap();
    let x = input([BATCH, cfg.in_channels(), f, h, w], [BATCH, LATTE_BENCH_TEXT_TOKENS, cfg.caption_channels()]);
    group(c, "latte", || model.forward(x.clone(), &positions, &ctx(), &mut Identity).unwrap().into_data());
}

fn benches(c: &mut Criterion) {
    cogvideox(c, "S", CogVideoXConfig::bench_s());
    let shapes = benches::shapes::shapes_dir().join("transformer/config.json");
    cogvideox(c, "shapes", CogVideoXConfig::from_json_file(&shapes).unwrap());
    latte(c);
}

criterion_group!(forward_benches, benches);
criterion_main!(forward_benches);
