//! What a strategy computed and reused: counts, a per-step trace in the `trace.json` shape of the parity
//! cases, and the speedup those counts imply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::context::{AttentionKind, Branch, CallContext};

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
///
/// A pipeline that runs the guidance branches as separate calls (FLUX, Wan: diffusers' cache contexts
/// `cond` / `uncond`) gets one nested entry per context in [`StepTrace::contexts`], serialised as
/// `"cond": {...}, "uncond": {...}` (`parity-cases-flux-wan.md`); a batched call records at the top level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTrace {
    /// Step index.
    pub step: usize,
    /// The scheduler's timestep.
    pub timestep: f64,
    /// The block stack: First Block Cache's tail, or MagCache's whole stack.
    pub blocks: Option<Decision>,
    /// Whether a skipped `blocks` step skipped the whole stack (MagCache) rather than all blocks but the first
    /// (FBC); for the ideal speedup, not part of the trace format.
    pub whole_stack: bool,
    /// Per attention site (`transformer_blocks.0.attn1`), and per module a module-level engine hooks
    /// (TaylorSeer; a context object's `"modules"` key is read into this map too).
    pub attention: BTreeMap<String, Decision>,
    /// FasterCache: the unconditional branch.
    pub uncond: Option<Decision>,
    /// Per cache context (`cond`, `uncond`) of a pipeline that calls the model once per branch.
    pub contexts: BTreeMap<String, StepTrace>,
    /// The model that ran the step in a pipeline with two (Wan 2.2's experts: `"transformer"` or
    /// `"transformer_2"`); `None` with one model.
    pub transformer: Option<String>,
}

impl StepTrace {
    /// This entry and its per-context entries: every place a decision of the step is recorded.
    pub fn entries(&self) -> impl Iterator<Item = &StepTrace> {
        std::iter::once(self).chain(self.contexts.values())
    }

    /// The keys of the entry in `trace.json`'s order (a context object has no `step` / `timestep`).
    fn fields(&self, top: bool) -> Vec<(String, serde_json::Value)> {
        let mut m: Vec<(String, serde_json::Value)> = Vec::new();
        if top {
            m.push(("step".into(), self.step.into()));
            m.push(("timestep".into(), self.timestep.into()));
            if let Some(t) = &self.transformer {
                m.push(("transformer".into(), t.clone().into()));
            }
        }
        let d = |d: Decision| serde_json::Value::String(match d {
            Decision::Compute => "compute".into(),
            Decision::Skip => "skip".into(),
        });
        if let Some(b) = self.blocks {
            m.push(("blocks".into(), d(b)));
        }
        if !self.attention.is_empty() {
            let a = self.attention.iter().map(|(k, v)| (k.clone(), d(*v))).collect();
            m.push(("attention".into(), serde_json::Value::Object(a)));
        }
        if let Some(u) = self.uncond {
            m.push(("uncond".into(), d(u)));
        }
        for (name, c) in &self.contexts {
            m.push((name.clone(), serde_json::Value::Object(c.fields(false).into_iter().collect())));
        }
        m
    }

    fn from_raw(raw: RawStep, step: usize, timestep: f64) -> Result<Self, String> {
        let mut attention = raw.attention;
        attention.extend(raw.modules);
        let mut out = StepTrace { step, timestep, blocks: raw.blocks, attention, ..Default::default() };
        for (key, value) in raw.rest {
            match value {
                serde_json::Value::String(name) if key == "transformer" => out.transformer = Some(name),
                serde_json::Value::String(_) if key == "uncond" => {
                    out.uncond = Some(serde_json::from_value(value).map_err(|e| format!("`uncond`: {e}"))?);
                }
                serde_json::Value::Object(_) => {
                    let raw: RawStep = serde_json::from_value(value).map_err(|e| format!("context `{key}`: {e}"))?;
                    out.contexts.insert(key, StepTrace::from_raw(raw, step, timestep)?);
                }
                other => return Err(format!("unknown trace key `{key}` = {other}")),
            }
        }
        Ok(out)
    }
}

impl Serialize for StepTrace {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.fields(true))
    }
}

/// A `trace.json` step or context object as written, before the context objects are told apart.
#[derive(Deserialize)]
struct RawStep {
    #[serde(default)]
    step: usize,
    #[serde(default)]
    timestep: f64,
    #[serde(default)]
    blocks: Option<Decision>,
    #[serde(default)]
    attention: BTreeMap<String, Decision>,
    #[serde(default)]
    modules: BTreeMap<String, Decision>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for StepTrace {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawStep::deserialize(deserializer)?;
        let (step, timestep) = (raw.step, raw.timestep);
        StepTrace::from_raw(raw, step, timestep).map_err(serde::de::Error::custom)
    }
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

    /// Where a decision of the call `ctx` is recorded: the step's entry for a batched or unguided call, its
    /// entry for the cache context (`cond`, `uncond`) of a call that runs one guidance branch alone.
    pub fn at(&mut self, ctx: &CallContext) -> &mut StepTrace {
        let (step, timestep) = (ctx.step.step, ctx.step.timestep);
        let entry = self.step_mut(step, timestep);
        match ctx.branch {
            Branch::Cond | Branch::Uncond => entry
                .contexts
                .entry(ctx.branch.context_name().to_string())
                .or_insert_with(|| StepTrace { step, timestep, ..Default::default() }),
            Branch::Cfg(_) | Branch::Unguided => entry,
        }
    }

    /// Merges another strategy's statistics of the same generation (a stack's members).
    pub fn merge(&mut self, other: &CacheStats) {
        for s in &other.steps {
            merge_entry(self.step_mut(s.step, s.timestep), s);
        }
    }

    /// Tail blocks computed vs skipped.
    pub fn blocks(&self) -> Counts {
        let mut c = Counts::default();
        self.entries().filter_map(|s| s.blocks).for_each(|d| c.add(d));
        c
    }

    /// Unconditional branch computed vs approximated.
    pub fn uncond(&self) -> Counts {
        let mut c = Counts::default();
        self.entries().filter_map(|s| s.uncond).for_each(|d| c.add(d));
        c
    }

    /// Attention computed vs reused, per kind; `kind_of` maps a site name to its kind, `None` for a module
    /// site that is not attention (a feed-forward a TaylorSeer predicted), which is left out.
    pub fn attention_by_kind(&self, kind_of: impl Fn(&str) -> Option<AttentionKind>) -> BTreeMap<String, Counts> {
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for s in self.entries() {
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
            // A step run as one call per guidance branch costs the mean of its contexts (each a half).
            done += match s.contexts.is_empty() {
                true => entry_units(s, work),
                false => s.contexts.values().map(|c| entry_units(c, work)).sum::<f64>() / s.contexts.len() as f64,
            };
        }
        if done == 0.0 {
            f64::INFINITY
        } else {
            full * num_steps as f64 / done
        }
    }

    /// Every step's entry and its per-context entries ([`StepTrace::entries`]), in step order.
    pub fn entries(&self) -> impl Iterator<Item = &StepTrace> {
        self.steps.iter().flat_map(StepTrace::entries)
    }

    /// The trace in `trace.json`'s shape: `{"steps": [...]}`.
    pub fn trace_json(&self) -> serde_json::Value {
        serde_json::json!({ "steps": self.steps })
    }
}

/// Merges one strategy's entry `s` into `e` (a stack's members, same step).
fn merge_entry(e: &mut StepTrace, s: &StepTrace) {
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
    for (name, c) in &s.contexts {
        let into = e
            .contexts
            .entry(name.clone())
            .or_insert_with(|| StepTrace { step: s.step, timestep: s.timestep, ..Default::default() });
        merge_entry(into, c);
    }
}

/// Block units one call of a step's entry did ([`CacheStats::ideal_speedup`]'s accounting).
fn entry_units(s: &StepTrace, work: &WorkModel) -> f64 {
    let full = work.num_blocks as f64;
    let blocks = match s.blocks {
        Some(Decision::Skip) if s.whole_stack => 0.0,
        Some(Decision::Skip) => 1.0,
        _ => full,
    };
    // The trace's `attention` map names every hooked module: attention sites end in `.attn`, `.attn1` or
    // `.attn2`; every other module (`.ff`, FLUX's `.ff_context`, `.proj_mlp`, `.proj_out`) counts as a
    // feed-forward.
    let reused: f64 = s
        .attention
        .iter()
        .filter(|(_, d)| **d == Decision::Skip)
        .map(|(name, _)| if name.ends_with(".attn") || name.ends_with(".attn1") || name.ends_with(".attn2") { work.attention_share } else { work.ff_share })
        .sum();
    let units = (blocks - reused).max(0.0);
    let batch = if s.uncond == Some(Decision::Skip) { 0.5 } else { 1.0 };
    units * batch
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
    fn per_context_traces_read_and_write_the_flux_wan_format() {
        // parity-cases-flux-wan.md: one object per cache context; TaylorSeer's `modules` key.
        let text = r#"{"step":2,"timestep":857.0,"cond":{"blocks":"skip"},"uncond":{"modules":{"blocks.1.ffn":"compute"}}}"#;
        let t: StepTrace = serde_json::from_str(text).unwrap();
        assert_eq!((t.step, t.timestep, t.blocks), (2, 857.0, None));
        assert_eq!(t.contexts["cond"].blocks, Some(Decision::Skip));
        assert_eq!(t.contexts["uncond"].attention["blocks.1.ffn"], Decision::Compute);
        let back = serde_json::to_string(&t).unwrap();
        assert_eq!(back, r#"{"step":2,"timestep":857.0,"cond":{"blocks":"skip"},"uncond":{"attention":{"blocks.1.ffn":"compute"}}}"#);
        // FasterCache's `uncond` decision and a context named `uncond` are told apart by their JSON type.
        let t: StepTrace = serde_json::from_str(r#"{"step":0,"timestep":999,"uncond":"skip"}"#).unwrap();
        assert!(t.contexts.is_empty() && t.uncond == Some(Decision::Skip));
        assert!(serde_json::from_str::<StepTrace>(r#"{"step":0,"timestep":1,"blocks":"maybe"}"#).is_err());
        assert!(serde_json::from_str::<StepTrace>(r#"{"step":0,"timestep":1,"extra":3}"#).is_err());
        // Recording by the call's branch: a `cond` call goes into its context, a batched one at the top.
        let mut s = CacheStats::default();
        let step = crate::StepContext { step: 0, num_steps: 2, timestep: 1000.0, sigma: None };
        s.at(&CallContext::new(step, Branch::Cond, 1)).blocks = Some(Decision::Compute);
        s.at(&CallContext::new(step, Branch::Uncond, 1)).blocks = Some(Decision::Skip);
        assert_eq!((s.blocks().computed, s.blocks().reused), (1, 1));
        assert_eq!(s.steps[0].blocks, None);
        // One call per branch: each context costs half of the step. 4 + 1 units of 8 on step 0, nothing saved
        // on the missing step 1.
        let w = WorkModel { num_blocks: 4, attention_share: 0.5, ff_share: 0.25 };
        assert!((s.ideal_speedup(&w, 2) - 8.0 / (2.5 + 4.0)).abs() < 1e-12);
    }

    #[test]
    fn trace_serialises_to_the_case_format() {
        let mut s = CacheStats::default();
        s.step_mut(0, 999.0).uncond = Some(Decision::Compute);
        let j = s.trace_json().to_string();
        assert_eq!(j, r#"{"steps":[{"step":0,"timestep":999.0,"uncond":"compute"}]}"#);
    }
}
