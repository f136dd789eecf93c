//! `CogVideoXDDIMScheduler` (diffusers 0.42,
//! <https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/schedulers/scheduling_ddim_cogvideox.py>),
//! read from `scheduler_config.json`, and [`CogVideoXScheduler`]: either class a CogVideoX pipeline runs
//! (this one or [`CogVideoXDPMScheduler`]), chosen by the file's `_class_name`.
//!
//! `alphas_cumprod` is float64 as in diffusers; the step's coefficients are rounded to float32 before they
//! touch the float32 latents, as PyTorch does when a 0-d float64 tensor multiplies a float32 tensor.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::config_file::{config_from, read_json, refuse_unknown};
use crate::error::{ModelError, Result};
use crate::scheduler_dpm::CogVideoXDPMScheduler;

/// `scheduler_config.json` of `CogVideoXDDIMScheduler`, with diffusers' field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CogVideoXDDIMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    /// Not used by `CogVideoXDDIMScheduler.step` (kept for round-tripping).
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    /// `epsilon`, `sample` or `v_prediction`.
    pub prediction_type: String,
    /// Not used by `CogVideoXDDIMScheduler.step` (kept for round-tripping).
    pub clip_sample_range: f64,
    /// Not used by `CogVideoXDDIMScheduler.step` (kept for round-tripping).
    pub sample_max_value: f64,
    /// `linspace`, `leading` or `trailing`.
    pub timestep_spacing: String,
    pub rescale_betas_zero_snr: bool,
    pub snr_shift_scale: f64,
    /// diffusers' own keys (`_class_name`, ...) and anything unknown; unknown keys are refused.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for CogVideoXDDIMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: "epsilon".into(),
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: "leading".into(),
            rescale_betas_zero_snr: false,
            snr_shift_scale: 3.0,
            extra: BTreeMap::new(),
        }
    }
}

impl CogVideoXDDIMSchedulerConfig {
    /// The configuration CogVideoX-2b/5b ship
    /// (<https://huggingface.co/THUDM/CogVideoX-2b/blob/main/scheduler/scheduler_config.json>).
    pub fn cogvideox() -> Self {
        Self {
            beta_end: 0.012,
            beta_start: 0.00085,
            clip_sample: false,
            prediction_type: "v_prediction".into(),
            rescale_betas_zero_snr: true,
            set_alpha_to_one: true,
            snr_shift_scale: 3.0,
            timestep_spacing: "trailing".into(),
            ..Self::default()
        }
    }

    /// Reads a diffusers `scheduler_config.json`; a file whose `_class_name` names another class is refused
    /// ([`CogVideoXScheduler::from_json_file`] reads either class).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        read_config_of(path, "CogVideoXDDIMScheduler")
    }
}

/// A `scheduler_config.json` read as the configuration of `class`: one whose `_class_name` names another
/// class is [`ModelError::Unsupported`] (both CogVideoX classes take the same fields, so it would parse and
/// run as the wrong scheduler); one without `_class_name` is taken as the caller says.
pub(crate) fn read_config_of<T: serde::de::DeserializeOwned>(path: &Path, class: &str) -> Result<T> {
    let json = read_json(path)?;
    match json.get("_class_name") {
        Some(found) if found.as_str() != Some(class) => Err(ModelError::Unsupported(format!(
            "{}: `_class_name` is {found}, not {class:?} (CogVideoXScheduler::from_json_file reads either CogVideoX class)",
            path.display()
        ))),
        _ => config_from(path, json),
    }
}

/// What the model predicts (`prediction_type`), validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prediction {
    Epsilon,
    Sample,
    V,
}

/// The DDIM scheduler of CogVideoX (eta 0).
#[derive(Debug, Clone)]
pub struct CogVideoXDDIMScheduler {
    config: CogVideoXDDIMSchedulerConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    prediction: Prediction,
    timesteps: Vec<i64>,
}

impl CogVideoXDDIMScheduler {
    /// Builds the scheduler, validating the configuration.
    pub fn new(config: CogVideoXDDIMSchedulerConfig) -> Result<Self> {
        refuse_unknown("scheduler ", &config.extra)?;
        let n = config.num_train_timesteps;
        if n < 2 {
            return Err(ModelError::InvalidConfig("num_train_timesteps must be at least 2".into()));
        }
        let betas: Vec<f64> = if let Some(b) = &config.trained_betas {
            if b.len() != n {
                return Err(ModelError::InvalidConfig(format!("trained_betas has {} values, expected {n}", b.len())));
            }
            // diffusers stores trained betas as float32.
            b.iter().map(|&v| v as f32 as f64).collect()
        } else {
            match config.beta_schedule.as_str() {
                "linear" => linspace_f32(config.beta_start, config.beta_end, n),
                "scaled_linear" => {
                    let (a, b) = (config.beta_start.sqrt(), config.beta_end.sqrt());
                    linspace_f64(a, b, n).into_iter().map(|v| v * v).collect()
                }
                "squaredcos_cap_v2" => {
                    let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
                    (0..n)
                        .map(|i| {
                            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                            (1.0 - f(t2) / f(t1)).min(0.999) as f32 as f64
                        })
                        .collect()
                }
                other => return Err(ModelError::Unsupported(format!("beta_schedule {other:?}"))),
            }
        };
        let prediction = match config.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "sample" => Prediction::Sample,
            "v_prediction" => Prediction::V,
            other => return Err(ModelError::Unsupported(format!("prediction_type {other:?}"))),
        };
        if !matches!(config.timestep_spacing.as_str(), "linspace" | "leading" | "trailing") {
            return Err(ModelError::Unsupported(format!("timestep_spacing {:?}", config.timestep_spacing)));
        }
        let s = config.snr_shift_scale;
        let mut acc = 1.0;
        let mut alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc / (s + (1.0 - s) * acc)
            })
            .collect();
        if config.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&mut alphas_cumprod);
        }
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config, alphas_cumprod, final_alpha_cumprod, prediction, timesteps: Vec::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &CogVideoXDDIMSchedulerConfig {
        &self.config
    }

    /// `init_noise_sigma` (1 for DDIM).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The cumulative alphas (float64).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `set_timesteps`: the timesteps of `num_inference_steps` steps.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<&[i64]> {
        let n = self.config.num_train_timesteps;
        if num_inference_steps == 0 || num_inference_steps > n {
            return Err(ModelError::InvalidConfig(format!(
                "num_inference_steps must be in 1..={n}, got {num_inference_steps}"
            )));
        }
        let steps = num_inference_steps;
        self.timesteps = match self.config.timestep_spacing.as_str() {
            "linspace" => linspace_f64(0.0, (n - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|v| v.round_ties_even() as i64)
                .collect(),
            "leading" => {
                let ratio = n / steps;
                (0..steps).rev().map(|i| (i * ratio + self.config.steps_offset) as i64).collect()
            }
            _ => {
                // np.round(np.arange(n, 0, -ratio)) - 1
                let ratio = n as f64 / steps as f64;
                let mut v = Vec::new();
                let mut x = n as f64;
                let mut i = 0;
                while x > 0.0 {
                    v.push(x.round_ties_even() as i64 - 1);
                    i += 1;
                    x = n as f64 - i as f64 * ratio;
                }
                v
            }
        };
        Ok(&self.timesteps)
    }

    /// The timesteps set by [`Self::set_timesteps`].
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// `scale_model_input`: the identity for DDIM.
    pub fn scale_model_input<B: Backend, const D: usize>(&self, sample: Tensor<B, D>, _t: i64) -> Tensor<B, D> {
        sample
    }

    /// The validated `prediction_type`.
    pub(crate) fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// `(alphas_cumprod[t], alphas_cumprod[prev])` of a step from `t` to `t - num_train_timesteps / steps`
    /// (the final alpha when `prev < 0`).
    pub(crate) fn alpha_pair(&self, t: i64) -> Result<(f64, f64)> {
        let steps = self.timesteps.len();
        if steps == 0 {
            return Err(ModelError::InvalidConfig("set_timesteps must be called before step".into()));
        }
        let n = self.config.num_train_timesteps as i64;
        if t < 0 || t >= n {
            return Err(ModelError::InvalidConfig(format!("timestep {t} outside 0..{n}")));
        }
        let prev = t - n / steps as i64;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        Ok((a_t, a_prev))
    }

    /// `alphas_cumprod[t]`, checked against the training range.
    pub(crate) fn alpha_at(&self, t: i64) -> Result<f64> {
        let n = self.config.num_train_timesteps as i64;
        if t < 0 || t >= n {
            return Err(ModelError::InvalidConfig(format!("timestep {t} outside 0..{n}")));
        }
        Ok(self.alphas_cumprod[t as usize])
    }

    /// `pred_original_sample` (`x₀`) from the model's output at a timestep whose cumulative alpha is `a_t`, by
    /// the prediction type (both CogVideoX schedulers' `step` compute it so).
    pub(crate) fn pred_original_sample<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        a_t: f64,
        sample: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let (sa, sb) = (a_t.sqrt() as f32, (1.0 - a_t).sqrt() as f32);
        match self.prediction {
            Prediction::Epsilon => (sample - model_output * sb) / sa,
            Prediction::Sample => model_output,
            Prediction::V => sample * sa - model_output * sb,
        }
    }

    /// One DDIM step (eta 0) from `t` to `t - num_train_timesteps / num_inference_steps`, as diffusers
    /// computes it (not to the next scheduled timestep).
    pub fn step<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        t: i64,
        sample: Tensor<B, D>,
    ) -> Result<Tensor<B, D>> {
        let (a_t, a_prev) = self.alpha_pair(t)?;
        let x0 = self.pred_original_sample(model_output, a_t, sample.clone());
        let coef_a = ((1.0 - a_prev) / (1.0 - a_t)).sqrt();
        let coef_b = a_prev.sqrt() - a_t.sqrt() * coef_a;
        Ok(sample * (coef_a as f32) + x0 * (coef_b as f32))
    }
}

/// The scheduler classes a CogVideoX pipeline directory may name.
pub const SUPPORTED_SCHEDULERS: &[&str] = &["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"];

/// The scheduler of a CogVideoX pipeline, of either class `CogVideoXPipeline` runs.
#[derive(Debug, Clone)]
pub enum CogVideoXScheduler {
    /// `CogVideoXDDIMScheduler` (deterministic).
    Ddim(CogVideoXDDIMScheduler),
    /// `CogVideoXDPMScheduler` (stochastic: each step adds noise).
    Dpm(CogVideoXDPMScheduler),
}

impl CogVideoXScheduler {
    /// Reads a `scheduler_config.json` and builds the class its `_class_name` names. Another class is
    /// [`ModelError::Unsupported`], naming it and [`SUPPORTED_SCHEDULERS`]; a file without `_class_name` is
    /// [`ModelError::InvalidConfig`]: both classes take the same fields, so nothing else in the file tells
    /// which one it configures.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let json = read_json(path)?;
        let supported = SUPPORTED_SCHEDULERS.join(", ");
        match json.get("_class_name") {
            None => Err(ModelError::InvalidConfig(format!(
                "{}: no `_class_name`; a CogVideoX scheduler config must name its class ({supported})",
                path.display()
            ))),
            Some(serde_json::Value::String(class)) if class == "CogVideoXDDIMScheduler" => {
                Ok(Self::Ddim(CogVideoXDDIMScheduler::new(config_from(path, json)?)?))
            }
            Some(serde_json::Value::String(class)) if class == "CogVideoXDPMScheduler" => {
                Ok(Self::Dpm(CogVideoXDPMScheduler::new(config_from(path, json)?)?))
            }
            Some(other) => Err(ModelError::Unsupported(format!(
                "{}: scheduler {} (CogVideoXPipeline supports {supported})",
                path.display(),
                other.as_str().map_or_else(|| other.to_string(), str::to_owned)
            ))),
        }
    }

    /// The diffusers class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::Ddim(_) => "CogVideoXDDIMScheduler",
            Self::Dpm(_) => "CogVideoXDPMScheduler",
        }
    }

    /// `init_noise_sigma` (1 for both classes).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// `set_timesteps`: the timesteps of `num_inference_steps` steps.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<&[i64]> {
        match self {
            Self::Ddim(s) => s.set_timesteps(num_inference_steps),
            Self::Dpm(s) => s.set_timesteps(num_inference_steps),
        }
    }

    /// The timesteps set by [`Self::set_timesteps`].
    pub fn timesteps(&self) -> &[i64] {
        match self {
            Self::Ddim(s) => s.timesteps(),
            Self::Dpm(s) => s.timesteps(),
        }
    }

    /// `scale_model_input`: the identity for both classes.
    pub fn scale_model_input<B: Backend, const D: usize>(&self, sample: Tensor<B, D>, _t: i64) -> Tensor<B, D> {
        sample
    }
}

impl From<CogVideoXDDIMScheduler> for CogVideoXScheduler {
    fn from(s: CogVideoXDDIMScheduler) -> Self {
        Self::Ddim(s)
    }
}

impl From<CogVideoXDPMScheduler> for CogVideoXScheduler {
    fn from(s: CogVideoXDPMScheduler) -> Self {
        Self::Dpm(s)
    }
}

/// `torch.linspace(..., dtype=float64)`.
fn linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f64;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f64 } else { end - step * (steps - 1 - i) as f64 }).collect()
}

/// `torch.linspace(..., dtype=float32)`, widened.
fn linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f64> {
    let (s, e) = (start as f32, end as f32);
    if steps == 1 {
        return vec![s as f64];
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| (if i < half { s + step * i as f32 } else { e - step * (steps - 1 - i) as f32 }) as f64)
        .collect()
}

/// `rescale_zero_terminal_snr` on alphas_cumprod, in place.
fn rescale_zero_terminal_snr(alphas_cumprod: &mut [f64]) {
    let sqrt: Vec<f64> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let (s0, st) = (sqrt[0], *sqrt.last().expect("non-empty"));
    for (a, s) in alphas_cumprod.iter_mut().zip(sqrt) {
        let v = (s - st) * (s0 / (s0 - st));
        *a = v * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timesteps listed in `shared/design/diffusers-behaviour.md`, measured from diffusers.
    #[test]
    fn trailing_timesteps_match_diffusers() {
        let mut s = CogVideoXDDIMScheduler::new(CogVideoXDDIMSchedulerConfig::cogvideox()).unwrap();
        assert_eq!(s.set_timesteps(12).unwrap(), &[999, 916, 832, 749, 666, 582, 499, 416, 332, 249, 166, 82]);
        let t20 = s.set_timesteps(20).unwrap().to_vec();
        assert_eq!(t20.len(), 20);
        assert_eq!((t20[0], t20[1], t20[19]), (999, 949, 49));
    }

    #[test]
    fn zero_terminal_snr() {
        let s = CogVideoXDDIMScheduler::new(CogVideoXDDIMSchedulerConfig::cogvideox()).unwrap();
        assert_eq!(s.alphas_cumprod()[999], 0.0);
        assert!(s.alphas_cumprod()[0] > 0.99);
    }

    #[test]
    fn bad_config_is_a_typed_error() {
        let cfg = CogVideoXDDIMSchedulerConfig { prediction_type: "flow".into(), ..Default::default() };
        assert!(matches!(CogVideoXDDIMScheduler::new(cfg), Err(ModelError::Unsupported(_))));
    }
}
