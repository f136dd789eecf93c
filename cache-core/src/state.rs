//! State per key and per branch context, so that pipelines running the CFG halves as separate passes never
//! mix them, and a reset drops everything.

use std::collections::HashMap;
use std::hash::Hash;

use crate::context::CallContext;

/// A map from (branch context, key) to a strategy's state, created on first use.
///
/// The context is the caller's branch (`cond_uncond`, `cond`, `uncond`, `unguided`): the two halves of a
/// guidance step run as separate passes get separate state, as diffusers' `StateManager` does.
#[derive(Debug, Clone)]
pub struct StateMap<K, S> {
    states: HashMap<(&'static str, K), S>,
}

impl<K, S> Default for StateMap<K, S> {
    fn default() -> Self {
        Self { states: HashMap::new() }
    }
}

impl<K: Eq + Hash, S: Default> StateMap<K, S> {
    /// The state of `key` in the context of `ctx`.
    pub fn get_mut(&mut self, ctx: &CallContext, key: K) -> &mut S {
        self.states.entry((ctx.branch.context_name(), key)).or_default()
    }

    /// The state of `key` in the context of `ctx`, if any.
    pub fn get(&self, ctx: &CallContext, key: K) -> Option<&S> {
        self.states.get(&(ctx.branch.context_name(), key))
    }

    /// Drops every state.
    pub fn clear(&mut self) {
        self.states.clear();
    }

    /// Number of states held.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no state is held.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}
