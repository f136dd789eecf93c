//! # cache-magcache: MagCache
//!
//! diffusers' semantics (`hooks/mag_cache.py`, 0.42): one state per branch context; one decision per step for
//! the whole batch, from the configuration alone (never from tensors). With `ratio[i]` the step ratios
//! ([`MagCacheConfig::step_ratios`], float32) and `retention = int(retention_ratio · N + 0.5)`: a step below
//! `retention` computes and leaves the accumulators alone; from it on, `acc_ratio *= ratio[step]`,
//! `acc_steps += 1`, `acc_err += |1 − acc_ratio|` (float32), and the step skips iff a residual exists,
//! `acc_err ≤ threshold` and `acc_steps ≤ max_skip_steps`; otherwise it computes and resets the accumulators
//! to `(1, 0, 0)`. A skipped step replaces the *whole* block stack: video stream = this step's stack input +
//! the stored residual, text stream = the stack's input unchanged. A computed step stores
//! `residual = stack output − stack input` (video stream). Every call advances the step index; after `N`
//! calls the state resets itself (index, accumulators, residual).
//!
//! Calibration (`calibrate: true`): never skips; per step ratio = mean over batch and tokens of
//! `‖r_t‖ / (‖r_{t−1}‖ + 1e-8)` (norms over channels), 1 at step 0; the list of a completed run is handed back
//! by [`MagCache::calibrated_ratios`] (diffusers prints it).
//!
//! Where diffusers would add a residual of another shape (a batch that changed inside one context) it warns and
//! returns the input; this engine computes that step instead. An optional memory budget makes it compute
//! instead of holding the residual.

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{
    tensor_bytes, CacheStats, CacheStrategy, ConfigError, CallContext, Decision, JointStates, MemoryLedger, StateMap, TailPlan,
};

mod config;
pub use config::{MagCacheConfig, FLUX_MAG_RATIOS};

/// State of one branch context.
struct MagState<B: Backend> {
    step: usize,
    acc_ratio: f32,
    acc_steps: usize,
    acc_err: f32,
    residual: Option<Tensor<B, 3>>,
    /// Whether the current step is computing (set by `before_blocks`, read by `after_blocks`).
    computing: bool,
    /// Calibration: the ratios measured so far in this run.
    measured: Vec<f32>,
    bytes: usize,
}

impl<B: Backend> Default for MagState<B> {
    fn default() -> Self {
        Self { step: 0, acc_ratio: 1.0, acc_steps: 0, acc_err: 0.0, residual: None, computing: false, measured: Vec::new(), bytes: 0 }
    }
}

/// The MagCache engine.
pub struct MagCache<B: Backend> {
    config: MagCacheConfig,
    ratios: Vec<f32>,
    states: StateMap<(), MagState<B>>,
    memory: MemoryLedger,
    stats: CacheStats,
    calibrated: Option<Vec<f32>>,
}

impl<B: Backend> MagCache<B> {
    /// An engine with this configuration (validate it first with [`MagCacheConfig::validate`]).
    pub fn new(config: MagCacheConfig) -> Self {
        let memory = MemoryLedger::new(config.memory_budget_bytes);
        let ratios = config.step_ratios();
        Self { config, ratios, states: StateMap::default(), memory, stats: CacheStats::default(), calibrated: None }
    }

    /// The configuration.
    pub fn config(&self) -> &MagCacheConfig {
        &self.config
    }

    /// In calibration mode, the ratios of the last run that completed `num_inference_steps` calls.
    pub fn calibrated_ratios(&self) -> Option<&[f32]> {
        self.calibrated.as_deref()
    }

    /// Advances the step index; after the configured step count, resets the state (and keeps a finished
    /// calibration's ratios).
    fn advance(&mut self, ctx: &CallContext) {
        let n = self.config.num_inference_steps;
        let s = self.states.get_mut(ctx, ());
        s.step += 1;
        if s.step >= n {
            if self.config.calibrate {
                self.calibrated = Some(std::mem::take(&mut s.measured));
            }
            self.memory.release(s.bytes);
            *s = MagState::default();
        }
    }
}

/// Whether the state's current step skips, updating the accumulators as diffusers' head hook does.
fn decide<B: Backend>(config: &MagCacheConfig, ratios: &[f32], s: &mut MagState<B>, input: &JointStates<B>) -> bool {
    if config.calibrate || s.step < config.retention_step() {
        return false;
    }
    let fits = s.residual.as_ref().is_some_and(|r| r.dims() == input.hidden.dims());
    let ratio = ratios.get(s.step).copied().unwrap_or(1.0);
    accumulate(config, ratio, fits, &mut s.acc_ratio, &mut s.acc_steps, &mut s.acc_err)
}

/// One step of diffusers' accumulators past the retention steps: whether it skips (resetting them when not).
fn accumulate(config: &MagCacheConfig, ratio: f32, has_residual: bool, acc_ratio: &mut f32, acc_steps: &mut usize, acc_err: &mut f32) -> bool {
    *acc_ratio *= ratio;
    *acc_steps += 1;
    *acc_err += (1.0 - *acc_ratio).abs();
    if has_residual && *acc_err <= config.threshold as f32 && *acc_steps <= config.max_skip_steps {
        return true;
    }
    (*acc_ratio, *acc_steps, *acc_err) = (1.0, 0, 0.0);
    false
}

/// The decisions of one generation (`true` = skip), from the configuration alone, as the engine makes them
/// when it can hold its residual. Empty in calibration mode.
pub fn schedule(config: &MagCacheConfig) -> Vec<bool> {
    if config.calibrate {
        return Vec::new();
    }
    let ratios = config.step_ratios();
    let (mut r, mut n, mut e) = (1.0f32, 0usize, 0.0f32);
    (0..config.num_inference_steps)
        .map(|step| step >= config.retention_step() && accumulate(config, ratios.get(step).copied().unwrap_or(1.0), step > 0, &mut r, &mut n, &mut e))
        .collect()
}

/// Mean over batch and tokens of `‖cur‖ / (‖prev‖ + 1e-8)`, norms over channels: the ratio diffusers'
/// calibration records per step.
pub fn magnitude_ratio<B: Backend>(cur: &Tensor<B, 3>, prev: &Tensor<B, 3>) -> f32 {
    let norm = |t: &Tensor<B, 3>| t.clone().powi_scalar(2).sum_dim(2).sqrt();
    let r = (norm(cur) / (norm(prev) + 1e-8)).mean();
    r.into_data().convert::<f32>().into_vec::<f32>().expect("float data")[0]
}

impl<B: Backend> CacheStrategy<B> for MagCache<B> {
    fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        self.config.check_steps(num_inference_steps)
    }

    fn reset(&mut self) {
        self.states.clear();
        self.memory.reset();
        self.stats = CacheStats::default();
    }

    fn before_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>) -> TailPlan<B> {
        let s = self.states.get_mut(ctx, ());
        let skip = decide(&self.config, &self.ratios, s, input);
        s.computing = !skip;
        let out = skip.then(|| JointStates {
            hidden: input.hidden.clone() + s.residual.clone().expect("checked in decide"),
            encoder: input.encoder.clone(),
        });
        let trace = self.stats.at(ctx);
        trace.blocks = Some(if skip { Decision::Skip } else { Decision::Compute });
        trace.whole_stack = skip;
        match out {
            Some(out) => {
                self.advance(ctx);
                TailPlan::Skip(out)
            }
            None => TailPlan::Compute,
        }
    }

    fn after_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) {
        let calibrate = self.config.calibrate;
        let s = self.states.get_mut(ctx, ());
        if !std::mem::take(&mut s.computing) {
            return;
        }
        let residual = output.hidden.clone() - input.hidden.clone();
        if calibrate {
            let ratio = s.residual.as_ref().map_or(1.0, |prev| magnitude_ratio(&residual, prev));
            s.measured.push(ratio);
        }
        if self.memory.hold(&mut s.bytes, tensor_bytes(&residual)) {
            s.residual = Some(residual);
        } else {
            // Over budget: hold nothing, so the next steps compute.
            s.residual = None;
        }
        self.advance(ctx);
    }

    fn stats(&self) -> CacheStats {
        self.stats.clone()
    }

    fn peak_bytes(&self) -> usize {
        self.memory.peak()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tensor;
    use burn_ndarray::NdArray;
    use cache_core::{Branch, StepContext};

    type B = NdArray<f32>;

    fn ctx(step: usize) -> CallContext {
        CallContext::new(StepContext { step, num_steps: 6, timestep: 0.0, sigma: None }, Branch::Unguided, 1)
    }

    /// The hand-derived configuration of both tests.
    fn by_hand() -> MagCacheConfig {
        MagCacheConfig {
            threshold: 0.12,
            max_skip_steps: 2,
            retention_ratio: 0.2,
            num_inference_steps: 6,
            mag_ratios: Some(vec![1.0, 1.1, 1.0, 1.05, 0.9, 1.0]),
            ..Default::default()
        }
    }

    #[test]
    fn schedule_is_the_engines_decisions() {
        let cfg = by_hand();
        // The same rule as the hand-derived test below: C S C S S C.
        assert_eq!(schedule(&cfg), vec![false, true, false, true, true, false]);
    }

    #[test]
    fn decisions_and_outputs_follow_the_rule_by_hand() {
        // retention = int(0.2 · 6 + 0.5) = 1. From step 1: acc_err 0.1 (skip), 0.2 (> 0.12: compute, reset),
        // 0.05 (skip), 0.05 + |1 − 1.05·0.9| = 0.105 (skip), then a third step in a row (> max_skip_steps 2).
        let cfg = by_hand();
        let mut e = MagCache::<B>::new(cfg);
        let dev = Default::default();
        let mut decisions = Vec::new();
        for step in 0..7 {
            let x = Tensor::<B, 3>::ones([1, 2, 3], &dev) * (step as f32 + 1.0);
            let input = JointStates::single(x.clone());
            match e.before_blocks(&ctx(step), &input) {
                TailPlan::Skip(out) => {
                    // This step's input plus the residual of the last computed step (output = 3·input there).
                    let last = decisions.iter().rposition(|d| *d == 'C').unwrap() as f32 + 1.0;
                    let expected = x + 2.0 * last;
                    out.hidden.into_data().assert_approx_eq::<f32>(&expected.into_data(), Default::default());
                    decisions.push('S');
                }
                TailPlan::Compute => {
                    e.after_blocks(&ctx(step), &input, &JointStates::single(x * 3.0));
                    decisions.push('C');
                }
            }
        }
        // The seventh call starts a new run of 6: the state reset itself after step 5.
        assert_eq!(decisions.iter().collect::<String>(), "CSCSSCC");
    }
}
