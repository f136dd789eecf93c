//! The measuring strategy of a calibration run: caches nothing, records per model call what every engine's
//! decision rule looks at, so one uncached generation serves them all.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::{backend::Backend, Tensor};
use cache_core::{AttentionSite, Branch, CacheStrategy, CallContext, JointStates, TailPlan};
use cache_magcache::magnitude_ratio;
use cache_seacache::{distance, indicator_of, Indicator, LatentLayout, SeaCacheConfig};
use cache_teacache::relative_l1;

/// Records, per model call (one call per step: a batched CFG loop or an unguided one), relative to the previous
/// call:
/// - the first block's residual change, as First Block Cache measures it (`mean|r − r'| / mean|r'|`);
/// - each attention site's output change (same measure), the quantity PAB and FasterCache bet on;
/// - the block stack's residual magnitude ratio, as MagCache's calibration does (1 at the first call);
/// - the step signal's change (TeaCache's `x`) and the block stack's output change (its `y`);
/// - on hosts that hand the scheduler's sigma, SeaCache's indicator distance (at the default `power_exp`),
///   when made with [`Calibrator::with_sea_layout`].
///
/// Under true classifier-free guidance (FLUX: a second call per step in the `uncond` context) only the
/// conditional calls are measured: the engines take one parameter set for both contexts (one threshold, one
/// table of MagCache ratios, one TeaCache polynomial), and consecutive calls of different contexts are not
/// consecutive steps.
///
/// It holds the previous call's tensors: one copy of every attention output, of the stack's output and
/// residual, and of the step signal.
pub struct Calibrator<B: Backend> {
    prev_head: Option<Tensor<B, 3>>,
    prev_signal: Option<Tensor<B, 3>>,
    prev_output: Option<Tensor<B, 3>>,
    prev_residual: Option<Tensor<B, 3>>,
    prev_sites: HashMap<String, Tensor<B, 3>>,
    sea_layout: Option<LatentLayout>,
    prev_indicator: Option<Indicator>,
    /// First-block residual change per call from the second on.
    pub first_block_changes: Vec<f64>,
    /// Attention output change per site, per call from the second on.
    pub attention_changes: BTreeMap<String, Vec<f64>>,
    /// MagCache's magnitude ratio per call (1 at the first).
    pub mag_ratios: Vec<f64>,
    /// Step-signal change per call from the second on (TeaCache's `x`).
    pub signal_changes: Vec<f64>,
    /// Block-stack output change (video tokens) per call from the second on (TeaCache's `y`).
    pub output_changes: Vec<f64>,
    /// Block-stack residual change per call from the second on, relative to the stack output's size
    /// (`mean|r − r'| / mean|out|`): the error a skip that reuses the previous residual makes.
    pub residual_changes: Vec<f64>,
    /// SeaCache's indicator distance per call from the second on (empty unless made
    /// [`Calibrator::with_sea_layout`] and handed sigmas).
    pub sea_distances: Vec<f64>,
}

impl<B: Backend> Default for Calibrator<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> Calibrator<B> {
    /// A calibrator with nothing recorded.
    pub fn new() -> Self {
        Self {
            prev_head: None,
            prev_signal: None,
            prev_output: None,
            prev_residual: None,
            prev_sites: HashMap::new(),
            sea_layout: None,
            prev_indicator: None,
            first_block_changes: Vec::new(),
            attention_changes: BTreeMap::new(),
            mag_ratios: Vec::new(),
            signal_changes: Vec::new(),
            output_changes: Vec::new(),
            residual_changes: Vec::new(),
            sea_distances: Vec::new(),
        }
    }

    /// A calibrator that also records SeaCache's indicator distances, reading latents in `layout` (the host's,
    /// [`LatentLayout::for_host`]).
    pub fn with_sea_layout(layout: LatentLayout) -> Self {
        Self { sea_layout: Some(layout), ..Self::new() }
    }
}

/// The change of `cur` against the previous value in `slot` (if any), which `cur` then replaces.
fn change<B: Backend>(slot: &mut Option<Tensor<B, 3>>, cur: &Tensor<B, 3>) -> Option<f64> {
    let out = slot.as_ref().filter(|p| p.dims() == cur.dims()).map(|p| relative_l1(cur, p));
    *slot = Some(cur.clone());
    out
}

/// A true-CFG unconditional call: not measured (see [`Calibrator`]).
fn unmeasured(ctx: &CallContext) -> bool {
    ctx.branch == Branch::Uncond
}

impl<B: Backend> CacheStrategy<B> for Calibrator<B> {
    fn reset(&mut self) {
        *self = Self { sea_layout: self.sea_layout, ..Self::new() };
    }

    fn wants_latents(&self) -> bool {
        self.sea_layout.is_some()
    }

    fn observe_latents(&mut self, ctx: &CallContext, latents: &Tensor<B, 5>) {
        let (Some(layout), Some(sigma)) = (self.sea_layout, ctx.step.sigma) else { return };
        if unmeasured(ctx) {
            return;
        }
        let data = latents.clone().into_data().convert::<f32>().into_vec::<f32>().expect("float latents");
        let power_exp = SeaCacheConfig::default().power_exp;
        let current = indicator_of(&data, latents.dims(), layout, sigma, power_exp, latents.dtype());
        if let Some(prev) = self.prev_indicator.as_ref().filter(|p| p.dims == current.dims && p.samples.len() == current.samples.len()) {
            self.sea_distances.push(distance(&current, prev));
        }
        self.prev_indicator = Some(current);
    }

    fn wants_step_signal(&self) -> bool {
        true
    }

    fn observe_step_signal(&mut self, ctx: &CallContext, signal: &Tensor<B, 3>) {
        if unmeasured(ctx) {
            return;
        }
        if let Some(c) = change(&mut self.prev_signal, signal) {
            self.signal_changes.push(c);
        }
    }

    fn after_head_block(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) -> TailPlan<B> {
        if unmeasured(ctx) {
            return TailPlan::Compute;
        }
        let residual = output.hidden.clone() - input.hidden.clone();
        if let Some(c) = change(&mut self.prev_head, &residual) {
            self.first_block_changes.push(c);
        }
        TailPlan::Compute
    }

    fn after_blocks(&mut self, ctx: &CallContext, input: &JointStates<B>, output: &JointStates<B>) {
        if unmeasured(ctx) {
            return;
        }
        let residual = output.hidden.clone() - input.hidden.clone();
        let ratio = match &self.prev_residual {
            Some(prev) if prev.dims() == residual.dims() => magnitude_ratio(&residual, prev) as f64,
            _ => 1.0,
        };
        self.mag_ratios.push(ratio);
        if let Some(prev) = self.prev_residual.as_ref().filter(|p| p.dims() == residual.dims()) {
            let size = output.hidden.clone().abs().mean().into_data().convert::<f64>().into_vec::<f64>().expect("float")[0];
            let diff = (residual.clone() - prev.clone()).abs().mean().into_data().convert::<f64>().into_vec::<f64>().expect("float")[0];
            self.residual_changes.push(diff / size.max(f64::MIN_POSITIVE));
        }
        self.prev_residual = Some(residual);
        if let Some(c) = change(&mut self.prev_output, &output.hidden) {
            self.output_changes.push(c);
        }
    }

    fn after_attention(&mut self, ctx: &CallContext, site: &AttentionSite, output: &JointStates<B>) {
        if unmeasured(ctx) {
            return;
        }
        let name = site.to_string();
        let mut slot = self.prev_sites.remove(&name);
        if let Some(c) = change(&mut slot, &output.hidden) {
            self.attention_changes.entry(name.clone()).or_default().push(c);
        }
        if let Some(t) = slot {
            self.prev_sites.insert(name, t);
        }
    }
}
