//! The time a generation spends inside its cache engine: [`Timed`] forwards every hook to the engine and adds
//! up the wall time of each call. On a synchronous backend (ndarray) that is the engine's own arithmetic and
//! bookkeeping (TaylorSeer's factor updates and predictions, FasterCache's frequency split, the residual
//! additions, the hosts' signals an engine reduces); the efficiency column (measured ÷ ideal speedup) cannot
//! tell it apart from the model work its skip counts leave out (norms, modulation, embeddings), this can. On
//! wgpu and CUDA a hook only queues work, so the figure is not reported there.
//!
//! It also times what the model computes between the hooks ([`SiteTimes`]): each attention and module site
//! (from the `before_` hook that let it compute to its `after_` hook) and the block stack. On the uncached run
//! that measures the shares the work model ([`cache_core::WorkModel`], counted in multiply-adds) assumes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{
    AttentionPlan, AttentionSite, BatchPlan, CacheStats, CacheStrategy, CallContext, ConfigError, JointStates, ModuleSite,
    TailPlan,
};

/// Wall time the model spent computing, between the hooks (synchronous backends).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SiteTimes {
    /// Attention sites that computed.
    pub attention: Duration,
    /// Module sites (feed-forwards) that computed.
    pub modules: Duration,
    /// Block stacks that computed (from `before_blocks` to `after_blocks`).
    pub stack: Duration,
}

/// A site's module path as its parts (`blocks`, 3, `attn1`), the key its `Display` string was.
type SiteKey = (&'static str, usize, &'static str);

/// An engine whose hook calls are timed; [`Timed::spent`] is their total.
pub struct Timed<'a, B: Backend> {
    inner: &'a mut dyn CacheStrategy<B>,
    spent: Duration,
    sites: SiteTimes,
    /// When each computing site started, by (stack, index, attribute name): no allocation per hook.
    open: HashMap<SiteKey, Instant>,
    stack_open: Option<Instant>,
}

impl<'a, B: Backend> Timed<'a, B> {
    /// Times `inner`'s hooks from now on.
    pub fn new(inner: &'a mut dyn CacheStrategy<B>) -> Self {
        Self { inner, spent: Duration::ZERO, sites: SiteTimes::default(), open: HashMap::new(), stack_open: None }
    }

    /// What the model computed between the hooks so far.
    pub fn site_times(&self) -> SiteTimes {
        self.sites
    }

    fn open_site<T>(&mut self, key: SiteKey, computes: bool, out: T) -> T {
        if computes {
            self.open.insert(key, Instant::now());
        }
        out
    }

    fn close_site(&mut self, key: SiteKey) -> Duration {
        self.open.remove(&key).map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Wall time spent in the engine's hooks so far.
    pub fn spent(&self) -> Duration {
        self.spent
    }

    fn time<T>(&mut self, f: impl FnOnce(&mut dyn CacheStrategy<B>) -> T) -> T {
        let start = Instant::now();
        let out = f(&mut *self.inner);
        self.spent += start.elapsed();
        out
    }
}

impl<B: Backend> CacheStrategy<B> for Timed<'_, B> {
    fn reset(&mut self) {
        self.time(|s| s.reset())
    }
    fn check_steps(&self, n: usize) -> Result<(), ConfigError> {
        self.inner.check_steps(n)
    }
    fn reuse_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) -> Option<Tensor<B, 5>> {
        self.time(|s| s.reuse_call(ctx, latents))
    }
    fn after_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>, output: &Tensor<B, 5>) {
        self.time(|s| s.after_call(ctx, latents, output))
    }
    fn begin_forward(&mut self, ctx: &CallContext) -> BatchPlan {
        self.time(|s| s.begin_forward(ctx))
    }
    fn end_forward(&mut self, ctx: &CallContext, output: Tensor<B, 5>) -> Tensor<B, 5> {
        self.time(|s| s.end_forward(ctx, output))
    }
    fn wants_step_signal(&self) -> bool {
        self.inner.wants_step_signal()
    }
    fn observe_step_signal(&mut self, ctx: &CallContext, signal: &Tensor<B, 3>) {
        self.time(|s| s.observe_step_signal(ctx, signal))
    }
    fn step_signal_name(&self) -> Option<&str> {
        self.inner.step_signal_name()
    }
    fn wants_latents(&self) -> bool {
        self.inner.wants_latents()
    }
    fn observe_latents(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) {
        self.time(|s| s.observe_latents(ctx, latents))
    }
    fn before_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>) -> TailPlan<B> {
        let plan = self.time(|s| s.before_blocks(ctx, input));
        self.stack_open = matches!(plan, TailPlan::Compute).then(Instant::now);
        plan
    }
    fn after_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) {
        self.sites.stack += self.stack_open.take().map(|t| t.elapsed()).unwrap_or_default();
        self.time(|s| s.after_blocks(ctx, input, output))
    }
    fn before_module(&mut self, ctx: &CallContext, site: &ModuleSite) -> AttentionPlan<B> {
        let plan = self.time(|s| s.before_module(ctx, site));
        let computes = matches!(plan, AttentionPlan::Compute);
        self.open_site((site.stack, site.index, site.name), computes, plan)
    }
    fn after_module(&mut self, ctx: &CallContext, site: &ModuleSite, output: &JointStates<B>) {
        let took = self.close_site((site.stack, site.index, site.name));
        self.sites.modules += took;
        self.time(|s| s.after_module(ctx, site, output))
    }
    fn after_head_block(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) -> TailPlan<B> {
        self.time(|s| s.after_head_block(ctx, input, output))
    }
    fn after_tail_blocks(&mut self, ctx: &CallContext, head: &JointStates<B>, output: JointStates<B>) -> JointStates<B> {
        self.time(|s| s.after_tail_blocks(ctx, head, output))
    }
    fn before_attention(&mut self, ctx: &CallContext, site: &AttentionSite) -> AttentionPlan<B> {
        let plan = self.time(|s| s.before_attention(ctx, site));
        let computes = matches!(plan, AttentionPlan::Compute);
        self.open_site((site.stack, site.index, site.attn), computes, plan)
    }
    fn after_attention(&mut self, ctx: &CallContext, site: &AttentionSite, output: &JointStates<B>) {
        let took = self.close_site((site.stack, site.index, site.attn));
        self.sites.attention += took;
        self.time(|s| s.after_attention(ctx, site, output))
    }
    fn stats(&self) -> CacheStats {
        self.inner.stats()
    }
    fn peak_bytes(&self) -> usize {
        self.inner.peak_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::Timed;
    use crate::backend::{device, Backend as B};
    use crate::parity::{committed_cases_dir, load_denoise_case};
    use cache_core::CacheStrategy;
    use cache_engines::build;
    use models::{DenoiseOptions, HostTensor};

    #[test]
    fn a_timed_engine_decides_and_computes_exactly_as_the_engine() {
        // TaylorSeer (attention and module hooks), FasterCache (batch plan, end of call), TeaCache (step signal,
        // block stack) and EasyCache (whole calls replaced), each run bare and
        // timed on its committed case: the same latents bit for bit, the same trace, and some time counted.
        for case in ["taylorseer_rotary_order2", "fastercache_sincos", "wan_teacache", "latte_easycache"] {
            let mut c = load_denoise_case::<B>(&committed_cases_dir().join(case), &device()).unwrap();
            let host = c.model.host_info();
            let mut bare = build::<B>(&c.cache, &host).unwrap();
            let plain = HostTensor::from_tensor(c.model.denoise(c.input.clone(), &mut *bare, DenoiseOptions::default()).unwrap());
            let mut engine = build::<B>(&c.cache, &host).unwrap();
            let mut timed = Timed::new(&mut *engine);
            let out = HostTensor::from_tensor(c.model.denoise(c.input.clone(), &mut timed, DenoiseOptions::default()).unwrap());
            assert!(timed.spent().as_nanos() > 0, "{case}");
            assert_eq!(timed.stats(), bare.stats(), "{case}");
            assert_eq!(out.data, plain.data, "{case}");
        }
    }
}
