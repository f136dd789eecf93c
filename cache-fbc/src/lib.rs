//! # cache-fbc: First Block Cache
//!
//! diffusers' semantics (`hooks/first_block_cache.py`): after the first block, compare its residual
//! `r = out − in` (video stream) with the residual of the last step that computed the tail, as
//! `mean|r − r_prev| / mean|r_prev|` over the whole batch; if that is not above `threshold`, skip the tail:
//! the stack's output is the first block's *current* output plus the tail residuals (video and text) stored
//! by the last computed step. The reference residual is refreshed on computed steps only, so the measured
//! change accumulates across skips. One host read per step.
//!
//! Extras, off by default: `warmup_steps`, `max_consecutive_skips`, `per_sample` decisions (one per sample of
//! the model call, i.e. per CFG half of each video; a sample's rows are all its frames where the host's blocks
//! run frames as rows, as Latte's), and a memory budget (past it the engine computes and holds nothing).
//!
//! Batches: pooled (diffusers), one ratio of two batch-wide means decides for every video; every cached
//! tensor keeps one row per sample, so a skipped sample only ever takes its own tail residuals.

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{
    joint_bytes, tensor_bytes, CacheStats, CacheStrategy, CallContext, Decision, JointStates,
    MemoryLedger, StateMap, TailPlan,
};

mod config;
pub use config::FirstBlockCacheConfig;

/// State of one context (and batch size).
struct FbcState<B: Backend> {
    /// First block's residual of the last computed step.
    head_residual: Option<Tensor<B, 3>>,
    /// Tail residuals (video, text) of the last computed step.
    tail: Option<JointStates<B>>,
    /// Skips in a row.
    consecutive_skips: usize,
    /// Per-sample mode: which samples decided to skip in the current step (mixed steps only).
    mixed_skip: Option<Vec<bool>>,
    /// The residual computed in the current step, waiting for the tail.
    pending_residual: Option<Tensor<B, 3>>,
    bytes: usize,
}

impl<B: Backend> Default for FbcState<B> {
    fn default() -> Self {
        Self { head_residual: None, tail: None, consecutive_skips: 0, mixed_skip: None, pending_residual: None, bytes: 0 }
    }
}

/// What the engine measured and decided at one head-block call, for inspection ([`FirstBlockCache::decisions`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FbcDecision {
    /// Step index.
    pub step: usize,
    /// The relative changes: one per sample with `per_sample`, else one pooled; empty without a reference.
    pub changes: Vec<f32>,
    /// Whether each sample (or, pooled, the whole batch) took its cached tail.
    pub skips: Vec<bool>,
}

/// The First Block Cache engine.
pub struct FirstBlockCache<B: Backend> {
    config: FirstBlockCacheConfig,
    states: StateMap<usize, FbcState<B>>,
    memory: MemoryLedger,
    stats: CacheStats,
    last_changes: Vec<f32>,
    decisions: Vec<FbcDecision>,
}

impl<B: Backend> FirstBlockCache<B> {
    /// An engine with this configuration (validate it first with `CacheConfig::validate`).
    pub fn new(config: FirstBlockCacheConfig) -> Self {
        let memory = MemoryLedger::new(config.memory_budget_bytes);
        Self {
            config,
            states: StateMap::default(),
            memory,
            stats: CacheStats::default(),
            last_changes: Vec::new(),
            decisions: Vec::new(),
        }
    }

    /// Every head-block call's changes and decisions since the last reset, in call order.
    pub fn decisions(&self) -> &[FbcDecision] {
        &self.decisions
    }

    /// The relative residual changes measured at the last call (one per sample with `per_sample`, else one);
    /// empty when that call had no reference to compare with. Useful to choose a threshold.
    pub fn last_changes(&self) -> &[f32] {
        &self.last_changes
    }

    /// The configuration.
    pub fn config(&self) -> &FirstBlockCacheConfig {
        &self.config
    }

    /// Relative change per sample (`per_sample`; `samples` rows of the model call, each owning an equal run of
    /// the residual's rows) or pooled over the batch, read from the device at once.
    fn relative_change(&self, residual: &Tensor<B, 3>, prev: &Tensor<B, 3>, samples: usize) -> Vec<f32> {
        let diff = (residual.clone() - prev.clone()).abs();
        let prev_abs = prev.clone().abs();
        let both = if self.config.per_sample {
            let b = samples;
            let per = |t: Tensor<B, 3>| {
                let [rows, tokens, d] = t.dims();
                t.reshape([b, rows / b * tokens, d]).mean_dim(2).mean_dim(1).reshape([b])
            };
            Tensor::cat(vec![per(diff), per(prev_abs)], 0)
        } else {
            Tensor::cat(vec![diff.mean(), prev_abs.mean()], 0)
        };
        let v = both.into_data().convert::<f32>().into_vec::<f32>().expect("float data");
        let n = v.len() / 2;
        (0..n).map(|i| v[i] / v[n + i]).collect()
    }
}

/// A per-sample mask as `[rows, 1, 1]` floats (1 = skip) in `like`'s dtype, each sample's value over its
/// `rows / samples` rows.
fn mask<B: Backend>(skip: &[bool], rows: usize, like: &Tensor<B, 3>) -> Tensor<B, 3> {
    let per = rows / skip.len();
    let v: Vec<f32> = skip.iter().flat_map(|&s| std::iter::repeat_n(if s { 1.0 } else { 0.0 }, per)).collect();
    cache_core::host_tensor_like(v, [rows, 1, 1], like)
}

/// `where(mask, a, b)` with a float mask broadcast over tokens and channels.
fn select<B: Backend>(m: &Tensor<B, 3>, a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    a * m.clone() + b * (m.clone().neg() + 1.0)
}

impl<B: Backend> CacheStrategy<B> for FirstBlockCache<B> {
    fn reset(&mut self) {
        self.states.clear();
        self.memory.reset();
        self.stats = CacheStats::default();
        self.last_changes.clear();
        self.decisions.clear();
    }

    fn after_head_block(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) -> TailPlan<B> {
        let residual = output.hidden.clone() - input.hidden.clone();
        let warm = ctx.step.step < self.config.warmup_steps;
        let forced = self.config.max_consecutive_skips.is_some_and(|m| {
            self.states.get(ctx, ctx.batch_size).is_some_and(|s| s.consecutive_skips >= m)
        });
        // A sample's rows divide evenly (checked: otherwise the batch is pooled, as diffusers does).
        let rows = residual.dims()[0];
        let samples = if self.config.per_sample && ctx.batch_size > 0 && rows % ctx.batch_size == 0 { ctx.batch_size } else { 1 };
        self.last_changes = match self.states.get(ctx, ctx.batch_size) {
            Some(FbcState { head_residual: Some(prev), tail: Some(_), .. }) if prev.dims() == residual.dims() => {
                self.relative_change(&residual, prev, samples)
            }
            _ => Vec::new(),
        };
        let deciders = if self.config.per_sample { samples } else { 1 };
        let skips: Vec<bool> = if self.last_changes.is_empty() || warm || forced {
            vec![false; deciders]
        } else {
            self.last_changes.iter().map(|&change| !((change as f64) > self.config.threshold)).collect()
        };
        self.decisions.push(FbcDecision { step: ctx.step.step, changes: self.last_changes.clone(), skips: skips.clone() });
        let all_skip = skips.iter().all(|&s| s);
        let any_skip = skips.iter().any(|&s| s);
        let state = self.states.get_mut(ctx, ctx.batch_size);
        let trace = self.stats.at(ctx);
        if all_skip {
            trace.blocks = Some(Decision::Skip);
            state.consecutive_skips += 1;
            let tail = state.tail.as_ref().expect("checked above");
            return TailPlan::Skip(output.clone().zip(tail.clone(), |o, t| o + t));
        }
        trace.blocks = Some(Decision::Compute);
        state.consecutive_skips = 0;
        state.mixed_skip = any_skip.then_some(skips);
        state.pending_residual = Some(residual);
        TailPlan::Compute
    }

    fn after_tail_blocks(&mut self, ctx: &CallContext, head_output: &JointStates<B>, output: JointStates<B>) -> JointStates<B> {
        let state = self.states.get_mut(ctx, ctx.batch_size);
        let Some(mut residual) = state.pending_residual.take() else { return output };
        let mut tail = output.clone().zip(head_output.clone(), |o, h| o - h);
        let mut output = output;
        if let (Some(skips), Some(prev), Some(old_tail)) =
            (state.mixed_skip.take(), state.head_residual.as_ref(), state.tail.as_ref())
        {
            // Samples that decided to skip keep their reference and take their cached tail.
            let m = mask::<B>(&skips, residual.dims()[0], &residual);
            residual = select(&m, prev.clone(), residual);
            tail = old_tail.clone().zip(tail, |old, new| select(&m, old, new));
            let cached = head_output.clone().zip(old_tail.clone(), |h, t| h + t);
            output = cached.zip(output, |cached, computed| select(&m, cached, computed));
        }
        if self.memory.hold(&mut state.bytes, tensor_bytes(&residual) + joint_bytes(&tail)) {
            state.head_residual = Some(residual);
            state.tail = Some(tail);
        } else {
            // Over budget: hold nothing, so the next step computes.
            *state = FbcState::default();
        }
        output
    }

    fn stats(&self) -> CacheStats {
        self.stats.clone()
    }

    fn peak_bytes(&self) -> usize {
        self.memory.peak()
    }
}
