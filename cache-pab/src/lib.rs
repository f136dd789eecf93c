//! # cache-pab: Pyramid Attention Broadcast
//!
//! diffusers' semantics (`hooks/pyramid_attention_broadcast.py`): every attention site classified as
//! spatial, temporal or cross (by diffusers' identifier search, see [`cache_core::classify`]) keeps an
//! iteration counter that counts *every* call, and the last output. A call computes iff nothing is cached,
//! or the counter is 0, or the timestep is outside the class's window (strictly inside counts as inside),
//! or the counter is a multiple of the class's block skip range; otherwise it returns the cached output
//! (both streams, the whole batch). So the phase inside the window follows the global call count.
//!
//! State is kept per site, per branch context and per batch size (a cond-only pass never reuses a CFG
//! batch's output). An optional memory budget makes the engine compute instead of caching.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use cache_core::{
    in_range, joint_bytes, AttentionPlan, AttentionSite, CacheStats, CacheStrategy, CallContext, ConfigError,
    Decision, JointStates, MemoryLedger, SiteClass, StateMap, TimestepRange,
};

mod config;
pub use config::{anchored, default_spatial_ids, PyramidAttentionBroadcastConfig};

struct PabState<B: Backend> {
    iteration: usize,
    cache: Option<JointStates<B>>,
    bytes: usize,
}

impl<B: Backend> Default for PabState<B> {
    fn default() -> Self {
        Self { iteration: 0, cache: None, bytes: 0 }
    }
}

/// The Pyramid Attention Broadcast engine.
pub struct PyramidAttentionBroadcast<B: Backend> {
    config: PyramidAttentionBroadcastConfig,
    classes: HashMap<AttentionSite, Option<(usize, TimestepRange)>>,
    states: StateMap<(AttentionSite, usize), PabState<B>>,
    memory: MemoryLedger,
    stats: CacheStats,
}

impl<B: Backend> PyramidAttentionBroadcast<B> {
    /// An engine with this configuration; its identifiers must be valid regular expressions.
    pub fn new(config: PyramidAttentionBroadcastConfig) -> Result<Self, ConfigError> {
        // Every value, not only the identifiers: a skip range of 0 would divide by zero at the first site.
        config.validate()?;
        let memory = MemoryLedger::new(config.memory_budget_bytes);
        Ok(Self { config, classes: HashMap::new(), states: StateMap::default(), memory, stats: CacheStats::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &PyramidAttentionBroadcastConfig {
        &self.config
    }

    /// (block skip range, timestep window) of a site, or None when the engine leaves it alone.
    fn rule(&mut self, site: &AttentionSite) -> Option<(usize, TimestepRange)> {
        let c = &self.config;
        *self.classes.entry(*site).or_insert_with(|| {
            let class = c.classes(std::slice::from_ref(site)).ok()?.pop().flatten()?;
            Some(match class {
                SiteClass::Spatial => (c.spatial_attention_block_skip_range?, c.spatial_attention_timestep_skip_range),
                SiteClass::Temporal => (c.temporal_attention_block_skip_range?, c.temporal_attention_timestep_skip_range),
                SiteClass::Cross => (c.cross_attention_block_skip_range?, c.cross_attention_timestep_skip_range),
            })
        })
    }
}

impl<B: Backend> CacheStrategy<B> for PyramidAttentionBroadcast<B> {
    fn reset(&mut self) {
        self.states.clear();
        self.memory.reset();
        self.stats = CacheStats::default();
    }

    fn before_attention(&mut self, ctx: &CallContext, site: &AttentionSite) -> AttentionPlan<B> {
        let Some((skip_range, window)) = self.rule(site) else { return AttentionPlan::Compute };
        let state = self.states.get_mut(ctx, (*site, ctx.batch_size));
        let compute = state.cache.is_none()
            || state.iteration == 0
            || !in_range(window, ctx.step.timestep)
            || state.iteration % skip_range == 0;
        let decision = if compute { Decision::Compute } else { Decision::Skip };
        self.stats.at(ctx).attention.insert(site.to_string(), decision);
        match (compute, &state.cache) {
            (false, Some(cached)) => AttentionPlan::Reuse(cached.clone()),
            _ => AttentionPlan::Compute,
        }
    }

    fn after_attention(&mut self, ctx: &CallContext, site: &AttentionSite, output: &JointStates<B>) {
        if self.rule(site).is_none() {
            return;
        }
        let state = self.states.get_mut(ctx, (*site, ctx.batch_size));
        state.cache = self.memory.hold(&mut state.bytes, joint_bytes(output)).then(|| output.clone());
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

    /// The public constructor validates every value: a skip range of 0 (used as `iteration % 0` at the first
    /// site) is refused, typed, instead of dividing by zero there.
    #[test]
    fn a_zero_skip_range_is_refused_by_the_constructor() {
        for field in ["spatial", "temporal", "cross"] {
            let mut c = PyramidAttentionBroadcastConfig::default();
            match field {
                "spatial" => c.spatial_attention_block_skip_range = Some(0),
                "temporal" => c.temporal_attention_block_skip_range = Some(0),
                _ => c.cross_attention_block_skip_range = Some(0),
            }
            let e = PyramidAttentionBroadcast::<B>::new(c).err().expect("refused");
            assert!(matches!(e, ConfigError::ZeroSkipRange { field: f } if f.starts_with(field)), "{e}");
        }
        PyramidAttentionBroadcast::<B>::new(PyramidAttentionBroadcastConfig::default()).unwrap();
    }
}
