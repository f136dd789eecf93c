//! Wan beyond the parity cases: what a configuration, an input or a pipeline the model cannot take is refused
//! with (typed), which engines are hostable on its separate branch calls, the two experts' state kept apart,
//! and the shared-input route (`VideoModel`) equal to the pipeline's own.

use benches::backend::{device, Backend as B};
use benches::parity::committed_cases_dir;
use burn::tensor::Tensor;
use cache_core::{Branch, CallContext, ConfigError, Identity, StepContext};
use cache_engines::{build, CacheConfig, FasterCacheConfig, FirstBlockCacheConfig, TaylorSeerCacheConfig};
use models::input::ForwardInput;
use models::wan::{WanDenoiseInput, WanPipeline, WanScheduler};
use models::weights::read_safetensors;
use models::{DenoiseInput, DenoiseOptions, HostTensor, ModelError, VideoModel, WanConfig, WanTransformer3DModel, WeightSource};

fn tiny() -> WanConfig {
    WanConfig {
        num_attention_heads: 2,
        attention_head_dim: 12,
        in_channels: 4,
        out_channels: Some(4),
        text_dim: 24,
        freq_dim: 32,
        ffn_dim: 48,
        num_layers: 2,
        ..WanConfig::default()
    }
}

#[test]
fn image_to_video_configs_and_shapes_the_model_cannot_take_are_typed_errors() {
    let dev = device();
    for cfg in [
        WanConfig { image_dim: Some(1280), ..tiny() },
        WanConfig { added_kv_proj_dim: Some(24), ..tiny() },
        WanConfig { pos_embed_seq_len: Some(514), ..tiny() },
    ] {
        let e = WanTransformer3DModel::<B>::load(&cfg, &mut WeightSource::random(1), &dev).unwrap_err();
        assert!(matches!(&e, ModelError::Unsupported(m) if m.contains("image-to-video")), "{e}");
    }
    let e = WanTransformer3DModel::<B>::load(&WanConfig { attention_head_dim: 5, ..tiny() }, &mut WeightSource::random(1), &dev).unwrap_err();
    assert!(matches!(e, ModelError::InvalidConfig(_)), "{e}");
    let model = WanTransformer3DModel::<B>::load(&tiny(), &mut WeightSource::random(1), &dev).unwrap();
    // Odd latent height with a 2×2 spatial patch; more patches than the rotary tables hold.
    assert!(matches!(model.grid(3, 5, 4), Err(ModelError::Shape(_))));
    assert!(matches!(model.grid(2000, 4, 4), Err(ModelError::Shape(m)) if m.contains("rope_max_seq_len")));
    let pos = model.positions(model.grid(2, 4, 4).unwrap(), &dev);
    let ctx = CallContext::new(StepContext::new(0, 1, 500.0), Branch::Cond, 1);
    let input = |c: usize, f: usize, text: usize| ForwardInput {
        hidden_states: Tensor::<B, 5>::zeros([1, c, f, 4, 4], &dev),
        encoder_hidden_states: Tensor::zeros([1, 3, text], &dev),
        timestep: vec![500.0],
    };
    assert!(model.forward(input(4, 2, 24), &pos, &ctx, &mut Identity).is_ok());
    assert!(matches!(model.forward(input(3, 2, 24), &pos, &ctx, &mut Identity), Err(ModelError::Shape(_))));
    assert!(matches!(model.forward(input(4, 2, 20), &pos, &ctx, &mut Identity), Err(ModelError::Shape(_))));
    // Positions made for another grid.
    assert!(matches!(model.forward(input(4, 3, 24), &pos, &ctx, &mut Identity), Err(ModelError::Shape(m)) if m.contains("grid")));
}

#[test]
fn engines_written_for_a_batched_cfg_call_are_refused_and_wan_sites_are_named_as_diffusers() {
    let model = WanTransformer3DModel::<B>::load(&tiny(), &mut WeightSource::random(1), &device()).unwrap();
    let host = model.host_info();
    let Err(e) = build::<B>(&CacheConfig::FasterCache(FasterCacheConfig::for_host(&host)), &host) else {
        panic!("FasterCache's unconditional-branch mode was built on Wan")
    };
    assert!(matches!(&e, ConfigError::NotHostable(m) if m.contains("Wan")), "{e}");
    // diffusers' default TaylorSeer identifiers end in `attn`: Wan's `attn1`/`attn2`/`ffn` are not named, so the
    // default configuration hooks nothing and is refused rather than run as an uncached generation.
    assert!(build::<B>(&CacheConfig::TaylorSeerCache(TaylorSeerCacheConfig::default()), &host).is_err());
    let sites: Vec<String> = host.sites.iter().map(ToString::to_string).collect();
    assert_eq!(sites, ["blocks.0.attn1", "blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"]);
    assert_eq!(host.modules.iter().map(ToString::to_string).collect::<Vec<_>>(), ["blocks.0.ffn", "blocks.1.ffn"]);
    assert!(host.per_branch_calls);
}

fn two_expert_case() -> std::path::PathBuf {
    committed_cases_dir().join("wan_two_experts")
}

#[test]
fn two_experts_need_a_strategy_each_and_a_boundary() {
    let dev = device();
    let dir = two_expert_case();
    // The case directory has no model_index.json: without boundary_ratio transformer_2 would never run.
    let e = WanPipeline::<B>::from_pretrained(&dir, &dev).unwrap_err();
    assert!(matches!(&e, ModelError::InvalidConfig(m) if m.contains("boundary_ratio")), "{e}");
    let mut pipe = WanPipeline::<B>::from_pretrained_with(&dir, Some(0.7), &dev).unwrap();
    let t = read_safetensors(&dir.join("case.safetensors")).unwrap();
    let input = WanDenoiseInput {
        latents: t["latents"].to_tensor(&dev),
        prompt_embeds: t["prompt_embeds"].to_tensor(&dev),
        negative_prompt_embeds: Some(t["negative_prompt_embeds"].to_tensor(&dev)),
        num_inference_steps: 8,
        guidance_scale: 4.0,
        guidance_scale_2: Some(3.0),
    };
    let e = pipe.denoise::<Identity, Identity>(input.clone(), &mut Identity, None, false, None).unwrap_err();
    assert!(matches!(&e, ModelError::Strategy(m) if m.contains("transformer_2")), "{e}");
    // Each expert with its own First Block Cache: the high-noise expert's state never meets the low-noise
    // expert's (decisions as diffusers': case wan_two_experts_fbc); here the step count each one saw.
    let fbc = CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.5832, ..Default::default() });
    let mut s1 = build::<B>(&fbc, &pipe.transformer.host_info()).unwrap();
    let mut s2 = build::<B>(&fbc, &pipe.transformer_2.as_ref().unwrap().host_info()).unwrap();
    let mut experts = Vec::new();
    let mut record = |_: usize, _: f32, e: models::wan::Expert, _: &Tensor<B, 5>| experts.push(e);
    pipe.denoise(input, &mut *s1, Some(&mut *s2), false, Some(&mut record)).unwrap();
    let names: Vec<&str> = experts.iter().map(|e| e.name()).collect();
    // Timesteps 999 954 900 833 750 (≥ 700) then 643 500 301, as the case's trace records.
    assert_eq!(names, ["transformer"; 5].into_iter().chain(["transformer_2"; 3]).collect::<Vec<_>>());
    assert_eq!((s1.stats().steps.len(), s2.stats().steps.len()), (5, 3));
    // VideoModel takes one strategy: a two-expert pipeline is refused there, not run with shared state.
    let mut model = VideoModel::Wan(pipe);
    let shared = DenoiseInput::new(t["latents"].to_tensor(&dev), t["prompt_embeds"].to_tensor(&dev), 8, 1.0);
    let e = model.denoise(shared, &mut Identity, DenoiseOptions::default()).unwrap_err();
    assert!(matches!(&e, ModelError::Unsupported(m) if m.contains("two-expert")), "{e}");
}

#[test]
fn the_shared_input_route_equals_the_pipeline_and_other_schedulers_are_refused() {
    let dev = device();
    let dir = committed_cases_dir().join("wan_denoise_unipc");
    let t = read_safetensors(&dir.join("case.safetensors")).unwrap();
    let latents: Tensor<B, 5> = t["latents"].to_tensor(&dev);
    let prompt: Tensor<B, 3> = t["prompt_embeds"].to_tensor(&dev);
    let negative: Tensor<B, 3> = t["negative_prompt_embeds"].to_tensor(&dev);
    let mut pipe = WanPipeline::<B>::from_pretrained(&dir, &dev).unwrap();
    let own = WanDenoiseInput {
        latents: latents.clone(),
        prompt_embeds: prompt.clone(),
        negative_prompt_embeds: Some(negative.clone()),
        num_inference_steps: 8,
        guidance_scale: 5.0,
        guidance_scale_2: None,
    };
    let a = HostTensor::from_tensor(pipe.denoise::<Identity, Identity>(own, &mut Identity, None, false, None).unwrap());
    let mut model = VideoModel::Wan(pipe);
    let shared = DenoiseInput { negative_prompt_embeds: Some(negative), ..DenoiseInput::new(latents, prompt, 8, 5.0) };
    let mut seen = Vec::new();
    let mut on_step = |_: usize, t: i64, _: &Tensor<B, 5>| seen.push(t);
    let options = DenoiseOptions { on_step: Some(&mut on_step), ..Default::default() };
    let b = HostTensor::from_tensor(model.denoise(shared, &mut Identity, options).unwrap());
    assert_eq!(a.data, b.data);
    assert_eq!(seen, [999, 954, 900, 833, 750, 643, 500, 301]);
    assert_eq!(model.timesteps(8).unwrap(), seen);
    // A scheduler class WanPipeline's checkpoints do not ship is refused, naming the two it runs.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scheduler_config.json");
    std::fs::write(&path, r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
    let e = WanScheduler::from_json_file(&path).unwrap_err();
    assert!(matches!(&e, ModelError::Unsupported(m) if m.contains("UniPCMultistepScheduler")), "{e}");
}
