//! The three calls a model's forward makes to host a strategy inside its blocks, so that a model adds two
//! lines per hook point instead of re-deriving the protocol (and every model calls it the same way).

use burn::tensor::{backend::Backend, Tensor};

use crate::context::{AttentionSite, CallContext, ModuleSite};
use crate::strategy::{AttentionPlan, CacheStrategy, JointStates, TailPlan};

/// One attention site: asks the strategy whether to compute, runs `compute` if so, and reports the output.
///
/// `compute` returns the site's output in the batch-first view of [`JointStates`].
pub fn attention_site<B: Backend, S: CacheStrategy<B> + ?Sized>(
    strategy: &mut S,
    ctx: &CallContext,
    site: &AttentionSite,
    compute: impl FnOnce() -> JointStates<B>,
) -> JointStates<B> {
    let out = match strategy.before_attention(ctx, site) {
        AttentionPlan::Compute => compute(),
        AttentionPlan::Reuse(out) => out,
    };
    strategy.after_attention(ctx, site, &out);
    out
}

/// Another hookable module (a block's feed-forward): like [`attention_site`], through
/// [`CacheStrategy::before_module`] / [`CacheStrategy::after_module`].
pub fn module_site<B: Backend, S: CacheStrategy<B> + ?Sized>(
    strategy: &mut S,
    ctx: &CallContext,
    site: &ModuleSite,
    compute: impl FnOnce() -> JointStates<B>,
) -> JointStates<B> {
    let out = match strategy.before_module(ctx, site) {
        AttentionPlan::Compute => compute(),
        AttentionPlan::Reuse(out) => out,
    };
    strategy.after_module(ctx, site, &out);
    out
}

/// The step signal ([`CacheStrategy::observe_step_signal`]), computed by `signal` only when the strategy wants it.
/// Call it just before [`block_stack`].
pub fn step_signal<B: Backend, S: CacheStrategy<B> + ?Sized>(
    strategy: &mut S,
    ctx: &CallContext,
    signal: impl FnOnce() -> Tensor<B, 3>,
) {
    step_signal_named(strategy, ctx, |_| signal());
}

/// [`step_signal`] for a host that offers more than one signal ([`crate::HostInfo::other_step_signals`]):
/// `signal` receives the name the strategy asks for ([`CacheStrategy::step_signal_name`]; `None`, the default).
pub fn step_signal_named<B: Backend, S: CacheStrategy<B> + ?Sized>(
    strategy: &mut S,
    ctx: &CallContext,
    signal: impl FnOnce(Option<&str>) -> Tensor<B, 3>,
) {
    if strategy.wants_step_signal() {
        let s = signal(strategy.step_signal_name());
        strategy.observe_step_signal(ctx, &s);
    }
}

/// The denoiser call's input latents ([`CacheStrategy::observe_latents`]), handed over only when the strategy
/// reads them. Call it after `begin_forward`, before the patch embedding.
pub fn input_latents<B: Backend, S: CacheStrategy<B> + ?Sized>(strategy: &mut S, ctx: &CallContext, latents: &Tensor<B, 5>) {
    if strategy.wants_latents() {
        strategy.observe_latents(ctx, latents);
    }
}

/// A block stack: lets the strategy skip the whole stack, otherwise runs `head` (the first block), lets the
/// strategy skip the rest, otherwise runs `tail` (the remaining blocks) and reports its output. Both closures
/// get the strategy back, for the attention and module sites inside the blocks.
pub fn block_stack<B: Backend, S: CacheStrategy<B> + ?Sized, E>(
    strategy: &mut S,
    ctx: &CallContext,
    input: JointStates<B>,
    head: impl FnOnce(&mut S, JointStates<B>) -> Result<JointStates<B>, E>,
    tail: impl FnOnce(&mut S, JointStates<B>) -> Result<JointStates<B>, E>,
) -> Result<JointStates<B>, E> {
    if let TailPlan::Skip(out) = strategy.before_blocks(ctx, &input) {
        return Ok(out);
    }
    let head_out = head(strategy, input.clone())?;
    let out = match strategy.after_head_block(ctx, &input, &head_out) {
        TailPlan::Skip(out) => out,
        TailPlan::Compute => {
            let out = tail(strategy, head_out.clone())?;
            strategy.after_tail_blocks(ctx, &head_out, out)
        }
    };
    strategy.after_blocks(ctx, &input, &out);
    Ok(out)
}
