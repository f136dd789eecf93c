//! # cache-core
//!
//! The contract between a diffusion transformer and a training-free cache engine.
//!
//! A model that wants to be accelerated calls a [`CacheStrategy`] at three levels of its forward:
//!
//! 1. the **denoiser call** ([`CacheStrategy::reuse_call`] / [`CacheStrategy::after_call`],
//!    [`CacheStrategy::begin_forward`] / [`CacheStrategy::end_forward`]): the strategy may replace the whole
//!    call (EasyCache), sees the classifier-free-guidance batch and the step, may ask the model to run the conditional half only,
//!    and rebuilds the whole output (FasterCache's CFG-cache);
//! 2. the **block stack** ([`CacheStrategy::before_blocks`], [`CacheStrategy::after_head_block`],
//!    [`CacheStrategy::after_tail_blocks`], [`CacheStrategy::after_blocks`]): before the stack the strategy may
//!    skip all of it (MagCache), after the first block the rest (First Block Cache);
//! 3. every **attention site** ([`CacheStrategy::before_attention`] / [`CacheStrategy::after_attention`]):
//!    the strategy may return a stored or extrapolated output instead of computing one (Pyramid Attention
//!    Broadcast, FasterCache, TaylorSeer), and every other hookable **module site** (a block's feed-forward:
//!    [`CacheStrategy::before_module`] / [`CacheStrategy::after_module`], TaylorSeer).
//!
//! Every hook receives the [`CallContext`] (step index, number of steps, the scheduler's timestep, what the
//! batch holds) explicitly: there is no global callback. [`Identity`] does nothing and costs nothing;
//! [`Stack`] composes strategies; [`StateMap`] keeps state per site and per branch context;
//! [`MemoryLedger`] counts held bytes against an optional budget; [`CacheStats`] records decisions.
//! [`attention_site`], [`module_site`] and [`block_stack`] are the calls a model's forward makes at levels 2
//! and 3. Engines' configurations live in their crates; `cache-engines` knows them all.
//! [`contiguous_params`] stores a host model's weights in the layout GPU backends read correctly.

mod config;
mod context;
mod dtype;
mod hooks;
mod layout;
mod memory;
mod stack;
mod state;
mod stats;
mod strategy;

pub use config::{
    check_range, check_skip, classify, in_range, read_config_file, require_class, to_toml, ConfigError, HostInfo, Identifiers,
    SiteClass, TimestepRange,
};
pub use context::{AttentionKind, AttentionSite, Branch, CallContext, CfgOrder, ModuleSite, StepContext};
pub use dtype::host_tensor_like;
pub use hooks::{attention_site, block_stack, input_latents, module_site, step_signal, step_signal_named};
pub use layout::contiguous_params;
pub use memory::{joint_bytes, tensor_bytes, MemoryLedger};
pub use stack::Stack;
pub use state::StateMap;
pub use stats::{CacheStats, Counts, Decision, StepTrace, WorkModel};
pub use strategy::{AttentionPlan, BatchPlan, CacheStrategy, Identity, JointStates, TailPlan};
