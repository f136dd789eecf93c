//! `FlowMatchEulerDiscreteScheduler` against diffusers 0.42.1 (numpy 2.4.6, torch 2.15 CPU): timesteps and
//! sigmas compared for exact float32 equality, one to one, and the refusals.
//!
//! The reference numbers were printed by `/work/main/.venv/bin/python` with this prelude:
//!
//! ```python
//! import numpy as np, torch
//! from diffusers import FlowMatchEulerDiscreteScheduler as S
//! from diffusers.pipelines.flux.pipeline_flux import calculate_shift as cs
//! f32 = lambda a: [np.format_float_positional(np.float32(x), unique=True) for x in np.asarray(a, dtype=np.float32)]
//! DEV = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
//! LTX = dict(base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift=1.0, shift_terminal=0.1, use_dynamic_shifting=True)
//! ```
//!
//! and, for each schedule, the one-liner in its comment, which ends in `f32(s.timesteps), f32(s.sigmas)`.
//! `np.format_float_positional(..., unique=True)` prints the shortest decimal that reads back as the same
//! float32, so the literals below are diffusers' float32 values exactly.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use models::scheduler_flow_match::{flux_sigmas, CLASS_NAME};
use models::{calculate_shift, FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerConfig, ModelError};

type B = NdArray<f32>;
type Config = FlowMatchEulerDiscreteSchedulerConfig;

fn dev() -> Config {
    Config::flux_dev()
}

fn ltx() -> Config {
    Config {
        base_image_seq_len: 1024,
        base_shift: Some(0.95),
        max_image_seq_len: 4096,
        max_shift: Some(2.05),
        shift: 1.0,
        shift_terminal: Some(0.1),
        use_dynamic_shifting: true,
        ..Config::default()
    }
}

/// `set_timesteps(n, sigmas=flux_sigmas(n) if flux, mu=mu)` on `config`, compared with diffusers' values.
fn check(config: Config, n: usize, flux: bool, mu: Option<f64>, timesteps: &[f32], sigmas: &[f32]) {
    let mut s = FlowMatchEulerDiscreteScheduler::new(config).unwrap();
    let given = flux.then(|| flux_sigmas(n));
    let t = s.set_timesteps(n, given.as_deref(), mu).unwrap().to_vec();
    assert_eq!(t, timesteps, "timesteps");
    assert_eq!(s.timesteps(), timesteps);
    assert_eq!(s.sigmas(), sigmas, "sigmas");
    assert_eq!(s.num_inference_steps(), Some(n));
}

/// `cs(24), cs(4096), cs(6144, 1024, 4096, 0.95, 2.05), cs(1024)` printed with `repr`.
#[test]
fn calculate_shift_is_fluxpipelines() {
    assert_eq!(calculate_shift(24, 256, 4096, 0.5, 1.15), 0.4607291666666667);
    assert_eq!(calculate_shift(4096, 256, 4096, 0.5, 1.15), 1.15);
    assert_eq!(calculate_shift(6144, 1024, 4096, 0.95, 2.05), 2.783333333333333);
    assert_eq!(calculate_shift(1024, 256, 4096, 0.5, 1.15), 0.63);
    assert_eq!(dev().flux_mu(24).unwrap(), 0.4607291666666667);
}

/// FLUX.1-dev at 24 tokens: `s = S(**DEV); s.set_timesteps(sigmas=np.linspace(1.0, 1/6, 6), mu=cs(24))`.
#[test]
fn dev_dynamic_shift_24_tokens() {
    let mut s = FlowMatchEulerDiscreteScheduler::new(dev()).unwrap();
    let t = s.set_timesteps_flux(6, 24).unwrap().to_vec();
    assert_eq!(t, [1000., 887.96954, 760.21826, 613.1872, 442.15567, 240.72502]);
    assert_eq!(s.sigmas(), [1., 0.88796955, 0.76021826, 0.6131872, 0.44215566, 0.24072503, 0.]);
}

/// FLUX.1-dev at 4096 tokens (1024²), FluxPipeline's default 28 steps:
/// `s = S(**DEV); s.set_timesteps(sigmas=np.linspace(1.0, 1/28, 28), mu=cs(4096))`.
#[test]
fn dev_dynamic_shift_4096_tokens() {
    let timesteps = [
        1000., 988.4086, 976.2225, 963.3944, 949.87256, 935.59894, 920.509, 904.53076, 887.58344, 869.5759, 850.4057,
        829.9564, 808.0955, 784.67163, 759.5109, 732.41284, 703.1447, 671.4348, 636.9645, 599.3567, 558.16284,
        512.8441, 462.7484, 407.07843, 344.84894, 274.82797, 195.45459, 104.7209,
    ];
    let sigmas = [
        1., 0.9884086, 0.97622246, 0.9633944, 0.94987255, 0.9355989, 0.920509, 0.90453076, 0.88758343, 0.8695759,
        0.8504057, 0.8299564, 0.8080955, 0.7846716, 0.75951093, 0.7324128, 0.7031447, 0.6714348, 0.6369645, 0.5993567,
        0.55816287, 0.51284415, 0.4627484, 0.40707842, 0.34484893, 0.274828, 0.1954546, 0.1047209, 0.,
    ];
    let mut s = FlowMatchEulerDiscreteScheduler::new(dev()).unwrap();
    assert_eq!(s.set_timesteps_flux(28, 4096).unwrap(), timesteps);
    assert_eq!(s.sigmas(), sigmas);
    // The same through the general call.
    check(dev(), 28, true, Some(1.15), &timesteps, &sigmas);
}

/// FLUX.1-schnell (static shift 1, `mu` passed and ignored):
/// `s = S(shift=1.0); s.set_timesteps(sigmas=np.linspace(1.0, 1/4, 4), mu=cs(4096))`.
#[test]
fn schnell_static() {
    let mut s = FlowMatchEulerDiscreteScheduler::new(Config::flux_schnell()).unwrap();
    assert_eq!(s.set_timesteps_flux(4, 4096).unwrap(), [1000., 750., 500., 250.]);
    assert_eq!(s.sigmas(), [1., 0.75, 0.5, 0.25, 0.]);
    // Without dynamic shifting `mu` may be left out.
    assert_eq!(s.set_timesteps(4, Some(&flux_sigmas(4)), None).unwrap(), [1000., 750., 500., 250.]);
}

/// Static shift 3 (SD3), default schedule in float64: `s = S(shift=3.0); s.set_timesteps(10)`.
#[test]
fn shift3_static_default_schedule() {
    check(
        Config { shift: 3.0, ..Config::default() },
        10,
        false,
        None,
        &[1000., 960.12933, 913.349, 857.6923, 790.3683, 707.2785, 602.1506, 464.87604, 278.0488, 8.928572],
        &[
            1.,
            0.9601293,
            0.913349,
            0.8576923,
            0.79036826,
            0.7072785,
            0.60215056,
            0.46487603,
            0.27804878,
            0.008928572,
            0.,
        ],
    );
}

/// A shift in (1, 2), where `float32(shift - 1)` (diffusers: a Python subtraction, then the cast) is not
/// `float32(shift) - 1`: `s = S(shift=1.3); s.set_timesteps(5)` (float64, after `__init__`'s float32
/// `sigma_min`, `repr(s.sigma_min)`) and `s = S(shift=1.3); s.set_timesteps(sigmas=np.linspace(1.0, 1/5, 5))`.
#[test]
fn shift_between_one_and_two() {
    let config = Config { shift: 1.3, ..Config::default() };
    assert_eq!(FlowMatchEulerDiscreteScheduler::new(config.clone()).unwrap().sigma_min(), 0.0012996100122109056);
    check(
        config.clone(),
        5,
        false,
        None,
        &[1000., 796.1998, 565.856, 303.42175, 1.6888345],
        &[1., 0.7961998, 0.56585604, 0.30342177, 0.0016888345, 0.],
    );
    check(
        config,
        5,
        true,
        None,
        &[1000., 838.70966, 661.01697, 464.2857, 245.28302],
        &[1., 0.83870965, 0.66101694, 0.4642857, 0.24528302, 0.],
    );
}

/// The training schedule `__init__` leaves: `s = S(shift=3.0); f32(s.timesteps[[0,1,2,500,998,999]]),
/// f32(s.sigmas[[0,1,2,500,998,999]]), repr(s.sigma_min), repr(s.sigma_max), len(s.timesteps)`.
#[test]
fn init_schedule() {
    let s = FlowMatchEulerDiscreteScheduler::new(Config { shift: 3.0, ..Config::default() }).unwrap();
    let at = |v: &[f32]| [0, 1, 2, 500, 998, 999].map(|i| v[i]);
    assert_eq!(s.timesteps().len(), 1000);
    assert_eq!(s.sigmas().len(), 1000);
    assert_eq!(at(s.timesteps()), [1000., 999.6664, 999.3324, 750., 5.9760957, 2.994012]);
    assert_eq!(at(s.sigmas()), [1., 0.9996664, 0.9993324, 0.75, 0.005976096, 0.002994012]);
    assert_eq!(s.sigma_min(), 0.002994012087583542);
    assert_eq!(s.sigma_max(), 1.0);
    assert_eq!(s.num_inference_steps(), None);
}

/// `shift_terminal` (LTX-Video's configuration), both dtype paths: the float64 default schedule
/// `s = S(**LTX); s.set_timesteps(8, mu=cs(6144, 1024, 4096, 0.95, 2.05))` ends exactly at 0.1, the float32
/// path `s = S(**LTX); s.set_timesteps(sigmas=np.linspace(1.0, 1/8, 8), mu=cs(6144, 1024, 4096, 0.95, 2.05))`
/// one float32 ulp above.
#[test]
fn shift_terminal_both_dtypes() {
    let mu = calculate_shift(6144, 1024, 4096, 0.95, 2.05);
    check(
        ltx(),
        8,
        false,
        Some(mu),
        &[1000., 990.68195, 977.9562, 959.53503, 930.493, 877.9238, 753.77454, 100.],
        &[1., 0.99068195, 0.9779562, 0.95953506, 0.930493, 0.87792385, 0.7537745, 0.1, 0.],
    );
    check(
        ltx(),
        8,
        true,
        Some(mu),
        &[1000., 973.91327, 939.8331, 893.4217, 826.5072, 721.65106, 533.8148, 100.00002],
        &[1., 0.97391325, 0.9398331, 0.8934217, 0.8265072, 0.7216511, 0.53381485, 0.100000024, 0.],
    );
}

/// `invert_sigmas` (Mochi): `s = S(shift=3.0, invert_sigmas=True); s.set_timesteps(6)`.
#[test]
fn invert_sigmas() {
    check(
        Config { shift: 3.0, invert_sigmas: true, ..Config::default() },
        6,
        false,
        None,
        &[0., 76.65747, 181.07664, 331.6733, 567.7749, 991.0714],
        &[0., 0.076657474, 0.18107665, 0.33167332, 0.5677749, 0.9910714, 1.],
    );
}

/// Karras sigmas: `s = S(shift=3.0, use_karras_sigmas=True); s.set_timesteps(8)` and
/// `s = S(**DEV, use_karras_sigmas=True); s.set_timesteps(sigmas=np.linspace(1.0, 1/8, 8), mu=cs(1024))`.
#[test]
fn karras_sigmas() {
    check(
        Config { shift: 3.0, use_karras_sigmas: true, ..Config::default() },
        8,
        false,
        None,
        &[1000., 601.46124, 347.62814, 191.76906, 100.09985, 48.88274, 21.995356, 8.928572],
        &[1., 0.60146123, 0.34762815, 0.19176906, 0.100099854, 0.04888274, 0.021995356, 0.008928572, 0.],
    );
    check(
        Config { use_karras_sigmas: true, ..dev() },
        8,
        true,
        Some(0.63),
        &[1000., 817.164, 663.764, 535.7398, 429.49216, 341.84247, 269.99466, 211.49956],
        &[1., 0.817164, 0.663764, 0.5357398, 0.42949215, 0.34184247, 0.26999465, 0.21149956, 0.],
    );
}

/// Exponential sigmas: `s = S(**DEV, use_exponential_sigmas=True); s.set_timesteps(sigmas=np.linspace(1.0,
/// 1/8, 8), mu=cs(1024))` and `s = S(shift=5.0, use_exponential_sigmas=True); s.set_timesteps(8)`.
#[test]
fn exponential_sigmas() {
    check(
        Config { use_exponential_sigmas: true, ..dev() },
        8,
        true,
        Some(0.63),
        &[1000., 800.9689, 641.55115, 513.8625, 411.58786, 329.66907, 264.05466, 211.49956],
        &[1., 0.8009689, 0.64155114, 0.5138625, 0.41158786, 0.32966906, 0.26405466, 0.21149956, 0.],
    );
    check(
        Config { shift: 5.0, use_exponential_sigmas: true, ..Config::default() },
        8,
        false,
        None,
        &[1000., 588.3867, 346.19894, 203.69887, 119.853714, 70.52033, 41.49323, 24.414066],
        &[1., 0.5883867, 0.34619895, 0.20369887, 0.11985371, 0.070520334, 0.04149323, 0.024414066, 0.],
    );
}

/// `time_shift_type="linear"`: `s = S(**DEV, time_shift_type="linear"); s.set_timesteps(8, mu=cs(1024))` and
/// `...; s.set_timesteps(sigmas=np.linspace(1.0, 1/8, 8), mu=cs(1024))`.
#[test]
fn linear_time_shift() {
    let linear = || Config { time_shift_type: "linear".into(), ..dev() };
    check(
        linear(),
        8,
        false,
        Some(0.63),
        &[1000., 790.98804, 611.98303, 456.95602, 321.39145, 201.8408, 95.62478, 0.6302332],
        &[1., 0.790988, 0.61198306, 0.45695603, 0.32139146, 0.2018408, 0.09562478, 0.0006302332, 0.],
    );
    check(
        linear(),
        8,
        true,
        Some(0.63),
        &[1000., 815.15704, 653.9792, 512.1951, 386.50308, 274.31058, 173.55371, 82.5688],
        &[1., 0.81515706, 0.6539792, 0.5121951, 0.38650307, 0.2743106, 0.1735537, 0.0825688, 0.],
    );
}

/// The Euler step over FLUX.1-dev's 28 steps at 4096 tokens, on a `[1, 6, 4]` sample (and the same values as
/// `[1, 2, 3, 2, 2]`):
/// ```python
/// s = S(**DEV); s.set_timesteps(sigmas=np.linspace(1.0, 1/28, 28), mu=cs(4096))
/// x = torch.arange(24, dtype=torch.float32).reshape(1, 6, 4) * 0.37 - 3.1
/// v = torch.arange(24, dtype=torch.float32).reshape(1, 6, 4) * -0.53 + 1.7
/// for i, t in enumerate(s.timesteps):
///     x = s.step(v, t, x).prev_sample
///     if i == 0: print(f32(x.flatten()))
/// print(f32(x.flatten()))
/// ```
#[test]
fn euler_steps_match_diffusers() {
    let after_first = [
        -3.1197052,
        -2.743562,
        -2.3674183,
        -1.991275,
        -1.6151315,
        -1.238988,
        -0.86284465,
        -0.4867011,
        -0.11055778,
        0.26558554,
        0.6417291,
        1.0178727,
        1.3940159,
        1.7701592,
        2.1463032,
        2.5224464,
        2.8985896,
        3.274733,
        3.6508763,
        4.02702,
        4.4031634,
        4.779307,
        5.1554503,
        5.531594,
    ];
    let last = [
        -4.8,
        -3.9,
        -3.0000002,
        -2.1,
        -1.2000003,
        -0.30000013,
        0.5999999,
        1.5,
        2.3999999,
        3.2999992,
        4.2000003,
        5.1000004,
        6.0000005,
        6.899999,
        7.7999997,
        8.700001,
        9.599999,
        10.5,
        11.400001,
        12.299999,
        13.2,
        14.100001,
        15.,
        15.900001,
    ];
    let mut s = FlowMatchEulerDiscreteScheduler::new(dev()).unwrap();
    let n = s.set_timesteps_flux(28, 4096).unwrap().len();
    // torch's `arange * scalar + scalar`: the Python float scalars rounded to float32, two float32 operations.
    let x: Vec<f32> = (0..24).map(|k| k as f32 * 0.37_f64 as f32 - 3.1_f64 as f32).collect();
    let v: Vec<f32> = (0..24).map(|k| k as f32 * -0.53_f64 as f32 + 1.7_f64 as f32).collect();
    let dev = Default::default();

    let v3 = Tensor::<B, 3>::from_data(TensorData::new(v.clone(), [1, 6, 4]), &dev);
    let mut x3 = Tensor::<B, 3>::from_data(TensorData::new(x.clone(), [1, 6, 4]), &dev);
    for i in 0..n {
        x3 = s.step(v3.clone(), i, x3).unwrap();
        if i == 0 {
            assert_eq!(x3.to_data().to_vec::<f32>().unwrap(), after_first);
        }
    }
    assert_eq!(x3.to_data().to_vec::<f32>().unwrap(), last);

    let v5 = Tensor::<B, 5>::from_data(TensorData::new(v, [1, 2, 3, 2, 2]), &dev);
    let mut x5 = Tensor::<B, 5>::from_data(TensorData::new(x, [1, 2, 3, 2, 2]), &dev);
    for i in 0..n {
        x5 = s.step(v5.clone(), i, x5).unwrap();
    }
    assert_eq!(x5.dims(), [1, 2, 3, 2, 2]);
    assert_eq!(x5.to_data().to_vec::<f32>().unwrap(), last);
}

#[test]
fn a_step_past_the_schedule_is_an_error() {
    let mut s = FlowMatchEulerDiscreteScheduler::new(Config::flux_schnell()).unwrap();
    s.set_timesteps_flux(4, 4096).unwrap();
    let t = Tensor::<B, 1>::zeros([2], &Default::default());
    s.step(t.clone(), 3, t.clone()).unwrap();
    let e = s.step(t.clone(), 4, t).unwrap_err();
    assert!(matches!(&e, ModelError::Shape(m) if m.contains("out of range")), "{e}");
}

fn json_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// FLUX.1-dev's published `scheduler/scheduler_config.json`, diffusers' own keys included.
const DEV_JSON: &str = r#"{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "_diffusers_version": "0.30.0.dev0",
  "base_image_seq_len": 256,
  "base_shift": 0.5,
  "max_image_seq_len": 4096,
  "max_shift": 1.15,
  "num_train_timesteps": 1000,
  "shift": 3.0,
  "use_dynamic_shifting": true
}"#;

#[test]
fn reads_fluxs_scheduler_config() {
    let (_dir, path) = json_file(DEV_JSON);
    let config = Config::from_json_file(&path).unwrap();
    assert_eq!(config.extra.get("_class_name").and_then(|v| v.as_str()), Some(CLASS_NAME));
    assert_eq!(Config { extra: Default::default(), ..config }, dev());
    let mut s = FlowMatchEulerDiscreteScheduler::from_json_file(&path).unwrap();
    assert_eq!(s.set_timesteps_flux(6, 24).unwrap(), [1000., 887.96954, 760.21826, 613.1872, 442.15567, 240.72502]);
    // An integer `shift` and a null `shift_terminal` / `base_shift` read as diffusers reads them.
    let (_dir, path) = json_file(r#"{"shift": 3, "shift_terminal": null, "base_shift": null}"#);
    let config = Config::from_json_file(&path).unwrap();
    assert_eq!((config.shift, config.shift_terminal, config.base_shift), (3.0, None, None));
    assert!(matches!(config.flux_mu(4096), Err(ModelError::InvalidConfig(m)) if m.contains("base_shift")));
}

#[test]
fn another_class_is_refused() {
    let (_dir, path) = json_file(&DEV_JSON.replace(CLASS_NAME, "FlowMatchHeunDiscreteScheduler"));
    let err = Config::from_json_file(&path).unwrap_err();
    assert!(matches!(&err, ModelError::Unsupported(m) if m.contains("FlowMatchHeunDiscreteScheduler")), "{err}");
    assert!(matches!(FlowMatchEulerDiscreteScheduler::from_json_file(&path), Err(ModelError::Unsupported(_))));
}

/// What is not implemented, or what diffusers refuses, is a typed error naming the field.
#[test]
fn unimplemented_options_are_refused() {
    let unsupported = |config: Config, field: &str| match FlowMatchEulerDiscreteScheduler::new(config) {
        Err(ModelError::Unsupported(m)) => assert!(m.contains(field), "{m}"),
        other => panic!("{field}: expected Unsupported, got {other:?}"),
    };
    let invalid = |config: Config, field: &str| match FlowMatchEulerDiscreteScheduler::new(config) {
        Err(ModelError::InvalidConfig(m)) => assert!(m.contains(field), "{m}"),
        other => panic!("{field}: expected InvalidConfig, got {other:?}"),
    };
    unsupported(Config { use_beta_sigmas: true, ..dev() }, "use_beta_sigmas");
    unsupported(Config { stochastic_sampling: true, ..dev() }, "stochastic_sampling");
    invalid(Config { use_karras_sigmas: true, use_exponential_sigmas: true, ..dev() }, "use_exponential_sigmas");
    invalid(Config { use_karras_sigmas: true, use_beta_sigmas: true, ..dev() }, "use_beta_sigmas");
    invalid(Config { time_shift_type: "cosine".into(), ..dev() }, "time_shift_type");
    invalid(Config { num_train_timesteps: 0, ..dev() }, "num_train_timesteps");
    let with_unknown: Config = serde_json::from_str(r#"{"_class_name": "x", "use_flow_sigmas": true}"#).unwrap();
    invalid(with_unknown, "use_flow_sigmas");
}

#[test]
fn set_timesteps_errors() {
    let mut s = FlowMatchEulerDiscreteScheduler::new(dev()).unwrap();
    let before = s.timesteps().to_vec();
    let err = s.set_timesteps(28, Some(&flux_sigmas(28)), None).unwrap_err();
    assert!(matches!(&err, ModelError::InvalidConfig(m) if m.contains("mu")), "{err}");
    assert!(matches!(s.set_timesteps(28, Some(&flux_sigmas(27)), Some(1.15)), Err(ModelError::InvalidConfig(_))));
    assert!(matches!(s.set_timesteps(0, None, Some(1.15)), Err(ModelError::InvalidConfig(_))));
    assert_eq!(s.timesteps(), before, "a refused call changes nothing");
    let mut e = FlowMatchEulerDiscreteScheduler::new(Config { use_exponential_sigmas: true, ..dev() }).unwrap();
    assert!(matches!(e.set_timesteps(2, Some(&[1.0, 0.0]), Some(1.0)), Err(ModelError::InvalidConfig(_))));
    // One unshifted step ends at sigma 1: diffusers' stretch divides 0 by 0 (NaN sigmas); refused.
    let mut t =
        FlowMatchEulerDiscreteScheduler::new(Config { shift_terminal: Some(0.1), ..Config::flux_schnell() }).unwrap();
    let err = t.set_timesteps(1, None, None).unwrap_err();
    assert!(matches!(&err, ModelError::InvalidConfig(m) if m.contains("shift_terminal")), "{err}");
    // `shift_terminal: 0.0` is off, as Python's truthiness test makes it.
    let mut off =
        FlowMatchEulerDiscreteScheduler::new(Config { shift_terminal: Some(0.0), ..Config::flux_schnell() }).unwrap();
    assert_eq!(off.set_timesteps_flux(4, 4096).unwrap(), [1000., 750., 500., 250.]);
}
