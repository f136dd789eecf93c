//! Composition: several strategies consulted in order at every hook.

use burn::tensor::{backend::Backend, Tensor};

use crate::config::ConfigError;
use crate::context::{AttentionSite, CallContext, ModuleSite};
use crate::stats::CacheStats;
use crate::strategy::{AttentionPlan, BatchPlan, CacheStrategy, JointStates, TailPlan};

/// Strategies stacked in a defined order.
///
/// - `reuse_call`: members are asked in order and the first that replaces the call decides; no member sees
///   the rest of that call (a member that must see every call does not stack with one that replaces calls:
///   `cache-engines` refuses such pairs).
/// - `begin_forward`: every member is asked; the call runs cond-only if any member asks for it.
/// - `end_forward`: every member, in reverse order, each getting the previous one's output.
/// - `before_blocks` / `after_head_block` / `before_attention` / `before_module`: members are asked in order and the first that skips or
///   reuses decides; the members after it are not asked for that decision.
/// - `after_call` / `observe_step_signal` / `after_blocks` / `after_tail_blocks` / `after_attention` / `after_module` / `reset`: every member, so each keeps its own state current
///   with what actually ran.
pub struct Stack<B: Backend> {
    members: Vec<Box<dyn CacheStrategy<B>>>,
}

impl<B: Backend> Stack<B> {
    /// A stack of these members, consulted in this order.
    pub fn new(members: Vec<Box<dyn CacheStrategy<B>>>) -> Self {
        Self { members }
    }

    /// Adds a member at the end (consulted last).
    pub fn push(mut self, member: Box<dyn CacheStrategy<B>>) -> Self {
        self.members.push(member);
        self
    }

    /// The members.
    pub fn members(&self) -> &[Box<dyn CacheStrategy<B>>] {
        &self.members
    }
}

impl<B: Backend> CacheStrategy<B> for Stack<B> {
    fn reset(&mut self) {
        self.members.iter_mut().for_each(|m| m.reset());
    }

    fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        self.members.iter().try_for_each(|m| m.check_steps(num_inference_steps))
    }

    fn reuse_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) -> Option<Tensor<B, 5>> {
        self.members.iter_mut().find_map(|m| m.reuse_call(ctx, latents))
    }

    fn after_call(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>, output: &Tensor<B, 5>) {
        self.members.iter_mut().for_each(|m| m.after_call(ctx, latents, output));
    }

    fn begin_forward(&mut self, ctx: &CallContext) -> BatchPlan {
        let mut plan = BatchPlan::Full;
        for m in &mut self.members {
            if m.begin_forward(ctx) == BatchPlan::CondOnly {
                plan = BatchPlan::CondOnly;
            }
        }
        plan
    }

    fn end_forward(&mut self, ctx: &CallContext, output: Tensor<B, 5>) -> Tensor<B, 5> {
        self.members.iter_mut().rev().fold(output, |out, m| m.end_forward(ctx, out))
    }

    fn wants_step_signal(&self) -> bool {
        self.members.iter().any(|m| m.wants_step_signal())
    }

    fn observe_step_signal(&mut self, ctx: &CallContext, signal: &Tensor<B, 3>) {
        self.members.iter_mut().for_each(|m| m.observe_step_signal(ctx, signal));
    }

    fn step_signal_name(&self) -> Option<&str> {
        self.members.iter().find_map(|m| m.step_signal_name())
    }

    fn wants_latents(&self) -> bool {
        self.members.iter().any(|m| m.wants_latents())
    }

    fn observe_latents(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) {
        self.members.iter_mut().filter(|m| m.wants_latents()).for_each(|m| m.observe_latents(ctx, latents));
    }

    fn before_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>) -> TailPlan<B> {
        for m in &mut self.members {
            if let TailPlan::Skip(out) = m.before_blocks(ctx, input) {
                return TailPlan::Skip(out);
            }
        }
        TailPlan::Compute
    }

    fn after_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) {
        self.members.iter_mut().for_each(|m| m.after_blocks(ctx, input, output));
    }

    fn before_module(&mut self, ctx: &CallContext, site: &ModuleSite) -> AttentionPlan<B> {
        for m in &mut self.members {
            if let AttentionPlan::Reuse(out) = m.before_module(ctx, site) {
                return AttentionPlan::Reuse(out);
            }
        }
        AttentionPlan::Compute
    }

    fn after_module(&mut self, ctx: &CallContext, site: &ModuleSite, output: &JointStates<B>) {
        self.members.iter_mut().for_each(|m| m.after_module(ctx, site, output));
    }

    fn after_head_block(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) -> TailPlan<B> {
        for m in &mut self.members {
            if let TailPlan::Skip(out) = m.after_head_block(ctx, input, output) {
                return TailPlan::Skip(out);
            }
        }
        TailPlan::Compute
    }

    fn after_tail_blocks(&mut self, ctx: &CallContext, head_output: &JointStates<B>, output: JointStates<B>) -> JointStates<B> {
        self.members.iter_mut().fold(output, |out, m| m.after_tail_blocks(ctx, head_output, out))
    }

    fn before_attention(&mut self, ctx: &CallContext, site: &AttentionSite) -> AttentionPlan<B> {
        for m in &mut self.members {
            if let AttentionPlan::Reuse(out) = m.before_attention(ctx, site) {
                return AttentionPlan::Reuse(out);
            }
        }
        AttentionPlan::Compute
    }

    fn after_attention(&mut self, ctx: &CallContext, site: &AttentionSite, output: &JointStates<B>) {
        self.members.iter_mut().for_each(|m| m.after_attention(ctx, site, output));
    }

    fn stats(&self) -> CacheStats {
        let mut s = CacheStats::default();
        self.members.iter().for_each(|m| s.merge(&m.stats()));
        s
    }

    fn peak_bytes(&self) -> usize {
        // Members hold their state independently; the sum bounds the stack's peak from above.
        self.members.iter().map(|m| m.peak_bytes()).sum()
    }
}
