//! # cache-easycache: EasyCache
//!
//! The authors' rule (H-EmbodVis/EasyCache; `EasyCache4Wan2.1/easycache_generate.py` at 5127804, l. 476–644,
//! and `easycache_forward_` of `EasyCache4Wan2.2/easycache_generate.py`, the same rule on module globals; notes
//! in `tools/reference/easycache_rule.md`). The whole transformer call is one function `o = f(x)`, `x` the call's
//! input latents and `o` its output; `L(t)` is the mean absolute value over every element (the whole batch),
//! in float32.
//!
//! - The **leading** call of a step decides (the conditional call where the pipeline runs the guidance branches
//!   as separate calls, the authors' even call; the only call of a batched-CFG or unguided step); the
//!   unconditional call repeats its step's decision (l. 487–490, 543–553).
//! - Leading call at step `i` of `N` (l. 492–530): if `i < ret_steps` or `i ≥ N − 1`, compute and `acc = 0`.
//!   Otherwise, when a previous leading input and output exist: `change = L(x − prev_in)` (`prev_in`: the
//!   previous leading call's input, skipped or not); if `k` exists, `acc += k · change / L(prev_out)` and
//!   the call reuses iff `acc < thresh` (else compute, `acc = 0`); without `k`, compute. Then `prev_in = x`.
//! - A reused call returns `x + residual` of its own branch (l. 533–553): patch embedding, blocks and head are
//!   all skipped.
//! - A computed leading call (l. 608–630): if `prev_out` and `anchor` (the input of the last computed leading
//!   call) exist, `k = L(o − prev_out) / L(x − anchor)`; then `anchor = x`, `prev_out = o`,
//!   `residual = o − x`. A computed following call stores its `residual = o − x` (l. 632–635).
//! - A reset forgets everything (the authors' counter wraps after `2N` calls and their warm-up zeroes `acc`,
//!   which makes a full reset per generation equivalent, l. 536–550, 638–642).
//!
//! Beyond the authors' Wan: where the output has more channels than the input (Latte's learned variance,
//! which its pipeline drops), the rule measures and adds the residual on the input's channels and a reused
//! call repeats the extra channels of the last computed call; where it has fewer (no hosted model: Wan's
//! image-to-video input is refused), the residual and `k` are taken on the output's channels (ComfyUI's
//! `x[:, :output_channels]`) while the deciding change is still measured over the whole input. A residual of
//! another shape than this call's (the batch changed) is not used: the call computes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use burn::prelude::ToElement;
use burn::tensor::{backend::Backend, Tensor};
use cache_core::{tensor_bytes, Branch, CacheStats, CacheStrategy, CallContext, ConfigError, Decision, MemoryLedger};

mod config;
pub use config::EasyCacheConfig;

/// Mean absolute value over every element, in float32 (the authors' `torch.cat(...).abs().mean()`).
fn l1m<B: Backend>(t: Tensor<B, 5>) -> f32 {
    t.abs().mean().into_scalar().to_f32()
}

/// How a call's output lines up with its input latents: equal shapes, or one axis (the channels) on which
/// they differ.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    axis: usize,
    /// Channels both have.
    common: usize,
}

impl Split {
    fn of(input: [usize; 5], output: [usize; 5]) -> Option<Self> {
        let differ: Vec<usize> = (0..5).filter(|&i| input[i] != output[i]).collect();
        match differ[..] {
            [] => Some(Split { axis: 1, common: input[1] }),
            [axis] => Some(Split { axis, common: input[axis].min(output[axis]) }),
            _ => None,
        }
    }

    fn head<B: Backend>(&self, t: &Tensor<B, 5>) -> Tensor<B, 5> {
        if t.dims()[self.axis] == self.common {
            t.clone()
        } else {
            t.clone().narrow(self.axis, 0, self.common)
        }
    }

    fn rest<B: Backend>(&self, t: &Tensor<B, 5>) -> Option<Tensor<B, 5>> {
        let n = t.dims()[self.axis];
        (n > self.common).then(|| t.clone().narrow(self.axis, self.common, n - self.common))
    }
}

/// What a branch reuses: its last computed output minus its input, on the common channels.
struct Residual<B: Backend> {
    input_dims: [usize; 5],
    split: Split,
    residual: Tensor<B, 5>,
    extra: Option<Tensor<B, 5>>,
    bytes: usize,
}

/// The deciding branch's state (the authors' `*_even` variables).
#[derive(Default)]
struct Lead<B: Backend> {
    acc: f32,
    k: Option<f32>,
    compute: bool,
    prev_in: Option<Tensor<B, 5>>,
    anchor: Option<Tensor<B, 5>>,
    prev_out: Option<Tensor<B, 5>>,
    bytes: usize,
}

/// What the authors keep in their module globals: shared by the engines of a pair ([`EasyCache::share`]).
struct State<B: Backend> {
    lead: Lead<B>,
    residuals: HashMap<&'static str, Residual<B>>,
    memory: MemoryLedger,
}

impl<B: Backend> Default for State<B> {
    fn default() -> Self {
        Self { lead: Lead { compute: true, ..Default::default() }, residuals: HashMap::new(), memory: MemoryLedger::new(None) }
    }
}

/// The EasyCache engine.
///
/// Wan 2.2's two experts share one state (the authors' globals, across the switch between experts): give the
/// second expert [`EasyCache::share`] of the first's engine (`cache_engines::build_experts` does).
pub struct EasyCache<B: Backend> {
    config: EasyCacheConfig,
    state: Arc<Mutex<State<B>>>,
    stats: CacheStats,
}

impl<B: Backend> EasyCache<B> {
    /// An engine with this configuration (validate it first with [`EasyCacheConfig::validate`]).
    pub fn new(config: EasyCacheConfig) -> Self {
        Self { config, state: Arc::new(Mutex::new(State::default())), stats: CacheStats::default() }
    }

    /// An engine on the same state as this one, recording its own decisions: for a second model that takes
    /// turns with this one in the same generation (Wan 2.2's `transformer_2`).
    pub fn share(&self) -> Self {
        Self { config: self.config.clone(), state: Arc::clone(&self.state), stats: CacheStats::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &EasyCacheConfig {
        &self.config
    }

    /// The accumulated predicted change and the transformation rate `k` now (for tests and reports).
    pub fn accumulator(&self) -> (f32, Option<f32>) {
        let s = self.lock();
        (s.lead.acc, s.lead.k)
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this call decides for its step (every branch but the separately called unconditional one).
    fn leads(ctx: &CallContext) -> bool {
        ctx.branch != Branch::Uncond
    }
}

/// The leading call's decision (l. 492–530): whether it computes.
fn decide<B: Backend>(config: &EasyCacheConfig, lead: &mut Lead<B>, step: usize, x: &Tensor<B, 5>) -> bool {
    let (ret, n) = (config.ret_steps, config.num_steps);
    let compute = if step < ret || step + 1 >= n {
        lead.acc = 0.0;
        true
    } else {
        match (&lead.prev_in, &lead.prev_out, lead.k) {
            (Some(prev_in), Some(prev_out), Some(k)) if prev_in.dims() == x.dims() => {
                let change = l1m(x.clone() - prev_in.clone());
                lead.acc += k * (change / l1m(prev_out.clone()));
                // torch compares a float32 tensor with the Python float in float32.
                if lead.acc < config.thresh as f32 {
                    false
                } else {
                    lead.acc = 0.0;
                    true
                }
            }
            _ => true,
        }
    };
    lead.prev_in = Some(x.clone());
    compute
}

impl<B: Backend> State<B> {
    fn account(&mut self) {
        let held = self.lead.bytes + self.residuals.values().map(|r| r.bytes).sum::<usize>();
        let before = self.memory.held();
        self.memory.replace(before, held);
    }
}

impl<B: Backend> CacheStrategy<B> for EasyCache<B> {
    fn reset(&mut self) {
        *self.lock() = State::default();
        self.stats = CacheStats::default();
    }

    fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        self.config.check_steps(num_inference_steps)
    }

    fn reuse_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) -> Option<Tensor<B, 5>> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if Self::leads(ctx) {
            s.lead.compute = decide(&self.config, &mut s.lead, ctx.step.step, latents);
        }
        let reused = match s.residuals.get(ctx.branch.context_name()) {
            Some(r) if !s.lead.compute && r.input_dims == latents.dims() => {
                let out = r.split.head(latents) + r.residual.clone();
                Some(match &r.extra {
                    Some(extra) => Tensor::cat(vec![out, extra.clone()], r.split.axis),
                    None => out,
                })
            }
            _ => None,
        };
        drop(guard);
        let trace = self.stats.at(ctx);
        trace.blocks = Some(if reused.is_some() { Decision::Skip } else { Decision::Compute });
        trace.whole_stack = reused.is_some();
        reused
    }

    fn after_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>, output: &Tensor<B, 5>) {
        let name = ctx.branch.context_name();
        let leads = Self::leads(ctx);
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(split) = Split::of(latents.dims(), output.dims()) else {
            // No channel-wise correspondence: hold nothing, so every call of this branch computes.
            s.residuals.remove(name);
            s.account();
            return;
        };
        let (x, o) = (split.head(latents), split.head(output));
        if leads {
            let lead = &mut s.lead;
            if let (Some(prev_out), Some(anchor)) = (&lead.prev_out, &lead.anchor) {
                if prev_out.dims() == o.dims() && anchor.dims() == x.dims() {
                    lead.k = Some(l1m(o.clone() - prev_out.clone()) / l1m(x.clone() - anchor.clone()));
                }
            }
            lead.bytes = tensor_bytes(&x) * 2 + tensor_bytes(&o);
            lead.anchor = Some(x.clone());
            lead.prev_out = Some(o.clone());
        }
        let residual = o - x;
        let extra = split.rest(output);
        let bytes = tensor_bytes(&residual) + extra.as_ref().map_or(0, tensor_bytes);
        s.residuals.insert(name, Residual { input_dims: latents.dims(), split, residual, extra, bytes });
        s.account();
    }

    fn stats(&self) -> CacheStats {
        self.stats.clone()
    }

    fn peak_bytes(&self) -> usize {
        self.lock().memory.peak()
    }
}

#[cfg(test)]
mod tests;
