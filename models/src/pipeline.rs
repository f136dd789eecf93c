//! What the pipelines share: the inputs of a generation ([`DenoiseInput`], [`DenoiseOptions`], [`StepNoise`]),
//! classifier-free guidance batched as `[uncond, cond]` ([`Guidance`]), the progress bar and the guided step loop
//! that the CogVideoX and Latte pipelines run.

use burn::tensor::{backend::Backend, FloatDType, Tensor};
use cache_core::{Branch, CallContext, CfgOrder, StepContext};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{ModelError, Result};
use crate::input::ForwardInput;
use crate::weights::randn;

/// What one generation starts from: one or more prompts, and `num_videos_per_prompt` videos of each, laid out as
/// diffusers' pipelines lay them out (a prompt's videos are adjacent rows).
///
/// # Shapes
/// - `latents`: `[B·V, F, C, H, W]` for CogVideoX, `[B·V, C, F, H, W]` for Latte, already multiplied by the
///   scheduler's `init_noise_sigma`; row `j` is video `j % V` of prompt `j / V`, each with its own noise
/// - `prompt_embeds`, `negative_prompt_embeds`: `[B, S, text_embed_dim]` (Latte: `caption_channels`, FLUX:
///   `joint_attention_dim`), one row per prompt (negative row `b` goes with prompt `b`), before the `V`-fold
///   repetition
/// - `pooled_prompt_embeds`, `negative_pooled_prompt_embeds` (FLUX only): `[B, pooled_projection_dim]`
/// - FLUX's latents are an image's: `[B·V, 1, C, h, w]` with `C = in_channels / 4` and `h`, `w` even, unpacked
///   (the pipeline packs 2×2 patches; the image is `8h × 8w` pixels)
///
/// With `B = V = 1` this is one video.
#[derive(Debug, Clone)]
pub struct DenoiseInput<B: Backend> {
    /// Initial noisy latents, one row per video.
    pub latents: Tensor<B, 5>,
    /// Prompt embeddings, one row per prompt.
    pub prompt_embeds: Tensor<B, 3>,
    /// Negative prompt embeddings, one row per prompt; needed when `guidance_scale > 1`.
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
    /// Pooled prompt embeddings, one row per prompt: FLUX's `pooled_prompt_embeds` (CLIP's), required there;
    /// refused by the families that take none (CogVideoX, Latte).
    pub pooled_prompt_embeds: Option<Tensor<B, 2>>,
    /// FLUX's `negative_pooled_prompt_embeds`, with `negative_prompt_embeds` under guidance.
    pub negative_pooled_prompt_embeds: Option<Tensor<B, 2>>,
    /// Videos per prompt (`V`, diffusers' `num_videos_per_prompt`; Latte's `num_images_per_prompt`), at least 1.
    pub num_videos_per_prompt: usize,
    /// Number of denoising steps.
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale; `> 1` runs the batched `[uncond, cond]` pass.
    pub guidance_scale: f64,
}

impl<B: Backend> DenoiseInput<B> {
    /// One video per prompt, under classifier-free guidance when `guidance_scale > 1` (which needs negative
    /// embeddings: set `negative_prompt_embeds`).
    pub fn new(latents: Tensor<B, 5>, prompt_embeds: Tensor<B, 3>, num_inference_steps: usize, guidance_scale: f64) -> Self {
        Self {
            latents,
            prompt_embeds,
            negative_prompt_embeds: None,
            pooled_prompt_embeds: None,
            negative_pooled_prompt_embeds: None,
            num_videos_per_prompt: 1,
            num_inference_steps,
            guidance_scale,
        }
    }

    /// The number of videos generated (`B·V`, the latents' rows).
    pub fn videos(&self) -> usize {
        self.latents.dims()[0]
    }
}

/// Options of [`denoise`].
#[derive(Default)]
pub struct DenoiseOptions<'a, B: Backend> {
    /// Draw a progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
    /// Called after each step with the step index, its timestep and the guided model output.
    pub on_step: Option<&'a mut dyn FnMut(usize, i64, &Tensor<B, 5>)>,
    /// The noise a stochastic scheduler (`CogVideoXDPMScheduler`) adds at each step; the DDIM schedulers add
    /// none and ignore it.
    pub step_noise: StepNoise<B>,
}

/// Where the noise a stochastic scheduler adds at each step comes from.
///
/// # Shapes
/// `Recorded`: one tensor per step, each the shape of [`DenoiseInput::latents`] (`[B·V, F, C, H, W]`)
#[derive(Debug, Clone)]
pub enum StepNoise<B: Backend> {
    /// Drawn by the library (torch's generator cannot be reproduced): row `r` of step `i` is standard normal
    /// from a seed mixing this one with `(i, r)` ([`crate::weights::randn`]), so a row's noise does not depend
    /// on the rows after it. The default, with seed 0.
    Seeded(u64),
    /// Replayed: step `i` adds `tensors[i]` (what diffusers drew and added, as a parity case records it in
    /// `step_noise.{i}`). A count other than the step count or another shape is a [`ModelError::Shape`].
    Recorded(Vec<Tensor<B, 5>>),
}

impl<B: Backend> Default for StepNoise<B> {
    fn default() -> Self {
        Self::Seeded(0)
    }
}

impl<B: Backend> StepNoise<B> {
    /// Checks recorded noise against `steps` steps of latents shaped `dims`.
    pub(crate) fn check(&self, steps: usize, dims: [usize; 5]) -> Result<()> {
        let Self::Recorded(tensors) = self else { return Ok(()) };
        if tensors.len() != steps {
            return Err(ModelError::Shape(format!("{} recorded step noise tensors for {steps} steps", tensors.len())));
        }
        match tensors.iter().position(|t| t.dims() != dims) {
            Some(i) => Err(ModelError::Shape(format!(
                "recorded step noise {i} has shape {:?}, the latents {dims:?}",
                tensors[i].dims()
            ))),
            None => Ok(()),
        }
    }

    /// The noise of step `i` (checked by [`Self::check`] first).
    pub(crate) fn at(&self, i: usize, dims: [usize; 5], device: &B::Device) -> Tensor<B, 5> {
        match self {
            Self::Recorded(tensors) => tensors[i].clone(),
            Self::Seeded(seed) => {
                let row = [1, dims[1], dims[2], dims[3], dims[4]];
                let draw = |r: usize| randn(mix(*seed, i as u64, r as u64), &row).to_tensor(device);
                Tensor::cat((0..dims[0]).map(draw).collect(), 0)
            }
        }
    }
}

/// A seed for step `step`, row `row` of a generation seeded `seed` (SplitMix64's finalizer, so that nearby
/// inputs give unrelated streams: `randn`'s SplitMix64 streams from seeds one gamma apart overlap).
fn mix(seed: u64, step: u64, row: u64) -> u64 {
    let mut z = seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (row + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Classifier-free guidance as diffusers' pipelines batch it: `[uncond × N, cond × N]` for N videos when
/// `guidance_scale > 1` (every negative row first, then every positive one; the latents' whole block twice).
pub(crate) struct Guidance<B: Backend> {
    /// The prompt batch, one row per video (`V` adjacent copies of each prompt), `[negatives, prompts]` under
    /// guidance.
    pub encoder: Tensor<B, 3>,
    /// Rows of one model call: `2N` under guidance, else `N`.
    pub batch: usize,
    /// What the batch holds.
    pub branch: Branch,
    scale: Option<f32>,
}

/// One embedding row per video: `[B, S, D]` → `[B·V, S, D]` with each row's `V` copies adjacent (diffusers'
/// `e.repeat(1, V, 1).view(B·V, S, D)`), as the pipelines batch prompts (and as `CogVideoXPipeline` needs
/// passed-in embeddings: one row per video).
pub fn per_video<B: Backend>(embeds: Tensor<B, 3>, videos_per_prompt: usize) -> Tensor<B, 3> {
    if videos_per_prompt == 1 {
        return embeds;
    }
    let [b, s, d] = embeds.dims();
    embeds.repeat_dim(1, videos_per_prompt).reshape([b * videos_per_prompt, s, d])
}

impl<B: Backend> Guidance<B> {
    /// Checks the prompts of `input` against its latents and batches them.
    pub fn new(input: &DenoiseInput<B>) -> Result<Self> {
        if input.pooled_prompt_embeds.is_some() || input.negative_pooled_prompt_embeds.is_some() {
            return Err(ModelError::Shape("pooled prompt embeddings are FLUX's input; this model takes none".into()));
        }
        let n = input.latents.dims()[0];
        let [b, _, _] = input.prompt_embeds.dims();
        let v = input.num_videos_per_prompt;
        if v == 0 || b == 0 || n != b * v {
            return Err(ModelError::Shape(format!(
                "latents have {n} rows; {b} prompts × num_videos_per_prompt {v} need {} (one row per video)",
                b * v
            )));
        }
        let prompts = per_video(input.prompt_embeds.clone(), v);
        if input.guidance_scale <= 1.0 {
            return Ok(Self { encoder: prompts, batch: n, branch: Branch::Unguided, scale: None });
        }
        let neg = input
            .negative_prompt_embeds
            .clone()
            .ok_or_else(|| ModelError::Shape("guidance_scale > 1 needs negative_prompt_embeds".into()))?;
        if neg.dims() != input.prompt_embeds.dims() {
            return Err(ModelError::Shape(format!(
                "negative_prompt_embeds {:?} and prompt_embeds {:?} differ in shape",
                neg.dims(),
                input.prompt_embeds.dims()
            )));
        }
        let encoder = Tensor::cat(vec![per_video(neg, v), prompts], 0);
        let scale = Some(input.guidance_scale as f32);
        Ok(Self { encoder, batch: 2 * n, branch: Branch::Cfg(CfgOrder::UncondFirst), scale })
    }

    /// The model input for `latents`: the whole block twice under guidance.
    pub fn batch_latents(&self, latents: &Tensor<B, 5>) -> Tensor<B, 5> {
        if self.scale.is_some() {
            Tensor::cat(vec![latents.clone(), latents.clone()], 0)
        } else {
            latents.clone()
        }
    }

    /// `uncond + scale · (cond − uncond)` per video under guidance (first half, second half), else the output
    /// itself.
    pub fn combine(&self, noise_pred: Tensor<B, 5>) -> Tensor<B, 5> {
        match self.scale {
            Some(scale) => {
                let [uncond, text]: [Tensor<B, 5>; 2] = noise_pred.chunk(2, 0).try_into().expect("two halves");
                uncond.clone() + (text - uncond) * scale
            }
            None => noise_pred,
        }
    }
}

/// A progress bar of `steps` denoising steps on stderr, or a hidden one.
pub(crate) fn progress_bar(show: bool, steps: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}]")
            .expect("valid template"),
    );
    bar.set_prefix("denoise");
    bar
}

/// The steps of a guided loop, shared by the pipelines: for each timestep, the batched call (`predict` runs the
/// model, scaling its input as the scheduler wants), guidance, the step callback, the scheduler `step`.
pub(crate) fn guided_steps<B: Backend>(
    guidance: &Guidance<B>,
    timesteps: &[i64],
    latents: Tensor<B, 5>,
    options: DenoiseOptions<'_, B>,
    predict: impl FnMut(ForwardInput<B>, &CallContext) -> Result<Tensor<B, 5>>,
    step: impl Fn(Tensor<B, 5>, i64, Tensor<B, 5>) -> Result<Tensor<B, 5>>,
) -> Result<Tensor<B, 5>> {
    guided_steps_indexed(guidance, timesteps, latents, options, predict, |_, pred, t, latents| step(pred, t, latents))
}

/// [`guided_steps`] with a stateful step that is told the step index (`step(i, guided_output, t, latents)`).
pub(crate) fn guided_steps_indexed<B: Backend>(
    guidance: &Guidance<B>,
    timesteps: &[i64],
    mut latents: Tensor<B, 5>,
    mut options: DenoiseOptions<'_, B>,
    mut predict: impl FnMut(ForwardInput<B>, &CallContext) -> Result<Tensor<B, 5>>,
    mut step: impl FnMut(usize, Tensor<B, 5>, i64, Tensor<B, 5>) -> Result<Tensor<B, 5>>,
) -> Result<Tensor<B, 5>> {
    let bar = progress_bar(options.progress, timesteps.len());
    // The latents are held in the model's dtype; in half precision the model's output is taken to float32
    // (`noise_pred.float()`), guidance and the step run in float32, and the new latents are rounded back
    // (`latents.to(prompt_embeds.dtype)`), as `CogVideoXPipeline` does. No-ops in float32.
    let dtype = FloatDType::from(latents.dtype());
    for (i, &t) in timesteps.iter().enumerate() {
        let ctx = CallContext::new(
            StepContext { step: i, num_steps: timesteps.len(), timestep: t as f64, sigma: None },
            guidance.branch,
            guidance.batch,
        );
        let call = ForwardInput {
            hidden_states: guidance.batch_latents(&latents),
            encoder_hidden_states: guidance.encoder.clone(),
            timestep: vec![t as f32; guidance.batch],
        };
        let noise_pred = guidance.combine(predict(call, &ctx)?.cast(FloatDType::F32));
        if let Some(cb) = options.on_step.as_mut() {
            cb(i, t, &noise_pred);
        }
        latents = step(i, noise_pred, t, latents.cast(FloatDType::F32))?.cast(dtype);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(latents)
}
