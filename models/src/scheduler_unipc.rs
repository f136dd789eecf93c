//! `UniPCMultistepScheduler` (diffusers 0.42.1,
//! <https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/schedulers/scheduling_unipc_multistep.py>),
//! the multistep predictor–corrector (UniP / UniC, B(h) variants) that Wan 2.1 / 2.2 ship, on its flow-sigma
//! path (`use_flow_sigmas`, `prediction_type = "flow_prediction"`) and on the classic beta-schedule path.
//!
//! Line numbers below are those of `scheduling_unipc_multistep.py` at v0.42.1.
//! - `betas_for_alpha_bar` (l. 34–84, cosine only, as `__init__` calls it) and `rescale_zero_terminal_snr`
//!   (l. 87–120), in Python float64 and torch float32 respectively.
//! - `__init__` (l. 199–291): every field and default; the betas in torch float32 (`torch.linspace` is
//!   reproduced with the fused multiply-add torch's CPU kernel compiles to: `fma(step, i, start)` below the
//!   midpoint, `fma(−step, steps−1−i, end)` above), `torch.cumprod` with its float64 accumulator rounded to
//!   float32 at each element, the training sigmas `((1 − ᾱ)/ᾱ)^½` in float32; `solver_type` `midpoint`,
//!   `heun` and `logrho` registered as `bh2`.
//! - `set_timesteps` (l. 318–481): the `timestep_spacing` timesteps in numpy float64 (`np.linspace` /
//!   `np.arange` reproduced bit for bit, `round` half to even), then either
//!   - the flow path (l. 428–450): `np.linspace(1, 1/N, n+1)[:-1]`, the static shift
//!     `shift·σ / (1 + (shift − 1)·σ)` or the dynamic one (`time_shift`, l. 484–503, 528–533),
//!     `stretch_shift_to_terminal` (l. 506–525), the `1e-6` nudge of a first sigma of 1 (l. 437–440), timesteps
//!     `trunc(σ·N)`, all in float64, sigmas to float32 at the end; or
//!   - the classic path (l. 451–463): `np.interp` of the training sigmas at the integer timesteps.
//! - `_sigma_to_alpha_sigma_t` (l. 617–636), `convert_model_output` (l. 760–831),
//!   `multistep_uni_p_bh_update` (l. 833–960), `multistep_uni_c_bh_update` (l. 962–1097),
//!   `index_for_timestep` / `_init_step_index` (l. 1100–1151) and `step` (l. 1153–1232): the scalar
//!   coefficients (λ, h, r_k, B(h), the `R`/`b` system and ρ) as torch float32 0-dim tensor arithmetic, in the
//!   same order; `torch.linalg.solve` (MKL `sgetrf`/`sgetrs`) reproduced as LU with partial pivoting, the
//!   pivot columns scaled by the reciprocal of the pivot except the last (divided), and both triangular solves
//!   as dot products, the back substitution multiplying by the reciprocal of the diagonal: equal to torch
//!   2.15's result on 3,000 random `R` systems of each size 2 and 3 (checked with an emulation in numpy).
//!   Tensor arithmetic is burn float32 ops in diffusers' order (`einsum` over `k` as `ρ₀·D₀ + ρ₁·D₁`, which is
//!   what torch's einsum computes here).
//!
//! Not bit for bit, and why (measured against torch 2.15.0 CPU with MKL, on an AMD EPYC with AVX2; the MKL and
//! fused-multiply-add observations above hold for that build and machine and may not for another):
//! - `torch.log` of a float32 0-dim CPU tensor (MKL's vectorised log) is not correctly rounded: it differs from
//!   the float64-computed-and-rounded `ln` used here by one float32 ulp on a few percent of inputs, and
//!   `λ = ln α − ln σ` carries that into every step (`h` is a difference of two such logarithms). `expm1` is
//!   computed the same way and agrees with torch's on all but ~0.1 % of inputs.
//! - `torch.sqrt` in float32 (MKL) is one ulp off the correctly rounded square root (IEEE `sqrt`, used here)
//!   on ~17–20 % of inputs. The flow path takes no square root: its sigmas and timesteps are bit-exact. The
//!   classic path takes one per training sigma (`((1 − ᾱ)/ᾱ)^½`, so those sigmas are within one ulp) and per
//!   `α = 1/√(σ² + 1)` in the step; `rescale_betas_zero_snr` shifts, squares and divides consecutive
//!   `√ᾱ`, which turns the one-ulp differences into up to ~7e-6 relative in its sigmas.
//!
//! The full loops of the tests agree with diffusers to ≤ 1e-7 relative L2 per step on Wan's configuration and
//! ≤ 5e-7 on the classic path.
//!
//! Refused rather than computed differently ([`ModelError::Unsupported`]): `use_karras_sigmas`,
//! `use_exponential_sigmas`, `use_beta_sigmas` (their `_sigma_to_t` interpolation and scipy / numpy SIMD
//! transcendental functions are not reproduced), `thresholding` (`torch.quantile`), a non-null `solver_p`
//! (another scheduler object), `solver_order` above 3 (the `R` system of order 4+ uses `torch.pow` and an MKL
//! solve whose operation order was not checked). `add_noise` is not provided.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::scheduler_flow_match::np_linspace;
use crate::error::{ModelError, Result};

/// diffusers' class name, the `_class_name` [`UniPCMultistepSchedulerConfig::from_json_file`] accepts.
pub const CLASS_NAME: &str = "UniPCMultistepScheduler";

/// The largest `solver_order` implemented (diffusers takes any positive integer).
pub const MAX_SOLVER_ORDER: usize = 3;

/// `scheduler_config.json` of `UniPCMultistepScheduler`: every `__init__` argument of diffusers 0.42.1
/// (l. 199–230), with its name and default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UniPCMultistepSchedulerConfig {
    /// Number of training timesteps `N` (1000).
    pub num_train_timesteps: usize,
    /// First beta of `linear` / `scaled_linear` (0.0001).
    pub beta_start: f64,
    /// Last beta of `linear` / `scaled_linear` (0.02).
    pub beta_end: f64,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2` (`linear`).
    pub beta_schedule: String,
    /// Betas given directly (rounded to float32), overriding `beta_schedule`; their count sets the length
    /// of the training schedule, as in diffusers.
    pub trained_betas: Option<Vec<f64>>,
    /// The UniPC order `p` (2); 1 to [`MAX_SOLVER_ORDER`] here.
    pub solver_order: usize,
    /// `epsilon`, `sample`, `v_prediction` or `flow_prediction` (`epsilon`).
    pub prediction_type: String,
    /// Dynamic thresholding: refused when true ([`UniPCMultistepScheduler::new`]).
    pub thresholding: bool,
    /// Used only by `thresholding`.
    pub dynamic_thresholding_ratio: f64,
    /// Used only by `thresholding`.
    pub sample_max_value: f64,
    /// Run the updates on the predicted `x₀` (data prediction, true) or on the noise (false).
    pub predict_x0: bool,
    /// `bh1` or `bh2` (`bh2`); `midpoint`, `heun` and `logrho` are taken as `bh2`, as diffusers does.
    pub solver_type: String,
    /// Lower the order in the last steps (`min(order, steps left)`), true by default.
    pub lower_order_final: bool,
    /// Steps after which the corrector is skipped: the corrector of step `i` runs unless `i − 1` is listed.
    pub disable_corrector: Vec<i64>,
    /// Another scheduler as predictor: only `null` is accepted.
    pub solver_p: Option<serde_json::Value>,
    /// Karras sigmas: refused when true.
    pub use_karras_sigmas: bool,
    /// Exponential sigmas: refused when true.
    pub use_exponential_sigmas: bool,
    /// Beta-distribution sigmas: refused when true.
    pub use_beta_sigmas: bool,
    /// Flow-matching sigmas (`α = 1 − σ`), the path Wan uses.
    pub use_flow_sigmas: bool,
    /// Static shift of the flow sigmas, `shift·σ / (1 + (shift − 1)·σ)` (1.0).
    pub flow_shift: f64,
    /// `linspace`, `leading` or `trailing` (`linspace`); on the flow path the timesteps it makes are replaced.
    pub timestep_spacing: String,
    /// Added to the `leading` timesteps (0).
    pub steps_offset: i64,
    /// The sigma after the last step: `zero` or `sigma_min` (`zero`).
    pub final_sigmas_type: String,
    /// Rescale the betas to zero terminal SNR (the last `ᾱ` then set to 2⁻²⁴).
    pub rescale_betas_zero_snr: bool,
    /// Shift the flow sigmas by `mu` (given to [`UniPCMultistepScheduler::set_timesteps_with`]) instead of
    /// `flow_shift`.
    pub use_dynamic_shifting: bool,
    /// `exponential` (`e^μ / (e^μ + 1/σ − 1)`) or `linear` (`μ / (μ + 1/σ − 1)`); read only with dynamic
    /// shifting on the flow path.
    pub time_shift_type: String,
    /// Used only by the karras / exponential / beta conversions (refused).
    pub sigma_min: Option<f64>,
    /// Used only by the karras / exponential / beta conversions (refused).
    pub sigma_max: Option<f64>,
    /// Stretch the flow sigmas so that the last is this value (`null` or 0 is off); only with
    /// `use_flow_sigmas`.
    pub shift_terminal: Option<f64>,
    /// diffusers' own keys (`_class_name`, `_diffusers_version`, ...) and anything unknown; keys not starting
    /// with `_` are refused by [`UniPCMultistepScheduler::new`].
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for UniPCMultistepSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            solver_order: 2,
            prediction_type: "epsilon".into(),
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            predict_x0: true,
            solver_type: "bh2".into(),
            lower_order_final: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: "linspace".into(),
            steps_offset: 0,
            final_sigmas_type: "zero".into(),
            rescale_betas_zero_snr: false,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
            sigma_min: None,
            sigma_max: None,
            shift_terminal: None,
            extra: BTreeMap::new(),
        }
    }
}

impl UniPCMultistepSchedulerConfig {
    /// The configuration Wan 2.1 ships
    /// (<https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/blob/main/scheduler/scheduler_config.json>:
    /// `flow_prediction`, `use_flow_sigmas`, `flow_shift` 3.0, `solver_order` 2, `bh2`, `predict_x0`,
    /// `lower_order_final`, `final_sigmas_type` `zero`, 1000 training steps; the betas are diffusers'
    /// defaults and unused on the flow path). diffusers' Wan examples use `flow_shift` 5.0 for 720P and 3.0
    /// for 480P: `UniPCMultistepSchedulerConfig { flow_shift: 5.0, ..UniPCMultistepSchedulerConfig::wan() }`.
    pub fn wan() -> Self {
        Self { prediction_type: "flow_prediction".into(), use_flow_sigmas: true, flow_shift: 3.0, ..Self::default() }
    }

    /// Reads a diffusers `scheduler_config.json`. A file whose `_class_name` names another class is
    /// [`ModelError::Unsupported`] (the DPM-Solver and DEIS classes share most fields and would parse); one
    /// without `_class_name` is taken as this class.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let json = crate::config_file::read_json(path)?;
        match json.get("_class_name") {
            Some(found) if found.as_str() != Some(CLASS_NAME) => Err(ModelError::Unsupported(format!(
                "{}: `_class_name` is {found}, not {CLASS_NAME:?}",
                path.display()
            ))),
            _ => crate::config_file::config_from(path, json),
        }
    }
}

/// `prediction_type`, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prediction {
    Epsilon,
    Sample,
    V,
    Flow,
}

/// `solver_type`, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Solver {
    Bh1,
    Bh2,
}

/// `timestep_spacing`, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

/// `time_shift_type`, validated once (when dynamic shifting is on the flow path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeShift {
    Exponential,
    Linear,
}

/// A tensor of the history (`model_outputs`, `last_sample`), held without the backend and rank that
/// [`UniPCMultistepScheduler::step`] is generic over. Tensors are immutable values, so sharing is cloning.
#[derive(Debug, Clone)]
struct Held(Arc<dyn Any + Send + Sync>);

impl Held {
    fn new<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Self {
        Self(Arc::new(tensor))
    }

    fn get<B: Backend, const D: usize>(&self) -> Result<Tensor<B, D>> {
        self.0.downcast_ref::<Tensor<B, D>>().cloned().ok_or_else(|| {
            ModelError::Shape(format!(
                "the scheduler's history holds tensors of another backend or rank than Tensor<_, {D}>; \
                 call set_timesteps before stepping with another tensor type"
            ))
        })
    }
}

/// diffusers' `UniPCMultistepScheduler`: a deterministic multistep UniP predictor with the UniC corrector.
///
/// Stateful like diffusers': [`Self::set_timesteps`] resets the history, and each [`Self::step`] call is one
/// call of diffusers' `step(model_output, timesteps[i], sample)` in a denoising loop: the step index starts
/// where diffusers' `_init_step_index(timesteps[0])` starts it (0, or 1 when the first timestep is repeated,
/// or [`Self::set_begin_index`]'s index) and advances by one per call. The sample passed to each step must be
/// the previous step's output (the corrector corrects it with the history).
#[derive(Debug, Clone)]
pub struct UniPCMultistepScheduler {
    config: UniPCMultistepSchedulerConfig,
    prediction: Prediction,
    solver: Solver,
    spacing: Spacing,
    final_sigma_min: bool,
    time_shift: TimeShift,
    /// `alphas_cumprod`, torch float32.
    alphas_cumprod: Vec<f32>,
    /// `((1 − ᾱ)/ᾱ)^½` of `__init__`, torch float32.
    train_sigmas: Vec<f32>,
    timesteps: Vec<i64>,
    sigmas: Vec<f32>,
    num_inference_steps: Option<usize>,
    /// `model_outputs`: `solver_order` slots, the newest last.
    model_outputs: Vec<Option<Held>>,
    /// `timestep_list`: the timestep of each slot of `model_outputs`, `timesteps[step_index]` (diffusers keeps
    /// the timestep the pipeline passed, and only `solver_p` reads it).
    timestep_list: Vec<Option<i64>>,
    last_sample: Option<Held>,
    lower_order_nums: usize,
    this_order: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl UniPCMultistepScheduler {
    /// Builds the scheduler as diffusers' `__init__` does (l. 199–291).
    ///
    /// Errors: keys not starting with `_` in [`UniPCMultistepSchedulerConfig::extra`], more than one of the
    /// karras / exponential / beta flags, an unknown `beta_schedule`, `solver_type`, `prediction_type`,
    /// `timestep_spacing` or `final_sigmas_type`, `flow_prediction` without `predict_x0`, `shift_terminal`
    /// without `use_flow_sigmas`, a `solver_order` or `num_train_timesteps` of 0, empty `trained_betas`, and
    /// (with dynamic shifting on the flow path) a `time_shift_type` other than `exponential` / `linear` are
    /// [`ModelError::InvalidConfig`] (diffusers raises for each, some only at `set_timesteps` or `step`);
    /// `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`, `thresholding`, a non-null
    /// `solver_p` and `solver_order` above [`MAX_SOLVER_ORDER`] are [`ModelError::Unsupported`].
    pub fn new(mut config: UniPCMultistepSchedulerConfig) -> Result<Self> {
        crate::config_file::refuse_unknown(&format!("{CLASS_NAME} "), &config.extra)?;
        let flags = [
            ("use_beta_sigmas", config.use_beta_sigmas),
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_karras_sigmas", config.use_karras_sigmas),
        ];
        let set: Vec<&str> = flags.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
        if set.len() > 1 {
            return Err(ModelError::InvalidConfig(format!(
                "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be used, got {}",
                set.join(" and ")
            )));
        }
        if let Some(name) = set.first() {
            return Err(ModelError::Unsupported(format!(
                "{name} = true: the converted schedule and its _sigma_to_t timesteps are not reproduced"
            )));
        }
        let n = config.num_train_timesteps;
        if n == 0 {
            return Err(ModelError::InvalidConfig("num_train_timesteps must be at least 1".into()));
        }
        let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule.as_str()) {
            (Some(b), _) if b.is_empty() => {
                return Err(ModelError::InvalidConfig("trained_betas is empty".into()));
            }
            (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
            (None, "linear") => torch_linspace_f32(config.beta_start, config.beta_end, n),
            (None, "scaled_linear") => torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            (None, "squaredcos_cap_v2") => betas_for_alpha_bar_cosine(n),
            (None, other) => {
                return Err(ModelError::InvalidConfig(format!(
                    "beta_schedule {other:?} is not implemented for UniPCMultistepScheduler \
                     (linear, scaled_linear, squaredcos_cap_v2)"
                )))
            }
        };
        if config.shift_terminal.is_some() && !config.use_flow_sigmas {
            return Err(ModelError::InvalidConfig(
                "`shift_terminal` is only supported when `use_flow_sigmas=True`".into(),
            ));
        }
        let betas = if config.rescale_betas_zero_snr { rescale_zero_terminal_snr(&betas) } else { betas };
        let mut alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
        if config.rescale_betas_zero_snr {
            // "Close to 0 without being 0 so first sigma is not inf" (l. 258–261).
            *alphas_cumprod.last_mut().expect("non-empty") = 2f32.powi(-24);
        }
        let train_sigmas: Vec<f32> = alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();

        let solver = match config.solver_type.as_str() {
            "bh1" => Solver::Bh1,
            "bh2" => Solver::Bh2,
            "midpoint" | "heun" | "logrho" => {
                // `self.register_to_config(solver_type="bh2")` (l. 272–274).
                config.solver_type = "bh2".into();
                Solver::Bh2
            }
            other => {
                return Err(ModelError::InvalidConfig(format!(
                    "solver_type {other:?} is not implemented for UniPCMultistepScheduler (bh1, bh2)"
                )))
            }
        };
        if config.thresholding {
            return Err(ModelError::Unsupported(
                "thresholding = true: dynamic thresholding (torch.quantile per sample) is not implemented".into(),
            ));
        }
        if config.solver_p.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(ModelError::Unsupported(
                "solver_p: another scheduler as predictor (solver_p + UniC) is not implemented".into(),
            ));
        }
        match config.solver_order {
            0 => return Err(ModelError::InvalidConfig("solver_order must be at least 1".into())),
            p if p > MAX_SOLVER_ORDER => {
                return Err(ModelError::Unsupported(format!(
                    "solver_order = {p}: orders above {MAX_SOLVER_ORDER} are not implemented"
                )))
            }
            _ => {}
        }
        let prediction = match config.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "sample" => Prediction::Sample,
            "v_prediction" => Prediction::V,
            "flow_prediction" if config.predict_x0 => Prediction::Flow,
            "flow_prediction" => {
                return Err(ModelError::InvalidConfig(
                    "prediction_type flow_prediction needs predict_x0 = true (diffusers raises at the first step)"
                        .into(),
                ))
            }
            other => {
                return Err(ModelError::InvalidConfig(format!(
                    "prediction_type {other:?} must be one of epsilon, sample, v_prediction, flow_prediction"
                )))
            }
        };
        let spacing = match config.timestep_spacing.as_str() {
            "linspace" => Spacing::Linspace,
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            other => {
                return Err(ModelError::InvalidConfig(format!(
                    "timestep_spacing {other:?} is not supported: linspace, leading or trailing"
                )))
            }
        };
        let final_sigma_min = match config.final_sigmas_type.as_str() {
            "zero" => false,
            "sigma_min" => true,
            other => {
                return Err(ModelError::InvalidConfig(format!(
                    "final_sigmas_type must be one of 'zero' or 'sigma_min', got {other:?}"
                )))
            }
        };
        let time_shift = match config.time_shift_type.as_str() {
            "exponential" => TimeShift::Exponential,
            "linear" => TimeShift::Linear,
            // diffusers' `time_shift` returns None for anything else, and the flow path then fails.
            other if config.use_dynamic_shifting && config.use_flow_sigmas => {
                return Err(ModelError::InvalidConfig(format!(
                    "time_shift_type must be \"exponential\" or \"linear\", got {other:?}"
                )))
            }
            _ => TimeShift::Exponential,
        };
        let order = config.solver_order;
        // `np.linspace(0, N - 1, N, dtype=float32)[::-1]`: the integers N − 1, ..., 0.
        let timesteps = (0..n as i64).rev().collect();
        Ok(Self {
            prediction,
            solver,
            spacing,
            final_sigma_min,
            time_shift,
            sigmas: train_sigmas.clone(),
            alphas_cumprod,
            train_sigmas,
            timesteps,
            num_inference_steps: None,
            model_outputs: vec![None; order],
            timestep_list: vec![None; order],
            last_sample: None,
            lower_order_nums: 0,
            this_order: 0,
            step_index: None,
            begin_index: None,
            config,
        })
    }

    /// Reads a `scheduler_config.json` ([`UniPCMultistepSchedulerConfig::from_json_file`]) and builds the
    /// scheduler ([`Self::new`]).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        Self::new(UniPCMultistepSchedulerConfig::from_json_file(path)?)
    }

    /// The configuration (with `solver_type` `midpoint` / `heun` / `logrho` registered as `bh2`, as diffusers
    /// registers it).
    pub fn config(&self) -> &UniPCMultistepSchedulerConfig {
        &self.config
    }

    /// `init_noise_sigma`: 1.
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// `alphas_cumprod` (torch float32), one per training timestep (per trained beta).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `set_timesteps(num_inference_steps)` (l. 318–481): the int64 timesteps of the schedule, and the
    /// history reset. Equivalent to [`Self::set_timesteps_with`]`(num_inference_steps, None, None)`, so with
    /// `use_dynamic_shifting` it fails as diffusers does (no `mu`).
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<&[i64]> {
        self.set_timesteps_with(num_inference_steps, None, None)
    }

    /// `set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)` (l. 318–481). `sigmas` (only with
    /// `use_flow_sigmas`) are the unshifted flow sigmas as a float64 numpy array (a Python list fails in
    /// diffusers' shift); given, their count is the step count and `num_inference_steps` is ignored, as in
    /// diffusers. `mu` is required with `use_dynamic_shifting` and ignored without (and on the classic path).
    ///
    /// Afterwards [`Self::timesteps`] has the step count of values (with `trailing` spacing numpy's `arange`
    /// can make one more than asked, and diffusers then runs that many) and [`Self::sigmas`] one more, the
    /// final sigma (0, or the last sigma with `final_sigmas_type = "sigma_min"`).
    ///
    /// Errors ([`ModelError::InvalidConfig`], nothing changed): no `mu` with dynamic shifting, `sigmas`
    /// without `use_flow_sigmas` (diffusers' `ValueError`), zero steps, a `shift_terminal` stretch of a
    /// schedule ending at sigma 1 (diffusers divides by zero and returns NaN sigmas).
    pub fn set_timesteps_with(
        &mut self,
        num_inference_steps: usize,
        sigmas: Option<&[f64]>,
        mu: Option<f64>,
    ) -> Result<&[i64]> {
        let cfg = &self.config;
        if cfg.use_dynamic_shifting && mu.is_none() {
            return Err(ModelError::InvalidConfig("`mu` must be passed when `use_dynamic_shifting` is true".into()));
        }
        if sigmas.is_some() && !cfg.use_flow_sigmas {
            return Err(ModelError::InvalidConfig(
                "passing `sigmas` is only supported when `use_flow_sigmas=True`".into(),
            ));
        }
        let steps = sigmas.map_or(num_inference_steps, <[f64]>::len);
        if steps == 0 {
            return Err(ModelError::InvalidConfig("num_inference_steps must be at least 1".into()));
        }
        let n_train = cfg.num_train_timesteps;
        let mut timesteps = spaced_timesteps(self.spacing, n_train, steps, cfg.steps_offset);

        let sigmas: Vec<f32> = if cfg.use_flow_sigmas {
            // l. 428–450, all float64.
            let nf = n_train as f64;
            let mut s: Vec<f64> = match sigmas {
                Some(given) => given.to_vec(),
                None => {
                    let mut s = np_linspace(1.0, 1.0 / nf, steps + 1);
                    s.pop();
                    s
                }
            };
            match (cfg.use_dynamic_shifting, mu) {
                (true, Some(mu)) => {
                    // `time_shift(mu, 1.0, sigmas)`: `(1 / t − 1) ** 1.0` is `1 / t − 1` exactly.
                    let num = match self.time_shift {
                        TimeShift::Exponential => mu.exp(),
                        TimeShift::Linear => mu,
                    };
                    s.iter_mut().for_each(|t| *t = num / (num + (1.0 / *t - 1.0)));
                }
                _ => {
                    let (a, b) = (cfg.flow_shift, cfg.flow_shift - 1.0);
                    s.iter_mut().for_each(|t| *t = a * *t / (1.0 + b * *t));
                }
            }
            // `if self.config.shift_terminal:` (truthiness: 0.0 is off).
            if let Some(st) = cfg.shift_terminal.filter(|&st| st != 0.0) {
                let last = *s.last().expect("at least one step");
                let scale = (1.0 - last) / (1.0 - st);
                if scale == 0.0 {
                    return Err(ModelError::InvalidConfig(format!(
                        "shift_terminal {st}: the shifted schedule ends at sigma 1, so stretching it divides by \
                         zero (diffusers' sigmas would be NaN)"
                    )));
                }
                s.iter_mut().for_each(|t| *t = 1.0 - (1.0 - *t) / scale);
            }
            // "to avoid inf torch.log(alpha_si) in multistep_uni_p_bh_update" (l. 437–440).
            let eps = 1e-6;
            if (s[0] - 1.0).abs() < eps {
                s[0] -= eps;
            }
            // `(sigmas * N)` in float64, `.to(torch.int64)` truncates toward zero.
            timesteps = s.iter().map(|&v| (v * nf) as i64).collect();
            let last = if self.final_sigma_min { *s.last().expect("at least one step") } else { 0.0 };
            s.iter().chain(std::iter::once(&last)).map(|&v| v as f32).collect()
        } else {
            // l. 451–463: `np.interp` at integer timesteps returns the training sigma there (clamped to the
            // ends outside the table), a float32 value carried in float64.
            let table = &self.train_sigmas;
            let at = |t: i64| table[t.clamp(0, table.len() as i64 - 1) as usize];
            let last = if self.final_sigma_min { table[0] } else { 0.0 };
            timesteps.iter().map(|&t| at(t)).chain(std::iter::once(last)).collect()
        };

        self.num_inference_steps = Some(timesteps.len());
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.step_index = None;
        self.begin_index = None;
        Ok(&self.timesteps)
    }

    /// The timesteps: diffusers' int64 `scheduler.timesteps` (the training timesteps `N − 1, ..., 0` before
    /// [`Self::set_timesteps`]).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The sigmas: diffusers' float32 `scheduler.sigmas`, the final sigma included (before
    /// [`Self::set_timesteps`], the training sigmas `((1 − ᾱ)/ᾱ)^½` of `__init__`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The step count of the last [`Self::set_timesteps`] (`None` before): the number of timesteps.
    pub fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    /// diffusers' `step_index`: the index of the next [`Self::step`], `None` until the first step after
    /// [`Self::set_timesteps`].
    pub fn step_index(&self) -> Option<usize> {
        self.step_index
    }

    /// diffusers' `begin_index` (`None` unless [`Self::set_begin_index`] was called since
    /// [`Self::set_timesteps`]).
    pub fn begin_index(&self) -> Option<usize> {
        self.begin_index
    }

    /// `set_begin_index(begin_index)` (l. 308–316): the first [`Self::step`] after it starts at this index
    /// (img2img-style pipelines starting part-way down the schedule). [`Self::set_timesteps`] clears it.
    pub fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    /// `scale_model_input`: the identity (l. 1234–1247).
    pub fn scale_model_input<B: Backend, const D: usize>(&self, sample: Tensor<B, D>) -> Tensor<B, D> {
        sample
    }

    /// The index the first step starts at (`_init_step_index(timesteps[0])`, l. 1100–1151): `begin_index`,
    /// or the second index of the first timestep when it is repeated, else 0.
    fn initial_step_index(&self) -> usize {
        if let Some(b) = self.begin_index {
            return b;
        }
        let first = self.timesteps[0];
        let mut candidates = self.timesteps.iter().enumerate().filter(|(_, &t)| t == first).map(|(i, _)| i);
        let i0 = candidates.next().unwrap_or(0);
        candidates.next().unwrap_or(i0)
    }

    /// One call of diffusers' `step(model_output, timesteps[i], sample)` (l. 1153–1232), `i` being
    /// [`Self::step_index`] (set on the first call, see the type's documentation): the model output is
    /// converted (`convert_model_output`: the predicted `x₀`, or the noise), the sample corrected with UniC
    /// unless this is the first step, `i − 1` is in `disable_corrector` or there is no previous sample, the
    /// history shifted, and UniP predicts the sample at the next sigma, of order
    /// `min(solver_order, steps left (with lower_order_final), steps so far + 1)`. Any rank.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] before [`Self::set_timesteps`] (diffusers' `ValueError`);
    /// [`ModelError::Shape`] past the last step (diffusers' `AssertionError` / `IndexError`) or when the
    /// history holds tensors of another backend or rank; [`ModelError::InvalidConfig`] if the `R` system is
    /// singular (torch's `linalg.solve` raises). Nothing changes on error.
    pub fn step<B: Backend, const D: usize>(
        &mut self,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
    ) -> Result<Tensor<B, D>> {
        let steps = self.num_inference_steps.ok_or_else(|| {
            ModelError::InvalidConfig("number of inference steps is None: call set_timesteps before step".into())
        })?;
        let idx = self.step_index.unwrap_or_else(|| self.initial_step_index());
        if idx >= steps {
            return Err(ModelError::Shape(format!(
                "step index {idx} is past the schedule of {steps} steps (call set_timesteps again)"
            )));
        }
        let order = self.config.solver_order;
        // The history, newest first: `model_outputs[-1]`, `model_outputs[-2]`, ...
        let history: Vec<Option<Tensor<B, D>>> =
            self.model_outputs.iter().rev().map(|m| m.as_ref().map(Held::get).transpose()).collect::<Result<_>>()?;
        let last_sample = self.last_sample.as_ref().map(Held::get::<B, D>).transpose()?;

        let use_corrector =
            idx > 0 && !self.config.disable_corrector.contains(&(idx as i64 - 1)) && last_sample.is_some();
        // Converted from the uncorrected sample, as diffusers does (l. 1192).
        let converted = self.convert_model_output(model_output, sample.clone(), idx);
        let sample = match (use_corrector, last_sample) {
            (true, Some(last)) => {
                self.multistep_uni_c_bh_update(converted.clone(), &history, last, idx, self.this_order)?
            }
            _ => sample,
        };
        // Shift the history and append the converted output (l. 1201–1206).
        let shifted: Vec<Option<Tensor<B, D>>> =
            std::iter::once(Some(converted.clone())).chain(history.into_iter().take(order - 1)).collect();
        let this_order = if self.config.lower_order_final { order.min(self.timesteps.len() - idx) } else { order };
        let this_order = this_order.min(self.lower_order_nums + 1);
        let prev_sample = self.multistep_uni_p_bh_update(&shifted, sample.clone(), idx, this_order)?;

        // Commit the state.
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(Held::new(converted)));
        self.timestep_list.remove(0);
        self.timestep_list.push(Some(self.timesteps[idx]));
        self.this_order = this_order;
        self.last_sample = Some(Held::new(sample));
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(idx + 1);
        Ok(prev_sample)
    }

    /// `_sigma_to_alpha_sigma_t` (l. 617–636) in float32: `(1 − σ, σ)` with flow sigmas, else
    /// `α = 1/√(σ² + 1)` and `σ_t = σ·α`.
    fn alpha_sigma(&self, sigma: f32) -> (f32, f32) {
        if self.config.use_flow_sigmas {
            (1.0 - sigma, sigma)
        } else {
            let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
            (alpha, sigma * alpha)
        }
    }

    /// `λ = ln α − ln σ` of `sigmas[i]`, with `(α, σ)`.
    fn lambda(&self, i: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = self.alpha_sigma(self.sigmas[i]);
        (alpha, sigma, ln(alpha) - ln(sigma))
    }

    /// `convert_model_output` (l. 760–831) at `sigmas[idx]`: the predicted `x₀` (`predict_x0`) or noise.
    fn convert_model_output<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
        idx: usize,
    ) -> Tensor<B, D> {
        let sigma = self.sigmas[idx];
        let (alpha_t, sigma_t) = self.alpha_sigma(sigma);
        if self.config.predict_x0 {
            match self.prediction {
                Prediction::Epsilon => (sample - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t),
                Prediction::Sample => model_output,
                Prediction::V => sample.mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t),
                // `sigma_t = self.sigmas[self.step_index]`: the raw sigma, also on the classic path.
                Prediction::Flow => sample - model_output.mul_scalar(sigma),
            }
        } else {
            match self.prediction {
                Prediction::Epsilon => model_output,
                Prediction::Sample => (sample - model_output.mul_scalar(alpha_t)).div_scalar(sigma_t),
                Prediction::V => model_output.mul_scalar(alpha_t) + sample.mul_scalar(sigma_t),
                Prediction::Flow => unreachable!("refused by new: flow_prediction needs predict_x0"),
            }
        }
    }

    /// The B(h) coefficients shared by UniP and UniC (l. 893–932 / 1028–1067) for `h` and the ratios `rks`
    /// (the trailing 1 included): `(hh, hφ₁(hh), B(h), R, b)` with `R[i][k] = rks[k]^i` and
    /// `b[i] = hφ_{i+1}·(i+1)!/B(h)`, in float32 as diffusers' 0-dim tensors.
    fn bh_system(&self, h: f32, rks: &[f32]) -> (f32, f32, f32, Vec<Vec<f32>>, Vec<f32>) {
        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = expm1(hh);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial_i: u64 = 1;
        let b_h = match self.solver {
            Solver::Bh1 => hh,
            Solver::Bh2 => expm1(hh),
        };
        let order = rks.len();
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|&x| torch_pow_int(x, i - 1)).collect::<Vec<f32>>());
            b.push(h_phi_k * factorial_i as f32 / b_h);
            factorial_i *= i as u64 + 1;
            // `h_phi_k / hh - 1 / factorial_i`: the Python float cast to float32 by torch.
            h_phi_k = h_phi_k / hh - (1.0 / factorial_i as f64) as f32;
        }
        (hh, h_phi_1, b_h, r, b)
    }

    /// `multistep_uni_p_bh_update` (l. 833–960): UniP of `order` from `sigmas[idx]` to `sigmas[idx + 1]`;
    /// `history[0]` is the newest converted output (`m0`).
    fn multistep_uni_p_bh_update<B: Backend, const D: usize>(
        &self,
        history: &[Option<Tensor<B, D>>],
        x: Tensor<B, D>,
        idx: usize,
        order: usize,
    ) -> Result<Tensor<B, D>> {
        let m = |i: usize| {
            history
                .get(i)
                .cloned()
                .flatten()
                .ok_or_else(|| ModelError::Shape(format!("UniP of order {order} needs {i} earlier model outputs")))
        };
        if order == 0 || idx + 1 < order {
            return Err(ModelError::Shape(format!("UniP of order {order} at step {idx}: not enough history")));
        }
        let m0 = m(0)?;
        let (alpha_t, sigma_t, lambda_t) = self.lambda(idx + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.lambda(idx);
        let h = lambda_t - lambda_s0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let (_, _, lambda_si) = self.lambda(idx - i);
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push((m(i)? - m0.clone()).div_scalar(rk));
        }
        rks.push(1.0);
        let (_, h_phi_1, b_h, r, b) = self.bh_system(h, &rks);
        let rhos_p: Vec<f32> = match order {
            1 => Vec::new(),
            2 => vec![0.5],
            _ => {
                let k = order - 1;
                let r_sub: Vec<Vec<f32>> = r[..k].iter().map(|row| row[..k].to_vec()).collect();
                torch_solve(r_sub, b[..k].to_vec())?
            }
        };
        let (x_t_, coef) = if self.config.predict_x0 {
            (x.mul_scalar(sigma_t / sigma_s0) - m0.mul_scalar(alpha_t * h_phi_1), alpha_t * b_h)
        } else {
            (x.mul_scalar(alpha_t / alpha_s0) - m0.mul_scalar(sigma_t * h_phi_1), sigma_t * b_h)
        };
        Ok(match einsum_k(&rhos_p, d1s) {
            Some(pred_res) => x_t_ - pred_res.mul_scalar(coef),
            // `x_t_ - alpha_t * B_h * 0`: the identity, unless the coefficient is infinite (NaN then, as in torch).
            None => x_t_.sub_scalar(coef * 0.0),
        })
    }

    /// `multistep_uni_c_bh_update` (l. 962–1097): UniC of `order` correcting the sample at `sigmas[idx]`
    /// predicted from `last_sample` at `sigmas[idx − 1]`, with the new converted output `model_t`;
    /// `history[0]` is the previous converted output (`m0`).
    fn multistep_uni_c_bh_update<B: Backend, const D: usize>(
        &self,
        model_t: Tensor<B, D>,
        history: &[Option<Tensor<B, D>>],
        last_sample: Tensor<B, D>,
        idx: usize,
        order: usize,
    ) -> Result<Tensor<B, D>> {
        let m = |i: usize| {
            history.get(i).cloned().flatten().ok_or_else(|| {
                ModelError::Shape(format!("UniC of order {order} needs {} earlier model outputs", i + 1))
            })
        };
        if order == 0 || idx < order {
            return Err(ModelError::Shape(format!("UniC of order {order} at step {idx}: not enough history")));
        }
        let m0 = m(0)?;
        let (alpha_t, sigma_t, lambda_t) = self.lambda(idx);
        let (alpha_s0, sigma_s0, lambda_s0) = self.lambda(idx - 1);
        let h = lambda_t - lambda_s0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let (_, _, lambda_si) = self.lambda(idx - (i + 1));
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push((m(i)? - m0.clone()).div_scalar(rk));
        }
        rks.push(1.0);
        let (_, h_phi_1, b_h, r, b) = self.bh_system(h, &rks);
        let rhos_c = if order == 1 { vec![0.5] } else { torch_solve(r, b)? };
        let x = last_sample;
        let (x_t_, coef) = if self.config.predict_x0 {
            (x.mul_scalar(sigma_t / sigma_s0) - m0.clone().mul_scalar(alpha_t * h_phi_1), alpha_t * b_h)
        } else {
            (x.mul_scalar(alpha_t / alpha_s0) - m0.clone().mul_scalar(sigma_t * h_phi_1), sigma_t * b_h)
        };
        let (rho_t, rhos) = rhos_c.split_last().expect("at least one rho");
        let d1_t = (model_t - m0).mul_scalar(*rho_t);
        let res = match einsum_k(rhos, d1s) {
            Some(corr_res) => corr_res + d1_t,
            None => d1_t,
        };
        Ok(x_t_ - res.mul_scalar(coef))
    }
}

/// `torch.einsum("k,bkc...->bc...", rhos, stack(d1s, dim=1))`: `Σ_k ρ_k·D_k`, products first, summed in `k`
/// order (what torch computes for these shapes); `None` without terms (diffusers' `0`).
fn einsum_k<B: Backend, const D: usize>(rhos: &[f32], d1s: Vec<Tensor<B, D>>) -> Option<Tensor<B, D>> {
    d1s.into_iter().zip(rhos).map(|(d, &rho)| d.mul_scalar(rho)).reduce(|acc, t| acc + t)
}

/// `torch.log` of a float32 value (see the module documentation: torch's is not correctly rounded, this is
/// the float64 logarithm rounded to float32).
fn ln(x: f32) -> f32 {
    (x as f64).ln() as f32
}

/// `torch.expm1` of a float32 value: the float64 `expm1` rounded to float32.
fn expm1(x: f32) -> f32 {
    (x as f64).exp_m1() as f32
}

/// `torch.pow(x, k)` for a float32 tensor and a small integer exponent: 1, `x`, `x·x` and `x·x·x` (torch's
/// special cases), `powf` above.
fn torch_pow_int(x: f32, k: usize) -> f32 {
    match k {
        0 => 1.0,
        1 => x,
        2 => x * x,
        3 => x * x * x,
        _ => x.powf(k as f32),
    }
}

/// `torch.linalg.solve(a, b)` in float32 as torch 2.15's CPU build (MKL `sgetrf` + `sgetrs`) computes it for
/// the 2×2 and 3×3 systems of UniPC (checked on random systems of that form, see the module documentation):
/// LU with partial pivoting (the first largest `|a_ik|`), the multipliers of column `k` as
/// `a_ik·(1/a_kk)` except the last column's (`a_ik/a_kk`), the trailing update `a_ij − l_ik·u_kj`; the forward
/// and back substitutions as `b_i − Σ_j a_ij·x_j` (the sum formed first, in `j` order), the back one
/// multiplied by `1/u_ii`.
fn torch_solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Result<Vec<f32>> {
    let n = b.len();
    for k in 0..n {
        let mut p = k;
        for i in k + 1..n {
            if a[i][k].abs() > a[p][k].abs() {
                p = i;
            }
        }
        if a[p][k] == 0.0 {
            return Err(ModelError::InvalidConfig(
                "the UniPC R system is singular (torch.linalg.solve raises): repeated sigmas in the schedule?".into(),
            ));
        }
        a.swap(k, p);
        b.swap(k, p);
        let pivot = a[k][k];
        for i in k + 1..n {
            let l = if k + 2 < n { a[i][k] * (1.0 / pivot) } else { a[i][k] / pivot };
            a[i][k] = l;
            let (above, below) = a.split_at_mut(i);
            for (aij, &akj) in below[0][k + 1..].iter_mut().zip(&above[k][k + 1..]) {
                *aij -= l * akj;
            }
        }
    }
    for i in 0..n {
        let s = (0..i).fold(0.0f32, |s, j| s + a[i][j] * b[j]);
        b[i] -= s;
    }
    for i in (0..n).rev() {
        let s = (i + 1..n).fold(0.0f32, |s, j| s + a[i][j] * b[j]);
        b[i] = (b[i] - s) * (1.0 / a[i][i]);
    }
    Ok(b)
}

/// The timesteps `timestep_spacing` makes (l. 350–373), in numpy float64 and int64.
fn spaced_timesteps(spacing: Spacing, n_train: usize, steps: usize, steps_offset: i64) -> Vec<i64> {
    match spacing {
        // `np.linspace(0, N - 1, n + 1).round()[::-1][:-1]`.
        Spacing::Linspace => {
            let v = np_linspace(0.0, (n_train - 1) as f64, steps + 1);
            v.iter().rev().take(steps).map(|x| x.round_ties_even() as i64).collect()
        }
        // `(np.arange(0, n + 1) * (N // (n + 1))).round()[::-1][:-1] + steps_offset`.
        Spacing::Leading => {
            let ratio = (n_train / (steps + 1)) as i64;
            (1..=steps as i64).rev().map(|i| i * ratio + steps_offset).collect()
        }
        // `np.arange(N, 0, -N / n).round() - 1`.
        Spacing::Trailing => np_arange(n_train as f64, 0.0, -(n_train as f64 / steps as f64))
            .into_iter()
            .map(|x| x.round_ties_even() as i64 - 1)
            .collect(),
    }
}

/// `np.arange(start, stop, step)` for float64 (numpy 2, `PyArray_ArangeObj` and `DOUBLE_fill`): the length
/// `ceil((stop − start)/step)`, the first two values `start` and `start + step`, then
/// `start + i·(second − start)`. The length can exceed the "expected" count by one: `np.arange(1000, 0,
/// -1000/61)` has 62 values.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let mut v = Vec::with_capacity(len);
    v.push(start);
    if len > 1 {
        v.push(start + step);
        let delta = v[1] - v[0];
        for i in 2..len {
            v.push(start + i as f64 * delta);
        }
    }
    v
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU: `start`/`end` rounded to float32,
/// `step = (end − start)/(steps − 1)` in float32, then `start + step·i` below `steps/2` and
/// `end − step·(steps − 1 − i)` from there, each contracted to one fused multiply-add as torch's compiled
/// kernel does (equal to torch 2.15's values for 23 start/end pairs × 73 lengths up to 4000).
fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    match steps {
        0 => Vec::new(),
        1 => vec![s],
        _ => {
            let step = (e - s) / (steps - 1) as f32;
            let half = steps / 2;
            (0..steps)
                .map(|i| if i < half { step.mul_add(i as f32, s) } else { (-step).mul_add((steps - 1 - i) as f32, e) })
                .collect()
        }
    }
}

/// `torch.cumprod` of float32 values on the CPU: a float64 running product, rounded to float32 per element.
fn cumprod(values: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .map(|v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// `betas_for_alpha_bar(n)` with the cosine `alpha_bar` (l. 34–84): Python float64, then float32.
fn betas_for_alpha_bar_cosine(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `rescale_zero_terminal_snr(betas)` (l. 87–120) in torch float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
    let mut sqrt: Vec<f32> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let (s0, st) = (sqrt[0], *sqrt.last().expect("non-empty"));
    let scale = s0 / (s0 - st);
    sqrt.iter_mut().for_each(|v| *v = (*v - st) * scale);
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let alphas = std::iter::once(bar[0]).chain(bar.windows(2).map(|w| w[1] / w[0]));
    alphas.map(|a| 1.0 - a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A system with pivoting and an exact float32 solution, and a singular one (an error, as torch raises).
    #[test]
    fn solve_pivots_and_refuses_singular() {
        // A well-conditioned system whose solution is exact in float32.
        let a = vec![vec![2.0, 1.0, 0.0], vec![4.0, 3.0, 1.0], vec![0.0, 1.0, 2.0]];
        let x = torch_solve(a, vec![3.0, 8.0, 3.0]).unwrap();
        assert_eq!(x, vec![1.0, 1.0, 1.0]);
        assert!(torch_solve(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![1.0, 2.0]).is_err());
    }

    /// numpy's `arange(1000, 0, -1000/61)` has 62 values (`ceil(61.00000000000001)`).
    #[test]
    fn numpy_arange_quirk() {
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 6.0).len(), 6);
    }
}
