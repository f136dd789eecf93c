//! The embedding guide's model (`examples/embed_dit`: a user's own DiT, not in `models`) with each engine:
//! degenerate configurations compute exactly the uncached result, active ones skip what diffusers'
//! semantics say (counts derived by hand below), the CFG order is the one the model states, and what the
//! model cannot host is a typed error.

#[path = "../examples/embed_dit/dit.rs"]
#[allow(dead_code)]
mod dit;
#[path = "../examples/embed_dit/pipeline.rs"]
mod pipeline;

use benches::backend::{device, Backend as B};
use benches::parity::rel_l2;
use cache_core::{CacheStrategy, CfgOrder, ConfigError, Decision, Identity};
use cache_engines::{
    build, CacheConfig, EasyCacheConfig, FactorDtype, FasterCacheConfig, FirstBlockCacheConfig, MagCache, MagCacheConfig,
    PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig,
};
use models::HostTensor;

const STEPS: usize = 20;

/// Weights are drawn from the backend's process-wide generator after seeding it: one test at a time.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn init(config: dit::DiTConfig) -> dit::DiT<B> {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    config.init::<B>(0, &device())
}

fn model() -> dit::DiT<B> {
    init(dit::DiTConfig::small())
}

fn sample(m: &dit::DiT<B>, order: CfgOrder, s: &mut dyn CacheStrategy<B>) -> Vec<f32> {
    HostTensor::from_tensor(pipeline::sample(m, 3, STEPS, 4.0, 0, order, s, &device())).data
}

fn engine(m: &dit::DiT<B>, cfg: &CacheConfig) -> Box<dyn CacheStrategy<B>> {
    build::<B>(cfg, &m.host_info()).unwrap()
}

fn attention_skips(s: &dyn CacheStrategy<B>) -> usize {
    s.stats().steps.iter().flat_map(|s| s.attention.values()).filter(|d| **d == Decision::Skip).count()
}

#[test]
fn degenerate_configs_compute_the_uncached_result() {
    let m = model();
    let plain = sample(&m, CfgOrder::CondFirst, &mut Identity);
    let configs = [
        CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.0, ..Default::default() }),
        CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: Some(1),
            ..Default::default()
        }),
        CacheConfig::FasterCache(FasterCacheConfig {
            spatial_attention_block_skip_range: Some(1),
            unconditional_batch_skip_range: 1,
            ..FasterCacheConfig::for_host(&m.host_info())
        }),
    ];
    for cfg in configs {
        let mut s = engine(&m, &cfg);
        assert_eq!(sample(&m, CfgOrder::CondFirst, s.as_mut()), plain, "{cfg:?}");
        let stats = s.stats();
        assert_eq!(stats.steps.len(), STEPS, "{cfg:?}: every step is recorded");
        assert_eq!(stats.blocks().reused + stats.uncond().reused + attention_skips(s.as_ref()), 0, "{cfg:?}");
    }
}

#[test]
fn each_engine_skips_what_its_semantics_say() {
    let m = model();
    let plain = sample(&m, CfgOrder::CondFirst, &mut Identity);
    // DDIM "leading", 20 steps: t = 950, 900, ..., 0; step i has t = 950 - 50 i.
    // PAB spatial 2 in (100, 800): steps 4..=16 are inside; a site skips on odd steps there (5, 7, ..., 15):
    // 6 per site, 6 sites.
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        spatial_attention_block_skip_range: Some(2),
        ..Default::default()
    });
    let mut s = engine(&m, &pab);
    let out = sample(&m, CfgOrder::CondFirst, s.as_mut());
    assert_eq!(attention_skips(s.as_ref()), 36);
    let err = rel_l2(&out, &plain);
    assert!(err > 0.0 && err < 0.05, "PAB rel_l2 {err}");

    // FasterCache (CogVideoX example settings): the unconditional half is approximated below t = 641
    // (steps 7..=19) except every 5th call (10, 15): 11 steps. On those, attention below t = 681 is
    // extrapolated on odd calls (7, 9, 11, 13, 17, 19): 6 per site.
    let fc = CacheConfig::FasterCache(FasterCacheConfig::for_host(&m.host_info()));
    let mut s = engine(&m, &fc);
    let out = sample(&m, CfgOrder::CondFirst, s.as_mut());
    assert_eq!(s.stats().uncond().reused, 11);
    assert_eq!(attention_skips(s.as_ref()), 36);
    let err = rel_l2(&out, &plain);
    assert!(err > 0.0 && err < 0.05, "FasterCache rel_l2 {err}");

    // First Block Cache: how often depends on the weights; it must skip, and a skipped step's tail is the
    // cached residual, so the result stays close.
    let fbc = CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.15, ..Default::default() });
    let mut s = engine(&m, &fbc);
    let out = sample(&m, CfgOrder::CondFirst, s.as_mut());
    let skipped = s.stats().blocks().reused;
    assert!(skipped > 0 && skipped < STEPS, "FBC skipped {skipped}");
    let err = rel_l2(&out, &plain);
    assert!(err > 0.0 && err < 0.05, "FBC rel_l2 {err}");

    // TaylorSeer, interval 3 after 3 warm-up calls: calls 0, 1, 2, 4, 7, 10, 13, 16, 19 compute, the other 11
    // predict, at each of the 6 attention and 6 MLP sites.
    let seer = CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig {
        cache_interval: 3,
        disable_cache_before_step: 3,
        taylor_factors_dtype: FactorDtype::Float32,
        cache_identifiers: Some(vec![r"blocks\.\d+\.(attn|mlp)".into()]),
        ..Default::default()
    });
    let mut s = engine(&m, &seer);
    let out = sample(&m, CfgOrder::CondFirst, s.as_mut());
    let predicted = |site: &str| s.stats().steps.iter().filter(|st| st.attention.get(site) == Some(&Decision::Skip)).count();
    assert_eq!((predicted("blocks.0.attn"), predicted("blocks.5.mlp")), (11, 11));
    assert_eq!(attention_skips(s.as_ref()), 132);
    let err = rel_l2(&out, &plain);
    assert!(err > 0.0 && err < 0.05, "TaylorSeer rel_l2 {err}");

    // MagCache with ratios calibrated on this model: it skips whole steps, never the first 4 (retention 0.2).
    let mut cal = MagCache::<B>::new(MagCacheConfig::calibration(STEPS));
    let _ = sample(&m, CfgOrder::CondFirst, &mut cal);
    let ratios: Vec<f64> = cal.calibrated_ratios().expect("a full run").iter().map(|&r| r as f64).collect();
    assert_eq!((ratios.len(), ratios[0]), (STEPS, 1.0));
    let mag = CacheConfig::MagCache(MagCacheConfig { threshold: 0.1, num_inference_steps: STEPS, mag_ratios: Some(ratios), ..Default::default() });
    let mut s = engine(&m, &mag);
    let out = sample(&m, CfgOrder::CondFirst, s.as_mut());
    let stats = s.stats();
    assert!(stats.steps[..4].iter().all(|st| st.blocks == Some(Decision::Compute)));
    let skipped = stats.blocks().reused;
    assert!(skipped > 0 && skipped < STEPS, "MagCache skipped {skipped}");
    let err = rel_l2(&out, &plain);
    assert!(err > 0.0 && err < 0.1, "MagCache rel_l2 {err}");

    // EasyCache: whole calls reused, never in the first 4 steps (ret_steps) nor the last; at threshold 0 never.
    let easy = |thresh| CacheConfig::EasyCache(EasyCacheConfig { thresh, ret_steps: 4, num_steps: STEPS });
    let mut s = engine(&m, &easy(0.0));
    assert_eq!(sample(&m, CfgOrder::CondFirst, s.as_mut()), plain);
    assert_eq!(s.stats().blocks().reused, 0);
    let mut s = engine(&m, &easy(0.05));
    let out = sample(&m, CfgOrder::CondFirst, s.as_mut());
    let stats = s.stats();
    assert!(stats.steps[..4].iter().chain(&stats.steps[STEPS - 1..]).all(|st| st.blocks == Some(Decision::Compute)));
    let skipped = stats.blocks().reused;
    assert!(skipped > 0 && skipped < STEPS - 5, "EasyCache skipped {skipped}");
    let err = rel_l2(&out, &plain);
    // Coarser than the block-level engines here (0.13 with 5 calls reused): the whole call's output − input
    // residual is reused, and this DiT predicts noise, whose residual changes faster than a flow velocity's.
    assert!(err > 0.0 && err < 0.3, "EasyCache rel_l2 {err}, {skipped} skipped");
}

#[test]
fn the_cfg_order_is_the_one_the_model_states() {
    // FasterCache rebuilds the unconditional half: with the batch stated correctly, [cond, uncond] and
    // [uncond, cond] give the same generation.
    let m = model();
    let fc = CacheConfig::FasterCache(FasterCacheConfig::for_host(&m.host_info()));
    let cond_first = sample(&m, CfgOrder::CondFirst, engine(&m, &fc).as_mut());
    let uncond_first = sample(&m, CfgOrder::UncondFirst, engine(&m, &fc).as_mut());
    let err = rel_l2(&cond_first, &uncond_first);
    assert!(err < 1e-5, "rel_l2 between batch orders {err}");
}

#[test]
fn what_the_model_cannot_host_is_a_typed_error() {
    let m = model();
    let host = m.host_info();
    let pab = |t: Option<usize>, c: Option<usize>| {
        CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: None,
            temporal_attention_block_skip_range: t,
            cross_attention_block_skip_range: c,
            ..Default::default()
        })
    };
    for cfg in [
        pab(Some(2), None),
        pab(None, Some(2)),
        CacheConfig::FasterCache(FasterCacheConfig { temporal_attention_block_skip_range: Some(2), ..FasterCacheConfig::for_host(&host) }),
    ] {
        assert!(matches!(cfg.check_host(&host), Err(ConfigError::NotHostable(_))), "{cfg:?}");
    }
    let one_block = init(dit::DiTConfig { depth: 1, ..dit::DiTConfig::small() });
    let fbc = CacheConfig::FirstBlockCache(FirstBlockCacheConfig::default());
    assert!(matches!(fbc.check_host(&one_block.host_info()), Err(ConfigError::NotHostable(_))));
}
