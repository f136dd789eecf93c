//! # cache-teacache: TeaCache
//!
//! The authors' rule (Liu et al. 2024; github.com/ali-vilab/TeaCache at 7c10efc,
//! `TeaCache4CogVideoX1.5/teacache_sample_video.py` lines 60–122, `eval/teacache/experiments/latte.py` and
//! `TeaCache4FLUX/teacache_flux.py` lines 105–124, `TeaCache4Wan2.1/teacache_generate.py` lines 519–569 and
//! 869–894), not part of diffusers. The model hands over, before its block stack, the tensor the authors
//! measure for its family ([`CacheStrategy::observe_step_signal`]): CogVideoX's timestep embedding `emb`,
//! Latte's first block's `norm1`-modulated input, FLUX's `transformer_blocks[0].norm1(hidden_states, emb=temb)`
//! (l. 108: the modulated image stream; the skipped call adds the image-stream residual of all double and
//! single blocks, l. 127–128), Wan's time embedding `e` (diffusers' `temb`) or, with the authors'
//! `use_ret_steps`, `e0` (`timestep_proj`, l. 520; [`TeaCacheConfig::step_signal`]); the Wan skip adds the
//! residual of the blocks (l. 552–568). Per call, with `cnt` the call index in its context:
//! - `cnt < ret_steps` or `cnt ≥ cutoff_steps` (defaults 1 and `num_steps − 1`: `cnt == 0` or
//!   `cnt == num_steps − 1`, the CogVideoX/FLUX rule; Wan's l. 524/539 count both branches' calls, so their
//!   `ret_steps`/`cutoff_steps` are twice these): compute, `acc = 0`, nothing measured;
//! - otherwise `acc += poly(rel)`, `rel = mean|x − prev| / mean|prev|` over the whole tensor (float32, then
//!   float64), `poly` the configured polynomial (highest power first, float64 Horner, no clamping); skip iff
//!   `acc < rel_l1_thresh` (strict), else compute and `acc = 0` (the increment is discarded);
//! - every call sets `prev = x` and advances `cnt`, wrapping to 0 after `num_steps` calls.
//!
//! A computed call stores the block stack's residuals (`output − input`, video and text streams); a skipped
//! call returns this call's stack input plus them. One state covers a whole CFG batch (the authors' CogVideoX
//! and Latte pipelines batch CFG: one call per step); separate branch passes (FLUX's `cond` / `uncond` calls;
//! Wan's, which the authors keep apart as even and odd calls, l. 522–550) get separate states, as every engine
//! here.
//!
//! Where the authors would add a residual of another shape (the batch changed) this engine computes instead;
//! an optional memory budget makes it compute instead of holding the residuals.

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{
    joint_bytes, CacheStats, CacheStrategy, ConfigError, CallContext, Decision, JointStates, MemoryLedger, StateMap, TailPlan,
};

mod config;
pub use config::{TeaCacheConfig, PUBLISHED_COEFFICIENTS, PUBLISHED_RET_STEPS_COEFFICIENTS};

/// State of one branch context.
struct TeaState<B: Backend> {
    cnt: usize,
    acc: f64,
    previous: Option<Tensor<B, 3>>,
    residual: Option<JointStates<B>>,
    /// This call's decision, set by `observe_step_signal`, read by `before_blocks` / `after_blocks`.
    skip: bool,
    computing: bool,
    bytes: usize,
}

impl<B: Backend> Default for TeaState<B> {
    fn default() -> Self {
        Self { cnt: 0, acc: 0.0, previous: None, residual: None, skip: false, computing: false, bytes: 0 }
    }
}

/// The TeaCache engine.
pub struct TeaCache<B: Backend> {
    config: TeaCacheConfig,
    states: StateMap<(), TeaState<B>>,
    memory: MemoryLedger,
    stats: CacheStats,
}

/// `mean|a − b| / mean|b|` over every element, divided in float32 as the authors' torch expression does.
pub fn relative_l1<B: Backend>(a: &Tensor<B, 3>, b: &Tensor<B, 3>) -> f64 {
    let num = (a.clone() - b.clone()).abs().mean();
    let den = b.clone().abs().mean();
    let v = (num / den).into_data().convert::<f32>().into_vec::<f32>().expect("float data")[0];
    v as f64
}

/// One measured call: `acc += poly(rel)`; whether it skips (strictly below the threshold, with residuals to
/// reuse), resetting `acc` when not.
fn accumulate(config: &TeaCacheConfig, rel: f64, has_residual: bool, acc: &mut f64) -> bool {
    *acc += config.rescale(rel);
    if *acc < config.rel_l1_thresh && has_residual {
        return true;
    }
    *acc = 0.0;
    false
}

/// The decisions of one generation (`true` = skip) for the measured changes `rel[i]` of calls `1..num_steps`
/// (the forced calls, [`TeaCacheConfig::forced`], compute whatever `rel` says). Exact for a model whose measured tensor depends on the
/// timestep only (CogVideoX's `emb`); for others, the decisions on the trajectory `rel` was measured on.
pub fn schedule(config: &TeaCacheConfig, rel: &[f64]) -> Vec<bool> {
    let n = config.num_steps;
    let mut acc = 0.0;
    (0..n)
        .map(|call| {
            if call == 0 || config.forced(call) {
                acc = 0.0;
                return false;
            }
            accumulate(config, rel.get(call - 1).copied().unwrap_or(f64::INFINITY), true, &mut acc)
        })
        .collect()
}

impl<B: Backend> TeaCache<B> {
    /// An engine with this configuration (validate it first with [`TeaCacheConfig::validate`]).
    pub fn new(config: TeaCacheConfig) -> Self {
        let memory = MemoryLedger::new(config.memory_budget_bytes);
        Self { config, states: StateMap::default(), memory, stats: CacheStats::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &TeaCacheConfig {
        &self.config
    }
}

impl<B: Backend> CacheStrategy<B> for TeaCache<B> {
    fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        self.config.check_steps(num_inference_steps)
    }

    fn reset(&mut self) {
        self.states.clear();
        self.memory.reset();
        self.stats = CacheStats::default();
    }

    fn wants_step_signal(&self) -> bool {
        true
    }

    fn step_signal_name(&self) -> Option<&str> {
        self.config.step_signal.as_deref()
    }

    fn observe_step_signal(&mut self, ctx: &CallContext, signal: &Tensor<B, 3>) {
        let n = self.config.num_steps;
        let s = self.states.get_mut(ctx, ());
        let forced = self.config.forced(s.cnt);
        s.skip = false;
        match &s.previous {
            Some(prev) if !forced && prev.dims() == signal.dims() => {
                let rel = relative_l1(signal, prev);
                let fits = s.residual.as_ref().is_some_and(|r| r.hidden.dims()[0] == signal.dims()[0]);
                s.skip = accumulate(&self.config, rel, fits, &mut s.acc);
            }
            _ => s.acc = 0.0,
        }
        s.previous = Some(signal.clone());
        s.cnt += 1;
        if s.cnt == n {
            s.cnt = 0;
        }
    }

    fn before_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>) -> TailPlan<B> {
        let s = self.states.get_mut(ctx, ());
        let residual = s.residual.as_ref().filter(|r| s.skip && r.hidden.dims() == input.hidden.dims());
        let out = residual.map(|r| JointStates {
            hidden: input.hidden.clone() + r.hidden.clone(),
            encoder: match (&input.encoder, &r.encoder) {
                (Some(e), Some(re)) => Some(e.clone() + re.clone()),
                (e, _) => e.clone(),
            },
        });
        s.skip = false;
        s.computing = out.is_none();
        let trace = self.stats.at(ctx);
        trace.blocks = Some(if out.is_some() { Decision::Skip } else { Decision::Compute });
        trace.whole_stack = out.is_some();
        match out {
            Some(out) => TailPlan::Skip(out),
            None => TailPlan::Compute,
        }
    }

    fn after_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) {
        let s = self.states.get_mut(ctx, ());
        if !std::mem::take(&mut s.computing) {
            return;
        }
        let residual = output.clone().zip(input.clone(), |o, i| o - i);
        if self.memory.hold(&mut s.bytes, joint_bytes(&residual)) {
            s.residual = Some(residual);
        } else {
            // Over budget: hold nothing, so the next calls compute.
            s.residual = None;
        }
    }

    fn stats(&self) -> CacheStats {
        self.stats.clone()
    }

    fn peak_bytes(&self) -> usize {
        self.memory.peak()
    }
}
