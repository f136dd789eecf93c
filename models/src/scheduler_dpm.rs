//! `CogVideoXDPMScheduler` (diffusers 0.42.1,
//! <https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/schedulers/scheduling_dpm_cogvideox.py>),
//! the stochastic DPM-Solver++(2M)-style scheduler CogVideoX-5b is run with.
//!
//! Line numbers below are those of `scheduling_dpm_cogvideox.py` at v0.42.1.
//! - Configuration and schedule (`__init__`, l. 190–250): the fields, defaults and schedule of
//!   `CogVideoXDDIMScheduler` (betas, SNR shift, zero-terminal-SNR rescale, `final_alpha_cumprod`), so the
//!   schedule is [`CogVideoXDDIMScheduler`]'s; `set_timesteps` (l. 279–329) is too.
//! - `step` (l. 401–519): `prev_timestep = t − num_train_timesteps // num_inference_steps` (l. 467), `x₀` from the
//!   prediction type (l. 479–492), `h, r` from the log-SNRs `λ = log √(ᾱ/(1−ᾱ))` (`get_variables`, l. 331–362),
//!   the multipliers (`get_mult`, l. 364–399) and `mult_noise = √(1−ᾱ_prev)·√(1−e^{−2h})` (l. 496). The
//!   first-order sample `m₁·x_t − m₂·x₀ + mult_noise·ε` (l. 498–499) is returned on the first step (no
//!   `old_pred_original_sample`) or when `prev_timestep < 0` (l. 501–503); otherwise diffusers draws a second
//!   `ε` and returns `m₁·x_t − m₂·(m₃·x₀ − m₄·x₀_old) + mult_noise·ε` (l. 505–514). Either way the step
//!   returns `x₀` too, which `CogVideoXPipeline` passes back as `old_pred_original_sample` with the previous
//!   scheduled timestep as `timestep_back` (`pipeline_cogvideox.py` l. 716–717, 751–761).
//!
//! The noise is an input here ([`CogVideoXDPMScheduler::step`]'s `noise`: the draw that is added); the
//! pipeline either replays recorded draws or makes its own ([`crate::pipeline::StepNoise`]).
//!
//! As in the DDIM module, `alphas_cumprod` and every coefficient are float64 (0-d float64 tensors in
//! diffusers, infinities included: `λ = −∞` at a zero-SNR `t`, `+∞` at `ᾱ_prev = 1`), rounded to float32 when
//! they multiply the float32 latents.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::scheduler::{read_config_of, CogVideoXDDIMScheduler, CogVideoXDDIMSchedulerConfig};

/// `scheduler_config.json` of `CogVideoXDPMScheduler`: diffusers gives both CogVideoX classes the same fields
/// and defaults (`CogVideoXDPMScheduler.from_config(ddim.config)` is how a pipeline switches), so this is
/// [`CogVideoXDDIMSchedulerConfig`] (derefs to it) under the DPM class's name: its own type, so that a file is
/// read as the class it names ([`CogVideoXDPMSchedulerConfig::from_json_file`]). `From` converts both ways.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CogVideoXDPMSchedulerConfig(pub CogVideoXDDIMSchedulerConfig);

impl std::ops::Deref for CogVideoXDPMSchedulerConfig {
    type Target = CogVideoXDDIMSchedulerConfig;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for CogVideoXDPMSchedulerConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<CogVideoXDDIMSchedulerConfig> for CogVideoXDPMSchedulerConfig {
    fn from(c: CogVideoXDDIMSchedulerConfig) -> Self {
        Self(c)
    }
}

impl From<CogVideoXDPMSchedulerConfig> for CogVideoXDDIMSchedulerConfig {
    fn from(c: CogVideoXDPMSchedulerConfig) -> Self {
        c.0
    }
}

impl CogVideoXDPMSchedulerConfig {
    /// CogVideoX's published scheduler configuration
    /// ([`CogVideoXDDIMSchedulerConfig::cogvideox`]) for this class, as
    /// `CogVideoXDPMScheduler.from_config(pipe.scheduler.config)` builds it.
    pub fn cogvideox() -> Self {
        CogVideoXDDIMSchedulerConfig::cogvideox().into()
    }

    /// Reads a diffusers `scheduler_config.json`; a file whose `_class_name` names another class is refused
    /// ([`crate::CogVideoXScheduler::from_json_file`] reads either class).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        read_config_of(path, "CogVideoXDPMScheduler")
    }
}

/// The multipliers of one step (`get_mult` and `mult_noise`), float64.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mults {
    /// Of the sample.
    sample: f64,
    /// Of the (first- or second-order) denoised estimate, subtracted.
    denoised: f64,
    /// Of the noise.
    noise: f64,
    /// `(m₃, m₄)` of `m₃·x₀ − m₄·x₀_old`, when a look-back timestep is given.
    second: Option<(f64, f64)>,
}

/// `log √(ᾱ/(1−ᾱ))`, the half log-SNR (`get_variables`).
fn lambda(alpha_cumprod: f64) -> f64 {
    (alpha_cumprod / (1.0 - alpha_cumprod)).sqrt().ln()
}

/// `get_variables` and `get_mult` of diffusers, with `mult_noise`.
fn mults(a_t: f64, a_prev: f64, a_back: Option<f64>) -> Mults {
    let lamb = lambda(a_t);
    let h = lambda(a_prev) - lamb;
    let second = a_back.map(|a_back| {
        let r = (lamb - lambda(a_back)) / h;
        (1.0 + 1.0 / (2.0 * r), 1.0 / (2.0 * r))
    });
    Mults {
        sample: ((1.0 - a_prev) / (1.0 - a_t)).sqrt() * (-h).exp(),
        denoised: (-2.0 * h).exp_m1() * a_prev.sqrt(),
        noise: (1.0 - a_prev).sqrt() * (1.0 - (-2.0 * h).exp()).sqrt(),
        second,
    }
}

/// `CogVideoXDPMScheduler` (`eta` is accepted by diffusers' `step` and unused, so there is none here).
#[derive(Debug, Clone)]
pub struct CogVideoXDPMScheduler {
    config: CogVideoXDPMSchedulerConfig,
    schedule: CogVideoXDDIMScheduler,
}

impl CogVideoXDPMScheduler {
    /// Builds the scheduler, validating the configuration (as [`CogVideoXDDIMScheduler::new`] does).
    pub fn new(config: CogVideoXDPMSchedulerConfig) -> Result<Self> {
        let schedule = CogVideoXDDIMScheduler::new(config.clone().into())?;
        Ok(Self { config, schedule })
    }

    /// The configuration.
    pub fn config(&self) -> &CogVideoXDPMSchedulerConfig {
        &self.config
    }

    /// `init_noise_sigma` (1).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The cumulative alphas (float64).
    pub fn alphas_cumprod(&self) -> &[f64] {
        self.schedule.alphas_cumprod()
    }

    /// `set_timesteps`: the timesteps of `num_inference_steps` steps.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<&[i64]> {
        self.schedule.set_timesteps(num_inference_steps)
    }

    /// The timesteps set by [`Self::set_timesteps`].
    pub fn timesteps(&self) -> &[i64] {
        self.schedule.timesteps()
    }

    /// `scale_model_input`: the identity.
    pub fn scale_model_input<B: Backend, const D: usize>(&self, sample: Tensor<B, D>, _t: i64) -> Tensor<B, D> {
        sample
    }

    /// Whether the step at `t` takes the second-order branch (and so, in diffusers, draws its noise twice and
    /// adds the second draw): there is an `old_pred_original_sample` and `prev_timestep ≥ 0`.
    pub fn is_second_order(&self, t: i64, has_old_pred_original_sample: bool) -> bool {
        let steps = self.timesteps().len().max(1) as i64;
        has_old_pred_original_sample && t - self.config.num_train_timesteps as i64 / steps >= 0
    }

    /// One step from `t` to `t − num_train_timesteps / num_inference_steps`, as diffusers'
    /// `step(model_output, old_pred_original_sample, t, timestep_back, sample)` computes it. `timestep_back` is
    /// the previous step's timestep (`None` on the first step) and `old_pred_original_sample` the `x₀` that
    /// step returned. Returns `(prev_sample, pred_original_sample)`.
    ///
    /// # Shapes
    /// `model_output`, `sample`, `noise` (the standard-normal draw the step adds) and
    /// `old_pred_original_sample`: one shape, which both outputs have
    pub fn step<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        old_pred_original_sample: Option<Tensor<B, D>>,
        t: i64,
        timestep_back: Option<i64>,
        sample: Tensor<B, D>,
        noise: Tensor<B, D>,
    ) -> Result<(Tensor<B, D>, Tensor<B, D>)> {
        let dims = sample.dims();
        if noise.dims() != dims || model_output.dims() != dims {
            return Err(ModelError::Shape(format!(
                "step: sample {dims:?}, model_output {:?} and noise {:?} must have one shape",
                model_output.dims(),
                noise.dims()
            )));
        }
        let (a_t, a_prev) = self.schedule.alpha_pair(t)?;
        let a_back = timestep_back.map(|tb| self.schedule.alpha_at(tb)).transpose()?;
        let x0 = self.schedule.pred_original_sample(model_output, a_t, sample.clone());
        let m = mults(a_t, a_prev, a_back);
        let denoised = match old_pred_original_sample {
            Some(old) if self.is_second_order(t, true) => {
                // diffusers has no third and fourth multiplier without a look-back timestep (an IndexError).
                let (m3, m4) = m.second.ok_or_else(|| {
                    ModelError::InvalidConfig("step: old_pred_original_sample given without timestep_back".into())
                })?;
                if old.dims() != dims {
                    return Err(ModelError::Shape(format!(
                        "step: old_pred_original_sample {:?}, sample {dims:?}",
                        old.dims()
                    )));
                }
                x0.clone() * (m3 as f32) - old * (m4 as f32)
            }
            _ => x0.clone(),
        };
        let prev = sample * (m.sample as f32) - denoised * (m.denoised as f32) + noise * (m.noise as f32);
        Ok((prev, x0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;

    fn scheduler(steps: usize) -> CogVideoXDPMScheduler {
        let mut s = CogVideoXDPMScheduler::new(CogVideoXDPMSchedulerConfig::cogvideox()).unwrap();
        s.set_timesteps(steps).unwrap();
        s
    }

    fn t1(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_floats(v, &Default::default())
    }

    fn values(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// At a zero-SNR `t` (ᾱ = 0, λ = −∞, h = +∞) the step is `x₀·√ᾱ_prev + ε·√(1−ᾱ_prev)` with `x₀ = −v`
    /// (v-prediction at ᾱ = 0): the infinities cancel as in diffusers, nothing is NaN.
    #[test]
    fn the_zero_snr_first_step() {
        let s = scheduler(6);
        let a_prev = s.alphas_cumprod()[833];
        assert_eq!(s.alphas_cumprod()[999], 0.0);
        let (prev, x0) = s.step(t1(&[2.0]), None, 999, None, t1(&[5.0]), t1(&[1.0])).unwrap();
        assert_eq!(values(x0), [-2.0]);
        let expected = -2.0 * a_prev.sqrt() + (1.0 - a_prev).sqrt();
        let prev = values(prev)[0] as f64;
        assert!((prev - expected).abs() < 1e-6, "{prev} vs {expected}");
    }

    /// On the last step of 1000-step-divisible schedules `prev_timestep < 0`: ᾱ_prev = 1, so the sample is `x₀`
    /// exactly and the noise is not added, even with an old `x₀` (first-order branch).
    #[test]
    fn the_final_step_returns_x0() {
        let s = scheduler(4); // 999, 749, 499, 249; 249 − 250 < 0
        assert_eq!(s.timesteps(), &[999, 749, 499, 249]);
        assert!(!s.is_second_order(249, true));
        let a = s.alphas_cumprod()[249];
        let (prev, x0) = s.step(t1(&[0.5]), Some(t1(&[9.0])), 249, Some(499), t1(&[1.0]), t1(&[3.0])).unwrap();
        let x0 = values(x0)[0];
        assert!((x0 as f64 - (a.sqrt() - 0.5 * (1.0 - a).sqrt())).abs() < 1e-6);
        assert_eq!(values(prev), [x0]);
    }

    /// The second order after a zero-SNR step: `r = ∞`, so `m₃ = 1, m₄ = 0` and the old `x₀` drops out.
    #[test]
    fn the_second_step_after_zero_snr_is_first_order_in_effect() {
        let s = scheduler(6);
        assert!(s.is_second_order(832, true));
        let args = |old| s.step(t1(&[0.3]), old, 832, Some(999), t1(&[1.5]), t1(&[-0.7])).unwrap().0;
        assert_eq!(values(args(Some(t1(&[100.0])))), values(args(None)));
    }

    /// The second-order multipliers by hand: `r = h_last / h`, `m₃ = 1 + 1/(2r)`, `m₄ = 1/(2r)`.
    #[test]
    fn second_order_multipliers() {
        let (a_back, a_t, a_prev): (f64, f64, f64) = (0.2, 0.5, 0.8);
        let m = mults(a_t, a_prev, Some(a_back));
        let l = |a: f64| 0.5 * (a / (1.0 - a)).ln();
        let (h, h_last) = (l(a_prev) - l(a_t), l(a_t) - l(a_back));
        let r = h_last / h;
        let (m3, m4) = m.second.unwrap();
        assert!((m3 - (1.0 + 0.5 / r)).abs() < 1e-12 && (m4 - 0.5 / r).abs() < 1e-12);
        // √((1−ᾱ_prev)/(1−ᾱ_t))·e^{−h} = √(ᾱ_t/ᾱ_prev)·(1−ᾱ_prev)/(1−ᾱ_t) = √(5/8)·0.4.
        assert!((m.sample - (0.625f64).sqrt() * 0.4).abs() < 1e-12);
        // λ(0.8) − λ(0.5) = ln 2, so e^{−2h} = 1/4 and mult_noise² = (1−ᾱ_prev)(1−e^{−2h}) = 0.2·0.75.
        assert!((m.noise * m.noise - 0.15).abs() < 1e-12);
        // (e^{−2h} − 1)·√ᾱ_prev = (1/4 − 1)·√0.8.
        assert!((m.denoised - (-0.75 * 0.8f64.sqrt())).abs() < 1e-12);
    }

    #[test]
    fn wrong_shapes_and_bad_configs_are_typed_errors() {
        let s = scheduler(6);
        let two = t1(&[1.0, 2.0]);
        assert!(matches!(s.step(two.clone(), None, 999, None, two, t1(&[1.0])), Err(ModelError::Shape(_))));
        let cfg: CogVideoXDPMSchedulerConfig = serde_json::from_str(r#"{"eta": 1.0}"#).unwrap();
        assert!(matches!(CogVideoXDPMScheduler::new(cfg), Err(ModelError::InvalidConfig(_))));
    }
}
