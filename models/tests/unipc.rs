//! `UniPCMultistepScheduler` against diffusers 0.42.1 (torch 2.15 CPU, numpy 2.4.6): schedules compared bit
//! for bit, full stepping loops compared step by step (relative L2 error), and the refusals.
//!
//! Every constant below was printed by `.venv/bin/python tools/reference/unipc_values.py` (its docstring
//! defines the inputs and checksums; [`model_output`], [`initial_sample`], [`checksum_f32`] and
//! [`checksum_i64`] here are the same definitions). Floats are the shortest decimals that read back as
//! diffusers' float32 values, so the schedule comparisons are exact.
//!
//! The loops agree to ~1e-7, not bit for bit: torch's float32 `log` is not correctly rounded (see the module
//! documentation of `models::scheduler_unipc`). The tolerance is 1e-5 relative L2 per step.

use std::io::Write;

use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use models::scheduler_unipc::{UniPCMultistepScheduler, UniPCMultistepSchedulerConfig, CLASS_NAME};
use models::ModelError;
use reference::*;

type B = NdArray<f32>;
type Config = UniPCMultistepSchedulerConfig;
type S = UniPCMultistepScheduler;

/// The latent shape of the loops: rank 5 like Wan's `[B, C, F, H, W]`, 12 values.
const SHAPE: [usize; 5] = [1, 2, 3, 1, 2];
const NUMEL: usize = 12;
/// Steps of the loops.
const N_STEPS: usize = 6;
/// Relative L2 tolerance of a loop step.
const TOLERANCE: f64 = 1e-5;

fn wan(shift: f64) -> Config {
    Config { flow_shift: shift, ..Config::wan() }
}

/// Stable Diffusion's betas with epsilon prediction (the script's `CLASSIC`).
fn classic() -> Config {
    Config {
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: "scaled_linear".into(),
        prediction_type: "epsilon".into(),
        ..Config::default()
    }
}

/// `sin(0.7·(i + 1) + 0.37·j)` over the flat index `j`, float64 rounded to float32.
fn model_output(i: usize) -> Tensor<B, 5> {
    let v: Vec<f32> = (0..NUMEL).map(|j| (0.7 * (i + 1) as f64 + 0.37 * j as f64).sin() as f32).collect();
    Tensor::from_data(TensorData::new(v, SHAPE), &Default::default())
}

/// `cos(0.23·j + 0.1)` over the flat index `j`, float64 rounded to float32.
fn initial_sample() -> Tensor<B, 5> {
    let v: Vec<f32> = (0..NUMEL).map(|j| (0.23 * j as f64 + 0.1).cos() as f32).collect();
    Tensor::from_data(TensorData::new(v, SHAPE), &Default::default())
}

/// `Σ (i + 1)·bits(x_i)` over the float32 bit patterns, wrapping modulo 2⁶⁴.
fn checksum_f32(a: &[f32]) -> u64 {
    a.iter().enumerate().fold(0u64, |s, (i, x)| s.wrapping_add((i as u64 + 1).wrapping_mul(x.to_bits() as u64)))
}

/// `Σ (i + 1)·t_i`, wrapping modulo 2⁶⁴.
fn checksum_i64(a: &[i64]) -> u64 {
    a.iter().enumerate().fold(0u64, |s, (i, &t)| s.wrapping_add((i as u64 + 1).wrapping_mul(t as u64)))
}

fn bits(a: &[f32]) -> Vec<u32> {
    a.iter().map(|x| x.to_bits()).collect()
}

/// How sigmas are compared.
#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    /// Bit for bit: the flow path, all numpy float64.
    Exact,
    /// Within one float32 ulp: the classic path, whose training sigmas go through torch's float32 `sqrt`,
    /// which on the reference machine's build (MKL, AMD EPYC) is one ulp off the correctly rounded square
    /// root for ~17 % of them.
    Ulp,
    /// Within this relative error: `rescale_betas_zero_snr`, which takes `sqrt(ᾱ)` in torch float32, shifts
    /// it, squares it and divides consecutive values, turning those one-ulp differences into up to ~7e-6.
    Rel(f64),
}

/// Distance in float32 ulps between two finite values of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

fn assert_sigmas(got: &[f32], want: &[f32], cmp: Cmp, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    match cmp {
        Cmp::Exact => assert_eq!(bits(got), bits(want), "{what}: {got:?} vs {want:?}"),
        Cmp::Ulp => {
            let worst = got.iter().zip(want).map(|(&g, &w)| ulps(g, w)).max().unwrap_or(0);
            assert!(worst <= 1, "{what}: {worst} ulps apart: {got:?} vs {want:?}");
        }
        Cmp::Rel(tol) => {
            for (&g, &w) in got.iter().zip(want) {
                assert!((g as f64 - w as f64).abs() <= tol * (w as f64).abs(), "{what}: {got:?} vs {want:?}");
            }
        }
    }
}

/// `set_timesteps_with(n, None, mu)` on `config`, compared in full (timesteps exactly, sigmas per `cmp`).
fn check(config: Config, n: usize, mu: Option<f64>, timesteps: &[i64], sigmas: &[f32], cmp: Cmp) {
    let mut s = S::new(config).unwrap();
    let t = s.set_timesteps_with(n, None, mu).unwrap().to_vec();
    assert_eq!(t, timesteps, "timesteps, n = {n}");
    assert_sigmas(s.sigmas(), sigmas, cmp, &format!("sigmas, n = {n}"));
    assert_eq!(s.num_inference_steps(), Some(timesteps.len()));
    assert_eq!(s.step_index(), None);
}

/// A long schedule compared by its ends and checksums:
/// `(t_head, t_tail, s_head, s_tail, len, t_sum, s_sum, s_fsum)`.
type Long = ([i64; 3], [i64; 3], [f32; 3], [f32; 3], usize, u64, u64, f64);

/// [`Long`] compared: timesteps exactly, sigmas by their bit checksum ([`Cmp::Exact`]) or by their float64 sum
/// within 2⁻²³ relative, what one ulp per value allows ([`Cmp::Ulp`]).
fn check_long(config: Config, n: usize, long: Long, cmp: Cmp) {
    let (t_head, t_tail, s_head, s_tail, len, t_sum, s_sum, s_fsum) = long;
    let mut s = S::new(config).unwrap();
    let t = s.set_timesteps(n).unwrap().to_vec();
    let sg = s.sigmas().to_vec();
    assert_eq!(t.len(), len, "length");
    assert_eq!(sg.len(), len + 1, "sigmas length");
    assert_eq!(t[..3], t_head);
    assert_eq!(t[len - 3..], t_tail);
    assert_eq!(checksum_i64(&t), t_sum, "timestep checksum");
    assert_sigmas(&sg[..3], &s_head, cmp, "first sigmas");
    assert_sigmas(&sg[len - 2..], &s_tail, cmp, "last sigmas");
    match cmp {
        Cmp::Exact => assert_eq!(checksum_f32(&sg), s_sum, "sigma checksum"),
        _ => assert_fsum(&sg, s_fsum, cmp),
    }
}

/// The float64 sum of non-negative `a` near `want`: within 2⁻²³ relative for [`Cmp::Ulp`] (what one ulp per
/// value allows), within the tolerance for [`Cmp::Rel`], equal for [`Cmp::Exact`].
fn assert_fsum(a: &[f32], want: f64, cmp: Cmp) {
    let sum: f64 = a.iter().map(|&v| v as f64).sum();
    let tol = match cmp {
        Cmp::Exact => 0.0,
        Cmp::Ulp => 2f64.powi(-23),
        Cmp::Rel(tol) => tol,
    };
    assert!((sum - want).abs() <= want * tol, "sigma sum {sum} vs {want}");
}

/// Relative L2 error of `got` against `want`.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Runs diffusers' loop (`sample = step(model_output(i), t_i, sample)` for every timestep) and compares
/// every step's output; returns the worst relative L2 error.
fn run_loop(name: &str, config: Config, timesteps: &[i64], want: &[[f32; NUMEL]]) -> f64 {
    let mut s = S::new(config).unwrap();
    assert_eq!(s.set_timesteps(N_STEPS).unwrap(), timesteps, "{name}: timesteps");
    let mut x = initial_sample();
    let mut worst = 0.0f64;
    for (i, w) in want.iter().enumerate() {
        x = s.step(model_output(i), x).unwrap();
        assert_eq!(s.step_index(), Some(i + 1));
        let got = x.to_data().to_vec::<f32>().unwrap();
        let err = rel_l2(&got, w);
        assert!(err < TOLERANCE, "{name} step {i}: relative L2 error {err:e}\n got {got:?}\nwant {w:?}");
        worst = worst.max(err);
    }
    assert!(s.step(model_output(N_STEPS), x).is_err(), "{name}: a step past the schedule must fail");
    eprintln!("{name}: worst relative L2 error over {} steps: {worst:.3e}", want.len());
    worst
}

// ---------------------------------------------------------------------------------------------------------
// Reference values, pasted from `.venv/bin/python tools/reference/unipc_values.py`.
// ---------------------------------------------------------------------------------------------------------

/// Generated by `tools/reference/unipc_values.py` (diffusers 0.42.1, torch 2.15.0+cu132, numpy 2.4.6).
#[rustfmt::skip]
mod reference {
    // ---- Wan's configuration: set_timesteps(n)
    pub const WAN3_N1_T: [i64; 1] = [999];
    pub const WAN3_N1_S: [f32; 2] = [0.999999, 0.0];
    pub const WAN3_N2_T: [i64; 2] = [999, 750];
    pub const WAN3_N2_S: [f32; 3] = [0.999999, 0.7503748, 0.0];
    pub const WAN3_N5_T: [i64; 5] = [999, 923, 818, 667, 429];
    pub const WAN3_N5_S: [f32; 6] = [0.999999, 0.9231657, 0.81842965, 0.66722184, 0.42979452, 0.0];
    pub const WAN3_N10_T: [i64; 10] = [999, 964, 923, 875, 818, 750, 667, 563, 429, 251];
    pub const WAN3_N10_S: [f32; 11] = [0.999999, 0.964324, 0.9231657, 0.8751562, 0.81842965, 0.7503748, 0.66722184, 0.5633196, 0.42979452, 0.25187218, 0.0];
    // WAN3_N50: 50 timesteps; first and last three, and checksums
    pub const WAN3_N50_T_HEAD: [i64; 3] = [999, 993, 986];
    pub const WAN3_N50_T_TAIL: [i64; 3] = [162, 113, 60];
    pub const WAN3_N50_S_HEAD: [f32; 3] = [0.999999, 0.9932501, 0.9863154];
    pub const WAN3_N50_S_TAIL: [f32; 3] = [0.11357587, 0.06040539, 0.0];
    pub const WAN3_N50_T_LEN: usize = 50;
    pub const WAN3_N50_T_SUM: u64 = 694804;
    pub const WAN3_N50_S_SUM: u64 = 1345671323934;
    pub const WAN3_N50_S_FSUM: f64 = 34.32988279312849;
    pub const WAN5_N1_T: [i64; 1] = [999];
    pub const WAN5_N1_S: [f32; 2] = [0.999999, 0.0];
    pub const WAN5_N2_T: [i64; 2] = [999, 833];
    pub const WAN5_N2_S: [f32; 3] = [0.999999, 0.83361095, 0.0];
    pub const WAN5_N5_T: [i64; 5] = [999, 952, 882, 769, 556];
    pub const WAN5_N5_S: [f32; 6] = [0.999999, 0.95243764, 0.88252586, 0.7696741, 0.5567879, 0.0];
    pub const WAN5_N10_T: [i64; 10] = [999, 978, 952, 921, 882, 833, 769, 682, 556, 359];
    pub const WAN5_N10_S: [f32; 11] = [0.999999, 0.9782845, 0.95243764, 0.92115647, 0.88252586, 0.83361095, 0.7696741, 0.6825404, 0.5567879, 0.35943288, 0.0];
    // WAN5_N50: 50 timesteps; first and last three, and checksums
    pub const WAN5_N50_T_HEAD: [i64; 3] = [999, 995, 991];
    pub const WAN5_N50_T_TAIL: [i64; 3] = [244, 175, 96];
    pub const WAN5_N50_S_HEAD: [f32; 3] = [0.999999, 0.9959391, 0.9917441];
    pub const WAN5_N50_S_TAIL: [f32; 3] = [0.1759692, 0.09677836, 0.0];
    pub const WAN5_N50_T_LEN: usize = 50;
    pub const WAN5_N50_T_SUM: u64 = 810152;
    pub const WAN5_N50_S_SUM: u64 = 1348870508509;
    pub const WAN5_N50_S_FSUM: f64 = 37.87938602268696;

    // ---- flow variants
    pub const FLOW_SIGMA_MIN_N5_T: [i64; 5] = [999, 923, 818, 667, 429];
    pub const FLOW_SIGMA_MIN_N5_S: [f32; 6] = [0.999999, 0.9231657, 0.81842965, 0.66722184, 0.42979452, 0.42979452];
    pub const FLOW_DYN_EXP_N5_T: [i64; 5] = [999, 899, 769, 597, 358];
    pub const FLOW_DYN_EXP_N5_S: [f32; 6] = [0.999999, 0.89912546, 0.7697911, 0.5979749, 0.3586331, 0.0];
    pub const FLOW_DYN_LIN_N5_T: [i64; 5] = [999, 666, 428, 250, 111];
    pub const FLOW_DYN_LIN_N5_S: [f32; 6] = [0.999999, 0.6669445, 0.4289797, 0.25046894, 0.11160516, 0.0];
    pub const FLOW_TERMINAL_N5_T: [i64; 5] = [999, 878, 713, 474, 99];
    pub const FLOW_TERMINAL_N5_S: [f32; 6] = [0.999999, 0.87872636, 0.7134133, 0.47475016, 0.1, 0.0];
    // FLOW_N1000: 1000 timesteps; first and last three, and checksums
    pub const FLOW_N1000_T_HEAD: [i64; 3] = [999, 999, 999];
    pub const FLOW_N1000_T_TAIL: [i64; 3] = [11, 8, 5];
    pub const FLOW_N1000_S_HEAD: [f32; 3] = [0.999999, 0.99966675, 0.9993331];
    pub const FLOW_N1000_S_TAIL: [f32; 3] = [0.008940393, 0.0059731193, 0.0];
    pub const FLOW_N1000_T_LEN: usize = 1000;
    pub const FLOW_N1000_T_SUM: u64 = 265016491;
    pub const FLOW_N1000_S_SUM: u64 = 527772000156844;
    pub const FLOW_N1000_S_FSUM: f64 = 677.2142831981182;

    // ---- classic path (scaled_linear betas, epsilon)
    // CLASSIC: the 1000 training sigmas of __init__; first, last, float64 sum
    pub const CLASSIC_TRAIN: (f32, f32, f64) = (0.029167535, 14.614647, 3021.310210963711);
    // LINEAR: the 1000 training sigmas of __init__; first, last, float64 sum
    pub const LINEAR_TRAIN: (f32, f32, f64) = (0.01000133, 157.40727, 17817.056278614327);
    // COSINE: the 1000 training sigmas of __init__; first, last, float64 sum
    pub const COSINE_TRAIN: (f32, f32, f64) = (0.006427109, 20291.303, 24809.200698444154);
    // ZSNR: the 1000 training sigmas of __init__; first, last, float64 sum
    pub const ZSNR_TRAIN: (f32, f32, f64) = (0.029167535, 4096.0, 17967.594880366698);
    pub const CLASSIC_LINSPACE_N6_T: [i64; 6] = [999, 832, 666, 500, 333, 166];
    pub const CLASSIC_LINSPACE_N6_S: [f32; 7] = [14.614647, 5.934704, 2.9183085, 1.6182797, 0.9323584, 0.49240968, 0.0];
    pub const CLASSIC_LEADING_N6_T: [i64; 6] = [853, 711, 569, 427, 285, 143];
    pub const CLASSIC_LEADING_N6_S: [f32; 7] = [6.5706515, 3.4854565, 2.0473127, 1.2720635, 0.79006153, 0.44030958, 0.0];
    pub const CLASSIC_TRAILING_N6_T: [i64; 6] = [999, 832, 666, 499, 332, 166];
    pub const CLASSIC_TRAILING_N6_S: [f32; 7] = [14.614647, 5.934704, 2.9183085, 1.612887, 0.9292149, 0.49240968, 0.0];
    pub const CLASSIC_SIGMA_MIN_N5_T: [i64; 5] = [999, 799, 599, 400, 200];
    pub const CLASSIC_SIGMA_MIN_N5_S: [f32; 6] = [14.614647, 5.087765, 2.276464, 1.1643916, 0.57166636, 0.029167535];
    pub const ZSNR_TRAILING_N5_T: [i64; 5] = [999, 799, 599, 399, 199];
    pub const ZSNR_TRAILING_N5_S: [f32; 6] = [4096.0, 7.4107075, 2.6048563, 1.2413754, 0.5947518, 0.0];
    // CLASSIC_TRAILING_N61: 62 timesteps; first and last three, and checksums
    pub const CLASSIC_TRAILING_N61_T_HEAD: [i64; 3] = [999, 983, 966];
    pub const CLASSIC_TRAILING_N61_T_TAIL: [i64; 3] = [32, 15, -1];
    pub const CLASSIC_TRAILING_N61_S_HEAD: [f32; 3] = [14.614647, 13.276786, 12.017748];
    pub const CLASSIC_TRAILING_N61_S_TAIL: [f32; 3] = [0.11949212, 0.029167535, 0.0];
    pub const CLASSIC_TRAILING_N61_T_LEN: usize = 62;
    pub const CLASSIC_TRAILING_N61_T_SUM: u64 = 649058;
    pub const CLASSIC_TRAILING_N61_S_SUM: u64 = 2073992851024;
    pub const CLASSIC_TRAILING_N61_S_FSUM: f64 = 191.28492696024477;
    // CLASSIC_N50: 50 timesteps; first and last three, and checksums
    pub const CLASSIC_N50_T_HEAD: [i64; 3] = [999, 979, 959];
    pub const CLASSIC_N50_T_TAIL: [i64; 3] = [60, 40, 20];
    pub const CLASSIC_N50_S_HEAD: [f32; 3] = [14.614647, 12.966325, 11.542775];
    pub const CLASSIC_N50_S_TAIL: [f32; 3] = [0.1990589, 0.13799095, 0.0];
    pub const CLASSIC_N50_T_LEN: usize = 50;
    pub const CLASSIC_N50_T_SUM: u64 = 441675;
    pub const CLASSIC_N50_S_SUM: u64 = 1355933680669;
    pub const CLASSIC_N50_S_FSUM: f64 = 158.20656563341618;

    // ---- full loops, 6 steps, model_output(i) and initial_sample() as in the docstring
    pub const LOOP_WAN_T: [i64; 6] = [999, 937, 857, 750, 600, 376];
    pub const LOOP_WAN: [[f32; 12]; 6] = [
        [0.95478654, 0.89127994, 0.7853597, 0.6431942, 0.472168, 0.2805069, 0.076950826, -0.12952363, -0.32993966, -0.5155361, -0.6779865, -0.80964077],
        [0.86544806, 0.8095247, 0.7222527, 0.60727686, 0.46830145, 0.30921447, 0.1343471, -0.051206987, -0.24130243, -0.42857495, -0.60447115, -0.75952125],
        [0.7825353, 0.7704045, 0.7322198, 0.66498226, 0.56593496, 0.43356192, 0.2685786, 0.07474096, -0.14068449, -0.36690515, -0.5900963, -0.7943868],
        [0.7894735, 0.8412321, 0.8573507, 0.82748044, 0.74380726, 0.60273397, 0.40615386, 0.16209924, -0.11536671, -0.40705454, -0.69027877, -0.9410432],
        [0.9903776, 1.1010474, 1.1409125, 1.09641, 0.9617061, 0.74011064, 0.4444149, 0.09606632, -0.27675638, -0.6419576, -0.96690226, -1.2219473],
        [1.3184426, 1.4736426, 1.5076089, 1.4075769, 1.1752286, 0.82708937, 0.39307776, -0.08663847, -0.5661006, -0.9987798, -1.3429083, -1.5662465],
    ];
    pub const LOOP_WAN5_T: [i64; 6] = [999, 961, 909, 833, 714, 501];
    pub const LOOP_WAN5: [[f32; 12]; 6] = [
        [0.9702558, 0.9123437, 0.8091671, 0.666523, 0.49186075, 0.2938983, 0.082228385, -0.1330742, -0.3418378, -0.53417146, -0.70083684, -0.83361346],
        [0.9119171, 0.85897857, 0.76799834, 0.6431226, 0.48939592, 0.31270254, 0.11975668, -0.081901126, -0.283946, -0.47739634, -0.6528626, -0.80093324],
        [0.853559, 0.8313927, 0.7749184, 0.6836119, 0.5579745, 0.40008852, 0.2141228, 0.006673136, -0.21315171, -0.43396372, -0.64267, -0.82536024],
        [0.85870147, 0.8867362, 0.87297255, 0.81110543, 0.69765186, 0.533045, 0.32236335, 0.07554794, -0.19296455, -0.46519646, -0.7210953, -0.9403639],
        [1.0456936, 1.1294078, 1.138479, 1.0635116, 0.9027958, 0.6631615, 0.35984176, 0.015315682, -0.34275532, -0.68427217, -0.9798052, -1.2036927],
        [1.4827863, 1.6258296, 1.6270416, 1.4780903, 1.1872792, 0.77904636, 0.29144347, -0.22810838, -0.72825885, -1.159679, -1.4807713, -1.6624147],
    ];
    pub const LOOP_ORDER3_T: [i64; 6] = [999, 937, 857, 750, 600, 376];
    pub const LOOP_ORDER3: [[f32; 12]; 6] = [
        [0.95478654, 0.89127994, 0.7853597, 0.6431942, 0.472168, 0.2805069, 0.076950826, -0.12952363, -0.32993966, -0.5155361, -0.6779865, -0.80964077],
        [0.86544806, 0.8095247, 0.7222527, 0.60727686, 0.46830145, 0.30921447, 0.1343471, -0.051206987, -0.24130243, -0.42857495, -0.60447115, -0.75952125],
        [0.78378886, 0.7739607, 0.73759735, 0.67145324, 0.57262367, 0.43956298, 0.2730798, 0.07713315, -0.14072512, -0.36937314, -0.59465754, -0.80042404],
        [0.8216383, 0.8717727, 0.8821336, 0.8431514, 0.74824506, 0.5953383, 0.38792545, 0.13550538, -0.14672679, -0.43893635, -0.7183672, -0.9615367],
        [1.0128309, 1.122563, 1.1585784, 1.1078352, 0.96534395, 0.73546904, 0.4321221, 0.07778607, -0.29855, -0.6643149, -0.9867972, -1.2366874],
        [1.3408959, 1.4951582, 1.5252748, 1.419002, 1.1788664, 0.8224478, 0.38078496, -0.10491872, -0.5878942, -1.0211371, -1.3628032, -1.5809866],
    ];
    pub const LOOP_VARIANT_T: [i64; 6] = [999, 937, 857, 750, 600, 376];
    pub const LOOP_VARIANT: [[f32; 12]; 6] = [
        [0.95478654, 0.89127994, 0.7853597, 0.6431942, 0.472168, 0.2805069, 0.076950826, -0.12952363, -0.32993966, -0.5155361, -0.6779865, -0.80964077],
        [0.8745798, 0.81228167, 0.7182619, 0.5970783, 0.45327562, 0.29139495, 0.11614568, -0.067326814, -0.25315893, -0.4345634, -0.60378104, -0.75224596],
        [0.79248273, 0.7734077, 0.7278725, 0.6538728, 0.54956704, 0.41415069, 0.24875142, 0.057181284, -0.1536, -0.37342852, -0.58934456, -0.7864617],
        [0.7992461, 0.84418255, 0.8530798, 0.8165663, 0.727727, 0.58366394, 0.38667515, 0.14484821, -0.12805523, -0.41346326, -0.68954027, -0.9332574],
        [1.0000542, 1.103969, 1.1366836, 1.085603, 0.94578373, 0.7212278, 0.42512748, 0.07898466, -0.2893203, -0.64830333, -0.96617097, -1.214238],
        [0.96336055, 1.0557787, 1.0835191, 1.0346597, 0.9039568, 0.6941782, 0.4165162, 0.08997726, -0.26021165, -0.6050184, -0.91456807, -1.1613015],
    ];
    pub const LOOP_CLASSIC_T: [i64; 6] = [999, 832, 666, 500, 333, 166];
    pub const LOOP_CLASSIC: [[f32; 12]; 6] = [
        [1.4927418, 1.03755, 0.6323122, 0.31199574, 0.091094166, -0.03681436, -0.09628483, -0.12447669, -0.1637443, -0.25347188, -0.42238975, -0.68253225],
        [1.72139, 0.99710166, 0.50927943, 0.28516406, 0.29878524, 0.47744238, 0.71527636, 0.89189917, 0.89333194, 0.6321769, 0.06403701, -0.802273],
        [2.244243, 1.3631839, 0.89993334, 0.8542968, 1.1411471, 1.6067557, 2.0556512, 2.284051, 2.1149757, 1.4298944, 0.19221531, -1.5409496],
        [3.1962423, 2.178302, 1.703579, 1.7488159, 2.1808527, 2.7813382, 3.284708, 3.4238274, 2.9766345, 1.8068933, -0.107002705, -2.6596274],
        [4.313454, 3.150776, 2.5895782, 2.5984812, 3.020457, 3.6022918, 4.0391884, 4.027918, 3.320725, 1.7719803, -0.6293938, -3.7467983],
        [5.237208, 3.999471, 3.366209, 3.3034897, 3.6461117, 4.129116, 4.4351635, 4.2507463, 3.3229618, 1.5083635, -1.1934487, -4.6268167],
    ];
    pub const LOOP_CLASSIC_V_T: [i64; 6] = [999, 832, 666, 499, 332, 166];
    pub const LOOP_CLASSIC_V: [[f32; 12]; 6] = [
        [0.92674387, 0.85508156, 0.7455251, 0.6047745, 0.44008017, 0.2588839, 0.0685924, -0.123522565, -0.31033564, -0.4848374, -0.6401216, -0.76943815],
        [0.70800906, 0.6818061, 0.641575, 0.5845886, 0.50669855, 0.40351853, 0.2718056, 0.11080484, -0.07666974, -0.28361654, -0.49882615, -0.70751435],
        [0.6476706, 0.6894622, 0.7163923, 0.71662325, 0.67823124, 0.59144586, 0.45076004, 0.2565852, 0.016175982, -0.25634867, -0.5409486, -0.8134839],
        [0.60355, 0.7636637, 0.89969796, 0.98496157, 0.9958974, 0.9159009, 0.7383655, 0.46849406, 0.12358651, -0.2682891, -0.6711143, -1.0449009],
        [0.8276494, 1.0440265, 1.1974554, 1.2589872, 1.2084163, 1.0376394, 0.75253934, 0.3730963, -0.06833591, -0.53040797, -0.9674036, -1.3345394],
        [1.1266415, 1.3598392, 1.4815742, 1.46779, 1.3093495, 1.0138495, 0.60532296, 0.12182537, -0.3888067, -0.8745032, -1.2851114, -1.5783615],
    ];
    pub const LOOP_CLASSIC_SAMPLE_T: [i64; 6] = [853, 711, 569, 427, 285, 143];
    pub const LOOP_CLASSIC_SAMPLE: [[f32; 12]; 6] = [
        [1.0508516, 1.0334156, 0.95216113, 0.8101444, 0.61505854, 0.37879914, 0.11661889, -0.15405636, -0.4150349, -0.64884984, -0.84018314, -0.9770784],
        [1.2073655, 1.1576024, 1.0222538, 0.812215, 0.54513735, 0.24360625, -0.06720081, -0.36209902, -0.6184156, -0.8181503, -0.94953305, -1.0078124],
        [1.1821547, 1.0485504, 0.8352289, 0.56456757, 0.26377022, -0.03831759, -0.31448787, -0.5421323, -0.7055243, -0.7971532, -0.81797135, -0.7765621],
        [0.8851763, 0.6725589, 0.417961, 0.15071982, -0.10043001, -0.31085333, -0.46285626, -0.5475131, -0.5652601, -0.5252112, -0.44331717, -0.33965206],
        [0.28195602, 0.03524749, -0.1843492, -0.35044175, -0.4453834, -0.46240658, -0.4062185, -0.29199505, -0.14292747, 0.013322875, 0.14876316, 0.23921824],
        [-0.8715758, -0.9898798, -0.97420824, -0.82668215, -0.56726855, -0.23107779, 0.13638827, 0.4853948, 0.7687054, 0.9479754, 0.99894136, 0.9147053],
    ];
}

// ---------------------------------------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------------------------------------

#[test]
fn wan_schedules_equal_diffusers() {
    check(wan(3.0), 1, None, &WAN3_N1_T, &WAN3_N1_S, Cmp::Exact);
    check(wan(3.0), 2, None, &WAN3_N2_T, &WAN3_N2_S, Cmp::Exact);
    check(wan(3.0), 5, None, &WAN3_N5_T, &WAN3_N5_S, Cmp::Exact);
    check(wan(3.0), 10, None, &WAN3_N10_T, &WAN3_N10_S, Cmp::Exact);
    check(wan(5.0), 1, None, &WAN5_N1_T, &WAN5_N1_S, Cmp::Exact);
    check(wan(5.0), 2, None, &WAN5_N2_T, &WAN5_N2_S, Cmp::Exact);
    check(wan(5.0), 5, None, &WAN5_N5_T, &WAN5_N5_S, Cmp::Exact);
    check(wan(5.0), 10, None, &WAN5_N10_T, &WAN5_N10_S, Cmp::Exact);
    let wan3_n50 = (
        WAN3_N50_T_HEAD,
        WAN3_N50_T_TAIL,
        WAN3_N50_S_HEAD,
        WAN3_N50_S_TAIL,
        WAN3_N50_T_LEN,
        WAN3_N50_T_SUM,
        WAN3_N50_S_SUM,
        WAN3_N50_S_FSUM,
    );
    check_long(wan(3.0), 50, wan3_n50, Cmp::Exact);
    let wan5_n50 = (
        WAN5_N50_T_HEAD,
        WAN5_N50_T_TAIL,
        WAN5_N50_S_HEAD,
        WAN5_N50_S_TAIL,
        WAN5_N50_T_LEN,
        WAN5_N50_T_SUM,
        WAN5_N50_S_SUM,
        WAN5_N50_S_FSUM,
    );
    check_long(wan(5.0), 50, wan5_n50, Cmp::Exact);
}

#[test]
fn flow_variant_schedules_equal_diffusers() {
    let sigma_min = Config { final_sigmas_type: "sigma_min".into(), ..wan(3.0) };
    check(sigma_min, 5, None, &FLOW_SIGMA_MIN_N5_T, &FLOW_SIGMA_MIN_N5_S, Cmp::Exact);
    let dynamic = Config { use_dynamic_shifting: true, ..wan(3.0) };
    check(dynamic.clone(), 5, Some(0.8), &FLOW_DYN_EXP_N5_T, &FLOW_DYN_EXP_N5_S, Cmp::Exact);
    let linear = Config { time_shift_type: "linear".into(), ..dynamic.clone() };
    check(linear, 5, Some(0.5), &FLOW_DYN_LIN_N5_T, &FLOW_DYN_LIN_N5_S, Cmp::Exact);
    let terminal = Config { shift_terminal: Some(0.1), ..wan(3.0) };
    check(terminal, 5, None, &FLOW_TERMINAL_N5_T, &FLOW_TERMINAL_N5_S, Cmp::Exact);
    // Dynamic shifting needs `mu`, as in diffusers.
    let mut s = S::new(dynamic).unwrap();
    assert!(matches!(s.set_timesteps(5), Err(ModelError::InvalidConfig(_))));
    // Given sigmas are the unshifted flow sigmas: the default ones give the default schedule.
    let mut s = S::new(wan(3.0)).unwrap();
    let given = [1.0, 0.8002, 0.6004, 0.4006, 0.2008];
    assert_eq!(s.set_timesteps_with(99, Some(&given), None).unwrap(), WAN3_N5_T);
    assert_eq!(bits(s.sigmas()), bits(&WAN3_N5_S));
}

/// n = 1000 repeats the first timestep (trunc(σ·1000) = 999 three times): diffusers' `_init_step_index`
/// then starts at index 1, and its last pipeline step fails; so does this one.
#[test]
fn repeated_first_timestep_starts_at_index_one() {
    let long = (
        FLOW_N1000_T_HEAD,
        FLOW_N1000_T_TAIL,
        FLOW_N1000_S_HEAD,
        FLOW_N1000_S_TAIL,
        FLOW_N1000_T_LEN,
        FLOW_N1000_T_SUM,
        FLOW_N1000_S_SUM,
        FLOW_N1000_S_FSUM,
    );
    check_long(wan(3.0), 1000, long, Cmp::Exact);
    let mut s = S::new(wan(3.0)).unwrap();
    s.set_timesteps(1000).unwrap();
    let mut x = initial_sample();
    for i in 0..999 {
        x = s.step(model_output(i % 7), x).unwrap();
        assert_eq!(s.step_index(), Some(i + 2));
    }
    let out = x.to_data().to_vec::<f32>().unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    assert!(matches!(s.step(model_output(0), x), Err(ModelError::Shape(_))));
    // set_begin_index overrides it.
    s.set_timesteps(1000).unwrap();
    s.set_begin_index(0);
    s.step(model_output(0), initial_sample()).unwrap();
    assert_eq!(s.step_index(), Some(1));
}

#[test]
fn classic_schedules_equal_diffusers() {
    let train = |config: Config, (first, last, fsum): (f32, f32, f64), cmp: Cmp| {
        let s = S::new(config).unwrap();
        let sg = s.sigmas();
        assert_sigmas(&[sg[0], sg[sg.len() - 1]], &[first, last], cmp, "first and last training sigma");
        assert_fsum(sg, fsum, cmp);
        assert_eq!(s.timesteps().len(), 1000);
        assert_eq!((s.timesteps()[0], s.timesteps()[999]), (999, 0));
    };
    train(classic(), CLASSIC_TRAIN, Cmp::Ulp);
    train(Config::default(), LINEAR_TRAIN, Cmp::Ulp);
    train(Config { beta_schedule: "squaredcos_cap_v2".into(), ..Config::default() }, COSINE_TRAIN, Cmp::Ulp);
    train(Config { rescale_betas_zero_snr: true, ..classic() }, ZSNR_TRAIN, Cmp::Rel(1e-5));

    check(classic(), 6, None, &CLASSIC_LINSPACE_N6_T, &CLASSIC_LINSPACE_N6_S, Cmp::Ulp);
    let leading = Config { timestep_spacing: "leading".into(), steps_offset: 1, ..classic() };
    check(leading, 6, None, &CLASSIC_LEADING_N6_T, &CLASSIC_LEADING_N6_S, Cmp::Ulp);
    let trailing = Config { timestep_spacing: "trailing".into(), ..classic() };
    check(trailing.clone(), 6, None, &CLASSIC_TRAILING_N6_T, &CLASSIC_TRAILING_N6_S, Cmp::Ulp);
    let sigma_min = Config { final_sigmas_type: "sigma_min".into(), ..classic() };
    check(sigma_min, 5, None, &CLASSIC_SIGMA_MIN_N5_T, &CLASSIC_SIGMA_MIN_N5_S, Cmp::Ulp);
    let zsnr = Config { rescale_betas_zero_snr: true, ..trailing.clone() };
    check(zsnr, 5, None, &ZSNR_TRAILING_N5_T, &ZSNR_TRAILING_N5_S, Cmp::Rel(1e-5));
    // numpy's arange makes 62 trailing timesteps for 61 steps, the last -1; diffusers runs all 62.
    let quirk = (
        CLASSIC_TRAILING_N61_T_HEAD,
        CLASSIC_TRAILING_N61_T_TAIL,
        CLASSIC_TRAILING_N61_S_HEAD,
        CLASSIC_TRAILING_N61_S_TAIL,
        CLASSIC_TRAILING_N61_T_LEN,
        CLASSIC_TRAILING_N61_T_SUM,
        CLASSIC_TRAILING_N61_S_SUM,
        CLASSIC_TRAILING_N61_S_FSUM,
    );
    check_long(trailing, 61, quirk, Cmp::Ulp);
    let n50 = (
        CLASSIC_N50_T_HEAD,
        CLASSIC_N50_T_TAIL,
        CLASSIC_N50_S_HEAD,
        CLASSIC_N50_S_TAIL,
        CLASSIC_N50_T_LEN,
        CLASSIC_N50_T_SUM,
        CLASSIC_N50_S_SUM,
        CLASSIC_N50_S_FSUM,
    );
    check_long(classic(), 50, n50, Cmp::Ulp);
}

// ---------------------------------------------------------------------------------------------------------
// Full loops
// ---------------------------------------------------------------------------------------------------------

#[test]
fn loops_equal_diffusers() {
    let mut worst = 0.0f64;
    worst = worst.max(run_loop("wan (shift 3, order 2)", wan(3.0), &LOOP_WAN_T, &LOOP_WAN));
    worst = worst.max(run_loop("wan (shift 5, order 2)", wan(5.0), &LOOP_WAN5_T, &LOOP_WAN5));
    worst = worst.max(run_loop(
        "wan, solver_order 3",
        Config { solver_order: 3, ..wan(3.0) },
        &LOOP_ORDER3_T,
        &LOOP_ORDER3,
    ));
    let variant = Config {
        disable_corrector: vec![0],
        lower_order_final: false,
        final_sigmas_type: "sigma_min".into(),
        ..wan(3.0)
    };
    worst = worst.max(run_loop(
        "wan, disable_corrector [0], no lower_order_final, sigma_min",
        variant,
        &LOOP_VARIANT_T,
        &LOOP_VARIANT,
    ));
    worst = worst.max(run_loop("classic epsilon (scaled_linear)", classic(), &LOOP_CLASSIC_T, &LOOP_CLASSIC));
    let v = Config {
        prediction_type: "v_prediction".into(),
        predict_x0: false,
        solver_type: "bh1".into(),
        solver_order: 3,
        timestep_spacing: "trailing".into(),
        final_sigmas_type: "sigma_min".into(),
        ..classic()
    };
    worst =
        worst.max(run_loop("classic v_prediction, noise updates, bh1, order 3", v, &LOOP_CLASSIC_V_T, &LOOP_CLASSIC_V));
    let sample = Config {
        prediction_type: "sample".into(),
        solver_order: 3,
        timestep_spacing: "leading".into(),
        steps_offset: 1,
        ..classic()
    };
    worst =
        worst.max(run_loop("classic sample, order 3, leading", sample, &LOOP_CLASSIC_SAMPLE_T, &LOOP_CLASSIC_SAMPLE));
    eprintln!("worst relative L2 error over all loops: {worst:.3e}");
}

/// `set_timesteps` resets the history: a second run gives the same outputs as the first.
#[test]
fn set_timesteps_resets_the_history() {
    let mut s = S::new(wan(3.0)).unwrap();
    let run = |s: &mut S| {
        s.set_timesteps(N_STEPS).unwrap();
        let mut x = initial_sample();
        for i in 0..N_STEPS {
            x = s.step(model_output(i), x).unwrap();
        }
        x.to_data().to_vec::<f32>().unwrap()
    };
    let first = run(&mut s);
    assert_eq!(first, run(&mut s));
    assert_eq!(s.step_index(), Some(N_STEPS));
}

// ---------------------------------------------------------------------------------------------------------
// Configuration files and refusals
// ---------------------------------------------------------------------------------------------------------

/// Wan2.1-T2V-1.3B-Diffusers' `scheduler/scheduler_config.json`.
const WAN_JSON: &str = r#"{
  "_class_name": "UniPCMultistepScheduler",
  "_diffusers_version": "0.33.0.dev0",
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "beta_start": 0.0001,
  "disable_corrector": [],
  "dynamic_thresholding_ratio": 0.995,
  "final_sigmas_type": "zero",
  "flow_shift": 3.0,
  "lower_order_final": true,
  "num_train_timesteps": 1000,
  "predict_x0": true,
  "prediction_type": "flow_prediction",
  "rescale_betas_zero_snr": false,
  "sample_max_value": 1.0,
  "solver_order": 2,
  "solver_p": null,
  "solver_type": "bh2",
  "steps_offset": 0,
  "thresholding": false,
  "timestep_spacing": "linspace",
  "trained_betas": null,
  "use_beta_sigmas": false,
  "use_exponential_sigmas": false,
  "use_flow_sigmas": true,
  "use_karras_sigmas": false
}"#;

fn write_json(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn reads_wans_scheduler_config() {
    let f = write_json(WAN_JSON);
    let mut config = Config::from_json_file(f.path()).unwrap();
    assert_eq!(config.extra.len(), 2);
    config.extra.clear();
    assert_eq!(config, Config::wan());
    let mut s = S::from_json_file(f.path()).unwrap();
    assert_eq!(s.set_timesteps(5).unwrap(), WAN3_N5_T);
    assert_eq!(s.init_noise_sigma(), 1.0);

    let other = write_json(&WAN_JSON.replace(CLASS_NAME, "DPMSolverMultistepScheduler"));
    assert!(matches!(S::from_json_file(other.path()), Err(ModelError::Unsupported(_))));
    let unknown = write_json(&WAN_JSON.replace("\"flow_shift\"", "\"shift\": 1.0, \"flow_shift\""));
    assert!(matches!(S::from_json_file(unknown.path()), Err(ModelError::InvalidConfig(_))));
}

#[test]
fn refuses_what_it_does_not_implement() {
    let unsupported = [
        Config { use_karras_sigmas: true, ..wan(3.0) },
        Config { use_exponential_sigmas: true, ..wan(3.0) },
        Config { use_beta_sigmas: true, ..wan(3.0) },
        Config { thresholding: true, ..classic() },
        Config { solver_p: Some(serde_json::json!({"_class_name": "DPMSolverMultistepScheduler"})), ..wan(3.0) },
        Config { solver_order: 4, ..wan(3.0) },
    ];
    for c in unsupported {
        let what = format!("{c:?}");
        assert!(matches!(S::new(c), Err(ModelError::Unsupported(_))), "{what}");
    }
    let invalid = [
        Config { use_karras_sigmas: true, use_exponential_sigmas: true, ..wan(3.0) },
        Config { beta_schedule: "cosine".into(), ..classic() },
        Config { solver_type: "euler".into(), ..wan(3.0) },
        Config { prediction_type: "x0".into(), ..wan(3.0) },
        Config { predict_x0: false, ..wan(3.0) },
        Config { shift_terminal: Some(0.1), ..classic() },
        Config { timestep_spacing: "uniform".into(), ..wan(3.0) },
        Config { final_sigmas_type: "one".into(), ..wan(3.0) },
        Config { solver_order: 0, ..wan(3.0) },
        Config { num_train_timesteps: 0, ..wan(3.0) },
        Config { use_dynamic_shifting: true, time_shift_type: "cubic".into(), ..wan(3.0) },
    ];
    for c in invalid {
        let what = format!("{c:?}");
        assert!(matches!(S::new(c), Err(ModelError::InvalidConfig(_))), "{what}");
    }
    let unknown: Config = serde_json::from_str(r#"{"use_flow_sigmas": true, "flow_shfit": 3.0}"#).unwrap();
    assert!(matches!(S::new(unknown), Err(ModelError::InvalidConfig(_))));
    // `solver_p: null` and diffusers' private keys are accepted; `midpoint` is registered as `bh2`.
    let ok: Config = serde_json::from_str(
        r#"{"_class_name": "UniPCMultistepScheduler", "solver_p": null, "solver_type": "midpoint"}"#,
    )
    .unwrap();
    assert_eq!(S::new(ok).unwrap().config().solver_type, "bh2");
    // `sigmas` need flow sigmas; zero steps are refused.
    let mut s = S::new(classic()).unwrap();
    assert!(matches!(s.set_timesteps_with(3, Some(&[1.0, 0.5, 0.2]), None), Err(ModelError::InvalidConfig(_))));
    assert!(matches!(s.set_timesteps(0), Err(ModelError::InvalidConfig(_))));
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let mut s = S::new(wan(3.0)).unwrap();
    // Before set_timesteps.
    assert!(matches!(s.step(model_output(0), initial_sample()), Err(ModelError::InvalidConfig(_))));
    assert_eq!(s.step_index(), None);
    s.set_timesteps(2).unwrap();
    let x = s.step(model_output(0), initial_sample()).unwrap();
    // Another rank than the history holds.
    let flat: Tensor<B, 1> = Tensor::from_data(TensorData::new(vec![0.5f32; NUMEL], [NUMEL]), &Default::default());
    assert!(matches!(s.step(flat.clone(), flat), Err(ModelError::Shape(_))));
    assert_eq!(s.step_index(), Some(1), "a failed step changes nothing");
    let x = s.step(model_output(1), x).unwrap();
    // Past the schedule, again and again.
    assert!(matches!(s.step(model_output(2), x.clone()), Err(ModelError::Shape(_))));
    assert!(matches!(s.step(model_output(2), x), Err(ModelError::Shape(_))));
    assert_eq!(s.step_index(), Some(2));
    // A begin index past the end.
    s.set_timesteps(2).unwrap();
    s.set_begin_index(5);
    assert!(matches!(s.step(model_output(0), initial_sample()), Err(ModelError::Shape(_))));
}
