//! FLUX.1 beyond the parity cases: the built-in MagCache ratios are diffusers', engines diffusers does not
//! verify on separate branch calls are refused, a configuration or input the model cannot take is a typed
//! error, and the cache contexts of a true-CFG generation stay apart.

use benches::backend::{device, Backend as B};
use benches::parity::committed_cases_dir;
use burn::tensor::Tensor;
use cache_core::{Branch, ConfigError, Decision};
use cache_engines::{build, CacheConfig, FasterCacheConfig, MagCacheConfig, TaylorSeerCacheConfig, FLUX_MAG_RATIOS};
use models::flux::{latent_image_ids, FluxInput};
use models::{FluxConfig, FluxPipeline, FluxTransformer2DModel, ModelError, WeightSource};

fn case_json(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(committed_cases_dir().join(case).join("case.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tiny() -> FluxConfig {
    FluxConfig {
        in_channels: 16,
        num_layers: 1,
        num_single_layers: 1,
        attention_head_dim: 16,
        num_attention_heads: 2,
        joint_attention_dim: 32,
        pooled_projection_dim: 24,
        guidance_embeds: true,
        axes_dims_rope: vec![4, 6, 6],
        ..FluxConfig::default()
    }
}

#[test]
fn the_built_in_flux_ratios_are_diffusers_own() {
    // flux_magcache's case.json holds `diffusers.hooks.mag_cache.FLUX_MAG_RATIOS` as the generator read it.
    let c = case_json("flux_magcache");
    let theirs: Vec<f64> = serde_json::from_value(c["cache"]["mag_ratios"].clone()).unwrap();
    assert_eq!(theirs.len(), 28);
    for (ours, theirs) in FLUX_MAG_RATIOS.iter().zip(&theirs) {
        assert_eq!(*ours as f32, *theirs as f32);
    }
    // Interpolated to the case's 10 steps as diffusers does: indices 0, 3, 6, …, 27.
    let r = MagCacheConfig::flux(10).step_ratios();
    assert_eq!(r.len(), 10);
    assert_eq!((r[1], r[9]), (1.07812, 0.89062));
}

#[test]
fn faster_cache_on_flux_takes_the_distilled_mode_only_and_taylorseer_defaults_hook_its_attention() {
    let model = FluxTransformer2DModel::<B>::load(&tiny(), &mut WeightSource::random(1), &device()).unwrap();
    let host = model.host_info();
    let Err(e) = build::<B>(&CacheConfig::FasterCache(FasterCacheConfig::for_host(&host)), &host) else {
        panic!("FasterCache's unconditional-branch mode was built on FLUX")
    };
    assert!(matches!(&e, ConfigError::NotHostable(m) if m.contains("FLUX") && m.contains("is_guidance_distilled")), "{e}");
    // The attention-only mode diffusers runs on FLUX.1-dev (case flux_fastercache_distilled).
    let distilled = FasterCacheConfig { is_guidance_distilled: true, ..FasterCacheConfig::for_host(&host) };
    build::<B>(&CacheConfig::FasterCache(distilled), &host).unwrap();
    // diffusers' default identifiers (`^transformer_blocks.*attn`, `^single_transformer_blocks.*attn`) name
    // FLUX's attention modules, so the default configuration is hostable (on CogVideoX it hooks nothing).
    build::<B>(&CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig::default()), &host).unwrap();
    assert_eq!(host.num_blocks, 2);
    assert_eq!(host.sites.iter().map(ToString::to_string).collect::<Vec<_>>(), ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]);
}

#[test]
fn configurations_and_inputs_the_model_cannot_take_are_typed_errors() {
    let dev = device();
    let bad = FluxConfig { axes_dims_rope: vec![4, 6, 8], ..tiny() };
    let e = FluxTransformer2DModel::<B>::load(&bad, &mut WeightSource::random(1), &dev).unwrap_err();
    assert!(matches!(&e, ModelError::InvalidConfig(m) if m.contains("sum to 18")), "{e}");
    let model = FluxTransformer2DModel::<B>::load(&tiny(), &mut WeightSource::random(1), &dev).unwrap();
    let pos = model.positions(&[[0.0; 3]; 3], &latent_image_ids(4, 4), &dev);
    let input = |guidance: Option<Vec<f32>>, tokens: usize| FluxInput {
        hidden_states: Tensor::<B, 3>::zeros([1, tokens, 16], &dev),
        encoder_hidden_states: Tensor::zeros([1, 3, 32], &dev),
        pooled_projections: Tensor::zeros([1, 24], &dev),
        timestep: vec![0.5],
        guidance,
    };
    let ctx = cache_core::CallContext::new(cache_core::StepContext { step: 0, num_steps: 1, timestep: 500.0, sigma: None }, Branch::Cond, 1);
    let run = |x| model.forward(x, &pos, &ctx, &mut cache_core::Identity);
    assert!(matches!(run(input(None, 4)), Err(ModelError::Shape(m)) if m.contains("guidance")));
    assert!(matches!(run(input(Some(vec![3.5]), 5)), Err(ModelError::Shape(m)) if m.contains("4")));
    assert_eq!(run(input(Some(vec![3.5]), 4)).unwrap().dims(), [1, 4, 16]);
}

#[test]
fn true_cfg_keeps_one_state_per_cache_context() {
    // flux_fbc_true_cfg's reference decisions differ between the contexts (diffusers: one state each); the
    // replay records them apart and reproduces both.
    let dir = committed_cases_dir().join("flux_fbc_true_cfg");
    let report = benches::parity::run_case::<B>(&dir, &device());
    assert!(report.pass, "{report:?}");
    let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("trace.json")).unwrap()).unwrap();
    let decisions = |ctx: &str| -> Vec<String> {
        trace["steps"].as_array().unwrap().iter().map(|s| s[ctx]["blocks"].as_str().unwrap().to_string()).collect()
    };
    assert_ne!(decisions("cond"), decisions("uncond"));
    // A pipeline with no negative embeddings runs one context only.
    let mut pipe = FluxPipeline::<B>::from_pretrained(&dir, &device()).unwrap();
    let c = case_json("flux_fbc_true_cfg");
    let threshold = c["cache"]["threshold"].as_f64().unwrap();
    let cfg = CacheConfig::FirstBlockCache(cache_engines::FirstBlockCacheConfig { threshold, ..Default::default() });
    let mut s = build::<B>(&cfg, &pipe.transformer.host_info()).unwrap();
    let t = models::weights::read_safetensors(&dir.join("case.safetensors")).unwrap();
    let input = models::FluxDenoiseInput {
        latents: t["latents"].to_tensor(&device()),
        prompt_embeds: t["prompt_embeds"].to_tensor(&device()),
        pooled_prompt_embeds: t["pooled_prompt_embeds"].to_tensor(&device()),
        negative_prompt_embeds: None,
        negative_pooled_prompt_embeds: None,
        height: 64,
        width: 64,
        num_inference_steps: 10,
        guidance_scale: 3.5,
        true_cfg_scale: 1.0,
    };
    pipe.denoise(input, &mut *s, false, None).unwrap();
    let stats = s.stats();
    assert!(stats.steps.iter().all(|e| e.contexts.keys().eq(["cond"])));
    assert_eq!(stats.blocks().computed + stats.blocks().reused, 10);
    assert!(stats.entries().any(|e| e.blocks == Some(Decision::Skip)));
}
