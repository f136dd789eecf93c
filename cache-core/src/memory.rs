//! Byte accounting for what a strategy holds, with an optional budget.

use burn::tensor::{backend::Backend, Tensor};

use crate::strategy::JointStates;

/// Bytes of a tensor (its element count times its element size).
pub fn tensor_bytes<B: Backend, const D: usize>(t: &Tensor<B, D>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

/// Bytes of the streams.
pub fn joint_bytes<B: Backend>(s: &JointStates<B>) -> usize {
    tensor_bytes(&s.hidden) + s.encoder.as_ref().map_or(0, tensor_bytes)
}

/// Counts the bytes a strategy holds. With a limit, [`MemoryLedger::replace`] refuses an entry that would
/// exceed it, and the strategy computes instead of caching: a budget is never exceeded and never fails a run.
#[derive(Debug, Clone, Default)]
pub struct MemoryLedger {
    limit: Option<usize>,
    held: usize,
    peak: usize,
}

impl MemoryLedger {
    /// A ledger with an optional limit in bytes.
    pub fn new(limit: Option<usize>) -> Self {
        Self { limit, held: 0, peak: 0 }
    }

    /// Swaps an entry of `old` bytes for one of `new` bytes; false (nothing changes) if that would exceed
    /// the limit.
    pub fn replace(&mut self, old: usize, new: usize) -> bool {
        let next = self.held - old.min(self.held) + new;
        if self.limit.is_some_and(|l| next > l) {
            return false;
        }
        self.held = next;
        self.peak = self.peak.max(next);
        true
    }

    /// Moves an entry held at `*held` bytes to `new` bytes if the budget allows, updating `*held`; otherwise
    /// releases the old entry, sets `*held` to 0 and returns false: the caller then drops what it held.
    pub fn hold(&mut self, held: &mut usize, new: usize) -> bool {
        if self.replace(*held, new) {
            *held = new;
            true
        } else {
            self.release(*held);
            *held = 0;
            false
        }
    }

    /// Releases `bytes`.
    pub fn release(&mut self, bytes: usize) {
        self.held -= bytes.min(self.held);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The most bytes held at once since the last [`MemoryLedger::reset`].
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// The limit.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Forgets everything held (the strategy dropped its state); keeps the limit.
    pub fn reset(&mut self) {
        self.held = 0;
        self.peak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_what_would_exceed_it() {
        let mut m = MemoryLedger::new(Some(100));
        assert!(m.replace(0, 60));
        assert!(!m.replace(0, 50));
        assert_eq!(m.held(), 60);
        assert!(m.replace(60, 100));
        assert_eq!((m.held(), m.peak()), (100, 100));
        m.release(100);
        assert_eq!(m.held(), 0);
    }
}
