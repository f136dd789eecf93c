//! The [`CacheStrategy`] trait and the no-op [`Identity`].

use burn::tensor::{backend::Backend, Tensor};

use crate::config::ConfigError;
use crate::context::{AttentionSite, CallContext, ModuleSite};
use crate::stats::CacheStats;

/// The token streams a block or an attention site produces: the video tokens and, in a joint-attention
/// transformer (CogVideoX), the text tokens too. Models whose blocks carry one stream (Latte, DiT) leave
/// `encoder` empty.
///
/// The batch is always the first dimension: a model that runs attention on `[batch·frames, tokens, dim]`
/// rows hands its hooks the `[batch, frames·tokens, dim]` view, so engines can split CFG halves and samples.
///
/// # Shapes
/// - `hidden`: `[batch, video_tokens, dim]`
/// - `encoder`: `[batch, text_tokens, dim]`
#[derive(Debug, Clone)]
pub struct JointStates<B: Backend> {
    /// Video tokens.
    pub hidden: Tensor<B, 3>,
    /// Text tokens, for joint-attention models.
    pub encoder: Option<Tensor<B, 3>>,
}

impl<B: Backend> JointStates<B> {
    /// One stream (a model whose blocks carry the video tokens only).
    pub fn single(hidden: Tensor<B, 3>) -> Self {
        Self { hidden, encoder: None }
    }

    /// Two streams (a joint-attention model).
    pub fn joint(hidden: Tensor<B, 3>, encoder: Tensor<B, 3>) -> Self {
        Self { hidden, encoder: Some(encoder) }
    }

    /// Applies `f` to each stream.
    pub fn map(self, f: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>) -> Self {
        Self { hidden: f(self.hidden), encoder: self.encoder.map(f) }
    }

    /// Combines two states stream by stream (a stream present in only one of them is dropped).
    pub fn zip(self, other: Self, f: impl Fn(Tensor<B, 3>, Tensor<B, 3>) -> Tensor<B, 3>) -> Self {
        let encoder = match (self.encoder, other.encoder) {
            (Some(a), Some(b)) => Some(f(a, b)),
            _ => None,
        };
        Self { hidden: f(self.hidden, other.hidden), encoder }
    }
}

/// What the model runs for one denoiser call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPlan {
    /// The whole batch.
    Full,
    /// Only the conditional half of a CFG batch; the strategy rebuilds the rest in `end_forward`.
    CondOnly,
}

/// What happens to the blocks after the first one.
#[derive(Debug, Clone)]
pub enum TailPlan<B: Backend> {
    /// Run them.
    Compute,
    /// Skip them: these are the block stack's outputs.
    Skip(JointStates<B>),
}

/// What happens at one attention site.
#[derive(Debug, Clone)]
pub enum AttentionPlan<B: Backend> {
    /// Compute attention.
    Compute,
    /// Use this output instead (video stream, text stream).
    Reuse(JointStates<B>),
}

/// A training-free cache engine, called by a model at its hook points.
///
/// Every method has a default that does nothing, so an engine implements only the levels it uses.
/// The trait is object safe: `Box<dyn CacheStrategy<B>>` works, and a model's forward takes
/// `&mut S` with `S: CacheStrategy<B> + ?Sized`.
pub trait CacheStrategy<B: Backend> {
    /// Forgets all state: call before each generation.
    fn reset(&mut self) {}

    /// Refuses a generation of `num_inference_steps` steps that the strategy's configuration was not made
    /// for (TeaCache's `num_steps`, MagCache's `num_inference_steps`): a pipeline calls it after
    /// [`CacheStrategy::reset`], before the first step, so a mismatch is an error instead of a run whose
    /// counters wrap or whose schedule ends at the wrong step.
    fn check_steps(&self, _num_inference_steps: usize) -> Result<(), ConfigError> {
        Ok(())
    }

    /// At the start of a denoiser call, before anything else runs: `Some(output)` replaces the *whole* call
    /// (patch embedding, blocks, head) with `output`, in the layout of the call's output (EasyCache). The
    /// model then returns it as it is; no other hook is called for this call.
    ///
    /// # Shapes
    /// - `latents`: the call's input latents, in the layout of its output (`[B, C, F, H, W]` or
    ///   `[B, F, C, H, W]` as [`crate::HostInfo::tensor_format`] says; FLUX's packed `[B, L, C]` as `[B, 1, L, C, 1]`)
    /// - returns the call's output (same layout; its channel count may differ: Latte's learned variance)
    fn reuse_call(&mut self, _ctx: &CallContext, _latents: &Tensor<B, 5>) -> Option<Tensor<B, 5>> {
        None
    }

    /// After a computed denoiser call (after [`CacheStrategy::end_forward`]), with its input latents and the
    /// output the caller gets.
    fn after_call(&mut self, _ctx: &CallContext, _latents: &Tensor<B, 5>, _output: &Tensor<B, 5>) {}

    /// Start of a denoiser call. `ctx.branch` and `ctx.batch_size` describe the batch the caller passed.
    fn begin_forward(&mut self, _ctx: &CallContext) -> BatchPlan {
        BatchPlan::Full
    }

    /// End of a denoiser call: `output` is the model's output for the batch that was run
    /// (`[batch, frames, channels, height, width]`); returns the output for the batch the caller passed.
    /// `ctx` is the context given to `begin_forward`.
    fn end_forward(&mut self, _ctx: &CallContext, output: Tensor<B, 5>) -> Tensor<B, 5> {
        output
    }

    /// Whether the strategy reads the step signal ([`CacheStrategy::observe_step_signal`]): a model computes
    /// the signal only when asked, since it may cost a normalisation of the whole stack input.
    fn wants_step_signal(&self) -> bool {
        false
    }

    /// Which of the host's step signals the strategy reads, by name, where the host offers more than its
    /// default ([`crate::HostInfo::other_step_signals`]; TeaCache4Wan2.1 with `use_ret_steps` reads Wan's
    /// `timestep_proj` instead of `temb`); `None`: the default ([`crate::HostInfo::step_signal`]).
    fn step_signal_name(&self) -> Option<&str> {
        None
    }

    /// Whether the strategy reads the denoiser call's input latents ([`CacheStrategy::observe_latents`]).
    fn wants_latents(&self) -> bool {
        false
    }

    /// At the start of a denoiser call (after `begin_forward`, before anything is computed), the latents the
    /// pipeline handed the model, in the host's [`crate::HostInfo::tensor_format`] (Wan: `BCFHW`): SeaCache's
    /// indicator is computed from them.
    fn observe_latents(&mut self, _ctx: &CallContext, _latents: &Tensor<B, 5>) {}

    /// Before `before_blocks`, the tensor a timestep-aware engine (TeaCache) measures, as the model family's
    /// authors define it ([`crate::HostInfo::step_signal`] names it): CogVideoX's timestep embedding `emb`
    /// (`[B, 1, time_embed_dim]`), or the first block's modulated input (Latte: `[B, F·P, D]`).
    fn observe_step_signal(&mut self, _ctx: &CallContext, _signal: &Tensor<B, 3>) {}

    /// Before the block stack runs, with its input: [`TailPlan::Skip`] replaces the *whole* stack's output
    /// (MagCache); no block runs and neither `after_head_block` nor `after_blocks` is called.
    fn before_blocks(&mut self, _ctx: &CallContext, _input: &JointStates<B>) -> TailPlan<B> {
        TailPlan::Compute
    }

    /// After the block stack ran (whatever skipped inside it), with its input and its output.
    fn after_blocks(&mut self, _ctx: &CallContext, _input: &JointStates<B>, _output: &JointStates<B>) {}

    /// After the first block of the block stack, with its input and output.
    fn after_head_block(
        &mut self,
        _ctx: &CallContext,
        _input: &JointStates<B>,
        _output: &JointStates<B>,
    ) -> TailPlan<B> {
        TailPlan::Compute
    }

    /// After the remaining blocks ran (only when [`TailPlan::Compute`] was chosen), with the first block's
    /// output and the stack's output; returns the stack's output (a per-sample engine may replace rows).
    fn after_tail_blocks(
        &mut self,
        _ctx: &CallContext,
        _head_output: &JointStates<B>,
        output: JointStates<B>,
    ) -> JointStates<B> {
        output
    }

    /// Before an attention site computes.
    fn before_attention(&mut self, _ctx: &CallContext, _site: &AttentionSite) -> AttentionPlan<B> {
        AttentionPlan::Compute
    }

    /// After an attention site produced its output (computed or reused).
    fn after_attention(&mut self, _ctx: &CallContext, _site: &AttentionSite, _output: &JointStates<B>) {}

    /// Before a hookable module other than attention computes (a block's feed-forward).
    fn before_module(&mut self, _ctx: &CallContext, _site: &ModuleSite) -> AttentionPlan<B> {
        AttentionPlan::Compute
    }

    /// After such a module produced its output (computed or reused).
    fn after_module(&mut self, _ctx: &CallContext, _site: &ModuleSite, _output: &JointStates<B>) {}

    /// What the strategy decided since the last reset.
    fn stats(&self) -> CacheStats {
        CacheStats::default()
    }

    /// The most bytes of tensors the strategy held at once since the last reset.
    fn peak_bytes(&self) -> usize {
        0
    }
}

/// The strategy that caches nothing: a model run with it computes exactly the uncached result.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<B: Backend> CacheStrategy<B> for Identity {}

/// Pointers to a strategy are strategies (so `&mut dyn CacheStrategy<B>` and `Box<dyn CacheStrategy<B>>` can be
/// passed where `S: CacheStrategy<B>` is expected).
macro_rules! forward_strategy {
    ($($ptr:ty),*) => {$(
        impl<B: Backend, S: CacheStrategy<B> + ?Sized> CacheStrategy<B> for $ptr {
            fn reset(&mut self) {
                (**self).reset()
            }
            fn check_steps(&self, n: usize) -> Result<(), ConfigError> {
                (**self).check_steps(n)
            }
            fn reuse_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) -> Option<Tensor<B, 5>> {
                (**self).reuse_call(ctx, latents)
            }
            fn after_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>, output: &Tensor<B, 5>) {
                (**self).after_call(ctx, latents, output)
            }
            fn begin_forward(&mut self, ctx: &CallContext) -> BatchPlan {
                (**self).begin_forward(ctx)
            }
            fn end_forward(&mut self, ctx: &CallContext, output: Tensor<B, 5>) -> Tensor<B, 5> {
                (**self).end_forward(ctx, output)
            }
            fn wants_step_signal(&self) -> bool {
                (**self).wants_step_signal()
            }
            fn observe_step_signal(&mut self, ctx: &CallContext, signal: &Tensor<B, 3>) {
                (**self).observe_step_signal(ctx, signal)
            }
            fn step_signal_name(&self) -> Option<&str> {
                (**self).step_signal_name()
            }
            fn wants_latents(&self) -> bool {
                (**self).wants_latents()
            }
            fn observe_latents(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) {
                (**self).observe_latents(ctx, latents)
            }
            fn before_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>) -> TailPlan<B> {
                (**self).before_blocks(ctx, input)
            }
            fn after_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) {
                (**self).after_blocks(ctx, input, output)
            }
            fn before_module(&mut self, ctx: &CallContext, site: &ModuleSite) -> AttentionPlan<B> {
                (**self).before_module(ctx, site)
            }
            fn after_module(&mut self, ctx: &CallContext, site: &ModuleSite, output: &JointStates<B>) {
                (**self).after_module(ctx, site, output)
            }
            fn after_head_block(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) -> TailPlan<B> {
                (**self).after_head_block(ctx, input, output)
            }
            fn after_tail_blocks(&mut self, ctx: &CallContext, head: &JointStates<B>, output: JointStates<B>) -> JointStates<B> {
                (**self).after_tail_blocks(ctx, head, output)
            }
            fn before_attention(&mut self, ctx: &CallContext, site: &AttentionSite) -> AttentionPlan<B> {
                (**self).before_attention(ctx, site)
            }
            fn after_attention(&mut self, ctx: &CallContext, site: &AttentionSite, output: &JointStates<B>) {
                (**self).after_attention(ctx, site, output)
            }
            fn stats(&self) -> CacheStats {
                (**self).stats()
            }
            fn peak_bytes(&self) -> usize {
                (**self).peak_bytes()
            }
        }
    )*};
}

forward_strategy!(&mut S, Box<S>);
