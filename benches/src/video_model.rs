//! What the tools add to [`models::VideoModel`] (re-exported here): bench inputs and the work model that turns
//! skip counts into an ideal speedup.

use cache_core::WorkModel;
use models::weights::randn;
pub use models::VideoModel;
use models::{DenoiseInput, HostTensor, ModelBackend};

use crate::bench::BenchOptions;

/// Prompt tokens of Latte bench inputs (random embeddings; Latte-1 itself takes up to 120 T5 tokens).
pub const LATTE_BENCH_TEXT_TOKENS: usize = 16;

/// Prompt tokens of FLUX bench inputs: the trained model's (`tools/train/train_flux_shapes.py`), and the length
/// of drawn ones (FLUX.1 itself takes up to 512 T5 tokens).
pub const FLUX_BENCH_TEXT_TOKENS: usize = 8;

/// Prompt tokens of Wan bench inputs: the trained model's (`tools/train/train_wan_shapes.py`), and the length of
/// drawn ones (Wan 2.1 itself pads UMT5's to 512).
pub const WAN_BENCH_TEXT_TOKENS: usize = 8;

/// Bench-side methods of a [`VideoModel`].
pub trait BenchModel<B: ModelBackend> {
    /// The work model at the model's sample size (bench inputs).
    fn work_model(&self) -> WorkModel;

    /// The shapes of one video's bench inputs: latents (`[1, F, C, H, W]` CogVideoX, `[1, C, F, H, W]` Latte,
    /// `[1, 1, C, h, w]` FLUX at its `default_sample_size`) and prompt embeddings (`[1, S, D]`), at the model's
    /// sample size.
    fn input_shapes(&self) -> ([usize; 5], [usize; 3]);

    /// What a bench generation starts from: `opts.batch` videos at the model's sample size, each with latents
    /// drawn from its own seed ([`video_seed`]), spread evenly over the given prompts (`[k, S, D]` (prompt,
    /// negative) embeddings; `batch / k` videos each, adjacent) or, without them, one prompt drawn per video.
    /// Refuses a batch that the prompts do not divide. FLUX's pooled embeddings are the mean of a prompt's
    /// attribute tokens ([`crate::shapes::pooled`], the trained model's rule) or drawn with drawn prompts.
    fn bench_inputs(&self, opts: &BenchOptions, device: &B::Device) -> Result<DenoiseInput<B>, String>;

    /// Model calls per denoising step at this guidance: 2 for FLUX under true CFG (without `guidance_embeds`,
    /// `guidance > 1`) and Wan under guidance (`guidance > 1`), else 1 (CogVideoX and Latte batch their CFG
    /// branches into one call).
    fn calls_per_step(&self, guidance: f64) -> usize;
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
            VideoModel::Flux(p) => {
                let c = &p.transformer.config;
                let s = p.default_sample_size;
                let tokens = FLUX_BENCH_TEXT_TOKENS + (s / 2) * (s / 2);
                WorkModel {
                    num_blocks: c.num_layers + c.num_single_layers,
                    attention_share: p.transformer.attention_share(tokens),
                    ff_share: p.transformer.ff_share(tokens),
                }
            }
            VideoModel::Wan(p) => {
                let t = &p.transformer;
                let [f, h, w] = p.sample_size;
                let [pt, ph, pw] = t.config.patch_size;
                let tokens = (f / pt) * (h / ph) * (w / pw);
                let (attention_share, ff_share) = t.block_shares(tokens, WAN_BENCH_TEXT_TOKENS);
                WorkModel { num_blocks: t.config.num_layers, attention_share, ff_share }
            }
        }
    }

    fn input_shapes(&self) -> ([usize; 5], [usize; 3]) {
        match self {
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
            VideoModel::Flux(p) => {
                let c = &p.transformer.config;
                let s = p.default_sample_size;
                ([1, 1, c.in_channels / 4, s, s], [1, FLUX_BENCH_TEXT_TOKENS, c.joint_attention_dim])
            }
            VideoModel::Wan(p) => {
                let c = &p.transformer.config;
                let [f, h, w] = p.sample_size;
                ([1, c.in_channels, f, h, w], [1, WAN_BENCH_TEXT_TOKENS, c.text_dim])
            }
        }
    }

    fn calls_per_step(&self, guidance: f64) -> usize {
        match self {
            VideoModel::Flux(p) if !p.transformer.config.guidance_embeds && guidance > 1.0 => 2,
            VideoModel::Wan(_) if guidance > 1.0 => 2,
            _ => 1,
        }
    }

    fn bench_inputs(&self, opts: &BenchOptions, device: &B::Device) -> Result<DenoiseInput<B>, String> {
        let seed = opts.seed;
        let (latents, text) = self.input_shapes();
        let videos = opts.batch;
        if videos == 0 {
            return Err("a batch needs at least one video".into());
        }
        let (prompt, negative) = match &opts.prompt {
            Some(pair) => pair.clone(),
            // One drawn prompt per video.
            None => {
                let drawn = |offset: u64| {
                    let parts = (0..videos).map(|j| randn(video_seed(seed, j).wrapping_add(offset), &text)).collect();
                    rows(parts).expect("at least one video")
                };
                (drawn(1), drawn(2))
            }
        };
        let prompts = prompt.shape[0];
        if prompts == 0 || videos % prompts != 0 {
            return Err(format!("a batch of {videos} videos cannot be split evenly over {prompts} prompts"));
        }
        let latents = rows((0..videos).map(|j| randn(video_seed(seed, j), &latents)).collect()).expect("at least one video");
        let (pooled, negative_pooled) = match self {
            VideoModel::Flux(p) => {
                let dim = p.transformer.config.pooled_projection_dim;
                let (a, b) = match &opts.prompt {
                    Some(_) => (crate::shapes::pooled(&prompt)?, crate::shapes::pooled(&negative)?),
                    None => {
                        let drawn = |offset: u64| {
                            rows((0..videos).map(|j| randn(video_seed(seed, j).wrapping_add(offset), &[1, dim])).collect())
                                .expect("at least one video")
                        };
                        (drawn(3), drawn(4))
                    }
                };
                if a.shape[1] != dim {
                    return Err(format!("pooled prompt embeddings have {} values, the model's pooled_projection_dim is {dim}", a.shape[1]));
                }
                (Some(a.to_tensor(device)), Some(b.to_tensor(device)))
            }
            _ => (None, None),
        };
        Ok(DenoiseInput {
            pooled_prompt_embeds: pooled,
            negative_pooled_prompt_embeds: negative_pooled,
            latents: latents.to_tensor(device),
            prompt_embeds: prompt.to_tensor(device),
            negative_prompt_embeds: Some(negative.to_tensor(device)),
            num_videos_per_prompt: videos / prompts,
            num_inference_steps: opts.steps,
            guidance_scale: opts.guidance,
        })
    }
}

/// The seed of video `j`'s noise (and drawn prompt): video 0 keeps the run's seed, so a batch of one is the
/// single-video run.
pub fn video_seed(seed: u64, j: usize) -> u64 {
    seed.wrapping_add((j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Tensors of equal trailing shape stacked along the first dimension; `None` for no tensors.
pub fn rows(parts: Vec<HostTensor>) -> Option<HostTensor> {
    let mut shape = parts.first()?.shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    Some(HostTensor { shape, data: parts.into_iter().flat_map(|p| p.data).collect() })
}
