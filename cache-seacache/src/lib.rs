//! # cache-seacache: SeaCache
//!
//! diffusers' semantics (`hooks/sea_cache.py` at v0.42.1; "l." below are its lines), with its Wan text-to-video
//! adapter: one state per cache context (`StateManager`, the context name `cond` / `uncond`, as
//! [`cache_core::StateMap`]); one decision per denoiser call for the whole batch and the whole block stack.
//!
//! - **Inputs of a call** (the root hook, l. 507–584): the step index, the scheduler's sigma and the step count
//!   `WanPipeline` attaches to each cache context (`pipeline_wan.py` l. 615–637: `step_index = i`,
//!   `sigma = float(scheduler.sigmas[i])` (UniPC's float32 table), `num_inference_steps = len(timesteps)`; here
//!   [`cache_core::StepContext`]'s `step`, `sigma`, `num_steps`), and the raw visual latents: the Wan adapter
//!   (l. 351–359, chosen for a `WanTransformer3DModel` with `in_channels == out_channels`, l. 999–1006) takes the
//!   transformer's `hidden_states` `[B, C, F, H, W]` (`latents.to(transformer_dtype)`, `pipeline_wan.py` l. 606)
//!   and unbinds the batch: one `[C, F, H, W]` latent per sample ([`CacheStrategy::observe_latents`]).
//!   A call without a sigma, with `step ≥ num_steps`, or a sigma outside `[0, 1]` runs in full and touches no gate
//!   state ("fail-open", l. 527–560); so does a call whose host hands no latents (l. 571–576).
//! - **Indicator** (`_build_indicator` l. 392–405, `_apply_sea_filter` l. 362–389): per sample and channel,
//!   `ifftn(fftn(x) · g).real` over `(F, H, W)`, with `sigma` clamped to `[1e-6, 1 − 1e-6]`, `s = 1 − sigma`,
//!   `n = sigma`, per axis `P(f) = 1 / (|f|^power_exp + 1e-16)` over `fftfreq` and
//!   `g_axis = s·P / (s²·P + n² + 1e-16)`, `g` the product of the three axes divided by its mean (when finite and
//!   positive); the result in the latents' dtype ([`sea_filter`]).
//! - **Gate** (`resolve_gate` l. 182–245), per context: a call with the same `(step, sigma)` as the context's last
//!   one repeats its decision. A step that is not the last one + 1 resets the trajectory (history, indicator,
//!   accumulator, counter) and computes. It computes when `step < retention_steps`,
//!   `step ≥ num_steps − cache_end_steps`, there is no previous indicator, or `max_consecutive_cached > 0` reuses
//!   ran in a row; otherwise `d` = mean over samples of `mean|cur − prev| / (mean|prev| + 1e-16)` (float32 means,
//!   [`distance`]; `prev` is the *previous call's* indicator, computed or not), and it reuses iff
//!   `acc + d < threshold` (so `threshold = 0` never reuses), keeping `acc += d`; a computing call sets `acc = 0`.
//!   Every call stores its indicator as the next `prev`.
//! - **Residual** (the leader hook on `blocks.0`, l. 789–878; the tail hook on the last block, l. 902–925;
//!   `_record_full_execution` l. 288–311): a full call stores `(step, last block's output − first block's input)`
//!   of the hidden stream (for Wan the whole `blocks` stack, *without* `norm_out` / `proj_out`: the post-norm
//!   boundary is Cosmos 3's only, l. 1008–1019), keeping the last `residual_order + 1`, and zeroes the reuse
//!   counter. A reuse returns the stack input plus the latest residual — with `residual_order = 1` and two
//!   stored full calls at steps `p < l`, `r_l + (r_l − r_p) · (step − l) / (l − p)` — and counts one more
//!   consecutive reuse. A reuse the gate grants without a stored residual computes and zeroes `acc` (l. 827–833);
//!   a stored residual of another shape than the stack input is dropped and the call computes (l. 848–862). In a
//!   joint-stream host the text stream of a reuse is the one stored at the latest full call, as diffusers'
//!   generic path returns its `cached_und` (l. 878).
//!
//! A batch > 1 shares one decision: the distance is the mean of the per-sample distances, the residual is the
//! whole batch's. Decisions are recorded as `"blocks"` per context ([`CacheStats::at`]). Where diffusers warns
//! once and runs in full, this engine records a typed [`FailOpen`] ([`SeaCache::fail_open`]) and computes; a
//! host without a sigma therefore computes every call (diffusers the same), which `fail_open` reports as
//! [`FailOpen::NoSigma`]. An optional memory budget makes it compute instead of holding the residuals.

use std::sync::Arc;

use burn::tensor::{backend::Backend, DType, Tensor};
use cache_core::{
    tensor_bytes, CacheStats, CacheStrategy, CallContext, ConfigError, Decision, HostInfo, JointStates, MemoryLedger, StateMap,
    TailPlan,
};

mod config;
mod filter;
pub use config::{LatentLayout, SeaCacheConfig};
pub use filter::{distance, sea_filter, sea_gain, Fft3, Indicator};

/// Why a call ran in full regardless of the gate (diffusers' `mark_fail_open` warnings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailOpen {
    /// The host handed no scheduler sigma ([`cache_core::StepContext::sigma`] is `None`): only pipelines that
    /// pass one (Wan) can be cached; every call computes.
    NoSigma,
    /// A step index at or past the step count, no steps, or a sigma that is not a finite value in `[0, 1]`.
    InvalidSchedule,
    /// The host called the block stack without handing the call's latents first
    /// ([`CacheStrategy::observe_latents`]), or handed an empty batch.
    NoLatents,
    /// A context's step did not follow its previous one: the trajectory was reset.
    NonAdjacentSteps,
    /// The indicator changed sample count, shape or dtype between calls.
    IndicatorChanged,
    /// The gate allowed a reuse but no residual was stored.
    NoResidualHistory,
    /// A stored residual no longer fits the stack input (shape or dtype): it was dropped.
    ResidualChanged,
}

impl std::fmt::Display for FailOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoSigma => "the host hands no scheduler sigma: SeaCache computes every call",
            Self::InvalidSchedule => "invalid scheduler metadata: expected a step index below the step count and a sigma in [0, 1]",
            Self::NoLatents => "the host handed no latents before the block stack",
            Self::NonAdjacentSteps => "non-adjacent scheduler steps; running full",
            Self::IndicatorChanged => "the indicator changed sample count, shape or dtype; running full",
            Self::NoResidualHistory => "a cache hit without residual history; running full",
            Self::ResidualChanged => "the residual history changed shape or dtype; running full",
        })
    }
}

/// The gate of one cache context: the trajectory part of diffusers' `SeaCacheContextState` (l. 124–163) but the
/// residual history, generic over what an indicator is.
#[derive(Debug, Clone)]
struct Gate<P> {
    key: Option<(usize, f64)>,
    should_compute: bool,
    previous: Option<P>,
    accumulated: f64,
    consecutive: usize,
}

impl<P> Default for Gate<P> {
    fn default() -> Self {
        Self { key: None, should_compute: true, previous: None, accumulated: 0.0, consecutive: 0 }
    }
}

/// What `resolve_gate` decided and noticed.
struct Resolved {
    compute: bool,
    non_adjacent: bool,
    incomparable: bool,
}

impl<P> Gate<P> {
    /// diffusers' `resolve_gate` (l. 182–245). `distance` is asked only when the gate measures. A non-adjacent
    /// step resets the gate; the caller drops its residual history then.
    fn resolve(
        &mut self,
        config: &SeaCacheConfig,
        step: usize,
        sigma: f64,
        num_steps: usize,
        current: Option<P>,
        distance: impl FnOnce(&P, &P) -> f64,
    ) -> Resolved {
        if self.key == Some((step, sigma)) {
            return Resolved { compute: self.should_compute, non_adjacent: false, incomparable: false };
        }
        let non_adjacent = self.key.is_some_and(|(s, _)| step != s + 1);
        if non_adjacent {
            *self = Self::default();
        }
        let retained = step < config.retention_steps;
        let in_cache_end = step as i64 >= num_steps as i64 - config.cache_end_steps as i64;
        let max_consecutive = config.max_consecutive_cached > 0 && self.consecutive >= config.max_consecutive_cached;
        let mut invalid = non_adjacent || current.is_none();
        let mut incomparable = false;
        let mut candidate = 0.0;
        let natural = match (&current, &self.previous) {
            (Some(cur), Some(prev)) if !(invalid || retained || in_cache_end || max_consecutive) => {
                let d = distance(cur, prev);
                if !d.is_finite() {
                    invalid = true;
                    incomparable = true;
                }
                candidate = self.accumulated + d;
                invalid || candidate >= config.threshold
            }
            _ => true,
        };
        let compute = natural || max_consecutive;
        self.accumulated = if compute { 0.0 } else { candidate };
        self.key = Some((step, sigma));
        self.should_compute = compute;
        self.previous = current;
        Resolved { compute, non_adjacent, incomparable }
    }
}

/// The decisions of one generation of `num_steps` steps (`true` = reuse) when the distance of step `i` to step
/// `i − 1` is `distances[i − 1]` (every call valid, steps in order, a residual always storable): what the engine
/// decides on a trajectory whose indicators give these distances. A missing distance computes.
pub fn schedule(config: &SeaCacheConfig, num_steps: usize, distances: &[f64]) -> Vec<bool> {
    let mut gate = Gate::<usize>::default();
    let mut history = false;
    (0..num_steps)
        .map(|step| {
            let r = gate.resolve(config, step, step as f64, num_steps, Some(step), |cur, _| {
                cur.checked_sub(1).and_then(|i| distances.get(i)).copied().unwrap_or(f64::INFINITY)
            });
            if !r.compute && history {
                gate.consecutive += 1;
                return true;
            }
            if !r.compute {
                gate.accumulated = 0.0;
            }
            gate.consecutive = 0;
            history = true;
            false
        })
        .collect()
}

/// One stored full call.
struct Entry<B: Backend> {
    step: usize,
    /// Stack output − stack input, hidden stream.
    residual: Tensor<B, 3>,
    /// The text stream's stack output (joint-stream hosts only).
    und: Option<Tensor<B, 3>>,
}

/// What `observe_latents` found for the current call.
struct Pending {
    step: usize,
    sigma: f64,
    num_steps: usize,
    indicator: Arc<Indicator>,
}

/// State of one cache context.
struct SeaState<B: Backend> {
    gate: Gate<Arc<Indicator>>,
    history: Vec<Entry<B>>,
    bytes: usize,
    /// `None`: no latents observed this call; `Some(None)`: observed, but the call runs fail-open.
    pending: Option<Option<Pending>>,
    /// Set by a computing `before_blocks`, read by `after_blocks`.
    full_execution_pending: bool,
    /// The step of a call whose full run is recorded (diffusers' `cacheable_execution` + `step_index`).
    cacheable_step: Option<usize>,
}

impl<B: Backend> Default for SeaState<B> {
    fn default() -> Self {
        Self { gate: Gate::default(), history: Vec::new(), bytes: 0, pending: None, full_execution_pending: false, cacheable_step: None }
    }
}

/// The last indicator computed, by the exact latents and sigma it came from: the `cond` and `uncond` calls of a
/// step hand the same latents, so the second reuses the first's filter.
struct Memo {
    data: Vec<f32>,
    dims: [usize; 5],
    dtype: DType,
    sigma: f64,
    indicator: Arc<Indicator>,
}

/// The SeaCache engine.
pub struct SeaCache<B: Backend> {
    config: SeaCacheConfig,
    layout: LatentLayout,
    states: StateMap<(), SeaState<B>>,
    memory: MemoryLedger,
    stats: CacheStats,
    fail_open: Vec<FailOpen>,
    memo: Option<Memo>,
}

impl<B: Backend> SeaCache<B> {
    /// An engine with this configuration for `[B, C, F, H, W]` latents (validate it first with
    /// [`SeaCacheConfig::validate`]).
    pub fn new(config: SeaCacheConfig) -> Self {
        Self::with_layout(config, LatentLayout::Bcfhw)
    }

    /// An engine for latents laid out as `layout`.
    pub fn with_layout(config: SeaCacheConfig, layout: LatentLayout) -> Self {
        let memory = MemoryLedger::new(config.memory_budget_bytes);
        Self { config, layout, states: StateMap::default(), memory, stats: CacheStats::default(), fail_open: Vec::new(), memo: None }
    }

    /// An engine for `host` ([`SeaCacheConfig::check_host`], then the host's latent layout).
    pub fn for_host(config: SeaCacheConfig, host: &HostInfo) -> Result<Self, ConfigError> {
        config.check_host(host)?;
        let layout = LatentLayout::for_host(host)?;
        Ok(Self::with_layout(config, layout))
    }

    /// The configuration.
    pub fn config(&self) -> &SeaCacheConfig {
        &self.config
    }

    /// The layout of the latents it reads.
    pub fn layout(&self) -> LatentLayout {
        self.layout
    }

    /// Why calls ran in full regardless of the gate since the last reset, each reason once, first seen first
    /// (diffusers logs these once each). Empty on a host that hands everything SeaCache needs.
    pub fn fail_open(&self) -> &[FailOpen] {
        &self.fail_open
    }

    fn note(&mut self, reason: FailOpen) {
        if !self.fail_open.contains(&reason) {
            self.fail_open.push(reason);
        }
    }

    /// The indicator of `latents` at `sigma`, reusing the last one for the same latents and sigma.
    fn indicator(&mut self, latents: &Tensor<B, 5>, sigma: f64) -> Arc<Indicator> {
        let dims = latents.dims();
        let dtype = latents.dtype();
        let data = latents.clone().into_data().convert::<f32>().into_vec::<f32>().expect("float latents");
        if let Some(m) = &self.memo {
            let same = m.dims == dims
                && m.dtype == dtype
                && m.sigma == sigma
                && m.data.len() == data.len()
                && m.data.iter().zip(&data).all(|(a, b)| a.to_bits() == b.to_bits());
            if same {
                return m.indicator.clone();
            }
        }
        let indicator = Arc::new(indicator_of(&data, dims, self.layout, sigma, self.config.power_exp, dtype));
        self.memo = Some(Memo { data, dims, dtype, sigma, indicator: indicator.clone() });
        indicator
    }

    /// Drops a context's residual history and its bytes.
    fn drop_history(memory: &mut MemoryLedger, s: &mut SeaState<B>) {
        s.history.clear();
        memory.release(s.bytes);
        s.bytes = 0;
    }
}

/// The indicator of a batch of latents `data` (`dims` in `layout`) at `sigma`: each sample as `[C, F, H, W]`
/// through [`sea_filter`] (what the engine measures; the calibration records its distances too).
pub fn indicator_of(data: &[f32], dims: [usize; 5], layout: LatentLayout, sigma: f64, power_exp: f64, dtype: DType) -> Indicator {
    let [b, d1, d2, h, w] = dims;
    let (c, f) = match layout {
        LatentLayout::Bcfhw => (d1, d2),
        LatentLayout::Bfchw => (d2, d1),
    };
    let per_sample = c * f * h * w;
    let threads = if per_sample >= 1 << 16 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { 1 };
    let samples = data
        .chunks_exact(per_sample.max(1))
        .take(b)
        .map(|sample| {
            let cfhw = match layout {
                LatentLayout::Bcfhw => std::borrow::Cow::Borrowed(sample),
                LatentLayout::Bfchw => std::borrow::Cow::Owned(swap_frames_channels(sample, f, c, h * w)),
            };
            sea_filter(&cfhw, [c, f, h, w], sigma, power_exp, dtype, threads)
        })
        .collect();
    Indicator { samples, dims: [c, f, h, w], dtype }
}

/// `[F, C, X]` → `[C, F, X]`.
fn swap_frames_channels(sample: &[f32], f: usize, c: usize, x: usize) -> Vec<f32> {
    let mut out = vec![0.0; sample.len()];
    for fi in 0..f {
        for ci in 0..c {
            let src = (fi * c + ci) * x;
            let dst = (ci * f + fi) * x;
            out[dst..dst + x].copy_from_slice(&sample[src..src + x]);
        }
    }
    out
}

impl<B: Backend> CacheStrategy<B> for SeaCache<B> {
    fn reset(&mut self) {
        self.states.clear();
        self.memory.reset();
        self.stats = CacheStats::default();
        self.fail_open.clear();
        self.memo = None;
    }

    fn wants_latents(&self) -> bool {
        true
    }

    fn observe_latents(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) {
        let step = ctx.step;
        let pending = match step.sigma {
            None => Err(FailOpen::NoSigma),
            Some(sigma) if step.num_steps == 0 || step.step >= step.num_steps || !(sigma.is_finite() && (0.0..=1.0).contains(&sigma)) => {
                Err(FailOpen::InvalidSchedule)
            }
            Some(_) if latents.dims()[0] == 0 => Err(FailOpen::NoLatents),
            Some(sigma) => Ok(sigma),
        };
        let pending = match pending {
            Ok(sigma) => {
                let indicator = self.indicator(latents, sigma);
                Some(Pending { step: step.step, sigma, num_steps: step.num_steps, indicator })
            }
            Err(reason) => {
                self.note(reason);
                None
            }
        };
        let s = self.states.get_mut(ctx, ());
        s.full_execution_pending = false;
        s.cacheable_step = None;
        s.pending = Some(pending);
    }

    fn before_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>) -> TailPlan<B> {
        let order = self.config.residual_order;
        let mut notes = Vec::new();
        let s = self.states.get_mut(ctx, ());
        s.full_execution_pending = true;
        s.cacheable_step = None;
        let out = match s.pending.take() {
            None => {
                notes.push(FailOpen::NoLatents);
                None
            }
            Some(None) => None,
            Some(Some(p)) => {
                s.cacheable_step = Some(p.step);
                let r = s.gate.resolve(&self.config, p.step, p.sigma, p.num_steps, Some(p.indicator), |a, b| distance(a, b));
                if r.non_adjacent {
                    Self::drop_history(&mut self.memory, s);
                    notes.push(FailOpen::NonAdjacentSteps);
                }
                if r.incomparable {
                    notes.push(FailOpen::IndicatorChanged);
                }
                if r.compute {
                    None
                } else if s.history.is_empty() {
                    s.gate.accumulated = 0.0;
                    notes.push(FailOpen::NoResidualHistory);
                    None
                } else {
                    let hist = &s.history[s.history.len().saturating_sub(order + 1)..];
                    let latest = hist.last().expect("not empty");
                    let fits = |t: &Tensor<B, 3>, like: &Tensor<B, 3>| t.dims() == like.dims() && t.dtype() == like.dtype();
                    let und_mismatch = match (&input.encoder, &latest.und) {
                        (Some(e), Some(u)) => !fits(u, e),
                        (None, None) => false,
                        _ => true,
                    };
                    if und_mismatch || hist.iter().any(|e| !fits(&e.residual, &input.hidden)) {
                        Self::drop_history(&mut self.memory, s);
                        s.gate.accumulated = 0.0;
                        notes.push(FailOpen::ResidualChanged);
                        None
                    } else {
                        let mut residual = latest.residual.clone();
                        if order == 1 && hist.len() >= 2 {
                            let previous = &hist[hist.len() - 2];
                            if latest.step != previous.step {
                                let scale = (p.step as f64 - latest.step as f64) / (latest.step as f64 - previous.step as f64);
                                residual = latest.residual.clone() + (latest.residual.clone() - previous.residual.clone()).mul_scalar(scale);
                            }
                        }
                        let encoder = latest.und.clone();
                        s.full_execution_pending = false;
                        s.cacheable_step = None;
                        s.gate.consecutive += 1;
                        Some(JointStates { hidden: input.hidden.clone() + residual, encoder })
                    }
                }
            }
        };
        notes.into_iter().for_each(|n| self.note(n));
        let trace = self.stats.at(ctx);
        trace.blocks = Some(if out.is_some() { Decision::Skip } else { Decision::Compute });
        trace.whole_stack = out.is_some();
        match out {
            Some(out) => TailPlan::Skip(out),
            None => TailPlan::Compute,
        }
    }

    fn after_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) {
        let keep = self.config.residual_order + 1;
        let s = self.states.get_mut(ctx, ());
        if !std::mem::take(&mut s.full_execution_pending) {
            return;
        }
        s.gate.consecutive = 0;
        let Some(step) = s.cacheable_step.take() else { return };
        if output.hidden.dims() != input.hidden.dims() || (input.encoder.is_some() && output.encoder.is_none()) {
            return;
        }
        s.history.push(Entry { step, residual: output.hidden.clone() - input.hidden.clone(), und: output.encoder.clone() });
        let excess = s.history.len().saturating_sub(keep);
        s.history.drain(..excess);
        let total = s.history.iter().map(|e| tensor_bytes(&e.residual) + e.und.as_ref().map_or(0, tensor_bytes)).sum();
        if !self.memory.hold(&mut s.bytes, total) {
            // Over budget: hold nothing, so the next calls compute.
            s.history.clear();
        }
    }

    fn stats(&self) -> CacheStats {
        self.stats.clone()
    }

    fn peak_bytes(&self) -> usize {
        self.memory.peak()
    }
}

#[cfg(test)]
mod tests;
