//! `FlowMatchEulerDiscreteScheduler` (diffusers 0.42.1,
//! <https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/schedulers/scheduling_flow_match_euler_discrete.py>),
//! the Euler flow-matching scheduler of FLUX.1, SD3, LTX-Video and others, with FluxPipeline's
//! [`calculate_shift`] and the sigmas and `mu` FluxPipeline passes to it
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/pipelines/flux/pipeline_flux.py>).
//!
//! Line numbers below are those of `scheduling_flow_match_euler_discrete.py` (`sched`) and
//! `pipeline_flux.py` (`flux`) at v0.42.1.
//! - Configuration (`__init__`, sched l. 91–125): every field and default; more than one of the karras,
//!   exponential and beta flags, or another `time_shift_type`, is refused as diffusers refuses it.
//! - The training schedule (sched l. 127–144): `linspace(1, N, N)` reversed, `/ N` and, without dynamic
//!   shifting, `shift·σ / (1 + (shift − 1)·σ)`, all in torch float32. Only its first and last sigma are used
//!   afterwards (`sigma_max`, `sigma_min`, taken as Python floats with `.item()`).
//! - `set_timesteps` (sched l. 283–391). The dtype follows diffusers' numpy/torch path exactly:
//!   - without `sigmas` (l. 339–346): `np.linspace(sigma_max·N, sigma_min·N, n) / N` in **float64**, so the
//!     shift (l. 353–356) and `stretch_shift_to_terminal` (l. 262–281, 359–361) run in float64;
//!   - with `sigmas` (l. 347–349, the FLUX path): `np.array(sigmas).astype(np.float32)`, so the shift and the
//!     stretch run in **float32**; numpy 2's NEP 50 casts each Python scalar (`math.exp(mu)`, `shift`,
//!     `shift − 1`, `1 − shift_terminal`, computed in float64 by Python) to float32 first;
//!   - `_convert_to_karras` / `_convert_to_exponential` (l. 363–369, 534–604) return float64 arrays from
//!     either dtype;
//!   - then `torch.from_numpy(sigmas).to(float32)` (l. 372), `timesteps = sigmas · N` in float32 (l. 376),
//!     `invert_sigmas` as `1 − σ` in float32 (l. 381–384), and a trailing 0 (or 1 when inverted) (l. 384–386).
//! - `step` (sched l. 432–531): `prev = sample + (σ_{i+1} − σ_i)·model_output` (l. 507–513, 520), the
//!   difference of two float32 sigmas taken in float32.
//! - FluxPipeline (flux l. 73–83, 823–841): `mu = calculate_shift(latents.shape[1], ...)` in Python float
//!   arithmetic and `sigmas = np.linspace(1.0, 1 / n, n)` in float64, passed to `set_timesteps(sigmas=..., mu=...)`
//!   through `retrieve_timesteps` (flux l. 130–139).
//!
//! Not reproduced, and refused rather than computed differently: `use_beta_sigmas` (it needs
//! `scipy.stats.beta.ppf`, whose inverse incomplete beta is not matched bit for bit here) and
//! `stochastic_sampling` (each step would need a noise draw as input). `set_timesteps(timesteps=...)`,
//! `step(per_token_timesteps=...)`, `scale_noise` and `set_shift` are not provided.
//!
//! One caveat on "exact": the karras and exponential conversions call `**`/`np.exp` on float64 arrays,
//! which numpy computes with its own SIMD routines on AVX-512 machines; those differ from libm (used here)
//! by one float64 ulp in a few percent of inputs. The result is rounded to float32 right after, which hid
//! every such difference in the checks made for this module (10⁶ random inputs of `np.power`/`np.exp`, and
//! 9,792 diffusers schedules — static, dynamic exponential/linear, terminal, inverted, karras, exponential,
//! 1–100 steps, both dtype paths — equal bit for bit), but it is not a proof.

use std::collections::BTreeMap;
use std::ops::{Add, Div, Mul, Sub};
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// diffusers' class name, the `_class_name` [`FlowMatchEulerDiscreteSchedulerConfig::from_json_file`] accepts.
pub const CLASS_NAME: &str = "FlowMatchEulerDiscreteScheduler";

/// `scheduler_config.json` of `FlowMatchEulerDiscreteScheduler`, with diffusers' field names and defaults
/// (`__init__`, sched l. 92–108).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteSchedulerConfig {
    /// Number of training timesteps `N`; timesteps are `σ·N`.
    pub num_train_timesteps: usize,
    /// Static shift `σ ↦ shift·σ / (1 + (shift − 1)·σ)`, used when `use_dynamic_shifting` is false.
    pub shift: f64,
    /// Shift by `mu` (resolution dependent, passed to `set_timesteps`) instead of `shift`.
    pub use_dynamic_shifting: bool,
    /// Not used by the scheduler; FluxPipeline reads it for [`calculate_shift`].
    pub base_shift: Option<f64>,
    /// Not used by the scheduler; FluxPipeline reads it for [`calculate_shift`].
    pub max_shift: Option<f64>,
    /// Not used by the scheduler; FluxPipeline reads it for [`calculate_shift`].
    pub base_image_seq_len: usize,
    /// Not used by the scheduler; FluxPipeline reads it for [`calculate_shift`].
    pub max_image_seq_len: usize,
    /// Run on `1 − σ` (Mochi): timesteps from the inverted sigmas, a trailing 1 instead of 0.
    pub invert_sigmas: bool,
    /// Stretch the shifted schedule so that its last sigma is this value (LTX-Video); `None` or `0` is off,
    /// as diffusers tests it for truthiness.
    pub shift_terminal: Option<f64>,
    /// Replace the schedule by Karras' (ρ = 7) between its first and last sigma.
    pub use_karras_sigmas: bool,
    /// Replace the schedule by a geometric one between its first and last sigma.
    pub use_exponential_sigmas: bool,
    /// Beta-distribution sigmas: refused ([`FlowMatchEulerDiscreteScheduler::new`]).
    pub use_beta_sigmas: bool,
    /// How `mu` shifts: `exponential` (`e^μ / (e^μ + 1/σ − 1)`) or `linear` (`μ / (μ + 1/σ − 1)`).
    pub time_shift_type: String,
    /// Stochastic steps: refused ([`FlowMatchEulerDiscreteScheduler::new`]).
    pub stochastic_sampling: bool,
    /// diffusers' own keys (`_class_name`, `_diffusers_version`, ...) and anything unknown; keys not starting
    /// with `_` are refused by [`FlowMatchEulerDiscreteScheduler::new`], as the crate's other schedulers do.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for FlowMatchEulerDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".into(),
            stochastic_sampling: false,
            extra: BTreeMap::new(),
        }
    }
}

impl FlowMatchEulerDiscreteSchedulerConfig {
    /// The configuration FLUX.1-dev ships
    /// (<https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/scheduler/scheduler_config.json>:
    /// `shift` 3.0, `use_dynamic_shifting` true, `base_shift` 0.5, `max_shift` 1.15, `base_image_seq_len` 256,
    /// `max_image_seq_len` 4096, `num_train_timesteps` 1000; the same values ostris/ai-toolkit embeds as its
    /// `flux_config`). With dynamic shifting `shift` is unused.
    pub fn flux_dev() -> Self {
        Self {
            shift: 3.0,
            use_dynamic_shifting: true,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            ..Self::default()
        }
    }

    /// The configuration FLUX.1-schnell ships
    /// (<https://huggingface.co/black-forest-labs/FLUX.1-schnell/blob/main/scheduler/scheduler_config.json>:
    /// dev's file with `shift` 1.0 and `use_dynamic_shifting` false): no shift at all, so the timesteps are
    /// FluxPipeline's linear sigmas times 1000.
    pub fn flux_schnell() -> Self {
        Self { shift: 1.0, use_dynamic_shifting: false, ..Self::flux_dev() }
    }

    /// Reads a diffusers `scheduler_config.json`. A file whose `_class_name` names another class is
    /// [`ModelError::Unsupported`]: most of the fields are shared with other flow-matching schedulers, so it
    /// would parse and run as the wrong one. A file without `_class_name` is taken as this class.
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

    /// The `mu` FluxPipeline passes to `set_timesteps` for packed latents of `image_seq_len` tokens
    /// (`latents.shape[1]`, `(H/16)·(W/16)` for FLUX.1): [`calculate_shift`] of this configuration's
    /// `base_image_seq_len`, `max_image_seq_len`, `base_shift` and `max_shift` (flux l. 826–833).
    /// FluxPipeline computes it whether or not `use_dynamic_shifting` is set (the scheduler ignores it
    /// without), so a `null` `base_shift` or `max_shift` fails there either way (a `TypeError` in Python):
    /// here [`ModelError::InvalidConfig`].
    pub fn flux_mu(&self, image_seq_len: usize) -> Result<f64> {
        let need = |v: Option<f64>, name: &str| {
            v.ok_or_else(|| {
                ModelError::InvalidConfig(format!("{name} is null; FluxPipeline's calculate_shift needs a number"))
            })
        };
        Ok(calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            need(self.base_shift, "base_shift")?,
            need(self.max_shift, "max_shift")?,
        ))
    }
}

/// FluxPipeline's `calculate_shift` (flux l. 73–83): the line through `(base_seq_len, base_shift)` and
/// `(max_seq_len, max_shift)` at `image_seq_len`, in Python float (float64) arithmetic:
/// `m = (max_shift − base_shift) / (max_seq_len − base_seq_len)`, `b = base_shift − m·base_seq_len`,
/// `mu = image_seq_len·m + b`. The integers convert to float exactly (below 2⁵³), as Python converts them.
/// Equal sequence lengths divide by zero: Python raises `ZeroDivisionError`, this returns a non-finite value.
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    // The integer difference is taken first in Python (exact), then converted for the float division.
    let span = max_seq_len as f64 - base_seq_len as f64;
    let m = (max_shift - base_shift) / span;
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

/// The sigmas FluxPipeline passes to `set_timesteps`: `np.linspace(1.0, 1 / n, n)` in float64 (flux l. 823),
/// bit-identical to numpy's.
pub fn flux_sigmas(num_inference_steps: usize) -> Vec<f64> {
    np_linspace(1.0, 1.0 / num_inference_steps as f64, num_inference_steps)
}

/// `np.linspace(start, stop, num)` for float64, numpy 2's formula (`numpy/_core/function_base.py`):
/// `i·step + start` with `step = (stop − start)/(num − 1)` (`(i/(num − 1))·delta` when the step underflows
/// to 0), and the last value set to `stop`. (torch's `linspace` counts from both ends instead; it differs.)
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if num > 1 {
        let div = (num - 1) as f64;
        let step = delta / div;
        if step == 0.0 {
            y.iter_mut().for_each(|v| *v = *v / div * delta);
        } else {
            y.iter_mut().for_each(|v| *v *= step);
        }
    } else {
        y.iter_mut().for_each(|v| *v *= delta);
    }
    y.iter_mut().for_each(|v| *v += start);
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The dtype a sigma array has between the numpy steps of `set_timesteps`: float64 by default, float32 when
/// sigmas are given (sched l. 347–349). Every operation below is a single IEEE operation in that dtype, as a
/// numpy ufunc on a float32/float64 array is.
trait NpFloat: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> {
    /// A Python scalar (a float, or an int converted exactly) meeting an array of this dtype: numpy 2 (NEP 50)
    /// casts it to the array's dtype, rounding to nearest.
    fn py(x: f64) -> Self;
    /// `.item()`: the value as a Python float.
    fn item(self) -> f64;
    /// `torch.from_numpy(...).to(torch.float32)`.
    fn to_f32(self) -> f32;
}

impl NpFloat for f32 {
    fn py(x: f64) -> Self {
        x as f32
    }
    fn item(self) -> f64 {
        self as f64
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl NpFloat for f64 {
    fn py(x: f64) -> Self {
        x
    }
    fn item(self) -> f64 {
        self
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// `time_shift_type`, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeShift {
    Exponential,
    Linear,
}

/// Which schedule conversion `set_timesteps` step 4 applies (sched l. 363–369).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conversion {
    None,
    Karras,
    Exponential,
}

/// Steps 2–3 of `set_timesteps` (sched l. 351–361) in the sigmas' dtype `T`.
fn shift_and_stretch<T: NpFloat + PartialEq>(
    sigmas: &mut [T],
    dynamic: Option<(TimeShift, f64)>,
    shift: f64,
    shift_terminal: Option<f64>,
) -> Result<()> {
    let one = T::py(1.0);
    match dynamic {
        // `time_shift(mu, 1.0, t)` (sched l. 241–260, 655–659): `(1 / t − 1) ** 1.0` is `1 / t − 1` exactly
        // (numpy's `**` takes a fast path for a scalar exponent 1, and `pow(x, 1)` is `x` anyway), so the
        // power is left out.
        Some((kind, mu)) => {
            let num = T::py(match kind {
                TimeShift::Exponential => mu.exp(),
                TimeShift::Linear => mu,
            });
            sigmas.iter_mut().for_each(|t| *t = num / (num + (one / *t - one)));
        }
        None => {
            // `self.shift * sigmas / (1 + (self.shift - 1) * sigmas)`: `shift - 1` is a Python float
            // subtraction, cast to the array dtype afterwards.
            let (a, b) = (T::py(shift), T::py(shift - 1.0));
            sigmas.iter_mut().for_each(|t| *t = a * *t / (one + b * *t));
        }
    }
    // `if self.config.shift_terminal:`: truthiness, so 0.0 is off (NaN would be on, as in Python).
    if let Some(st) = shift_terminal.filter(|&st| st != 0.0) {
        if let Some(&last) = sigmas.last() {
            // `one_minus_z[-1] / (1 - shift_terminal)`: a numpy scalar of the array dtype over a Python float.
            let scale = (one - last) / T::py(1.0 - st);
            // A last sigma of 1 (one step, with no shift below 1) makes the scale 0 and every sigma 0/0 or
            // ±∞: diffusers returns that NaN schedule without a word; refused here.
            if scale == T::py(0.0) {
                return Err(ModelError::InvalidConfig(format!(
                    "shift_terminal {st}: the shifted schedule ends at sigma 1, so stretching it divides by zero \
                     (diffusers' sigmas would be NaN)"
                )));
            }
            sigmas.iter_mut().for_each(|t| *t = one - ((one - *t) / scale));
        }
    }
    Ok(())
}

/// Step 4 and the float32 conversion of `set_timesteps` (sched l. 363–372): the sigmas as torch float32.
fn convert<T: NpFloat>(sigmas: &[T], conversion: Conversion) -> Result<Vec<f32>> {
    let n = sigmas.len();
    let (Some(&first), Some(&last)) = (sigmas.first(), sigmas.last()) else {
        return Ok(Vec::new());
    };
    // `in_sigmas[-1].item()`, `in_sigmas[0].item()`: Python floats (this class has no config sigma_min/max).
    let (sigma_min, sigma_max) = (last.item(), first.item());
    let converted: Vec<f64> = match conversion {
        Conversion::None => return Ok(sigmas.iter().map(|s| s.to_f32()).collect()),
        Conversion::Karras => {
            // `_convert_to_karras` (sched l. 534–570). A negative end would be raised to 1/7 by Python's
            // float `**`, which returns a complex number there: nothing diffusers can step with. (A NaN goes
            // through, as in Python.)
            if sigma_min < 0.0 || sigma_max < 0.0 {
                return Err(ModelError::InvalidConfig(format!(
                    "use_karras_sigmas needs non-negative end sigmas, got {sigma_max} and {sigma_min}"
                )));
            }
            let rho = 7.0_f64;
            let (min_inv_rho, max_inv_rho) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
            np_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
                .collect()
        }
        Conversion::Exponential => {
            // `_convert_to_exponential` (sched l. 573–604): `math.log` of a non-positive sigma raises
            // `ValueError` in Python (a NaN goes through, as in Python).
            if sigma_min <= 0.0 || sigma_max <= 0.0 {
                return Err(ModelError::InvalidConfig(format!(
                    "use_exponential_sigmas needs positive end sigmas, got {sigma_max} and {sigma_min}"
                )));
            }
            np_linspace(sigma_max.ln(), sigma_min.ln(), n).into_iter().map(f64::exp).collect()
        }
    };
    Ok(converted.into_iter().map(|s| s as f32).collect())
}

/// diffusers' `FlowMatchEulerDiscreteScheduler`: deterministic Euler steps on the flow `dx/dσ = v`.
///
/// The step index is explicit ([`Self::step`] takes it) rather than kept inside, like the crate's other
/// schedulers, whose `step` takes `&self`: a pipeline or cache engine can replay or skip steps without
/// hidden state to keep in sync. In a plain denoising loop it is diffusers' `_step_index`: diffusers starts
/// it at `index_for_timestep(timesteps[0])`, which is 0 whenever the first timestep is not repeated (with a
/// repeated one it is 1, and diffusers' last step then reads past the end of `sigmas`).
#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteSchedulerConfig,
    time_shift: TimeShift,
    conversion: Conversion,
    /// `sigma_min`, `sigma_max` of `__init__`: float32 values held as Python floats.
    sigma_min: f64,
    sigma_max: f64,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    num_inference_steps: Option<usize>,
}

impl FlowMatchEulerDiscreteScheduler {
    /// Builds the scheduler, validating the configuration as diffusers' `__init__` does (sched l. 109–125),
    /// and refusing what is not reproduced: unknown keys and an invalid `time_shift_type` or
    /// `num_train_timesteps` are [`ModelError::InvalidConfig`], more than one of `use_karras_sigmas`,
    /// `use_exponential_sigmas`, `use_beta_sigmas` too (diffusers' `ValueError`); `use_beta_sigmas` and
    /// `stochastic_sampling` are [`ModelError::Unsupported`].
    ///
    /// The timesteps and sigmas are then the training schedule of `__init__` (sched l. 127–144: `N` of
    /// each, no trailing sigma) until [`Self::set_timesteps`] replaces them.
    pub fn new(config: FlowMatchEulerDiscreteSchedulerConfig) -> Result<Self> {
        crate::config_file::refuse_unknown(&format!("{CLASS_NAME} "), &config.extra)?;
        let conversions = [
            ("use_karras_sigmas", config.use_karras_sigmas),
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_beta_sigmas", config.use_beta_sigmas),
        ];
        let set: Vec<&str> = conversions.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
        if set.len() > 1 {
            return Err(ModelError::InvalidConfig(format!(
                "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be used, got {}",
                set.join(" and ")
            )));
        }
        if config.use_beta_sigmas {
            return Err(ModelError::Unsupported(
                "use_beta_sigmas: the beta schedule needs scipy.stats.beta.ppf, which is not reproduced exactly".into(),
            ));
        }
        if config.stochastic_sampling {
            return Err(ModelError::Unsupported(
                "stochastic_sampling: each step would draw noise (randn_tensor), and step takes no noise input".into(),
            ));
        }
        let time_shift = match config.time_shift_type.as_str() {
            "exponential" => TimeShift::Exponential,
            "linear" => TimeShift::Linear,
            other => {
                return Err(ModelError::InvalidConfig(format!(
                    "time_shift_type must be \"exponential\" or \"linear\", got {other:?}"
                )))
            }
        };
        let n = config.num_train_timesteps;
        // sigmas[-1] of an empty schedule raises in diffusers; above 2^24 the float32 timesteps stop being
        // the integers np.linspace(1, N, N, dtype=float32) makes exactly.
        if n == 0 || n > 1 << 24 {
            return Err(ModelError::InvalidConfig(format!("num_train_timesteps must be in 1..=2^24, got {n}")));
        }
        let conversion = if config.use_karras_sigmas {
            Conversion::Karras
        } else if config.use_exponential_sigmas {
            Conversion::Exponential
        } else {
            Conversion::None
        };
        // `__init__` (sched l. 127–135) in torch float32: `timesteps / N` with the int scalar as float32, and
        // the static shift with `shift`, `shift - 1` (Python floats) cast to float32.
        let nf = n as f32;
        let sigmas: Vec<f32> = (0..n)
            .map(|i| {
                let s = (n - i) as f32 / nf;
                if config.use_dynamic_shifting {
                    s
                } else {
                    let (a, b) = (config.shift as f32, (config.shift - 1.0) as f32);
                    a * s / (1.0 + b * s)
                }
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * nf).collect();
        let (sigma_max, sigma_min) = (sigmas[0] as f64, sigmas[n - 1] as f64);
        Ok(Self { config, time_shift, conversion, sigma_min, sigma_max, timesteps, sigmas, num_inference_steps: None })
    }

    /// Reads a `scheduler_config.json` ([`FlowMatchEulerDiscreteSchedulerConfig::from_json_file`]) and builds
    /// the scheduler ([`Self::new`]).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        Self::new(FlowMatchEulerDiscreteSchedulerConfig::from_json_file(path)?)
    }

    /// The configuration.
    pub fn config(&self) -> &FlowMatchEulerDiscreteSchedulerConfig {
        &self.config
    }

    /// `init_noise_sigma`: 1 (`SchedulerMixin`'s default; pipelines start from unscaled noise).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// `sigma_min` of the training schedule (its last sigma), as diffusers holds it: a float32 value as a
    /// Python float.
    pub fn sigma_min(&self) -> f64 {
        self.sigma_min
    }

    /// `sigma_max` of the training schedule (its first sigma), as diffusers holds it.
    pub fn sigma_max(&self) -> f64 {
        self.sigma_max
    }

    /// `set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)` (sched l. 283–391): the float32 timesteps
    /// of `num_inference_steps` steps. `sigmas`, when given, must have `num_inference_steps` values (diffusers'
    /// `ValueError`) and are shifted as given; otherwise the schedule spans the training one. `mu` is required
    /// with `use_dynamic_shifting` and ignored without, as in diffusers. Afterwards [`Self::sigmas`] has
    /// `num_inference_steps + 1` values, the last 0 (1 with `invert_sigmas`).
    ///
    /// Errors ([`ModelError::InvalidConfig`], nothing changed): no `mu` with dynamic shifting, zero steps, a
    /// `sigmas` of another length, end sigmas that the karras (negative) or exponential (non-positive)
    /// conversion cannot take (a complex number or `ValueError` in Python), and a `shift_terminal` stretch of
    /// a schedule ending at sigma 1, such as a single unshifted step (diffusers divides by zero and returns
    /// NaN sigmas).
    pub fn set_timesteps(
        &mut self,
        num_inference_steps: usize,
        sigmas: Option<&[f64]>,
        mu: Option<f64>,
    ) -> Result<&[f32]> {
        let dynamic = if self.config.use_dynamic_shifting {
            let mu = mu.ok_or_else(|| {
                ModelError::InvalidConfig("`mu` must be passed when `use_dynamic_shifting` is true".into())
            })?;
            Some((self.time_shift, mu))
        } else {
            None
        };
        if num_inference_steps == 0 {
            return Err(ModelError::InvalidConfig("num_inference_steps must be at least 1".into()));
        }
        let n_train = self.config.num_train_timesteps;
        let (shift, terminal) = (self.config.shift, self.config.shift_terminal);
        let sigmas: Vec<f32> = match sigmas {
            Some(given) => {
                if given.len() != num_inference_steps {
                    return Err(ModelError::InvalidConfig(format!(
                        "sigmas has {} values, num_inference_steps is {num_inference_steps}",
                        given.len()
                    )));
                }
                // `np.array(sigmas).astype(np.float32)`: the whole numpy part runs in float32.
                let mut s: Vec<f32> = given.iter().map(|&v| v as f32).collect();
                shift_and_stretch(&mut s, dynamic, shift, terminal)?;
                convert(&s, self.conversion)?
            }
            None => {
                // `np.linspace(sigma_max * N, sigma_min * N, n) / N`: Python float products, float64 arrays.
                let nf = n_train as f64;
                let mut s: Vec<f64> = np_linspace(self.sigma_max * nf, self.sigma_min * nf, num_inference_steps)
                    .into_iter()
                    .map(|t| t / nf)
                    .collect();
                shift_and_stretch(&mut s, dynamic, shift, terminal)?;
                convert(&s, self.conversion)?
            }
        };
        // `sigmas * num_train_timesteps` on a float32 tensor: the int scalar as float32, one rounding.
        let nf = n_train as f32;
        let (sigmas, terminal_sigma) = if self.config.invert_sigmas {
            (sigmas.into_iter().map(|s| 1.0 - s).collect::<Vec<f32>>(), 1.0)
        } else {
            (sigmas, 0.0)
        };
        self.timesteps = sigmas.iter().map(|s| s * nf).collect();
        self.sigmas = sigmas;
        self.sigmas.push(terminal_sigma);
        self.num_inference_steps = Some(num_inference_steps);
        Ok(&self.timesteps)
    }

    /// FluxPipeline's call (flux l. 823–841): [`flux_sigmas`]`(num_inference_steps)` and
    /// [`FlowMatchEulerDiscreteSchedulerConfig::flux_mu`]`(image_seq_len)` passed to [`Self::set_timesteps`].
    /// `image_seq_len` is the packed latents' token count, `latents.shape[1]`.
    pub fn set_timesteps_flux(&mut self, num_inference_steps: usize, image_seq_len: usize) -> Result<&[f32]> {
        let mu = self.config.flux_mu(image_seq_len)?;
        let sigmas = flux_sigmas(num_inference_steps);
        self.set_timesteps(num_inference_steps, Some(&sigmas), Some(mu))
    }

    /// The timesteps: diffusers' float32 `scheduler.timesteps`, value for value (the training schedule's
    /// `N` before [`Self::set_timesteps`]).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The sigmas: diffusers' float32 `scheduler.sigmas`, trailing value included.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The step count of the last [`Self::set_timesteps`] (`None` before).
    pub fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    /// One Euler step from `sigmas[step_index]` to `sigmas[step_index + 1]` (sched l. 507–520):
    /// `sample + (σ_next − σ)·model_output`, the difference taken in float32 from the float32 sigmas and
    /// multiplied into the float32 model output before the addition, as diffusers' two torch operations
    /// do. Any rank: FLUX steps packed `[B, L, C]` latents, Wan `[B, C, F, H, W]`.
    ///
    /// diffusers upcasts `sample` to float32 and casts the result back to `model_output`'s dtype; with the
    /// float32 tensors of this crate both are the identity.
    ///
    /// # Errors
    /// [`ModelError::Shape`] when `step_index + 1` is not an index of [`Self::sigmas`] (diffusers raises
    /// `IndexError`), e.g. before [`Self::set_timesteps`] or past the last step.
    pub fn step<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        step_index: usize,
        sample: Tensor<B, D>,
    ) -> Result<Tensor<B, D>> {
        if step_index + 1 >= self.sigmas.len() {
            return Err(ModelError::Shape(format!(
                "step_index {step_index} out of range: {} sigmas",
                self.sigmas.len()
            )));
        }
        let dt = self.sigmas[step_index + 1] - self.sigmas[step_index];
        Ok(sample + model_output.mul_scalar(dt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy's formula, not torch's: `np.linspace(1.0, 1/7, 7)` in Python 3.11 / numpy 2.4.6 prints these
    /// (`[repr(float(x)) for x in np.linspace(1.0, 1/7, 7)]`); torch's `linspace`, counting from both ends,
    /// differs at indices 3, 4 and 5.
    #[test]
    fn np_linspace_is_numpys() {
        let expected = [
            1.0,
            0.8571428571428571,
            0.7142857142857142,
            0.5714285714285714,
            0.4285714285714285,
            0.2857142857142856,
            0.14285714285714285,
        ];
        assert_eq!(flux_sigmas(7), expected);
        assert_eq!(np_linspace(2.0, 3.0, 1), [2.0]);
        assert!(np_linspace(0.0, 1.0, 0).is_empty());
    }
}
