//! Least-squares polynomial fit (`np.polyfit` without weights), for TeaCache's rescaling polynomial.

/// The degree-`degree` polynomial minimising `Σ (p(x_i) − y_i)²`, highest power first (`np.polyfit` order).
/// The degree is lowered to `len − 1` when there are fewer points than coefficients; `None` without points
/// or with non-finite values.
///
/// Solved by Householder QR of the Vandermonde matrix, on `x` scaled to `[−1, 1]` (the normal equations of a
/// quartic on `x ∈ [0.001, 0.3]` lose most of float64's digits), then expanded back to powers of `x`.
pub fn fit_polynomial(x: &[f64], y: &[f64], degree: usize) -> Option<Vec<f64>> {
    let n = x.len().min(y.len());
    if n == 0 || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let deg = degree.min(n - 1);
    let (lo, hi) = x[..n].iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let (center, half) = ((hi + lo) / 2.0, ((hi - lo) / 2.0).max(f64::MIN_POSITIVE));
    let m = deg + 1;
    // Columns t^0 .. t^deg, t = (x − center) / half.
    let mut a: Vec<Vec<f64>> = (0..m).map(|j| x[..n].iter().map(|&v| ((v - center) / half).powi(j as i32)).collect()).collect();
    let mut b = y[..n].to_vec();
    for k in 0..m {
        let norm = a[k][k..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return None;
        }
        let alpha = if a[k][k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = a[k][k..].to_vec();
        v[0] -= alpha;
        let vv = v.iter().map(|t| t * t).sum::<f64>();
        if vv == 0.0 {
            continue;
        }
        let reflect = |col: &mut [f64]| {
            let dot = col.iter().zip(&v).map(|(c, w)| c * w).sum::<f64>();
            col.iter_mut().zip(&v).for_each(|(c, w)| *c -= 2.0 * dot / vv * w);
        };
        for col in a.iter_mut().skip(k) {
            reflect(&mut col[k..]);
        }
        reflect(&mut b[k..]);
    }
    // Back substitution: R c = Qᵀ y.
    let mut c = vec![0.0; m];
    for i in (0..m).rev() {
        let s: f64 = (i + 1..m).map(|j| a[j][i] * c[j]).sum();
        if a[i][i] == 0.0 {
            return None;
        }
        c[i] = (b[i] - s) / a[i][i];
    }
    // Σ c_j ((x − center)/half)^j, expanded in powers of x (binomial theorem).
    let mut coeffs = vec![0.0; m];
    for (j, cj) in c.iter().enumerate() {
        let scale = cj / half.powi(j as i32);
        for k in 0..=j {
            coeffs[k] += scale * binomial(j, k) * (-center).powi((j - k) as i32);
        }
    }
    coeffs.reverse();
    Some(coeffs)
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_polynomial_and_fits_a_line_by_hand() {
        // y = 3x⁴ − 2x³ + 0.5x − 0.01 on TeaCache's range of x.
        let x: Vec<f64> = (0..19).map(|i| 0.01 + 0.015 * i as f64).collect();
        let y: Vec<f64> = x.iter().map(|v| 3.0 * v.powi(4) - 2.0 * v.powi(3) + 0.5 * v - 0.01).collect();
        let c = fit_polynomial(&x, &y, 4).unwrap();
        for (got, want) in c.iter().zip([3.0, -2.0, 0.0, 0.5, -0.01]) {
            assert!((got - want).abs() < 1e-8, "{c:?}");
        }
        // Least squares through (0,0), (1,1), (2,1): slope 1/2, intercept 1/6 (normal equations by hand).
        let line = fit_polynomial(&[0.0, 1.0, 2.0], &[0.0, 1.0, 1.0], 1).unwrap();
        assert!((line[0] - 0.5).abs() < 1e-12 && (line[1] - 1.0 / 6.0).abs() < 1e-12, "{line:?}");
        // Two points: the degree drops to 1.
        assert_eq!(fit_polynomial(&[0.0, 1.0], &[1.0, 3.0], 4).unwrap().len(), 2);
        assert!(fit_polynomial(&[], &[], 4).is_none());
    }
}
