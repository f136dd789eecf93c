//! What the tools add to [`models::VideoModel`] (re-exported here): bench inputs and the work model that turns
//! skip counts into an ideal speedup.

use cache_core::WorkModel;
use models::weights::randn;
pub use models::VideoModel;
use models::{DenoiseInput, ModelBackend};

use crate::bench::BenchOptions;

/// Prompt tokens of Latte bench inputs (random embeddings; Latte-1 itself takes up to 120 T5 tokens).
pub const LATTE_BENCH_TEXT_TOKENS: usize = 16;

/// Bench-side methods of a [`VideoModel`].
pub trait BenchModel<B: ModelBackend> {
    /// The work model at the model's sample size (bench inputs).
    fn work_model(&self) -> WorkModel;

    /// What a bench generation starts from: latents from `opts.seed` at the model's sample size, and the given
    /// (prompt, negative) embeddings or, without them, embeddings drawn from the seed too.
    fn bench_inputs(&self, opts: &BenchOptions, device: &B::Device) -> DenoiseInput<B>;
}

impl<B: ModelBackend> BenchModel<B> for VideoModel<B> {
    fn work_model(&self) -> WorkModel {
        match self {
            VideoModel::CogVideoX { model, .. } => {
                let c = &model.config;
                let frames = c.latent_frames();
                let tokens = c.max_text_seq_length + frames * (c.sample_height / c.patch_size) * (c.sample_width / c.patch_size);
                WorkModel {
                    num_blocks: c.num_layers,
                    attention_share: model.attention_share(tokens),
                    ff_share: model.ff_share(tokens),
                }
            }
            VideoModel::Latte(p) => {
                let c = &p.transformer.config;
                let patches = (c.sample_size / c.patch_size()).pow(2);
                let (f, t) = (c.video_length, LATTE_BENCH_TEXT_TOKENS);
                WorkModel {
                    num_blocks: 2 * c.num_layers,
                    attention_share: p.transformer.attention_share(f, patches, t),
                    ff_share: p.transformer.ff_share(f, patches, t),
                }
            }
        }
    }

    fn bench_inputs(&self, opts: &BenchOptions, device: &B::Device) -> DenoiseInput<B> {
        let seed = opts.seed;
        let (latents, text) = match self {
            VideoModel::CogVideoX { model, .. } => {
                let c = &model.config;
                let frames = c.latent_frames();
                ([1, frames, c.in_channels, c.sample_height, c.sample_width], [1, c.max_text_seq_length, c.text_embed_dim])
            }
            VideoModel::Latte(p) => {
                let c = &p.transformer.config;
                let s = c.sample_size;
                ([1, c.in_channels(), c.video_length, s, s], [1, LATTE_BENCH_TEXT_TOKENS, c.caption_channels()])
            }
        };
        let (prompt, negative) = opts.prompt.clone().unwrap_or_else(|| (randn(seed + 1, &text), randn(seed + 2, &text)));
        DenoiseInput {
            latents: randn(seed, &latents).to_tensor(device),
            prompt_embeds: prompt.to_tensor(device),
            negative_prompt_embeds: Some(negative.to_tensor(device)),
            num_inference_steps: opts.steps,
            guidance_scale: opts.guidance,
        }
    }
}
