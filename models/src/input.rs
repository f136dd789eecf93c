//! What one denoiser call takes, shared by the models.

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{BatchPlan, CacheStrategy, CallContext, JointStates};

use crate::error::{ModelError, Result};

/// One denoiser call's inputs.
///
/// # Shapes
/// - `hidden_states`: `[B, F, C, H, W]` latents for CogVideoX, `[B, C, F, H, W]` for Latte (each model
///   takes diffusers' layout)
/// - `encoder_hidden_states`: `[B, S, text_embed_dim]`
/// - `timestep`: `B` values
#[derive(Debug, Clone)]
pub struct ForwardInput<B: Backend> {
    /// Latents.
    pub hidden_states: Tensor<B, 5>,
    /// Prompt embeddings.
    pub encoder_hidden_states: Tensor<B, 3>,
    /// One timestep per batch element.
    pub timestep: Vec<f32>,
}

impl<B: Backend> ForwardInput<B> {
    /// The checks every model makes the same way: the latents' channels (dimension `channel_dim`), the prompt
    /// batch and width, one timestep per sample.
    pub(crate) fn check_common(&self, channel_dim: usize, in_channels: usize, text_dim: usize) -> Result<()> {
        let dims = self.hidden_states.dims();
        let (b, c) = (dims[0], dims[channel_dim]);
        let [eb, _, ed] = self.encoder_hidden_states.dims();
        if c != in_channels {
            return Err(ModelError::Shape(format!("hidden_states has {c} channels, config in_channels is {in_channels}")));
        }
        if eb != b || ed != text_dim {
            return Err(ModelError::Shape(format!("encoder_hidden_states is [{eb}, _, {ed}], expected [{b}, _, {text_dim}]")));
        }
        if self.timestep.len() != b {
            return Err(ModelError::Shape(format!("{} timesteps for a batch of {b}", self.timestep.len())));
        }
        Ok(())
    }
}

/// Cuts a CFG batch to its conditional half, for a strategy that rebuilds the other half.
pub(crate) fn cond_half<B: Backend>(input: ForwardInput<B>, ctx: &CallContext) -> Result<(ForwardInput<B>, CallContext)> {
    let Some((rows, ctx)) = ctx.cond_half() else {
        return Err(ModelError::Strategy(format!(
            "the strategy asked for the conditional half of a `{}` batch of {}",
            ctx.branch.context_name(),
            ctx.batch_size
        )));
    };
    let input = ForwardInput {
        hidden_states: input.hidden_states.narrow(0, rows.start, rows.len()),
        encoder_hidden_states: input.encoder_hidden_states.narrow(0, rows.start, rows.len()),
        timestep: input.timestep[rows].to_vec(),
    };
    Ok((input, ctx))
}

/// The denoiser-call level of the hooks, the same for every model: checks the context's batch size, lets the
/// strategy replace the whole call ([`CacheStrategy::reuse_call`]), asks it for the batch plan, runs `blocks`
/// on the whole batch or on its conditional half, and lets the strategy finish the output (and see it, with
/// the call's latents: [`CacheStrategy::after_call`]).
pub(crate) fn denoiser_call<B: Backend, S: CacheStrategy<B> + ?Sized>(
    input: ForwardInput<B>,
    ctx: &CallContext,
    strategy: &mut S,
    blocks: impl FnOnce(ForwardInput<B>, &CallContext, &mut S) -> Result<Tensor<B, 5>>,
) -> Result<Tensor<B, 5>> {
    let batch = input.hidden_states.dims()[0];
    if ctx.batch_size != batch {
        return Err(ModelError::Shape(format!("context says batch {}, input has {batch}", ctx.batch_size)));
    }
    if let Some(out) = strategy.reuse_call(ctx, &input.hidden_states) {
        return Ok(out);
    }
    let latents = input.hidden_states.clone();
    let (input, run_ctx) = match strategy.begin_forward(ctx) {
        BatchPlan::Full => (input, *ctx),
        BatchPlan::CondOnly => cond_half(input, ctx)?,
    };
    let out = blocks(input, &run_ctx, strategy)?;
    let out = strategy.end_forward(ctx, out);
    strategy.after_call(ctx, &latents, &out);
    Ok(out)
}

/// The video stream of what a strategy handed back (at an attention site or for the block stack), checked
/// against the shape the model continues with.
pub(crate) fn checked<B: Backend>(out: JointStates<B>, dims: [usize; 3], at: &dyn std::fmt::Display) -> Result<Tensor<B, 3>> {
    if out.hidden.dims() != dims {
        return Err(ModelError::Strategy(format!(
            "{at}: the strategy's output has shape {:?}, the model needs {dims:?}",
            out.hidden.dims()
        )));
    }
    Ok(out.hidden)
}
