//! The frequency split of FasterCache's CFG-cache: per `[H, W]` plane, a 2-D FFT (rustfft: burn 0.21's FFT
//! is power-of-two only) and a circular low-pass of radius `min(H, W) / 5` around the centre of the
//! `fftshift`ed spectrum. The mask is applied in unshifted coordinates, which equals diffusers'
//! shift–mask–unshift.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// 2-D FFTs of one plane size, planned once.
pub struct Fft2 {
    h: usize,
    w: usize,
    rows: Arc<dyn Fft<f32>>,
    cols: Arc<dyn Fft<f32>>,
    irows: Arc<dyn Fft<f32>>,
    icols: Arc<dyn Fft<f32>>,
    /// Low-frequency mask in unshifted coordinates, `h * w`.
    low: Vec<bool>,
}

impl Fft2 {
    /// Plans FFTs for `h × w` planes.
    pub fn new(h: usize, w: usize) -> Self {
        let mut p = FftPlanner::new();
        let radius = (h.min(w) / 5) as i64;
        let (cy, cx) = ((h / 2) as i64, (w / 2) as i64);
        // Unshifted bin k sits at shifted position (k + n/2) mod n.
        let low = (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                let sy = ((y + h / 2) % h) as i64;
                let sx = ((x + w / 2) % w) as i64;
                (sx - cx).pow(2) + (sy - cy).pow(2) <= radius * radius
            })
            .collect();
        Self {
            h,
            w,
            rows: p.plan_fft_forward(w),
            cols: p.plan_fft_forward(h),
            irows: p.plan_fft_inverse(w),
            icols: p.plan_fft_inverse(h),
            low,
        }
    }

    /// Plane size.
    pub fn dims(&self) -> (usize, usize) {
        (self.h, self.w)
    }

    /// Whether bin `i` (unshifted, row-major) is in the low band.
    pub fn is_low(&self, i: usize) -> bool {
        self.low[i]
    }

    fn transform(&self, buf: &mut [Complex32], rows: &dyn Fft<f32>, cols: &dyn Fft<f32>) {
        let (h, w) = (self.h, self.w);
        for plane in buf.chunks_exact_mut(h * w) {
            rows.process(plane);
            let mut col = vec![Complex32::default(); h];
            for x in 0..w {
                for y in 0..h {
                    col[y] = plane[y * w + x];
                }
                cols.process(&mut col);
                for y in 0..h {
                    plane[y * w + x] = col[y];
                }
            }
        }
    }

    /// Forward 2-D FFT of every plane of `values` (a whole number of `h × w` planes).
    pub fn forward(&self, values: &[f32]) -> Vec<Complex32> {
        let mut buf: Vec<Complex32> = values.iter().map(|&v| Complex32::new(v, 0.0)).collect();
        self.transform(&mut buf, self.rows.as_ref(), self.cols.as_ref());
        buf
    }

    /// Inverse 2-D FFT (normalised by `1 / (h·w)`, as `torch.fft.ifft2`), real part.
    pub fn inverse_real(&self, mut buf: Vec<Complex32>) -> Vec<f32> {
        self.transform(&mut buf, self.irows.as_ref(), self.icols.as_ref());
        let scale = 1.0 / (self.h * self.w) as f32;
        buf.iter().map(|c| c.re * scale).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_by_eight_low_band_has_five_bins() {
        // diffusers-behaviour.md: 8x8 gives radius 1, 5 bins (the centre and its 4 neighbours).
        let f = Fft2::new(8, 8);
        assert_eq!((0..64).filter(|&i| f.is_low(i)).count(), 5);
        assert!(f.is_low(0)); // DC
        assert!(f.is_low(1) && f.is_low(7) && f.is_low(8) && f.is_low(56));
    }

    #[test]
    fn round_trip_and_dc() {
        let f = Fft2::new(4, 6);
        let v: Vec<f32> = (0..48).map(|i| (i as f32 * 0.37).sin()).collect();
        let spec = f.forward(&v);
        let sum: f32 = v[..24].iter().sum();
        assert!((spec[0].re - sum).abs() < 1e-4 && spec[0].im.abs() < 1e-4);
        let back = f.inverse_real(spec);
        assert!(back.iter().zip(&v).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
