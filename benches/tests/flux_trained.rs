//! The committed trained FLUX model (assets/flux_shapes: bf16 shards and their index, as FLUX.1-dev's directory)
//! loads unchanged, and its short true-CFG generation through the shared inputs (`VideoModel`, an image as a
//! clip of one frame) equals diffusers' stored `FluxPipeline` result.

use benches::backend::{device, Backend as B};
use benches::parity::rel_l2;
use benches::shapes::{flux_shapes_dir, pooled, Prompts, DEFAULT_PROMPT, FLUX_SHAPES_SAMPLE_SIZE};
use benches::video_model::FLUX_BENCH_TEXT_TOKENS;
use cache_core::Identity;
use models::weights::read_safetensors;
use models::{pack_latents, unpack_latents, DenoiseInput, DenoiseOptions, HostTensor, ModelError, VideoModel};

fn load() -> VideoModel<B> {
    VideoModel::<B>::from_dir(&flux_shapes_dir(), &device()).unwrap()
}

#[test]
fn trained_flux_model_matches_diffusers_generation() {
    let dir = flux_shapes_dir();
    let dev = device();
    let mut model = load();
    assert_eq!(model.class_name(), "FluxTransformer2DModel");
    let expected = read_safetensors(&dir.join("expected_denoise.safetensors")).unwrap();
    // The prompt and its pooled embedding as the Rust side builds them equal the ones diffusers was given.
    let prompts = Prompts::load(&dir, FLUX_BENCH_TEXT_TOKENS).unwrap();
    let embeds = prompts.embed(DEFAULT_PROMPT).unwrap();
    assert_eq!(embeds, expected["prompt_embeds"]);
    assert_eq!(pooled(&embeds).unwrap(), expected["pooled_prompt_embeds"]);
    let negative = prompts.negative();
    let s = FLUX_SHAPES_SAMPLE_SIZE;
    // diffusers was given packed latents; the shared input is the unpacked image.
    let latents = unpack_latents(expected["latents"].to_tensor::<B, 3>(&dev), s, s).reshape([1, 1, 4, s, s]);
    let input = DenoiseInput {
        latents,
        prompt_embeds: embeds.to_tensor(&dev),
        negative_prompt_embeds: Some(negative.to_tensor(&dev)),
        pooled_prompt_embeds: Some(pooled(&embeds).unwrap().to_tensor(&dev)),
        negative_pooled_prompt_embeds: Some(pooled(&negative).unwrap().to_tensor(&dev)),
        num_videos_per_prompt: 1,
        num_inference_steps: 8,
        guidance_scale: 4.0,
    };
    let out = model.denoise(input, &mut Identity, DenoiseOptions::default()).unwrap();
    let out = HostTensor::from_tensor(pack_latents(out.reshape([1, 4, s, s])));
    let err = rel_l2(&out.data, &expected["final_latents"].data);
    assert!(err < 1e-3, "rel_l2 vs diffusers {err}");
}

#[test]
fn packing_is_diffusers_layout() {
    // [1, 1, 2, 2] → one token of 4 values in (c, dy, dx) order; two channels interleave per channel first.
    let dev = device();
    let x = HostTensor { shape: vec![1, 2, 2, 4], data: (0..16).map(|v| v as f32).collect() };
    let packed = HostTensor::from_tensor(pack_latents(x.to_tensor::<B, 4>(&dev)));
    // Token 0 is the left 2×2 patch: channel 0 (0, 1, 4, 5), then channel 1 (8, 9, 12, 13).
    assert_eq!(packed.shape, vec![1, 2, 8]);
    assert_eq!(&packed.data[..8], &[0.0, 1.0, 4.0, 5.0, 8.0, 9.0, 12.0, 13.0]);
    let back = HostTensor::from_tensor(unpack_latents(packed.to_tensor::<B, 3>(&dev), 2, 4));
    assert_eq!(back, x);
}

#[test]
fn inputs_flux_cannot_take_are_typed_errors() {
    let dev = device();
    let mut model = load();
    let prompts = Prompts::load(&flux_shapes_dir(), FLUX_BENCH_TEXT_TOKENS).unwrap();
    let embeds = prompts.embed(DEFAULT_PROMPT).unwrap();
    let base = |latents: [usize; 5], guidance: f64| DenoiseInput {
        latents: burn::tensor::Tensor::<B, 5>::zeros(latents, &dev),
        prompt_embeds: embeds.to_tensor(&dev),
        negative_prompt_embeds: None,
        pooled_prompt_embeds: Some(pooled(&embeds).unwrap().to_tensor(&dev)),
        negative_pooled_prompt_embeds: None,
        num_videos_per_prompt: 1,
        num_inference_steps: 2,
        guidance_scale: guidance,
    };
    let mut run = |input| model.denoise(input, &mut Identity, DenoiseOptions::default()).map(|_| ()).unwrap_err();
    // Two frames, odd width, wrong channel count.
    for shape in [[1, 2, 4, 8, 8], [1, 1, 4, 8, 7], [1, 1, 3, 8, 8]] {
        let e = run(base(shape, 1.0));
        assert!(matches!(&e, ModelError::Shape(m) if m.contains("[images, 1, 4, h, w]")), "{shape:?}: {e}");
    }
    // No pooled embedding.
    let e = run(DenoiseInput { pooled_prompt_embeds: None, ..base([1, 1, 4, 8, 8], 1.0) });
    assert!(matches!(&e, ModelError::Shape(m) if m.contains("pooled_prompt_embeds")), "{e}");
    // True CFG without negatives.
    let e = run(base([1, 1, 4, 8, 8], 4.0));
    assert!(matches!(&e, ModelError::Shape(m) if m.contains("guidance_scale > 1 needs negative")), "{e}");
    // A pooled embedding given to a family that takes none.
    let mut cog = VideoModel::<B>::from_dir(&benches::shapes::shapes_dir(), &dev).unwrap();
    let latents = burn::tensor::Tensor::<B, 5>::zeros([1, 4, 4, 16, 16], &dev);
    let e = cog
        .denoise(DenoiseInput { latents, ..base([1, 1, 4, 8, 8], 1.0) }, &mut Identity, DenoiseOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(&e, ModelError::Shape(m) if m.contains("pooled prompt embeddings are FLUX's")), "{e}");
}
