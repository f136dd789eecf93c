//! The tagged configuration: diffusers' names and defaults, typed validation errors, host checks, stacks.

use cache_engines::cache_core::{AttentionKind, AttentionSite, ModuleSite};
use cache_engines::*;

fn cogvideox_host() -> HostInfo {
    let sites = (0..2)
        .map(|i| AttentionSite { stack: "transformer_blocks", index: i, attn: "attn1", kind: AttentionKind::Spatial })
        .collect();
    let modules = (0..2).map(|i| ModuleSite { stack: "transformer_blocks", index: i, name: "ff" }).collect();
    let module_names = (0..2)
        .flat_map(|i| ["", ".norm1", ".attn1", ".attn1.to_q", ".ff", ".ff.net.0.proj"].map(|n| format!("transformer_blocks.{i}{n}")))
        .chain(["proj_out".to_string()])
        .collect();
    HostInfo { sites, num_blocks: 2, tensor_format: "BFCHW".into(), modules, module_names, step_signal: Some("emb".into()), other_step_signals: vec![], per_branch_calls: false, hands_sigma: false }
}

#[test]
fn json_uses_diffusers_names_and_defaults() {
    let c: CacheConfig = serde_json::from_str(
        r#"{"type": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2}"#,
    )
    .unwrap();
    let CacheConfig::PyramidAttentionBroadcast(p) = &c else { panic!("{c:?}") };
    assert_eq!(p.spatial_attention_timestep_skip_range, (100.0, 800.0));
    assert_eq!(p.temporal_attention_block_skip_range, None);
    let c: CacheConfig = serde_json::from_str(r#"{"type": "faster_cache", "attention_weight": 0.3}"#).unwrap();
    let CacheConfig::FasterCache(f) = &c else { panic!() };
    assert_eq!((f.attention_weight, f.unconditional_batch_skip_range), (WeightSchedule::Constant(0.3), 5));
    let c: CacheConfig = toml::from_str("type = \"first_block_cache\"\nthreshold = 0.1\n").unwrap();
    assert_eq!(c, CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.1, ..Default::default() }));
    assert!(serde_json::from_str::<CacheConfig>(r#"{"type": "first_block_cache", "treshold": 0.1}"#).is_err());
}

#[test]
fn validation_errors_are_typed() {
    let fbc = CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: -0.1, ..Default::default() });
    assert!(matches!(fbc.validate(), Err(ConfigError::Negative { field: "threshold", .. })));
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        spatial_attention_block_skip_range: Some(0),
        ..Default::default()
    });
    assert!(matches!(pab.validate(), Err(ConfigError::ZeroSkipRange { .. })));
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        spatial_attention_block_skip_range: Some(2),
        spatial_attention_timestep_skip_range: (800.0, 100.0),
        ..Default::default()
    });
    assert!(matches!(pab.validate(), Err(ConfigError::EmptyRange { lo, hi, .. }) if lo == 800.0 && hi == 100.0));
    let fc = CacheConfig::FasterCache(FasterCacheConfig { tensor_format: "BHWC".into(), ..Default::default() });
    assert_eq!(fc.validate(), Err(ConfigError::UnknownTensorFormat("BHWC".into())));
}

#[test]
fn temporal_attention_on_a_model_without_any_is_refused() {
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        temporal_attention_block_skip_range: Some(2),
        ..Default::default()
    });
    assert!(matches!(pab.check_host(&cogvideox_host()), Err(ConfigError::NotHostable(m)) if m.contains("temporal")));
    // Presets drop what the model lacks, so they always fit.
    for p in [Preset::Quality, Preset::Balanced, Preset::Speed] {
        let preset = CacheConfig::preset(p, &cogvideox_host());
        // Without a calibration the type says so.
        assert!(!preset.is_calibrated());
        preset.config().check_host(&cogvideox_host()).unwrap();
    }
}


#[test]
fn new_engines_use_diffusers_names() {
    let c: CacheConfig = serde_json::from_str(
        r#"{"type": "mag_cache", "threshold": 1.42, "max_skip_steps": 2, "retention_ratio": 0.2,
            "num_inference_steps": 12, "mag_ratios": [1.0, 1.02, 0.98]}"#,
    )
    .unwrap();
    let CacheConfig::MagCache(m) = &c else { panic!("{c:?}") };
    assert_eq!((m.threshold, m.max_skip_steps, m.num_inference_steps, m.calibrate), (1.42, 2, 12, false));
    let c: CacheConfig = serde_json::from_str(
        r#"{"type": "taylorseer_cache", "cache_interval": 3, "disable_cache_before_step": 2,
            "disable_cache_after_step": null, "max_order": 1, "taylor_factors_dtype": "float32",
            "cache_identifiers": ["transformer_blocks\\.\\d+\\.attn1"]}"#,
    )
    .unwrap();
    let CacheConfig::TaylorSeerCache(t) = &c else { panic!("{c:?}") };
    assert_eq!((t.cache_interval, t.taylor_factors_dtype), (3, FactorDtype::Float32));
    let d: CacheConfig = toml::from_str("type = \"taylorseer_cache\"\n").unwrap();
    assert_eq!(d, CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig::default()));
    assert!(serde_json::from_str::<CacheConfig>(r#"{"type": "taylorseer_cache", "taylor_factors_dtype": "int8"}"#).is_err());
}

#[test]
fn magcache_without_ratios_says_how_to_get_them() {
    let c = CacheConfig::MagCache(MagCacheConfig::default());
    let e = c.check_host(&cogvideox_host()).unwrap_err();
    assert!(matches!(&e, ConfigError::Missing { field: "mag_ratios", .. }), "{e}");
    assert!(e.to_string().contains("ditcache calibrate"), "{e}");
    CacheConfig::MagCache(MagCacheConfig::calibration(12)).check_host(&cogvideox_host()).unwrap();
}

#[test]
fn taylorseer_defaults_hook_nothing_on_cogvideox_and_are_refused() {
    let e = CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig::default()).check_host(&cogvideox_host()).unwrap_err();
    let ConfigError::NotHostable(m) = &e else { panic!("{e:?}") };
    assert!(m.contains("attn1") && m.contains(r"transformer_blocks\\.\\d+\\.ff"), "{m}");
    // A pattern that selects a module the host cannot hook (a norm, a whole block) is refused by name.
    for p in [r"transformer_blocks\.\d+\.norm1", r"transformer_blocks\.\d+", "proj_out"] {
        let c = TaylorSeerCacheConfig { cache_identifiers: Some(vec![p.into()]), ..Default::default() };
        let e = CacheConfig::TaylorSeerCache(c).check_host(&cogvideox_host()).unwrap_err();
        assert!(matches!(&e, ConfigError::NotHostable(m) if m.contains("cannot hook")), "{p}: {e}");
    }
    let lite = TaylorSeerCacheConfig { use_lite_mode: true, ..Default::default() };
    assert!(CacheConfig::TaylorSeerCache(lite).check_host(&cogvideox_host()).is_err());
    let ok = TaylorSeerCacheConfig {
        cache_identifiers: Some(vec![r"transformer_blocks\.\d+\.(attn1|ff)".into()]),
        ..Default::default()
    };
    CacheConfig::TaylorSeerCache(ok).check_host(&cogvideox_host()).unwrap();
    let bad = TaylorSeerCacheConfig { disable_cache_before_step: 0, ..Default::default() };
    assert!(CacheConfig::TaylorSeerCache(bad).validate().is_err());
}

#[test]
fn stacks_refuse_engines_that_decide_the_same_thing() {
    let mag = CacheConfig::MagCache(MagCacheConfig { mag_ratios: Some(vec![1.0; 4]), ..Default::default() });
    let fbc = CacheConfig::FirstBlockCache(FirstBlockCacheConfig::default());
    let seer = CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig {
        cache_identifiers: Some(vec![r"transformer_blocks\.\d+\.ff".into()]),
        ..Default::default()
    });
    let faster = CacheConfig::FasterCache(FasterCacheConfig::cogvideox());
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig {
        spatial_attention_block_skip_range: Some(2),
        ..Default::default()
    });
    for pair in [[mag.clone(), fbc.clone()], [fbc.clone(), mag.clone()], [mag.clone(), mag.clone()], [seer.clone(), seer.clone()],
                 [mag.clone(), faster.clone()], [faster.clone(), seer.clone()]] {
        let s = CacheConfig::Stack { strategies: pair.to_vec() };
        assert!(matches!(s.validate(), Err(ConfigError::Conflict(_))), "{}", s.label());
    }
    for pair in [[mag.clone(), pab.clone()], [seer.clone(), fbc.clone()], [mag, seer]] {
        let s = CacheConfig::Stack { strategies: pair.to_vec() };
        s.check_host(&cogvideox_host()).unwrap();
    }
}

#[test]
fn teacache_uses_the_authors_names_and_is_refused_where_it_cannot_run() {
    let c: CacheConfig = serde_json::from_str(
        r#"{"type": "teacache", "rel_l1_thresh": 0.2, "coefficients": [1.0, 0.0], "num_steps": 12}"#,
    )
    .unwrap();
    let CacheConfig::TeaCache(t) = &c else { panic!("{c:?}") };
    assert_eq!((t.rel_l1_thresh, t.num_steps, c.label()), (0.2, 12, "teacache(0.2)".to_string()));
    c.check_host(&cogvideox_host()).unwrap();
    // The generation must have num_steps steps.
    assert!(c.check_steps(12).is_ok());
    let e = c.check_steps(20).unwrap_err();
    assert!(matches!(e, ConfigError::StepMismatch { engine: "TeaCache", configured: 12, generation: 20, .. }), "{e}");
    assert!(e.to_string().contains("12") && e.to_string().contains("20"), "{e}");
    // A model that hands over no step signal cannot run it.
    let dit = HostInfo { step_signal: None, ..cogvideox_host() };
    assert!(matches!(c.check_host(&dit), Err(ConfigError::NotHostable(m)) if m.contains("emb")));
    // It decides the whole stack: no second decider, no FasterCache batch changes.
    let fbc = CacheConfig::FirstBlockCache(Default::default());
    for other in [fbc, CacheConfig::MagCache(MagCacheConfig::calibration(12)), CacheConfig::FasterCache(Default::default()), c.clone()] {
        let stack = CacheConfig::Stack { strategies: vec![c.clone(), other] };
        assert!(matches!(stack.validate(), Err(ConfigError::Conflict(_))), "{stack:?}");
    }
    // The authors' published CogVideoX polynomials load as a config.
    let p = cache_engines::TeaCacheConfig::published("CogVideoX-5b", 0.2, 50).unwrap();
    assert_eq!(p.coefficients[0], -1.53880483e+03);
    CacheConfig::TeaCache(p).check_host(&cogvideox_host()).unwrap();
}

#[test]
fn magcache_for_another_step_count_is_refused() {
    // A config made for 10 steps (its ratios, retention steps and reset follow 10), run for 20.
    let c: CacheConfig = serde_json::from_str(
        r#"{"type": "mag_cache", "num_inference_steps": 10, "mag_ratios": [1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91]}"#,
    )
    .unwrap();
    c.check_host(&cogvideox_host()).unwrap();
    c.check_steps(10).unwrap();
    let e = c.check_steps(20).unwrap_err();
    assert!(matches!(e, ConfigError::StepMismatch { engine: "MagCache", field: "num_inference_steps", configured: 10, generation: 20, .. }), "{e}");
    // Inside a stack too.
    let stack = CacheConfig::Stack { strategies: vec![c, CacheConfig::PyramidAttentionBroadcast(Default::default())] };
    assert!(matches!(stack.check_steps(20), Err(ConfigError::StepMismatch { engine: "MagCache", .. })));
}

#[test]
fn faster_cache_refuses_a_layout_the_model_does_not_produce() {
    // diffusers' default BCFHW on CogVideoX (BFCHW), and an image layout on a video model.
    for format in ["BCFHW", "BCHW"] {
        let fc = CacheConfig::FasterCache(FasterCacheConfig { tensor_format: format.into(), ..FasterCacheConfig::cogvideox() });
        fc.validate().unwrap();
        let e = fc.check_host(&cogvideox_host()).unwrap_err();
        assert_eq!(e, ConfigError::TensorFormatMismatch { config: format.into(), host: "BFCHW".into() });
        assert!(e.to_string().contains(format) && e.to_string().contains("BFCHW"), "{e}");
    }
    CacheConfig::FasterCache(FasterCacheConfig::cogvideox()).check_host(&cogvideox_host()).unwrap();
    let latte = HostInfo { tensor_format: "BCFHW".into(), ..cogvideox_host() };
    CacheConfig::FasterCache(FasterCacheConfig::for_host(&latte)).check_host(&latte).unwrap();
}

#[test]
fn sea_cache_uses_diffusers_names_builds_for_video_latents_and_decides_the_whole_stack() {
    // parity-cases-flux-wan.md's form, JSON and TOML.
    let c: CacheConfig = serde_json::from_str(
        r#"{"type": "sea_cache", "threshold": 0.3, "residual_order": 0, "retention_steps": 2, "cache_end_steps": 1,
            "max_consecutive_cached": 3, "power_exp": 3.0}"#,
    )
    .unwrap();
    let CacheConfig::SeaCache(s) = &c else { panic!("{c:?}") };
    assert_eq!((s.threshold, s.residual_order, s.retention_steps, s.max_consecutive_cached), (0.3, 0, 2, 3));
    assert_eq!(c.label(), "seacache(0.3,o0,k3)");
    let t: CacheConfig = toml::from_str("type = \"sea_cache\"\n").unwrap();
    assert_eq!(t, CacheConfig::SeaCache(SeaCacheConfig::default()));
    assert!(serde_json::from_str::<CacheConfig>(r#"{"type": "sea_cache", "treshold": 0.1}"#).is_err());
    let bad: CacheConfig = serde_json::from_str(r#"{"type": "sea_cache", "threshold": -0.1}"#).unwrap();
    assert!(matches!(bad.validate(), Err(ConfigError::Negative { field: "threshold", .. })));
    // Video latents in either layout (CogVideoX's BFCHW is permuted), not FLUX's packed tokens; no step count
    // to check (the step count comes with each call).
    let wan = HostInfo { tensor_format: "BCFHW".into(), per_branch_calls: true, hands_sigma: true, ..cogvideox_host() };
    let bfchw = HostInfo { hands_sigma: true, ..cogvideox_host() };
    for host in [&wan, &bfchw] {
        c.check_host(host).unwrap();
        build::<burn_ndarray::NdArray<f32>>(&c, host).unwrap();
    }
    // A pipeline that hands no sigma (CogVideoX's, Latte's) would leave the gate computing every call: refused.
    assert!(matches!(c.check_host(&cogvideox_host()), Err(ConfigError::NotHostable(m)) if m.contains("sigma")));
    c.check_steps(7).unwrap();
    let flux = HostInfo { tensor_format: "BLC".into(), per_branch_calls: true, hands_sigma: true, ..cogvideox_host() };
    assert!(matches!(build::<burn_ndarray::NdArray<f32>>(&c, &flux).map(|_| ()), Err(ConfigError::NotHostable(m)) if m.contains("BLC")));
    // It decides the whole stack: no second decider, no FasterCache batch changes; attention-level engines stack.
    let mag = CacheConfig::MagCache(MagCacheConfig::calibration(12));
    let tea = CacheConfig::TeaCache(TeaCacheConfig::published("CogVideoX-5b", 0.2, 50).unwrap());
    for other in [CacheConfig::FirstBlockCache(Default::default()), mag, tea, CacheConfig::FasterCache(FasterCacheConfig::cogvideox()), c.clone()] {
        for pair in [vec![c.clone(), other.clone()], vec![other, c.clone()]] {
            let stack = CacheConfig::Stack { strategies: pair };
            assert!(matches!(stack.validate(), Err(ConfigError::Conflict(_))), "{}", stack.label());
        }
    }
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig { spatial_attention_block_skip_range: Some(2), ..Default::default() });
    CacheConfig::Stack { strategies: vec![c.clone(), pab] }.check_host(&bfchw).unwrap();
    // The decisions from per-step distances: steps 0 and 1 retained, then reuses while the sum stays below 0.3
    // (0.1, 0.2, 0.25), the last step computes.
    let skips = seacache_schedule(s, 6, &[0.1, 0.1, 0.1, 0.05, 0.1]);
    assert_eq!(skips, vec![false, false, true, true, true, false]);
}

#[test]
fn easycache_uses_the_authors_names_defaults_and_refuses_stacks_and_other_step_counts() {
    let c: CacheConfig = serde_json::from_str(r#"{"type": "easycache", "thresh": 0.1, "ret_steps": 4, "num_steps": 20}"#).unwrap();
    let CacheConfig::EasyCache(e) = &c else { panic!("{c:?}") };
    assert_eq!((e.thresh, e.ret_steps, e.num_steps, c.label()), (0.1, 4, 20, "easycache(0.1,r4)".to_string()));
    // The authors' defaults: --thresh_t2v 0.05, ret_steps 10, 50 sampling steps.
    let d: CacheConfig = toml::from_str("type = \"easycache\"").unwrap();
    assert_eq!(d, CacheConfig::EasyCache(EasyCacheConfig { thresh: 0.05, ret_steps: 10, num_steps: 50 }));
    c.check_host(&cogvideox_host()).unwrap();
    let err = c.check_steps(30).unwrap_err();
    assert!(matches!(err, ConfigError::StepMismatch { engine: "EasyCache", field: "num_steps", configured: 20, generation: 30, .. }), "{err}");
    let bad: CacheConfig = serde_json::from_str(r#"{"type": "easycache", "thresh": -0.1}"#).unwrap();
    assert!(matches!(bad.validate(), Err(ConfigError::Negative { field: "thresh", .. })));
    assert!(serde_json::from_str::<CacheConfig>(r#"{"type": "easycache", "threshold": 0.1}"#).is_err(), "unknown field accepted");
    // A replaced call reaches no other engine: every pair is refused, in either order.
    let pab = CacheConfig::PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig { spatial_attention_block_skip_range: Some(2), ..Default::default() });
    for other in [pab, CacheConfig::FirstBlockCache(Default::default()), c.clone()] {
        for strategies in [vec![c.clone(), other.clone()], vec![other.clone(), c.clone()]] {
            let stack = CacheConfig::Stack { strategies };
            assert!(matches!(stack.validate(), Err(ConfigError::Conflict(m)) if m.contains("EasyCache")), "{}", stack.label());
        }
    }
}
