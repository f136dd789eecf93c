//! diffusers' plain `DDIMScheduler` (0.42,
//! <https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/schedulers/scheduling_ddim.py>),
//! the scheduler Latte ships, at `eta = 0`.
//!
//! Its schedule is `CogVideoXDDIMScheduler`'s with `snr_shift_scale = 1`, so it shares that implementation;
//! the step differs: it clips the predicted `x₀` when `clip_sample` is set, and forms the next sample as
//! `√ᾱ_prev·x₀ + √(1−ᾱ_prev)·ε̂` (diffusers' formula, kept for its rounding). `thresholding` and
//! `rescale_betas_zero_snr` are refused rather than computed wrong.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::scheduler::{CogVideoXDDIMScheduler, CogVideoXDDIMSchedulerConfig, Prediction};

/// `scheduler_config.json` of `DDIMScheduler`, with diffusers' field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DDIMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    /// Clip the predicted `x₀` to `±clip_sample_range`.
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    /// `epsilon`, `sample` or `v_prediction`.
    pub prediction_type: String,
    /// Refused when true.
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    pub sample_max_value: f64,
    /// `linspace`, `leading` or `trailing`.
    pub timestep_spacing: String,
    /// Refused when true.
    pub rescale_betas_zero_snr: bool,
    /// Not a `DDIMScheduler` field: Latte's checkpoints carry `"learned_range"`, and diffusers drops it when it
    /// builds the scheduler, so `LattePipeline` always takes the first half of the output channels (as
    /// diffusers' does). Kept so that the key is read, not refused.
    pub variance_type: Option<String>,
    /// diffusers' own keys (`_class_name`, ...) and anything unknown; unknown keys are refused.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for DDIMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: "epsilon".into(),
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: "leading".into(),
            rescale_betas_zero_snr: false,
            variance_type: None,
            extra: BTreeMap::new(),
        }
    }
}

impl DDIMSchedulerConfig {
    /// The configuration Latte-1 ships
    /// (<https://huggingface.co/maxin-cn/Latte-1/blob/main/scheduler/scheduler_config.json>).
    pub fn latte() -> Self {
        Self {
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            beta_start: 0.0001,
            clip_sample: false,
            variance_type: Some("learned_range".into()),
            ..Self::default()
        }
    }

    /// Reads a diffusers `scheduler_config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
        serde_json::from_str(&text).map_err(|e| ModelError::Parse { path: path.to_owned(), reason: e.to_string() })
    }
}

/// `DDIMScheduler` at `eta = 0`.
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    config: DDIMSchedulerConfig,
    schedule: CogVideoXDDIMScheduler,
}

impl DDIMScheduler {
    /// Builds the scheduler, validating the configuration.
    pub fn new(config: DDIMSchedulerConfig) -> Result<Self> {
        if config.thresholding {
            return Err(ModelError::Unsupported("DDIMScheduler with thresholding".into()));
        }
        if config.rescale_betas_zero_snr {
            return Err(ModelError::Unsupported("DDIMScheduler with rescale_betas_zero_snr".into()));
        }
        if config.clip_sample && !(config.clip_sample_range > 0.0) {
            return Err(ModelError::InvalidConfig("clip_sample_range must be positive".into()));
        }
        let c = config.clone();
        let schedule = CogVideoXDDIMScheduler::new(CogVideoXDDIMSchedulerConfig {
            num_train_timesteps: c.num_train_timesteps,
            beta_start: c.beta_start,
            beta_end: c.beta_end,
            beta_schedule: c.beta_schedule,
            trained_betas: c.trained_betas,
            clip_sample: false,
            set_alpha_to_one: c.set_alpha_to_one,
            steps_offset: c.steps_offset,
            prediction_type: c.prediction_type,
            clip_sample_range: c.clip_sample_range,
            sample_max_value: c.sample_max_value,
            timestep_spacing: c.timestep_spacing,
            rescale_betas_zero_snr: false,
            snr_shift_scale: 1.0,
            extra: c.extra,
        })?;
        Ok(Self { config, schedule })
    }

    /// The configuration.
    pub fn config(&self) -> &DDIMSchedulerConfig {
        &self.config
    }

    /// `init_noise_sigma` (1 for DDIM).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// `set_timesteps`: the timesteps of `num_inference_steps` steps.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<&[i64]> {
        self.schedule.set_timesteps(num_inference_steps)
    }

    /// `scale_model_input`: the identity for DDIM.
    pub fn scale_model_input<B: Backend, const D: usize>(&self, sample: Tensor<B, D>, _t: i64) -> Tensor<B, D> {
        sample
    }

    /// One DDIM step (eta 0) from `t` to `t - num_train_timesteps / num_inference_steps`.
    pub fn step<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        t: i64,
        sample: Tensor<B, D>,
    ) -> Result<Tensor<B, D>> {
        let (a_t, a_prev) = self.schedule.alpha_pair(t)?;
        let beta_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt() as f32, beta_t.sqrt() as f32);
        let (x0, eps) = match self.schedule.prediction() {
            Prediction::Epsilon => ((sample.clone() - model_output.clone() * sb) / sa, model_output),
            Prediction::Sample => (model_output.clone(), (sample - model_output * sa) / sb),
            Prediction::V => (sample.clone() * sa - model_output.clone() * sb, model_output * sa + sample * sb),
        };
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)
        } else {
            x0
        };
        Ok(x0 * (a_prev.sqrt() as f32) + eps * ((1.0 - a_prev).sqrt() as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_does_not_compute() {
        let cfg = DDIMSchedulerConfig { thresholding: true, ..Default::default() };
        assert!(matches!(DDIMScheduler::new(cfg), Err(ModelError::Unsupported(_))));
        let cfg: DDIMSchedulerConfig = serde_json::from_str(r#"{"shift": 3.0}"#).unwrap();
        assert!(matches!(DDIMScheduler::new(cfg), Err(ModelError::InvalidConfig(_))));
    }

    /// Leading spacing with 1000 training steps: `t_i = i · 1000 / n`, counted down.
    #[test]
    fn leading_timesteps() {
        let mut s = DDIMScheduler::new(DDIMSchedulerConfig::latte()).unwrap();
        assert_eq!(s.set_timesteps(4).unwrap(), &[750, 500, 250, 0]);
    }
}
