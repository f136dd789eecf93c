//! The committed trained model (assets/shapes) loads like any diffusers checkpoint (f16 safetensors) and its
//! short generation equals diffusers' stored result.

use benches::backend::{device, Backend as B};
use benches::parity::rel_l2;
use benches::shapes::{shapes_dir, Prompts, DEFAULT_PROMPT};
use cache_core::Identity;
use models::weights::read_safetensors;
use models::{denoise, CogVideoXScheduler, CogVideoXTransformer3DModel, DenoiseInput, DenoiseOptions, HostTensor};

#[test]
fn trained_model_matches_diffusers_generation() {
    let dir = shapes_dir();
    let dev = device();
    let model = CogVideoXTransformer3DModel::<B>::from_pretrained(&dir.join("transformer"), &dev).unwrap();
    let mut scheduler = CogVideoXScheduler::from_json_file(&dir.join("scheduler/scheduler_config.json")).unwrap();
    let expected = read_safetensors(&dir.join("expected_denoise.safetensors")).unwrap();
    // The prompt as the Rust side builds it equals the one diffusers was given.
    let prompts = Prompts::load(&dir, model.config.max_text_seq_length).unwrap();
    assert_eq!(prompts.embed(DEFAULT_PROMPT).unwrap(), expected["prompt_embeds"]);
    let input = DenoiseInput {
        latents: expected["latents"].to_tensor(&dev),
        prompt_embeds: prompts.embed(DEFAULT_PROMPT).unwrap().to_tensor(&dev),
        pooled_prompt_embeds: None,
        negative_pooled_prompt_embeds: None,
        negative_prompt_embeds: Some(prompts.negative().to_tensor(&dev)),
        num_videos_per_prompt: 1,
        num_inference_steps: 8,
        guidance_scale: 6.0,
    };
    let out = denoise(&model, &mut scheduler, input, &mut Identity, DenoiseOptions::default()).unwrap();
    let out = HostTensor::from_tensor(out);
    let err = rel_l2(&out.data, &expected["final_latents"].data);
    assert!(err < 1e-3, "rel_l2 vs diffusers {err}");
}

#[test]
fn unknown_prompt_attributes_are_errors() {
    let p = Prompts::load(&shapes_dir(), 8).unwrap();
    assert!(p.embed("shape=triangle").unwrap_err().contains("triangle"));
    assert!(p.embed("texture=rough").unwrap_err().contains("texture"));
    assert!(p.embed("shape").is_err());
}
