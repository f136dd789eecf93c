//! Row kernels on f32 slices: `exp`, softmax, GELU, LayerNorm. Written branch-free so the compiler
//! vectorises them; each public kernel runs an AVX2+FMA build of the same code when the CPU has it
//! (runtime detection), so results do not depend on the compile target beyond float32 rounding.

/// Lanes of the partial sums: the compiler keeps them in one vector register.
const LANES: usize = 8;

/// `exp(x)` to ~2 ulp (Cephes' `expf`: `x = n·ln2 + r`, a polynomial in `r`, `2ⁿ` built in the exponent
/// bits). Below −87.34, where `exp` leaves the normal range, `2ⁿ` becomes 0 (n = −127 is the zero bit
/// pattern), so −inf gives 0 as it must; above 88.37 it saturates at `exp(88.376)` instead of inf, which
/// changes nothing where it is used (GELU divides by `1 + exp`). No branch: the loops stay vectorised.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits
    let x = x.clamp(-88.0, 88.376_26);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let pow2 = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127).max(0) as u32) << 23);
    y * pow2
}

/// Expands to a safe entry point that runs the AVX2+FMA build of `$body` when the CPU has it.
macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

dispatch! {
    /// Replaces `row` by `exp(row − max(row))` and returns the sum of the new values (a softmax numerator
    /// and its denominator). An empty row returns 0.
    pub fn softmax_numerator(row: &mut [f32]) -> f32 {
        let mut m = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                m[i] = if c[i] > m[i] { c[i] } else { m[i] };
            }
        }
        let mut max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for &x in chunks.remainder() {
            max = max.max(x);
        }
        // A row of −inf (fully masked) gives zeros, as burn's NaN-safe softmax.
        let max = max.max(f32::MIN);
        let mut s = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp(c[i] - max);
                s[i] += c[i];
            }
        }
        let mut sum: f32 = s.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        sum
    }
}

dispatch! {
    /// `x ← x / (1 + exp(−2u))`, `u = √(2/π)·(x + 0.044715·x³)`: GELU(tanh), as [`crate::ops::generic::gelu_tanh`].
    pub fn gelu_tanh(x: &mut [f32]) {
        const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
        for v in x.iter_mut() {
            let a = *v;
            let minus_2u = (a * a * a * 0.044715 + a) * -TWO_SQRT_2_OVER_PI;
            *v = a / (exp(minus_2u) + 1.0);
        }
    }
}

dispatch! {
    /// LayerNorm of one row into `out`: `((x − mean)·rstd·w + b)·s1 + shift` with `rstd = 1/√(var + eps)`,
    /// biased variance; `w`, `b`, `s1` (`1 + scale`) and `shift` are optional (empty slice = absent).
    pub fn layer_norm_row(x: &[f32], out: &mut [f32], eps: f32, w: &[f32], b: &[f32], s1: &[f32], shift: &[f32]) {
        let d = x.len();
        let n = d as f32;
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        let mean = (acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()) / n;
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                let t = c[i] - mean;
                acc[i] += t * t;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        let rstd = 1.0 / ((acc.iter().sum::<f32>() + tail) / n + eps).sqrt();
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - mean) * rstd;
        }
        if !w.is_empty() {
            out.iter_mut().zip(w).for_each(|(o, w)| *o *= w);
        }
        if !b.is_empty() {
            out.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
        if !s1.is_empty() {
            out.iter_mut().zip(s1).for_each(|(o, s)| *o *= s);
        }
        if !shift.is_empty() {
            out.iter_mut().zip(shift).for_each(|(o, s)| *o += s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_std() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 * 1e-3 + 1.234e-4;
            let (ours, theirs) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - theirs) / theirs).abs());
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_numerator_matches_the_definition() {
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let want: Vec<f64> = row.iter().map(|&x| ((x - max) as f64).exp()).collect();
        let sum = softmax_numerator(&mut row);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        assert!((sum as f64 - want.iter().sum::<f64>()).abs() < 1e-5);
        let mut masked = [f32::NEG_INFINITY; 3];
        assert_eq!(softmax_numerator(&mut masked), 0.0);
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        let mut x: Vec<f32> = (-400..400).map(|i| i as f32 * 0.025).collect();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
            })
            .collect();
        gelu_tanh(&mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6 * (1.0 + w.abs()), "{g} vs {w}");
        }
        // Far out, exp saturates instead of overflowing: still 0 and x, as torch's inf gives.
        let mut big = [-1e4f32, 1e4];
        gelu_tanh(&mut big);
        assert!(big[0].abs() < 1e-30 && big[1] == 1e4, "{big:?}");
    }

    #[test]
    fn layer_norm_row_matches_the_definition() {
        let x: Vec<f32> = (0..19).map(|i| (i as f32 * 1.7).cos() * 3.0 + 1.0).collect();
        let w: Vec<f32> = (0..19).map(|i| 0.5 + i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..19).map(|i| i as f32 * -0.05).collect();
        let s1 = vec![1.5f32; 19];
        let shift = vec![0.25f32; 19];
        let mut out = vec![0f32; 19];
        layer_norm_row(&x, &mut out, 1e-5, &w, &b, &s1, &shift);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        for j in 0..19 {
            let want = ((x[j] as f64 - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64) * 1.5 + 0.25;
            assert!((out[j] as f64 - want).abs() < 1e-5, "{} vs {want}", out[j]);
        }
    }
}

dispatch! {
    /// RMSNorm of one row into `out`: `x · rstd · w` with `rstd = 1/√(mean(x²) + eps)`; `w` optional (empty).
    pub fn rms_norm_row(x: &[f32], out: &mut [f32], eps: f32, w: &[f32]) {
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += c[i] * c[i];
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        let rstd = 1.0 / ((acc.iter().sum::<f32>() + tail) / x.len() as f32 + eps).sqrt();
        if w.is_empty() {
            out.iter_mut().zip(x).for_each(|(o, v)| *o = v * rstd);
        } else {
            out.iter_mut().zip(x).zip(w).for_each(|((o, v), w)| *o = v * rstd * w);
        }
    }
}

dispatch! {
    /// Rotary embedding of interleaved pairs into `out`: `(x₀·c₀ − x₁·s₀, x₁·c₁ + x₀·s₁)` per pair, `cos` and
    /// `sin` of `x`'s length.
    pub fn rotary_pairs(x: &[f32], out: &mut [f32], cos: &[f32], sin: &[f32]) {
        for (((o, x), c), s) in out.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(cos.chunks_exact(2)).zip(sin.chunks_exact(2)) {
            o[0] = x[0] * c[0] - x[1] * s[0];
            o[1] = x[1] * c[1] + x[0] * s[1];
        }
    }
}
