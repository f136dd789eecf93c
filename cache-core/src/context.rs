//! What a hook knows about the call it is in.

use std::fmt;

/// One denoising step, as the pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// Index of the step, from 0.
    pub step: usize,
    /// Number of steps of the generation.
    pub num_steps: usize,
    /// The scheduler's timestep of this step (diffusers' `pipe.current_timestep`).
    pub timestep: f64,
    /// The scheduler's sigma of this step (`scheduler.sigmas[i]`), where the pipeline hands it to its cache
    /// contexts (`WanPipeline`: SeaCache's gate reads it); `None` for pipelines that pass none.
    pub sigma: Option<f64>,
}

impl StepContext {
    /// A step without a sigma.
    pub fn new(step: usize, num_steps: usize, timestep: f64) -> Self {
        Self { step, num_steps, timestep, sigma: None }
    }
}

/// Order of the two halves of a classifier-free-guidance batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfgOrder {
    /// `[uncond, cond]`: CogVideoX, Latte and most diffusers pipelines.
    UncondFirst,
    /// `[cond, uncond]`: diffusers' DiT pipeline.
    CondFirst,
}

/// What the batch of one denoiser call holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// Both guidance halves batched together, in the given order.
    Cfg(CfgOrder),
    /// The conditional branch alone (a pipeline that runs the halves separately, or a cond-only pass).
    Cond,
    /// The unconditional branch alone.
    Uncond,
    /// No guidance (guidance scale ≤ 1 or a guidance-distilled model).
    Unguided,
}

impl Branch {
    /// The name of the state context of this branch (diffusers' `cache_context` names).
    pub fn context_name(&self) -> &'static str {
        match self {
            Branch::Cfg(_) => "cond_uncond",
            Branch::Cond => "cond",
            Branch::Uncond => "uncond",
            Branch::Unguided => "unguided",
        }
    }
}

/// Everything a hook is told about the denoiser call it runs in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallContext {
    /// The step.
    pub step: StepContext,
    /// What the caller's batch holds; names the state context (diffusers' `cache_context`), and stays the
    /// same when a strategy has the model run the conditional half only.
    pub branch: Branch,
    /// The batch size of the tensors now flowing through the model.
    pub batch_size: usize,
    /// True while the model runs only the conditional half of a CFG batch (see [`crate::BatchPlan::CondOnly`]).
    pub cond_only: bool,
}

impl CallContext {
    /// A context for a call on the whole batch the caller passed.
    pub fn new(step: StepContext, branch: Branch, batch_size: usize) -> Self {
        Self { step, branch, batch_size, cond_only: false }
    }

    /// What a model runs when a strategy answers [`crate::BatchPlan::CondOnly`]: the rows of the conditional
    /// half of this CFG batch (by the batch's [`CfgOrder`]) and the context of the call on them. `None` when
    /// the batch is not a CFG batch of even size.
    pub fn cond_half(&self) -> Option<(std::ops::Range<usize>, CallContext)> {
        let Branch::Cfg(order) = self.branch else { return None };
        if self.batch_size % 2 != 0 {
            return None;
        }
        let half = self.batch_size / 2;
        let start = match order {
            CfgOrder::UncondFirst => half,
            CfgOrder::CondFirst => 0,
        };
        Some((start..start + half, CallContext { batch_size: half, cond_only: true, ..*self }))
    }
}

/// Which kind of attention an attention site computes (diffusers' PAB categories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// Self-attention over the tokens of a frame, or over all video tokens (CogVideoX's joint attention).
    Spatial,
    /// Self-attention over frames at one spatial position.
    Temporal,
    /// Attention from video tokens to text tokens.
    Cross,
}

/// One attention module of a model, named like diffusers' module path: `{stack}.{index}.{attn}`
/// (e.g. `transformer_blocks.3.attn1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionSite {
    /// The block list the module lives in (`transformer_blocks`, `temporal_transformer_blocks`).
    pub stack: &'static str,
    /// Index of the block in that list.
    pub index: usize,
    /// The attribute name of the attention module in the block (`attn1`, `attn2`).
    pub attn: &'static str,
    /// What it computes.
    pub kind: AttentionKind,
}

impl fmt::Display for AttentionSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.stack, self.index, self.attn)
    }
}

/// A hookable module of a model other than an attention site (TaylorSeer predicts any module's output),
/// named like diffusers' module path: `{stack}.{index}.{name}` (e.g. `transformer_blocks.3.ff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleSite {
    /// The block list the module lives in.
    pub stack: &'static str,
    /// Index of the block in that list.
    pub index: usize,
    /// The attribute name of the module in the block (`ff`).
    pub name: &'static str,
}

impl fmt::Display for ModuleSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.stack, self.index, self.name)
    }
}
