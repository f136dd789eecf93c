//! The SEA indicator on host data: diffusers' `_apply_sea_filter` (`hooks/sea_cache.py` l. 362–389 at v0.42.1)
//! per sample and channel, and `resolve_gate`'s relative-L1 distance between two indicators (l. 210–227).
//!
//! The per-axis gains are computed in float32 operation by operation as torch does (`fftfreq` as `k · f32(1/n)`,
//! `pow` by 2 or 3 as repeated products, `1.0 / x` as a reciprocal, Python scalars rounded to float32, the gain
//! product left to right); the 3-D FFTs run in float64 with rustfft (burn 0.21's FFT is power-of-two only) and
//! the result is rounded to float32, so it differs from torch's float32 pocketfft by torch's own rounding only.

use std::sync::Arc;

use burn::tensor::DType;
use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};

/// The float32 gain of one axis of `n` bins (`axis_gain`, l. 377–379).
fn axis_gain(n: usize, signal_scale: f64, noise_scale: f64, power_exp: f64) -> Vec<f32> {
    // torch.fft.fftfreq: arange, the upper half rewritten as -(n/2)..-1, times f32(1 / n).
    let step = (1.0 / n as f64) as f32;
    let p = power_exp as f32;
    let ss = signal_scale as f32;
    let ss2 = (signal_scale * signal_scale) as f32;
    let ns2 = (noise_scale * noise_scale) as f32;
    let eps = 1e-16f64 as f32;
    (0..n)
        .map(|k| {
            let k = if k < n.div_ceil(2) { k as i64 } else { k as i64 - n as i64 };
            let f = (k as f32 * step).abs();
            // torch's pow kernel: exponents 2 and 3 as products, 0.5 / -1 / -2 special-cased, else powf.
            let pw = if p == 2.0 {
                f * f
            } else if p == 3.0 {
                f * f * f
            } else if p == 0.5 {
                f.sqrt()
            } else if p == 1.0 {
                f
            } else {
                f.powf(p)
            };
            let clean = 1.0 / (pw + eps);
            (clean * ss) / (((clean * ss2) + ns2) + eps)
        })
        .collect()
}

/// The density-normalised gain of a `[T, H, W]` volume (l. 372–388), row-major, float32.
pub fn sea_gain(dims: [usize; 3], sigma: f64, power_exp: f64) -> Vec<f32> {
    let sigma = sigma.clamp(1e-6, 1.0 - 1e-6);
    let (ss, ns) = (1.0 - sigma, sigma);
    let [t, h, w] = dims;
    let (gt, gh, gw) = (axis_gain(t, ss, ns, power_exp), axis_gain(h, ss, ns, power_exp), axis_gain(w, ss, ns, power_exp));
    let mut gain = Vec::with_capacity(t * h * w);
    for a in &gt {
        for b in &gh {
            let ab = a * b;
            gain.extend(gw.iter().map(|c| ab * c));
        }
    }
    // gain.mean(): a float32 sum divided by the count.
    let sum = gain.iter().map(|&g| g as f64).sum::<f64>() as f32;
    let mean = sum / gain.len() as f32;
    if mean.is_finite() && mean > 0.0 {
        gain.iter_mut().for_each(|g| *g /= mean);
    }
    gain
}

/// Forward and inverse 3-D FFTs of one `[T, H, W]` volume size, planned once.
pub struct Fft3 {
    dims: [usize; 3],
    forward: [Arc<dyn Fft<f64>>; 3],
    inverse: [Arc<dyn Fft<f64>>; 3],
}

impl Fft3 {
    /// Plans the transforms of `[T, H, W]` volumes.
    pub fn new(dims: [usize; 3]) -> Self {
        let mut p = FftPlanner::new();
        let forward = dims.map(|n| p.plan_fft_forward(n));
        let inverse = dims.map(|n| p.plan_fft_inverse(n));
        Self { dims, forward, inverse }
    }

    /// The volume size.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// One unnormalised 3-D transform of `buf` (row-major `[T, H, W]`) in place.
    fn transform(&self, buf: &mut [Complex64], plans: &[Arc<dyn Fft<f64>>; 3]) {
        let [t, h, w] = self.dims;
        let mut scratch = Vec::new();
        // Axis W (plan 2) is contiguous; H (plan 1) has stride W within each of T planes; T (plan 0) stride H·W.
        for (axis, outer, n, inner) in [(2, t * h, w, 1), (1, t, h, w), (0, 1, t, h * w)] {
            if n == 1 {
                continue;
            }
            if inner == 1 {
                plans[axis].process(buf);
                continue;
            }
            scratch.resize(n * inner, Complex64::default());
            for block in buf.chunks_exact_mut(n * inner).take(outer) {
                // [n][inner] → [inner][n], transform each row, back.
                for i in 0..n {
                    for j in 0..inner {
                        scratch[j * n + i] = block[i * inner + j];
                    }
                }
                plans[axis].process(&mut scratch);
                for i in 0..n {
                    for j in 0..inner {
                        block[i * inner + j] = scratch[j * n + i];
                    }
                }
            }
        }
    }

    /// `ifftn(fftn(x) · gain).real` over the volume (`1 / N` normalisation, as torch's default), float32.
    pub fn filter(&self, volume: &[f32], gain: &[f32]) -> Vec<f32> {
        let mut buf: Vec<Complex64> = volume.iter().map(|&v| Complex64::new(v as f64, 0.0)).collect();
        self.transform(&mut buf, &self.forward);
        buf.iter_mut().zip(gain).for_each(|(c, &g)| *c *= g as f64);
        self.transform(&mut buf, &self.inverse);
        let scale = 1.0 / buf.len() as f64;
        buf.iter().map(|c| (c.re * scale) as f32).collect()
    }
}

/// Rounds `v` to the latents' float type, as `.to(hidden_states_dtype)` (l. 389) does.
fn round_to(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// `_apply_sea_filter(latent.movedim(0, -1), sigma, power_exp)` of one raw latent `[C, T, H, W]` (row-major),
/// in the same `[C, T, H, W]` order: each channel's volume filtered alone; the result rounded to `dtype`.
/// Channels run on up to `threads` threads.
pub fn sea_filter(latent: &[f32], dims: [usize; 4], sigma: f64, power_exp: f64, dtype: DType, threads: usize) -> Vec<f32> {
    let [c, t, h, w] = dims;
    assert_eq!(latent.len(), c * t * h * w, "latent of {dims:?}");
    let fft = Fft3::new([t, h, w]);
    let gain = sea_gain([t, h, w], sigma, power_exp);
    let volume = t * h * w;
    let mut out = vec![0.0f32; latent.len()];
    if volume == 0 {
        return out;
    }
    let per_thread = c.div_ceil(threads.clamp(1, c.max(1)));
    let run = |src: &[f32], dst: &mut [f32]| {
        for (s, d) in src.chunks_exact(volume).zip(dst.chunks_exact_mut(volume)) {
            for (o, v) in d.iter_mut().zip(fft.filter(s, &gain)) {
                *o = round_to(dtype, v);
            }
        }
    };
    if per_thread >= c {
        run(latent, &mut out);
    } else {
        std::thread::scope(|scope| {
            for (src, dst) in latent.chunks(per_thread * volume).zip(out.chunks_mut(per_thread * volume)) {
                scope.spawn(|| run(src, dst));
            }
        });
    }
    out
}

/// The SEA indicator of one denoiser call: one filtered latent per sample (diffusers' list over
/// `hidden_states.unbind(0)`), in the latents' float type.
#[derive(Debug, Clone, PartialEq)]
pub struct Indicator {
    /// Per sample, `[C, T, H, W]` row-major.
    pub samples: Vec<Vec<f32>>,
    /// `[C, T, H, W]`.
    pub dims: [usize; 4],
    /// The latents' float type (diffusers compares indicators of one dtype only).
    pub dtype: DType,
}

impl Indicator {
    /// Bytes held on the host.
    pub fn bytes(&self) -> usize {
        self.samples.iter().map(|s| s.len() * 4).sum()
    }
}

/// `resolve_gate`'s distance (l. 210–227): the mean over samples of
/// `mean|cur − prev| / (mean|prev| + 1e-16)`, each mean a float32 value (a float32 sum over the count) and the
/// quotient float32, accumulated in float64 as Python floats. Infinite when the indicators cannot be compared
/// (another sample count, shape or dtype, or none at all).
pub fn distance(cur: &Indicator, prev: &Indicator) -> f64 {
    if cur.samples.len() != prev.samples.len() || cur.samples.is_empty() || cur.dims != prev.dims || cur.dtype != prev.dtype {
        return f64::INFINITY;
    }
    let mut total = 0.0f64;
    for (a, b) in cur.samples.iter().zip(&prev.samples) {
        let n = a.len() as f32;
        let num = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() as f32 / n;
        let den = b.iter().map(|y| y.abs() as f64).sum::<f64>() as f32 / n + 1e-16f64 as f32;
        total += (num / den) as f64;
    }
    total / cur.samples.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tools/reference/seacache_filter_values.py`: the raw latent `((i·37) mod 101) / 50 − 1`, `(C, T, H, W) =
    /// (2, 3, 4, 5)`.
    fn latent() -> Vec<f32> {
        (0..120).map(|i| (((i * 37) % 101) as f64 / 50.0 - 1.0) as f32).collect()
    }

    /// diffusers 0.42.1 `_apply_sea_filter(raw.movedim(0, -1), sigma=0.7, power_exp=3.0).movedim(-1, 0)`.
    const SIGMA_07_POWER_3: [f32; 120] = [
        -9.620121121e-01, -2.471241504e-01, 3.277831972e-01, -6.192682981e-01, -9.763306379e-02, 4.318102598e-01,
        -6.841555834e-01, 2.155766636e-01, 7.894728780e-01, -3.507865965e-01, 3.833656013e-01, -8.744233251e-01,
        -3.145363927e-01, 5.868456960e-01, -5.014623404e-01, 1.581802033e-02, 5.248160958e-01, -4.238855839e-01,
        1.500106007e-01, 8.581849337e-01, -3.656034172e-01, 1.654066741e-01, -7.655903101e-01, -6.726247817e-02,
        5.138190985e-01, -5.699731112e-01, 1.229029223e-01, 6.706003547e-01, -4.795053601e-01, 2.478453517e-01,
        9.797742963e-01, -2.384226024e-01, 4.405236542e-01, -7.095820308e-01, -1.134800687e-01, 6.389985681e-01,
        -5.165593028e-01, 3.113835864e-02, 7.294660211e-01, -1.681469381e-01, 3.464439884e-02, -8.808035851e-01,
        -1.814646572e-01, 3.924315274e-01, -5.474346876e-01, 1.630487591e-01, 5.230665207e-01, -6.286892891e-01,
        2.726927698e-01, 8.960275650e-01, -2.449417561e-01, 3.403309584e-01, -8.237841725e-01, -2.498880327e-01,
        6.736997962e-01, -6.573692560e-01, -7.388177514e-02, 6.227959991e-01, -3.242553473e-01, 7.560937107e-02,
        9.984419346e-01, -1.265515089e-01, 2.259199619e-01, -7.211316824e-01, 2.293960378e-02, 6.101812720e-01,
        -7.224870920e-01, 1.510463059e-01, 7.249424458e-01, -3.891181052e-01, 1.780238897e-01, -9.469696283e-01,
        -3.710283041e-01, 5.303538442e-01, -5.740087032e-01, 1.941890270e-01, 4.864844382e-01, -4.884157479e-01,
        8.548047394e-02, 8.198532462e-01, -2.979258299e-01, 1.172047704e-01, -8.278016448e-01, -1.294737458e-01,
        4.656170905e-01, -6.145346761e-01, 6.469283253e-02, 6.107404232e-01, -5.393654108e-01, 1.896352917e-01,
        9.110454917e-01, -2.987874746e-01, 3.811698556e-01, -7.689358592e-01, -1.738449335e-01, 5.944368243e-01,
        -5.747693181e-01, -2.872190624e-02, 6.696059704e-01, -2.263569683e-01, 1.023218855e-01, -9.290055037e-01,
        -2.436759472e-01, 3.302202523e-01, -5.956365466e-01, 1.184870750e-01, 4.648565650e-01, -6.885494590e-01,
        2.128326893e-01, 8.378174305e-01, -3.136703670e-01, 2.799660861e-01, -8.831380010e-01, -3.092418313e-01,
        6.133348942e-01, -7.019308805e-01, -1.320917159e-01, 5.629360676e-01, -3.841155469e-01, 1.739934459e-02,
    ];

    /// The same with `sigma=0.2, power_exp=2.5` (torch's general `pow` path).
    const SIGMA_02_POWER_25: [f32; 120] = [
        -9.992339611e-01, -2.593394816e-01, 4.762248695e-01, -7.961581349e-01, -6.093174964e-02, 6.749205589e-01,
        -6.021957994e-01, 1.424410939e-01, 8.780053854e-01, -3.991246819e-01, 3.411500454e-01, -9.386711121e-01,
        -2.031129748e-01, 5.415237546e-01, -7.355789542e-01, 2.683560306e-04, 7.354874015e-01, -5.368956327e-01,
        1.986687183e-01, 9.385583997e-01, -3.404093981e-01, 3.948217034e-01, -8.775529861e-01, -1.384374350e-01,
        5.979009867e-01, -6.779888272e-01, 6.189346686e-02, 7.974448800e-01, -4.804591835e-01, 2.602882981e-01,
        9.999743700e-01, -2.798254490e-01, 4.601289332e-01, -8.177751303e-01, -8.143056929e-02, 6.596942544e-01,
        -6.174433827e-01, 1.181082502e-01, 8.572236896e-01, -4.143639803e-01, 3.134846985e-01, -9.581112266e-01,
        -2.189956456e-01, 5.165687799e-01, -7.550402284e-01, -1.560634095e-02, 7.160486579e-01, -5.618555546e-01,
        1.827811003e-01, 9.191408157e-01, -3.584668636e-01, 3.795768619e-01, -8.983332515e-01, -1.627691090e-01,
        5.826478601e-01, -6.987853646e-01, 3.755382076e-02, 7.766693234e-01, -4.957135320e-01, 2.359615117e-01,
        9.803907275e-01, -2.958742976e-01, 4.350077510e-01, -8.373753428e-01, -9.746651351e-02, 6.400841475e-01,
        -6.425606608e-01, 1.020632684e-01, 8.376275897e-01, -4.394895732e-01, 2.972115576e-01, -9.790534377e-01,
        -2.434869856e-01, 5.011497736e-01, -7.759613395e-01, -3.456816077e-02, 6.951223612e-01, -5.772734880e-01,
        1.582909375e-01, 8.981933594e-01, -3.780888319e-01, 3.544512987e-01, -9.179297090e-01, -1.788140088e-01,
        5.575305820e-01, -7.183570862e-01, 2.151791379e-02, 7.570694089e-01, -5.208347440e-01, 2.199128270e-01,
        9.595941305e-01, -3.202010989e-01, 4.197532833e-01, -8.581507206e-01, -1.218061820e-01, 6.193259954e-01,
        -6.578189135e-01, 7.773265988e-02, 8.168482780e-01, -4.547395408e-01, 2.758052349e-01, -9.984816909e-01,
        -2.593721449e-01, 4.761920571e-01, -7.954106331e-01, -5.597451702e-02, 6.756730676e-01, -6.022311449e-01,
        1.424055845e-01, 8.787650466e-01, -3.988471031e-01, 3.392013907e-01, -9.387089014e-01, -2.031446546e-01,
        5.422724485e-01, -7.391536236e-01, -2.821699949e-03, 7.362939119e-01, -5.360891223e-01, 1.955860704e-01,
    ];

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn sea_filter_equals_diffusers() {
        for (sigma, power, expected) in [(0.7, 3.0, &SIGMA_07_POWER_3), (0.2, 2.5, &SIGMA_02_POWER_25)] {
            for threads in [1, 2] {
                let out = sea_filter(&latent(), [2, 3, 4, 5], sigma, power, DType::F32, threads);
                let err = max_abs_diff(&out, expected);
                assert!(err < 1e-6, "sigma {sigma}, power {power}, {threads} threads: max |diff| {err}");
            }
        }
    }

    #[test]
    fn gain_is_density_normalised_and_a_flat_volume_passes_through() {
        let g = sea_gain([3, 4, 5], 0.5, 3.0);
        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
        assert!((mean - 1.0).abs() < 1e-6, "{mean}");
        // A constant volume has its DC bin only: out = DC gain · value.
        let out = sea_filter(&[2.0; 60], [1, 3, 4, 5], 0.5, 3.0, DType::F32, 1);
        assert!(out.iter().all(|&v| (v - 2.0 * g[0]).abs() < 1e-5), "{} vs {}", out[0], 2.0 * g[0]);
        // A bf16 latent's indicator is rounded to bf16.
        let out = sea_filter(&latent()[..60], [1, 3, 4, 5], 0.7, 3.0, DType::BF16, 1);
        assert!(out.iter().all(|&v| half::bf16::from_f32(v).to_f32() == v));
    }

    #[test]
    fn distance_is_the_mean_relative_l1_over_samples() {
        let ind = |samples: Vec<Vec<f32>>| Indicator { dims: [1, 1, 1, samples[0].len()], samples, dtype: DType::F32 };
        let prev = ind(vec![vec![1.0, -1.0], vec![2.0, 2.0]]);
        let cur = ind(vec![vec![1.5, -1.0], vec![2.0, 1.0]]);
        // Sample 0: 0.25 / 1; sample 1: 0.5 / 2.
        assert!((distance(&cur, &prev) - 0.25).abs() < 1e-7);
        assert_eq!(distance(&ind(vec![vec![1.0, 2.0]]), &prev), f64::INFINITY);
        let bf = Indicator { dtype: DType::BF16, ..cur.clone() };
        assert_eq!(distance(&bf, &prev), f64::INFINITY);
    }
}
