//! # cache-taylorseer: TaylorSeer
//!
//! diffusers' semantics (`hooks/taylorseer_cache.py`, 0.42): every module whose name full-matches a pattern
//! ([`TaylorSeerCacheConfig`]) has its own state per branch context, whose step counts *calls of that module*
//! from 0. Call `step` computes iff `step < disable_cache_before_step`, or
//! `(step − before − 1) mod cache_interval == 0`, or `step ≥ disable_cache_after_step`; otherwise it predicts.
//!
//! Every computed call updates, per output stream: `F0 = out`; if an earlier update exists, with
//! `d = step − last_update_step`, `F{j+1} = (F{j}_new − F{j}_old) / d` for `j < max_order` while `F{j}_old`
//! exists (so the number of factors grows by one per update up to `max_order + 1`); factors are stored in
//! `taylor_factors_dtype`. A predicted call returns `Σ_k F_k · o^k / k!` with `o = step − last_update_step`
//! (the whole batch) and does not update. A module selected by `skip_predict_identifiers` returns zeros of its
//! last output's shapes instead. No self-reset at the end of a generation: `reset` clears the states.
//!
//! Hook points: attention sites and module sites (a block's feed-forward). Configurations that select no
//! module of the host, or a module it cannot hook, are refused by [`TaylorSeerCacheConfig::check_host`].
//! An optional memory budget makes a module compute instead of holding factors past it.

use std::collections::HashMap;

use burn::tensor::{backend::Backend, DType, Tensor};
use cache_core::{
    tensor_bytes, AttentionPlan, AttentionSite, CacheStats, CacheStrategy, CallContext, ConfigError, Decision,
    JointStates, MemoryLedger, ModuleSite, StateMap,
};

mod config;
pub use config::{patterns_for_host, FactorDtype, Mode, TaylorSeerCacheConfig, DEFAULT_CACHE_IDENTIFIERS};
use config::Selection;

/// State of one hooked module in one branch context.
struct SeerState<B: Backend> {
    /// Calls so far: the index of the next call (diffusers' `current_step + 1`). Counted in `after`, which
    /// every call reaches even when another member of a stack answered it.
    calls: usize,
    last_update: Option<usize>,
    /// Per output stream (video, text), factors `F0, F1, …`.
    factors: Vec<Vec<Tensor<B, 3>>>,
    /// The last computed output's streams (for a zeroed module: only their shapes matter).
    shapes: Vec<[usize; 3]>,
    /// Where and in which dtype the module computed (a zeroed module's zeros are made so, as diffusers'
    /// `torch.zeros(..., dtype=module_dtypes[i])`).
    device: Option<(B::Device, DType)>,
    computing: bool,
    bytes: usize,
}

impl<B: Backend> Default for SeerState<B> {
    fn default() -> Self {
        Self { calls: 0, last_update: None, factors: Vec::new(), shapes: Vec::new(), device: None, computing: false, bytes: 0 }
    }
}

/// The TaylorSeer engine.
pub struct TaylorSeer<B: Backend> {
    config: TaylorSeerCacheConfig,
    selection: Selection,
    modes: HashMap<String, Option<Mode>>,
    states: StateMap<String, SeerState<B>>,
    memory: MemoryLedger,
    stats: CacheStats,
}

fn streams<B: Backend>(s: &JointStates<B>) -> Vec<Tensor<B, 3>> {
    std::iter::once(s.hidden.clone()).chain(s.encoder.clone()).collect()
}

fn joint<B: Backend>(mut v: Vec<Tensor<B, 3>>) -> JointStates<B> {
    let encoder = (v.len() > 1).then(|| v.pop().expect("two streams"));
    JointStates { hidden: v.pop().expect("one stream"), encoder }
}

/// Rounds to the storage dtype (bfloat16 / float16 round to nearest even) and back to the module's dtype
/// (`factor.to(taylor_factors_dtype)` when stored, `factor.to(output_dtype)` when used: one host rounding, then
/// the module's own, as torch's two casts do; float32 factors are the module's values as they are).
fn store<B: Backend>(t: Tensor<B, 3>, dtype: FactorDtype) -> Tensor<B, 3> {
    let round: fn(f32) -> f32 = match dtype {
        FactorDtype::Float32 => return t,
        FactorDtype::Bfloat16 => |v| half::bf16::from_f32(v).to_f32(),
        FactorDtype::Float16 => |v| half::f16::from_f32(v).to_f32(),
    };
    let shape = t.dims();
    let v: Vec<f32> = t.clone().into_data().convert::<f32>().into_vec::<f32>().expect("float data").into_iter().map(round).collect();
    cache_core::host_tensor_like(v, shape, &t)
}

impl<B: Backend> TaylorSeer<B> {
    /// An engine with this configuration (check it against the host first with
    /// [`TaylorSeerCacheConfig::check_host`]).
    pub fn new(config: TaylorSeerCacheConfig) -> Result<Self, ConfigError> {
        let memory = MemoryLedger::new(config.memory_budget_bytes);
        Ok(Self {
            selection: config.checked_selection()?,
            config,
            modes: HashMap::new(),
            states: StateMap::default(),
            memory,
            stats: CacheStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TaylorSeerCacheConfig {
        &self.config
    }

    fn mode(&mut self, name: &str) -> Option<Mode> {
        if let Some(m) = self.modes.get(name) {
            return *m;
        }
        let m = self.selection.mode(name);
        self.modes.insert(name.to_string(), m);
        m
    }

    fn before(&mut self, ctx: &CallContext, name: String) -> AttentionPlan<B> {
        let Some(mode) = self.mode(&name) else { return AttentionPlan::Compute };
        let s = self.states.get_mut(ctx, name.clone());
        let step = s.calls;
        // A module whose factors were dropped (memory budget) cannot predict: it computes.
        let can_predict = match mode {
            Mode::Predict => !s.factors.is_empty(),
            Mode::Zero => !s.shapes.is_empty(),
        };
        let compute = self.config.computes(step) || !can_predict || s.last_update.is_none();
        self.stats.at(ctx).attention.insert(
            name,
            if compute { Decision::Compute } else { Decision::Skip },
        );
        s.computing = compute;
        if compute {
            return AttentionPlan::Compute;
        }
        let o = (step - s.last_update.expect("checked")) as f64;
        let out = match mode {
            Mode::Zero => {
                let (device, dtype) = s.device.clone().expect("set with the shapes");
                s.shapes.iter().map(|&sh| Tensor::zeros(sh, (&device, dtype))).collect()
            }
            Mode::Predict => s
                .factors
                .iter()
                .map(|f| {
                    let mut fact = 1.0f64;
                    let mut out = f[0].clone();
                    for (k, fk) in f.iter().enumerate().skip(1) {
                        fact *= k as f64;
                        out = out + fk.clone() * (o.powi(k as i32) / fact) as f32;
                    }
                    out
                })
                .collect(),
        };
        AttentionPlan::Reuse(joint(out))
    }

    fn after(&mut self, ctx: &CallContext, name: String, output: &JointStates<B>) {
        let Some(mode) = self.mode(&name) else { return };
        let (max_order, dtype) = (self.config.max_order, self.config.taylor_factors_dtype);
        let s = self.states.get_mut(ctx, name);
        let step = s.calls;
        s.calls += 1;
        if !std::mem::take(&mut s.computing) {
            return;
        }
        let outs = streams(output);
        s.shapes = outs.iter().map(|t| t.dims()).collect();
        s.device = Some((output.hidden.device(), output.hidden.dtype()));
        if mode == Mode::Predict {
            let old = std::mem::take(&mut s.factors);
            let d = s.last_update.map(|l| (step - l) as f32);
            let factors: Vec<Vec<Tensor<B, 3>>> = outs
                .into_iter()
                .enumerate()
                .map(|(i, out)| {
                    let mut new = vec![out];
                    if let (Some(d), Some(prev)) = (d, old.get(i)) {
                        for j in 0..max_order {
                            match prev.get(j) {
                                Some(p) if p.dims() == new[j].dims() => {
                                    let next = (new[j].clone() - p.clone()) / d;
                                    new.push(next);
                                }
                                _ => break,
                            }
                        }
                    }
                    new.into_iter().map(|f| store(f, dtype)).collect()
                })
                .collect();
            let bytes = factors.iter().flatten().map(tensor_bytes).sum();
            if self.memory.hold(&mut s.bytes, bytes) {
                s.factors = factors;
            }
        }
        s.last_update = Some(step);
    }
}

impl<B: Backend> CacheStrategy<B> for TaylorSeer<B> {
    fn reset(&mut self) {
        self.states.clear();
        self.memory.reset();
        self.stats = CacheStats::default();
    }

    fn before_attention(&mut self, ctx: &CallContext, site: &AttentionSite) -> AttentionPlan<B> {
        self.before(ctx, site.to_string())
    }

    fn after_attention(&mut self, ctx: &CallContext, site: &AttentionSite, output: &JointStates<B>) {
        self.after(ctx, site.to_string(), output)
    }

    fn before_module(&mut self, ctx: &CallContext, site: &ModuleSite) -> AttentionPlan<B> {
        self.before(ctx, site.to_string())
    }

    fn after_module(&mut self, ctx: &CallContext, site: &ModuleSite, output: &JointStates<B>) {
        self.after(ctx, site.to_string(), output)
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

    #[test]
    fn factors_are_rounded_to_the_storage_dtype() {
        let dev = Default::default();
        let t = Tensor::<B, 3>::from_floats([[[1.0 + 1.0 / 512.0, 1.0 + 1.0 / 128.0, 3.0]]], &dev);
        let r = store(t.clone(), FactorDtype::Bfloat16).into_data().into_vec::<f32>().unwrap();
        assert_eq!(r, vec![1.0, 1.0 + 1.0 / 128.0, 3.0], "bfloat16 keeps 8 significant bits");
        let r = store(t, FactorDtype::Float16).into_data().into_vec::<f32>().unwrap();
        assert_eq!(r, vec![1.0 + 1.0 / 512.0, 1.0 + 1.0 / 128.0, 3.0]);
    }

    #[test]
    fn a_linear_history_is_predicted_exactly_and_zeroed_modules_return_zeros() {
        // Interval 3 after 2 warm-up calls: calls 0, 1, 3, 6 compute; 2, 4, 5 predict. A module whose output is
        // (step + 1)·v is predicted exactly to first order: F0 + F1·o with F1 = v.
        let cfg = TaylorSeerCacheConfig {
            cache_interval: 3,
            disable_cache_before_step: 2,
            taylor_factors_dtype: FactorDtype::Float32,
            cache_identifiers: Some(vec![r"blocks\.\d+\.ff".into()]),
            skip_predict_identifiers: Some(vec![r"blocks\.1\.ff".into()]),
            ..Default::default()
        };
        let mut e = TaylorSeer::<B>::new(cfg).unwrap();
        let dev = Default::default();
        let v = Tensor::<B, 3>::from_floats([[[0.5, -2.0], [1.0, 3.0]]], &dev);
        let mut decisions = String::new();
        for step in 0..7 {
            let ctx = CallContext::new(StepContext { step, num_steps: 7, timestep: 0.0, sigma: None }, Branch::Unguided, 1);
            for index in 0..2 {
                let site = ModuleSite { stack: "blocks", index, name: "ff" };
                let truth = v.clone() * (step as f32 + 1.0);
                let out = match e.before_module(&ctx, &site) {
                    AttentionPlan::Compute => {
                        decisions.push('C');
                        JointStates::single(truth)
                    }
                    AttentionPlan::Reuse(out) => {
                        decisions.push('P');
                        let expected = if index == 0 { truth } else { truth * 0.0 };
                        out.hidden.clone().into_data().assert_approx_eq::<f32>(&expected.into_data(), Default::default());
                        out
                    }
                };
                e.after_module(&ctx, &site, &out);
            }
        }
        assert_eq!(decisions, "CCCCPPCCPPPPCC");
        let unhooked = ModuleSite { stack: "other", index: 0, name: "ff" };
        let ctx = CallContext::new(StepContext { step: 2, num_steps: 7, timestep: 0.0, sigma: None }, Branch::Unguided, 1);
        assert!(matches!(e.before_module(&ctx, &unhooked), AttentionPlan::Compute));
    }
}
