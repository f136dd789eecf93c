//! The failure classes users reported against other cache implementations, on the parity cases' models:
//! state left over between generations, CFG halves swapped or run as separate passes, decisions pooled across
//! a batch, degenerate configurations, memory budgets, and configurations the model cannot host.

use benches::backend::{device, Backend as B};
use benches::parity::{committed_cases_dir, load_denoise_case, rel_l2, DenoiseCase};
use benches::video_model::VideoModel;
use burn::tensor::Tensor;
use cache_core::{Branch, CacheStrategy, CallContext, CfgOrder, ConfigError, Decision, Identity, StepContext};
use cache_engines::{
    build, CacheConfig, FasterCacheConfig, FirstBlockCache, FirstBlockCacheConfig, MagCache, MagCacheConfig,
    PyramidAttentionBroadcastConfig, TaylorSeer, TaylorSeerCacheConfig,
};
use models::{
    CogVideoXDDIMScheduler, CogVideoXScheduler, CogVideoXTransformer3DModel, DenoiseOptions, ForwardInput, HostTensor,
};

fn case(name: &str) -> DenoiseCase<B> {
    load_denoise_case::<B>(&committed_cases_dir().join(name), &device()).unwrap()
}

fn run(c: &mut DenoiseCase<B>, strategy: &mut dyn CacheStrategy<B>) -> Vec<f32> {
    let out = c.model.denoise(c.input.clone(), strategy, DenoiseOptions::default()).unwrap();
    HostTensor::from_tensor(out).data
}

/// The transformer of a CogVideoX case.
fn cog_model(m: &VideoModel<B>) -> &CogVideoXTransformer3DModel<B> {
    match m {
        VideoModel::CogVideoX { model, .. } => model,
        _ => panic!("these tests run on CogVideoX cases"),
    }
}

/// The transformer and DDIM scheduler of a CogVideoX case.
fn cog(m: &mut VideoModel<B>) -> (&CogVideoXTransformer3DModel<B>, &mut CogVideoXDDIMScheduler) {
    match m {
        VideoModel::CogVideoX { model, scheduler: CogVideoXScheduler::Ddim(scheduler) } => (model, scheduler),
        _ => panic!("these tests run on CogVideoX cases with CogVideoXDDIMScheduler"),
    }
}

fn strategy(c: &DenoiseCase<B>, cfg: &CacheConfig) -> Box<dyn CacheStrategy<B>> {
    build::<B>(cfg, &c.model.host_info()).unwrap()
}

/// Runs the case with a fresh strategy for `cfg`.
fn run_cfg(c: &mut DenoiseCase<B>, cfg: &CacheConfig) -> Vec<f32> {
    let mut s = strategy(c, cfg);
    run(c, s.as_mut())
}

fn faster() -> CacheConfig {
    CacheConfig::FasterCache(FasterCacheConfig::cogvideox())
}

#[test]
fn a_second_generation_equals_a_fresh_engines_bit_for_bit() {
    for (name, cfg) in [
        ("fbc_1", None),
        ("pab_default_window", None),
        ("fastercache_sincos", None),
        ("magcache_sincos", None),
        ("taylorseer_rotary_order2", None),
        ("latte_taylorseer", None),
        ("latte_magcache", None),
        ("denoise_sincos", Some(CacheConfig::preset(cache_engines::Preset::Speed, &case("denoise_sincos").model.host_info()).config().clone())),
    ] {
        let mut c = case(name);
        let cfg = cfg.unwrap_or_else(|| c.cache.clone());
        let mut reused = strategy(&c, &cfg);
        let first = run(&mut c, reused.as_mut());
        let first_stats = reused.stats();
        let second = run(&mut c, reused.as_mut());
        let fresh = run_cfg(&mut c, &cfg);
        assert_eq!(first, second, "{name}: second generation differs");
        assert_eq!(second, fresh, "{name}: differs from a fresh engine");
        assert_eq!(first_stats, reused.stats(), "{name}: decisions differ");
        assert!(first_stats.steps.iter().any(|s| s.blocks == Some(Decision::Skip)
            || s.uncond == Some(Decision::Skip)
            || s.attention.values().any(|d| *d == Decision::Skip)), "{name}: the strategy never skipped");
    }
}

#[test]
fn caching_changes_the_result_and_stays_close() {
    let mut c = case("fastercache_sincos");
    let cfg = c.cache.clone();
    let cached = run_cfg(&mut c, &cfg);
    let plain = run(&mut c, &mut Identity);
    let err = rel_l2(&cached, &plain);
    assert!(err > 1e-4 && err < 0.5, "rel_l2 vs uncached {err}");
}

/// A CFG loop written by hand with the batch in either order (the pipeline uses `[uncond, cond]`).
fn denoise_with_order(c: &mut DenoiseCase<B>, s: &mut dyn CacheStrategy<B>, actual: CfgOrder, told: CfgOrder) -> Vec<f32> {
    let dev = device();
    let (model, scheduler) = cog(&mut c.model);
    let timesteps = scheduler.set_timesteps(c.input.num_inference_steps).unwrap().to_vec();
    let [_, f, _, h, w] = c.input.latents.dims();
    let positions = model.positions(f, h, w, &dev).unwrap();
    let (cond, uncond) = (c.input.prompt_embeds.clone(), c.input.negative_prompt_embeds.clone().unwrap());
    let enc = match actual {
        CfgOrder::UncondFirst => Tensor::cat(vec![uncond, cond], 0),
        CfgOrder::CondFirst => Tensor::cat(vec![cond, uncond], 0),
    };
    s.reset();
    let mut latents = c.input.latents.clone();
    for (i, &t) in timesteps.iter().enumerate() {
        let ctx = CallContext::new(
            StepContext { step: i, num_steps: timesteps.len(), timestep: t as f64, sigma: None },
            Branch::Cfg(told),
            2,
        );
        let input = ForwardInput {
            hidden_states: Tensor::cat(vec![latents.clone(), latents.clone()], 0),
            encoder_hidden_states: enc.clone(),
            timestep: vec![t as f32; 2],
        };
        let out = model.forward(input, &positions, &ctx, s).unwrap();
        let [a, b]: [Tensor<B, 5>; 2] = out.chunk(2, 0).try_into().unwrap();
        let (u, k) = match actual {
            CfgOrder::UncondFirst => (a, b),
            CfgOrder::CondFirst => (b, a),
        };
        let guided = u.clone() + (k - u) * (c.input.guidance_scale as f32);
        latents = scheduler.step(guided, t, latents).unwrap();
    }
    HostTensor::from_tensor(latents).data
}

#[test]
fn cfg_order_is_a_parameter_and_a_wrong_order_shows() {
    let mut c = case("fastercache_sincos");
    let cfg = faster();
    let reference = run_cfg(&mut c, &cfg);
    let mut s = strategy(&c, &cfg);
    let cond_first = denoise_with_order(&mut c, s.as_mut(), CfgOrder::CondFirst, CfgOrder::CondFirst);
    assert!(rel_l2(&cond_first, &reference) < 1e-5, "{}", rel_l2(&cond_first, &reference));
    // The classic bug: a [cond, uncond] batch described as [uncond, cond].
    let mut s = strategy(&c, &cfg);
    let swapped = denoise_with_order(&mut c, s.as_mut(), CfgOrder::CondFirst, CfgOrder::UncondFirst);
    assert!(rel_l2(&swapped, &reference) > 1e-3, "{}", rel_l2(&swapped, &reference));
}

/// The MagCache and TaylorSeer configurations of the committed cases.
fn case_config<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let mut v = serde_json::to_value(case(name).cache).unwrap();
    v.as_object_mut().unwrap().remove("type");
    serde_json::from_value(v).unwrap()
}

#[test]
fn separate_cfg_passes_keep_separate_state() {
    // A pipeline that runs cond and uncond as two batch-1 passes: one engine must behave like two fresh
    // engines, one per branch, for every engine that keeps state across steps.
    let mag = MagCacheConfig { num_inference_steps: 5, threshold: 0.5, retention_ratio: 0.2, ..case_config("magcache_sincos") };
    let seer = TaylorSeerCacheConfig { cache_interval: 2, disable_cache_before_step: 1, ..case_config("taylorseer_sincos") };
    let fbc = FirstBlockCacheConfig { threshold: 0.3, ..Default::default() };
    let engines: [(&str, Box<dyn Fn() -> Box<dyn CacheStrategy<B>>>); 3] = [
        ("fbc", Box::new(move || Box::new(FirstBlockCache::<B>::new(fbc.clone())))),
        ("magcache", Box::new(move || Box::new(MagCache::<B>::new(mag.clone())))),
        ("taylorseer", Box::new(move || Box::new(TaylorSeer::<B>::new(seer.clone()).unwrap()))),
    ];
    let c = case("fbc_1");
    let dev = device();
    let model = cog_model(&c.model);
    let [_, f, _, h, w] = c.input.latents.dims();
    let positions = model.positions(f, h, w, &dev).unwrap();
    let embeds = [c.input.prompt_embeds.clone(), c.input.negative_prompt_embeds.clone().unwrap()];
    for (name, make) in engines {
        let mut shared = make();
        let mut alone = [make(), make()];
        let mut latents = c.input.latents.clone();
        for (i, t) in [999.0f32, 949.0, 899.0, 849.0, 799.0].into_iter().enumerate() {
            for (k, branch) in [Branch::Cond, Branch::Uncond].into_iter().enumerate() {
                let ctx = CallContext::new(StepContext { step: i, num_steps: 5, timestep: t as f64, sigma: None }, branch, 1);
                let input = ForwardInput {
                    hidden_states: latents.clone(),
                    encoder_hidden_states: embeds[k].clone(),
                    timestep: vec![t],
                };
                let a = model.forward(input.clone(), &positions, &ctx, shared.as_mut()).unwrap();
                let b = model.forward(input, &positions, &ctx, alone[k].as_mut()).unwrap();
                assert_eq!(HostTensor::from_tensor(a.clone()).data, HostTensor::from_tensor(b).data, "{name}: step {i} branch {k}");
                if k == 0 {
                    latents = latents.clone() - a * 0.05;
                }
            }
        }
        let stats = shared.stats();
        let skipped = stats.blocks().reused + stats.entries().flat_map(|s| s.attention.values()).filter(|d| **d == Decision::Skip).count();
        assert!(skipped > 0, "{name}: the scenario must exercise skipping");
    }
}

#[test]
fn per_sample_decisions_are_not_pooled() {
    let c = case("fbc_1");
    let dev = device();
    let model = cog_model(&c.model);
    let [_, f, _, h, w] = c.input.latents.dims();
    let positions = model.positions(f, h, w, &dev).unwrap();
    let x0 = c.input.latents.clone();
    let x1 = x0.clone() * 0.5 + 0.7;
    let enc = Tensor::cat(vec![c.input.prompt_embeds.clone(), c.input.prompt_embeds.clone()], 0);
    // Call 1: both samples at x0. Call 2: sample 0 unchanged, sample 1 moved.
    let call = |s: &mut dyn CacheStrategy<B>, second: bool, step: usize| {
        let x = if second { Tensor::cat(vec![x0.clone(), x1.clone()], 0) } else { Tensor::cat(vec![x0.clone(), x0.clone()], 0) };
        let ctx = CallContext::new(StepContext { step, num_steps: 2, timestep: 500.0, sigma: None }, Branch::Unguided, 2);
        let input = ForwardInput { hidden_states: x, encoder_hidden_states: enc.clone(), timestep: vec![500.0; 2] };
        let out = model.forward(input, &positions, &ctx, s).unwrap();
        let [a, b]: [Tensor<B, 5>; 2] = out.chunk(2, 0).try_into().unwrap();
        (HostTensor::from_tensor(a).data, HostTensor::from_tensor(b).data)
    };
    let per = |threshold| FirstBlockCacheConfig { threshold, per_sample: true, ..Default::default() };
    let mut probe = FirstBlockCache::<B>::new(per(0.0));
    call(&mut probe, false, 0);
    call(&mut probe, true, 1);
    let change = probe.last_changes().to_vec();
    assert_eq!(change.len(), 2);
    assert!(change[0] < 1e-6 && change[1] > 0.05, "{change:?}");
    let threshold = 0.75 * change[1] as f64;

    let (uncached0, uncached1) = call(&mut Identity, true, 1);
    let mut engine = FirstBlockCache::<B>::new(per(threshold));
    call(&mut engine, false, 0);
    let (out0, out1) = call(&mut engine, true, 1);
    assert!(rel_l2(&out0, &uncached0) < 1e-5, "sample 0 skipped: head + cached tail of identical input");
    assert_eq!(out1, uncached1, "sample 1 must be computed");

    // Pooled, the same threshold skips both: sample 1 then differs from its computed output.
    let mut pooled = FirstBlockCache::<B>::new(FirstBlockCacheConfig { threshold, ..Default::default() });
    call(&mut pooled, false, 0);
    let (_, pooled1) = call(&mut pooled, true, 1);
    assert!((pooled.last_changes()[0] as f64) <= threshold);
    assert!(rel_l2(&pooled1, &uncached1) > 1e-3);
}

#[test]
fn degenerate_configs_equal_no_cache_bit_for_bit() {
    let mut c = case("denoise_sincos");
    let plain = run(&mut c, &mut Identity);
    let pab1 = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        spatial_attention_block_skip_range: Some(1),
        spatial_attention_timestep_skip_range: (0.0, 1000.0),
        ..Default::default()
    });
    let never = (2000.0, 2001.0);
    let fc_empty = CacheConfig::FasterCache(FasterCacheConfig {
        spatial_attention_timestep_skip_range: never,
        unconditional_batch_timestep_skip_range: never,
        low_frequency_weight_update_timestep_range: never,
        high_frequency_weight_update_timestep_range: never,
        ..FasterCacheConfig::cogvideox()
    });
    let mag: MagCacheConfig = case_config("magcache_sincos");
    let seer: TaylorSeerCacheConfig = case_config("taylorseer_sincos");
    let mag_never = [
        MagCacheConfig { max_skip_steps: 0, ..mag.clone() },
        MagCacheConfig { retention_ratio: 1.0, ..mag.clone() },
        MagCacheConfig { calibrate: true, ..mag },
    ];
    let seer_never = [
        TaylorSeerCacheConfig { cache_interval: 1, ..seer.clone() },
        TaylorSeerCacheConfig { disable_cache_before_step: 12, ..seer.clone() },
        TaylorSeerCacheConfig { disable_cache_after_step: Some(0), ..seer },
    ];
    let degenerate = [pab1, fc_empty, CacheConfig::None]
        .into_iter()
        .chain(mag_never.into_iter().map(CacheConfig::MagCache))
        .chain(seer_never.into_iter().map(CacheConfig::TaylorSeerCache));
    for cfg in degenerate {
        let mut s = strategy(&c, &cfg);
        assert_eq!(run(&mut c, s.as_mut()), plain, "{cfg:?}");
    }
}

#[test]
fn memory_budget_is_honoured() {
    let mut c = case("pab_default_window");
    let plain = run(&mut c, &mut Identity);
    let unlimited = c.cache.clone();
    let mut s = strategy(&c, &unlimited);
    let cached = run(&mut c, s.as_mut());
    let peak = s.peak_bytes();
    assert!(peak > 0 && cached != plain);
    // A budget below one site's output: the engine computes everything, holds nothing, and never fails.
    let CacheConfig::PyramidAttentionBroadcast(p) = unlimited else { panic!() };
    for (budget, expect_plain) in [(peak / 4, true), (peak, false)] {
        let cfg = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
            memory_budget_bytes: Some(budget),
            ..p.clone()
        });
        let mut s = strategy(&c, &cfg);
        let out = run(&mut c, s.as_mut());
        assert!(s.peak_bytes() <= budget, "peak {} > budget {budget}", s.peak_bytes());
        assert_eq!(out == plain, expect_plain, "budget {budget}");
    }
    let mag: MagCacheConfig = case_config("magcache_sincos");
    let seer: TaylorSeerCacheConfig = case_config("taylorseer_sincos");
    for cfg in [CacheConfig::MagCache(mag.clone()), CacheConfig::TaylorSeerCache(seer.clone())] {
        let mut s = strategy(&c, &cfg);
        let out = run(&mut c, s.as_mut());
        assert!(s.peak_bytes() > 1000 && out != plain, "{}: the unlimited engine must cache", cfg.label());
    }
    for cfg in [
        CacheConfig::MagCache(MagCacheConfig { memory_budget_bytes: Some(1000), ..mag }),
        CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig { memory_budget_bytes: Some(1000), ..seer }),
        CacheConfig::FasterCache(FasterCacheConfig { memory_budget_bytes: Some(1000), ..FasterCacheConfig::cogvideox() }),
        CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 10.0, memory_budget_bytes: Some(1000), ..Default::default() }),
    ] {
        let mut s = strategy(&c, &cfg);
        let out = run(&mut c, s.as_mut());
        assert!(s.peak_bytes() <= 1000);
        assert_eq!(out, plain, "{cfg:?}");
    }
}

#[test]
fn what_the_model_cannot_host_is_a_typed_error() {
    let c = case("denoise_sincos");
    let temporal = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        temporal_attention_block_skip_range: Some(2),
        ..Default::default()
    });
    assert!(matches!(build::<B>(&temporal, &c.model.host_info()), Err(ConfigError::NotHostable(_))));
    let fc = CacheConfig::FasterCache(FasterCacheConfig { temporal_attention_block_skip_range: Some(2), ..FasterCacheConfig::cogvideox() });
    assert!(matches!(build::<B>(&fc, &c.model.host_info()), Err(ConfigError::NotHostable(_))));
    // diffusers' default TaylorSeer patterns hook nothing on either family: refused, not a silent no-op.
    for name in ["denoise_sincos", "latte_denoise"] {
        let host = case(name).model.host_info();
        let seer = CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig::default());
        assert!(matches!(build::<B>(&seer, &host), Err(ConfigError::NotHostable(m)) if m.contains("cache_identifiers")), "{name}");
        let norm = TaylorSeerCacheConfig { cache_identifiers: Some(vec![r"transformer_blocks\.\d+\.norm1".into()]), ..Default::default() };
        assert!(matches!(build::<B>(&CacheConfig::TaylorSeerCache(norm), &host), Err(ConfigError::NotHostable(m)) if m.contains("cannot hook")), "{name}");
    }
    let magcache = CacheConfig::MagCache(MagCacheConfig::default());
    assert!(matches!(build::<B>(&magcache, &c.model.host_info()), Err(ConfigError::Missing { field: "mag_ratios", .. })));
}

#[test]
fn a_stack_reports_every_members_decisions() {
    let mut c = case("fastercache_sincos");
    let cfg = CacheConfig::Stack {
        strategies: vec![faster(), CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.3, ..Default::default() })],
    };
    let mut s = strategy(&c, &cfg);
    let _ = run(&mut c, s.as_mut());
    let stats = s.stats();
    assert_eq!(stats.steps.len(), 12);
    assert!(stats.uncond().reused > 0 && stats.blocks().computed > 0);
    assert!(stats.steps.iter().all(|st| st.uncond.is_some() && st.blocks.is_some()));

    // MagCache with PAB inside the blocks it runs; TaylorSeer with FBC.
    let mut c = case("magcache_sincos");
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        spatial_attention_block_skip_range: Some(2),
        spatial_attention_timestep_skip_range: (0.0, 1000.0),
        ..Default::default()
    });
    let mut s = strategy(&c, &CacheConfig::Stack { strategies: vec![c.cache.clone(), pab] });
    let _ = run(&mut c, s.as_mut());
    let stats = s.stats();
    assert!(stats.blocks().reused > 0, "MagCache skipped no step");
    assert!(stats.steps.iter().any(|st| st.attention.values().any(|d| *d == Decision::Skip)), "PAB reused nothing");
    let mut c = case("taylorseer_sincos");
    let fbc = CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.3, ..Default::default() });
    let mut s = strategy(&c, &CacheConfig::Stack { strategies: vec![fbc, c.cache.clone()] });
    let _ = run(&mut c, s.as_mut());
    let stats = s.stats();
    assert!(stats.blocks().reused > 0 && stats.steps.iter().any(|st| st.attention.get("transformer_blocks.0.ff") == Some(&Decision::Skip)));
}

#[test]
fn magcache_calibration_reproduces_diffusers_ratios() {
    // The cases' `mag_ratios` are what diffusers' calibration printed for the case's model and inputs (12 steps);
    // ours, measured on the same ones, must agree to float32 rounding.
    for name in ["magcache_sincos", "magcache_rotary_interpolated", "latte_magcache"] {
        let mut c = case(name);
        let expected: MagCacheConfig = case_config(name);
        let expected = expected.mag_ratios.unwrap();
        c.input.num_inference_steps = expected.len();
        let mut engine = MagCache::<B>::new(MagCacheConfig::calibration(expected.len()));
        run(&mut c, &mut engine);
        let ours = engine.calibrated_ratios().expect("a complete run");
        assert_eq!(ours.len(), expected.len(), "{name}");
        for (i, (o, e)) in ours.iter().zip(&expected).enumerate() {
            assert!((*o as f64 - e).abs() < 1e-4, "{name} step {i}: ours {o}, diffusers {e}");
        }
        assert!(engine.stats().blocks().reused == 0, "{name}: calibration never skips");
    }
}
