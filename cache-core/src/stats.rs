//! What a strategy computed and reused: counts, a per-step trace in the `trace.json` shape of the parity
//! cases, and the speedup those counts imply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::context::AttentionKind;

/// A decision at one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The work was done.
    Compute,
    /// The work was skipped (reused, extrapolated or approximated).
    Skip,
}

/// The decisions of one step (`trace.json`'s entry); only the keys a strategy decides are present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    /// Step index.
    pub step: usize,
    /// The scheduler's timestep.
    pub timestep: f64,
    /// The block stack: First Block Cache's tail, or MagCache's whole stack.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blocks: Option<Decision>,
    /// Whether a skipped `blocks` step skipped the whole stack (MagCache) rather than all blocks but the first
    /// (FBC); for the ideal speedup, not part of the trace format.
    #[serde(skip)]
    pub whole_stack: bool,
    /// Per attention site (`transformer_blocks.0.attn1`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attention: BTreeMap<String, Decision>,
    /// FasterCache: the unconditional branch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uncond: Option<Decision>,
}

/// Computed vs reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Work done.
    pub computed: usize,
    /// Work skipped.
    pub reused: usize,
}

impl Counts {
    fn add(&mut self, d: Decision) {
        match d {
            Decision::Compute => self.computed += 1,
            Decision::Skip => self.reused += 1,
        }
    }
}

/// How much of a denoiser call each part costs, to turn skip counts into an ideal speedup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkModel {
    /// Blocks in the stack.
    pub num_blocks: usize,
    /// The share of one block's work that its attention site does (0..1).
    pub attention_share: f64,
    /// The share of one block's work that its feed-forward does (0..1): a predicted `….ff` module site.
    pub ff_share: f64,
}

/// Statistics of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Per step, in order.
    pub steps: Vec<StepTrace>,
}

impl CacheStats {
    /// The entry of step `step`, created on first use.
    pub fn step_mut(&mut self, step: usize, timestep: f64) -> &mut StepTrace {
        if let Some(i) = self.steps.iter().position(|s| s.step == step) {
            return &mut self.steps[i];
        }
        self.steps.push(StepTrace { step, timestep, ..Default::default() });
        self.steps.sort_by_key(|s| s.step);
        let i = self.steps.iter().position(|s| s.step == step).expect("just inserted");
        &mut self.steps[i]
    }

    /// Merges another strategy's statistics of the same generation (a stack's members).
    pub fn merge(&mut self, other: &CacheStats) {
        for s in &other.steps {
            let e = self.step_mut(s.step, s.timestep);
            e.blocks = e.blocks.or(s.blocks);
            e.whole_stack |= s.whole_stack;
            e.uncond = e.uncond.or(s.uncond);
            // In a stack the first member that reuses decides, so a site was skipped if any member skipped it.
            for (k, v) in &s.attention {
                let d = e.attention.entry(k.clone()).or_insert(*v);
                if *v == Decision::Skip {
                    *d = Decision::Skip;
                }
            }
        }
    }

    /// Tail blocks computed vs skipped.
    pub fn blocks(&self) -> Counts {
        let mut c = Counts::default();
        self.steps.iter().filter_map(|s| s.blocks).for_each(|d| c.add(d));
        c
    }

    /// Unconditional branch computed vs approximated.
    pub fn uncond(&self) -> Counts {
        let mut c = Counts::default();
        self.steps.iter().filter_map(|s| s.uncond).for_each(|d| c.add(d));
        c
    }

    /// Attention computed vs reused, per kind; `kind_of` maps a site name to its kind, `None` for a module
    /// site that is not attention (a feed-forward a TaylorSeer predicted), which is left out.
    pub fn attention_by_kind(&self, kind_of: impl Fn(&str) -> Option<AttentionKind>) -> BTreeMap<String, Counts> {
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for s in &self.steps {
            for (site, d) in &s.attention {
                let Some(kind) = kind_of(site) else { continue };
                let kind = format!("{kind:?}").to_lowercase();
                out.entry(kind).or_default().add(*d);
            }
        }
        out
    }

    /// The speedup the skip counts imply: work of the uncached run over work done, where a step costs
    /// `num_blocks` block units per batch half, a skipped tail saves all blocks but the first (a skipped
    /// whole stack all of them), a reused attention site saves `attention_share` of a block (a predicted
    /// feed-forward `ff_share`), and an approximated unconditional branch halves the batch. Steps without an
    /// entry count as fully computed.
    pub fn ideal_speedup(&self, work: &WorkModel, num_steps: usize) -> f64 {
        let full = work.num_blocks as f64;
        let mut done = 0.0;
        for i in 0..num_steps {
            let Some(s) = self.steps.iter().find(|s| s.step == i) else {
                done += full;
                continue;
            };
            let blocks = match s.blocks {
                Some(Decision::Skip) if s.whole_stack => 0.0,
                Some(Decision::Skip) => 1.0,
                _ => full,
            };
            // The trace's `attention` map names every hooked module; a feed-forward ends in `.ff`.
            let reused: f64 = s
                .attention
                .iter()
                .filter(|(_, d)| **d == Decision::Skip)
                .map(|(name, _)| if name.ends_with(".ff") { work.ff_share } else { work.attention_share })
                .sum();
            let units = (blocks - reused).max(0.0);
            let batch = if s.uncond == Some(Decision::Skip) { 0.5 } else { 1.0 };
            done += units * batch;
        }
        if done == 0.0 {
            f64::INFINITY
        } else {
            full * num_steps as f64 / done
        }
    }

    /// The trace in `trace.json`'s shape: `{"steps": [...]}`.
    pub fn trace_json(&self) -> serde_json::Value {
        serde_json::json!({ "steps": self.steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_speedup_from_hand_counts() {
        let mut s = CacheStats::default();
        s.step_mut(0, 999.0).blocks = Some(Decision::Compute);
        s.step_mut(1, 900.0).blocks = Some(Decision::Skip);
        let w = WorkModel { num_blocks: 4, attention_share: 0.5, ff_share: 0.25 };
        // 4 + 1 units instead of 8.
        assert!((s.ideal_speedup(&w, 2) - 8.0 / 5.0).abs() < 1e-12);
        s.step_mut(1, 900.0).uncond = Some(Decision::Skip);
        s.step_mut(0, 999.0).attention.insert("transformer_blocks.1.attn1".into(), Decision::Skip);
        // step 0: 4 - 0.5 = 3.5; step 1: 1 * 0.5.
        assert!((s.ideal_speedup(&w, 2) - 8.0 / 4.0).abs() < 1e-12);
        s.step_mut(0, 999.0).attention.insert("transformer_blocks.2.ff".into(), Decision::Skip);
        // step 0: 3.5 - 0.25 = 3.25.
        assert!((s.ideal_speedup(&w, 2) - 8.0 / 3.75).abs() < 1e-12);
        // A whole-stack skip (MagCache) saves the first block too: step 1 costs 0.
        s.step_mut(1, 900.0).whole_stack = true;
        assert!((s.ideal_speedup(&w, 2) - 8.0 / 3.25).abs() < 1e-12);
    }

    #[test]
    fn trace_serialises_to_the_case_format() {
        let mut s = CacheStats::default();
        s.step_mut(0, 999.0).uncond = Some(Decision::Compute);
        let j = s.trace_json().to_string();
        assert_eq!(j, r#"{"steps":[{"step":0,"timestep":999.0,"uncond":"compute"}]}"#);
    }
}
