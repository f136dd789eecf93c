//! The committed trained Wan model (assets/wan_shapes: bf16 shards and their index, as Wan2.1-T2V's directory,
//! UniPC with Wan 2.1's config) loads unchanged, and its short guided generation through the shared inputs
//! (`VideoModel`, cond and uncond as separate calls) equals diffusers' stored `WanPipeline` result.

use benches::backend::{device, Backend as B};
use benches::parity::rel_l2;
use benches::shapes::{wan_shapes_dir, Prompts, DEFAULT_PROMPT, WAN_SHAPES_SAMPLE_SIZE};
use benches::video_model::WAN_BENCH_TEXT_TOKENS;
use cache_core::Identity;
use models::weights::read_safetensors;
use models::{DenoiseInput, DenoiseOptions, HostTensor, VideoModel};

#[test]
fn trained_wan_model_matches_diffusers_generation() {
    let dir = wan_shapes_dir();
    let dev = device();
    let mut model = VideoModel::<B>::from_dir(&dir, &dev).unwrap();
    assert_eq!(model.class_name(), "WanTransformer3DModel");
    let expected = read_safetensors(&dir.join("expected_denoise.safetensors")).unwrap();
    // The prompt as the Rust side builds it equals the one diffusers was given; the negative is the empty
    // prompt, all zeros (the training's unconditional embedding).
    let prompts = Prompts::load(&dir, WAN_BENCH_TEXT_TOKENS).unwrap();
    let embeds = prompts.embed(DEFAULT_PROMPT).unwrap();
    assert_eq!(embeds, expected["prompt_embeds"]);
    assert_eq!(prompts.negative(), expected["negative_prompt_embeds"]);
    let [f, h, w] = WAN_SHAPES_SAMPLE_SIZE;
    assert_eq!(expected["latents"].shape, vec![1, 4, f, h, w]);
    let input = DenoiseInput {
        latents: expected["latents"].to_tensor::<B, 5>(&dev),
        prompt_embeds: embeds.to_tensor(&dev),
        negative_prompt_embeds: Some(prompts.negative().to_tensor(&dev)),
        pooled_prompt_embeds: None,
        negative_pooled_prompt_embeds: None,
        num_videos_per_prompt: 1,
        num_inference_steps: 8,
        guidance_scale: 5.0,
    };
    let out = HostTensor::from_tensor(model.denoise(input, &mut Identity, DenoiseOptions::default()).unwrap());
    assert_eq!(out.shape, expected["final_latents"].shape);
    let err = rel_l2(&out.data, &expected["final_latents"].data);
    // Measured 5.6e-6 on ndarray (f32 throughout, as diffusers on CPU).
    assert!(err < 1e-4, "rel_l2 vs diffusers {err}");
}
