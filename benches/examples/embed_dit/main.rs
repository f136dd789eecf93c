//! Embedding the cache engines in your own burn model: a small class-conditional DiT (`dit.rs`, written
//! here, not in `models`) hosts every engine (First Block Cache, Pyramid Attention Broadcast, FasterCache,
//! MagCache, TaylorSeer) through the five additions marked `// cache:` in it.
//!
//!     cargo run --release -p benches --example embed_dit

mod dit;
mod pipeline;

use benches::backend::{device, Backend as B};
use cache_engines::cache_core::{self, CacheStrategy, CfgOrder};
use cache_engines::{
    CacheConfig, EasyCache, EasyCacheConfig, FactorDtype, FasterCache, FasterCacheConfig, FirstBlockCache, FirstBlockCacheConfig, MagCache,
    MagCacheConfig, PyramidAttentionBroadcast, PyramidAttentionBroadcastConfig, TaylorSeer, TaylorSeerCacheConfig,
};
use models::HostTensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = device();
    let model = dit::DiTConfig::small().init::<B>(0, &dev);
    let host = model.host_info();
    let (class, steps, guidance, seed) = (3, 20, 4.0, 0);
    let run = |s: &mut dyn CacheStrategy<B>| {
        let start = std::time::Instant::now();
        let out = pipeline::sample(&model, class, steps, guidance, seed, CfgOrder::CondFirst, s, &dev);
        (HostTensor::from_tensor(out).data, start.elapsed().as_secs_f64())
    };
    let (plain, t0) = run(&mut cache_core::Identity);
    println!("uncached: {t0:.2} s");

    // Each engine is built from its diffusers-named configuration; `check_host` first tells whether this
    // model can take it.
    let fbc = FirstBlockCacheConfig { threshold: 0.15, ..Default::default() };
    let pab = PyramidAttentionBroadcastConfig { spatial_attention_block_skip_range: Some(2), ..Default::default() };
    let fc = FasterCacheConfig::for_host(&host);
    // MagCache needs this model's magnitude ratios: one calibration run (diffusers' `calibrate=True`).
    let mut calibration = MagCache::<B>::new(MagCacheConfig::calibration(steps));
    run(&mut calibration);
    let ratios = calibration.calibrated_ratios().ok_or("calibration incomplete")?.iter().map(|&r| r as f64).collect();
    let mag = MagCacheConfig { threshold: 0.1, num_inference_steps: steps, mag_ratios: Some(ratios), ..Default::default() };
    // TaylorSeer predicts the modules its patterns name: here every attention and MLP.
    let seer = TaylorSeerCacheConfig {
        cache_interval: 3,
        taylor_factors_dtype: FactorDtype::Float32,
        cache_identifiers: Some(vec![r"blocks\.\d+\.(attn|mlp)".into()]),
        ..Default::default()
    };
    // EasyCache needs no calibration: the authors' threshold for about 2x, warm-up the first fifth of the steps.
    let easy = EasyCacheConfig { thresh: 0.1, ret_steps: steps / 5, num_steps: steps };
    let engines: Vec<(&str, CacheConfig, Box<dyn CacheStrategy<B>>)> = vec![
        ("first block cache", CacheConfig::FirstBlockCache(fbc.clone()), Box::new(FirstBlockCache::<B>::new(fbc))),
        ("pyramid attention broadcast", CacheConfig::PyramidAttentionBroadcast(pab.clone()), Box::new(PyramidAttentionBroadcast::<B>::new(pab)?)),
        ("fastercache", CacheConfig::FasterCache(fc.clone()), Box::new(FasterCache::<B>::new(fc)?)),
        ("magcache", CacheConfig::MagCache(mag.clone()), Box::new(MagCache::<B>::new(mag))),
        ("taylorseer", CacheConfig::TaylorSeerCache(seer.clone()), Box::new(TaylorSeer::<B>::new(seer)?)),
        ("easycache", CacheConfig::EasyCache(easy.clone()), Box::new(EasyCache::<B>::new(easy))),
    ];
    for (name, config, mut engine) in engines {
        config.check_host(&host)?;
        let (out, t) = run(engine.as_mut());
        let stats = engine.stats();
        let reused: usize = stats.steps.iter().flat_map(|s| s.attention.values()).filter(|d| **d == cache_core::Decision::Skip).count();
        let err = (out.iter().zip(&plain).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / plain.iter().map(|b| b * b).sum::<f32>()).sqrt();
        println!(
            "{name}: {t:.2} s ({:.2}x), rel_l2 vs uncached {err:.2e}; blocks skipped {}, uncond approximated {}, attention/MLP reused {reused}",
            t0 / t,
            stats.blocks().reused,
            stats.uncond().reused,
        );
    }

    // What the model cannot host is a typed error, not a silent no-op.
    let temporal = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        temporal_attention_block_skip_range: Some(2),
        ..Default::default()
    });
    match temporal.check_host(&host) {
        Err(e) => println!("temporal PAB on this DiT: {e}"),
        Ok(()) => return Err("a model without temporal attention accepted a temporal PAB".into()),
    }
    Ok(())
}
