//! # cache-fastercache: FasterCache
//!
//! diffusers' semantics (`hooks/faster_cache.py`), at two levels:
//!
//! - **Attention reuse.** Each spatial/temporal attention site counts its calls. Inside its timestep window
//!   a call is skipped unless the counter is a positive multiple of the block skip range, *and* only when
//!   the model runs the conditional half alone (the unconditional branch is being approximated) or the
//!   model is guidance-distilled. A skipped call returns `o₁ + (o₁ − o₂)·w` from the last two cached
//!   cond-half outputs; every call, extrapolated ones included, pushes its cond half into that cache.
//! - **CFG-cache.** The denoiser call counts its calls; past the first, inside the unconditional window and
//!   off the period (`iteration % unconditional_batch_skip_range != 0`), the model runs the conditional half
//!   only and the unconditional half is rebuilt per `[H, W]` plane as
//!   `ifft2(fft2(cond) + Δ_low·w_low + Δ_high·w_high)`, the deltas being those of the last computed step.
//!   diffusers multiplies the stored deltas by the weights in place on every skipped step, compounding
//!   them; so does this engine unless `compound_frequency_weights` is false.
//!
//! The CFG halves' order comes from the call's [`Branch::Cfg`] (CogVideoX: `[uncond, cond]`). The frequency
//! split runs on the host with rustfft: each approximated step reads the cond half back and writes the
//! rebuilt half (two transfers of `F·C·H·W` floats, plus `F·C` FFTs of `H × W`).

mod freq;

use std::collections::HashMap;

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{
    in_range, joint_bytes, AttentionPlan, AttentionSite, BatchPlan, Branch, CacheStats, CacheStrategy, CallContext,
    CfgOrder, ConfigError, Decision, JointStates, MemoryLedger, SiteClass, StateMap, StepContext,
    TimestepRange,
};

mod config;
pub use config::{FasterCacheConfig, TensorFormat, WeightSchedule};
use rustfft::num_complex::Complex32;

pub use freq::Fft2;

/// A user-supplied attention weight per step (diffusers' `attention_weight_callback`).
pub type WeightFn = Box<dyn Fn(&StepContext) -> f64 + Send + Sync>;

#[derive(Default)]
struct DenoiserState {
    iteration: usize,
    low: Option<Vec<Complex32>>,
    high: Option<Vec<Complex32>>,
    /// Whether the call in flight runs cond-only.
    skipping: bool,
    bytes: usize,
}

struct AttnState<B: Backend> {
    iteration: usize,
    batch_size: Option<usize>,
    /// `[o₂, o₁]`: the last two cached outputs (cond halves, or whole outputs when guidance-distilled).
    cache: Option<(JointStates<B>, JointStates<B>)>,
    bytes: usize,
}

impl<B: Backend> Default for AttnState<B> {
    fn default() -> Self {
        Self { iteration: 0, batch_size: None, cache: None, bytes: 0 }
    }
}

/// The FasterCache engine.
pub struct FasterCache<B: Backend> {
    config: FasterCacheConfig,
    weight_fn: Option<WeightFn>,
    rules: HashMap<AttentionSite, Option<(usize, TimestepRange)>>,
    denoiser: StateMap<(), DenoiserState>,
    attention: StateMap<AttentionSite, AttnState<B>>,
    fft: Option<Fft2>,
    memory: MemoryLedger,
    stats: CacheStats,
}

impl<B: Backend> FasterCache<B> {
    /// An engine with this configuration, validated ([`FasterCacheConfig::validate`]: a skip range of 0 would
    /// divide by zero at the first call).
    pub fn new(config: FasterCacheConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let memory = MemoryLedger::new(config.memory_budget_bytes);
        Ok(Self {
            config,
            weight_fn: None,
            rules: HashMap::new(),
            denoiser: StateMap::default(),
            attention: StateMap::default(),
            fft: None,
            memory,
            stats: CacheStats::default(),
        })
    }

    /// Replaces the configured `attention_weight` schedule with a closure of the step.
    pub fn with_attention_weight_fn(mut self, f: WeightFn) -> Self {
        self.weight_fn = Some(f);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &FasterCacheConfig {
        &self.config
    }

    fn attention_weight(&self, step: &StepContext) -> f64 {
        match &self.weight_fn {
            Some(f) => f(step),
            None => self.config.attention_weight.at(step.step, step.num_steps),
        }
    }

    fn rule(&mut self, site: &AttentionSite) -> Option<(usize, TimestepRange)> {
        let c = &self.config;
        *self.rules.entry(*site).or_insert_with(|| {
            let class = c.classes(std::slice::from_ref(site)).ok()?.pop().flatten()?;
            match class {
                SiteClass::Spatial => {
                    Some((c.spatial_attention_block_skip_range?, c.spatial_attention_timestep_skip_range))
                }
                SiteClass::Temporal => {
                    Some((c.temporal_attention_block_skip_range?, c.temporal_attention_timestep_skip_range))
                }
                SiteClass::Cross => None,
            }
        })
    }

    fn fft_for(&mut self, h: usize, w: usize) -> &Fft2 {
        if self.fft.as_ref().map(Fft2::dims) != Some((h, w)) {
            self.fft = Some(Fft2::new(h, w));
        }
        self.fft.as_ref().expect("just planned")
    }

    fn freq_weights(&self, t: f64) -> (f32, f32) {
        let c = &self.config;
        let low = if in_range(c.low_frequency_weight_update_timestep_range, t) { c.alpha_low_frequency } else { 1.0 };
        let high = if in_range(c.high_frequency_weight_update_timestep_range, t) { c.alpha_high_frequency } else { 1.0 };
        (low as f32, high as f32)
    }
}

fn cfg_order(ctx: &CallContext) -> Option<CfgOrder> {
    match ctx.branch {
        Branch::Cfg(order) => Some(order),
        _ => None,
    }
}

fn host(t: Tensor<impl Backend, 5>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("float data")
}

/// The cond half of a CFG batch along dim 0.
fn cond_half<B: Backend, const D: usize>(t: Tensor<B, D>, order: CfgOrder) -> Tensor<B, D> {
    let half = t.dims()[0] / 2;
    match order {
        CfgOrder::UncondFirst => t.narrow(0, half, half),
        CfgOrder::CondFirst => t.narrow(0, 0, half),
    }
}

impl<B: Backend> CacheStrategy<B> for FasterCache<B> {
    fn reset(&mut self) {
        self.denoiser.clear();
        self.attention.clear();
        self.memory.reset();
        self.stats = CacheStats::default();
    }

    fn begin_forward(&mut self, ctx: &CallContext) -> BatchPlan {
        let distilled = self.config.is_guidance_distilled;
        let (period, window) =
            (self.config.unconditional_batch_skip_range, self.config.unconditional_batch_timestep_skip_range);
        let cfg = cfg_order(ctx).is_some() && ctx.batch_size % 2 == 0;
        let state = self.denoiser.get_mut(ctx, ());
        let skip = !distilled
            && cfg
            && state.iteration > 0
            && in_range(window, ctx.step.timestep)
            && state.iteration % period != 0
            && state.low.is_some();
        state.skipping = skip;
        if cfg && !distilled {
            let d = if skip { Decision::Skip } else { Decision::Compute };
            self.stats.at(ctx).uncond = Some(d);
        }
        if skip {
            BatchPlan::CondOnly
        } else {
            BatchPlan::Full
        }
    }

    fn end_forward(&mut self, ctx: &CallContext, output: Tensor<B, 5>) -> Tensor<B, 5> {
        let (Some(order), false) = (cfg_order(ctx), self.config.is_guidance_distilled) else {
            self.denoiser.get_mut(ctx, ()).iteration += 1;
            return output;
        };
        if ctx.batch_size % 2 != 0 {
            self.denoiser.get_mut(ctx, ()).iteration += 1;
            return output;
        }
        let (wl, wh) = self.freq_weights(ctx.step.timestep);
        let compound = self.config.compound_frequency_weights;
        let dims = output.dims();
        let (h, w) = (dims[3], dims[4]);
        let skipping = self.denoiser.get_mut(ctx, ()).skipping;
        let out = if skipping {
            let cond = host(output.clone());
            let spec = self.fft_for(h, w).forward(&cond);
            let state = self.denoiser.get_mut(ctx, ());
            let (low, high) = (state.low.as_mut().expect("skip needs deltas"), state.high.as_mut().expect("deltas"));
            let rebuilt: Vec<Complex32> = spec
                .iter()
                .zip(low.iter_mut().zip(high.iter_mut()))
                .map(|(c, (l, hi))| {
                    if compound {
                        *l *= wl;
                        *hi *= wh;
                        c + *l + *hi
                    } else {
                        c + *l * wl + *hi * wh
                    }
                })
                .collect();
            let uncond = self.fft.as_ref().expect("planned").inverse_real(rebuilt);
            // In float32 through the FFT, handed back in the model's dtype (diffusers' `.to(hidden_states.dtype)`).
            let uncond = cache_core::host_tensor_like(uncond, dims, &output);
            match order {
                CfgOrder::UncondFirst => Tensor::cat(vec![uncond, output], 0),
                CfgOrder::CondFirst => Tensor::cat(vec![output, uncond], 0),
            }
        } else {
            let all = host(output.clone());
            let n = all.len() / 2;
            let (first, second) = all.split_at(n);
            let (uncond, cond) = match order {
                CfgOrder::UncondFirst => (first, second),
                CfgOrder::CondFirst => (second, first),
            };
            let fft = self.fft_for(h, w);
            let (fu, fc) = (fft.forward(uncond), fft.forward(cond));
            let plane = h * w;
            let mut low = Vec::with_capacity(n);
            let mut high = Vec::with_capacity(n);
            for (i, (u, c)) in fu.iter().zip(&fc).enumerate() {
                let d = u - c;
                let is_low = fft.is_low(i % plane);
                low.push(if is_low { d } else { Complex32::default() });
                high.push(if is_low { Complex32::default() } else { d });
            }
            let bytes = 2 * n * std::mem::size_of::<Complex32>();
            let state = self.denoiser.get_mut(ctx, ());
            let fits = self.memory.hold(&mut state.bytes, bytes);
            (state.low, state.high) = if fits { (Some(low), Some(high)) } else { (None, None) };
            output
        };
        self.denoiser.get_mut(ctx, ()).iteration += 1;
        out
    }

    fn before_attention(&mut self, ctx: &CallContext, site: &AttentionSite) -> AttentionPlan<B> {
        let Some((period, window)) = self.rule(site) else { return AttentionPlan::Compute };
        let distilled = self.config.is_guidance_distilled;
        let weight = self.attention_weight(&ctx.step);
        let state = self.attention.get_mut(ctx, *site);
        let first_batch = *state.batch_size.get_or_insert(ctx.batch_size);
        let mut skip = in_range(window, ctx.step.timestep) && !(state.iteration > 0 && state.iteration % period == 0);
        skip = skip && (distilled || first_batch != ctx.batch_size);
        let plan = match (&state.cache, skip) {
            (Some((o2, o1)), true) if o1.hidden.dims()[0] == ctx.batch_size => {
                let w = weight as f32;
                AttentionPlan::Reuse(o1.clone().zip(o2.clone(), |o1, o2| o1.clone() + (o1 - o2) * w))
            }
            _ => AttentionPlan::Compute,
        };
        let d = if matches!(plan, AttentionPlan::Reuse(_)) { Decision::Skip } else { Decision::Compute };
        self.stats.at(ctx).attention.insert(site.to_string(), d);
        plan
    }

    fn after_attention(&mut self, ctx: &CallContext, site: &AttentionSite, output: &JointStates<B>) {
        if self.rule(site).is_none() {
            return;
        }
        let distilled = self.config.is_guidance_distilled;
        let order = cfg_order(ctx);
        let state = self.attention.get_mut(ctx, *site);
        let entry = match order {
            Some(order) if !distilled && Some(ctx.batch_size) == state.batch_size && ctx.batch_size % 2 == 0 => {
                output.clone().map(|t| cond_half(t, order))
            }
            _ => output.clone(),
        };
        let previous = state.cache.take().map(|(_, o1)| o1).unwrap_or_else(|| entry.clone());
        let bytes = joint_bytes(&previous) + joint_bytes(&entry);
        state.cache = self.memory.hold(&mut state.bytes, bytes).then_some((previous, entry));
        state.iteration += 1;
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

    type B = burn_ndarray::NdArray<f32>;

    /// The public constructor validates every value: a period of 0 (used as `iteration % 0`) is refused,
    /// typed, instead of dividing by zero at the first call.
    #[test]
    fn a_zero_skip_range_is_refused_by_the_constructor() {
        let zero_uncond = FasterCacheConfig { unconditional_batch_skip_range: 0, ..FasterCacheConfig::cogvideox() };
        let e = FasterCache::<B>::new(zero_uncond).err().expect("refused");
        assert_eq!(e, ConfigError::ZeroSkipRange { field: "unconditional_batch_skip_range" });
        let zero_spatial = FasterCacheConfig { spatial_attention_block_skip_range: Some(0), ..FasterCacheConfig::cogvideox() };
        let e = FasterCache::<B>::new(zero_spatial).err().expect("refused");
        assert_eq!(e, ConfigError::ZeroSkipRange { field: "spatial_attention_block_skip_range" });
        FasterCache::<B>::new(FasterCacheConfig::cogvideox()).unwrap();
    }
}
