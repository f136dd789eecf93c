//! The backend this build was made for, chosen by Cargo feature: `ndarray` (default), `wgpu` or `cuda`.

#[cfg(feature = "ndarray")]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn_ndarray::NdArray<f32>;
    /// Its name.
    pub const NAME: &str = "ndarray";
    /// It computes float32: every case's own tolerance applies.
    pub const TOLERANCE_FLOOR: f64 = 0.0;
    /// Every committed case reaches ≤ 1.7e-6 rel_l2 here (2026-11-27).
    pub const MEASURED_PRECISION: Option<f64> = Some(1e-5);
}

#[cfg(all(feature = "wgpu", not(feature = "ndarray")))]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn_wgpu::Wgpu<f32, i32>;
    /// Its name.
    pub const NAME: &str = "wgpu";
    /// It computes float32: every case's own tolerance applies.
    pub const TOLERANCE_FLOOR: f64 = 0.0;
    /// Every committed case reaches ≤ 1.7e-6 rel_l2 here (Mesa's llvmpipe, 2026-11-27).
    pub const MEASURED_PRECISION: Option<f64> = Some(1e-5);
}

#[cfg(all(feature = "cuda", not(any(feature = "ndarray", feature = "wgpu"))))]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn_cuda::Cuda<f32, i32>;
    /// Its name.
    pub const NAME: &str = "cuda";
    /// burn 0.21's CUDA matmuls run float32 through tensor cores at TF32 precision (cubek-matmul 0.2's
    /// `adjust_dtypes`; there is no switch), as torch does with `allow_tf32=True`: a CogVideoX or Latte forward
    /// then differs from float32 by 3e-4–6e-4 rel_l2 and a 10–20-step generation by up to 9e-4 (measured on
    /// an H200). Four units of TF32 roundoff (2⁻¹¹), still 18× below the smallest layout fault (3.6e-2).
    pub const TOLERANCE_FLOOR: f64 = 2e-3;
    /// TF32: the cases' own tolerances (raised to the floor) are the bound.
    pub const MEASURED_PRECISION: Option<f64> = None;
}

#[cfg(not(any(feature = "ndarray", feature = "wgpu", feature = "cuda")))]
compile_error!("enable one backend feature: `ndarray` (default), `wgpu` or `cuda`");

/// `TOLERANCE_FLOOR`: the smallest rel_l2 tolerance this backend's results can be held to against float32
/// references (0 where it computes float32); `ditcache parity` and the backend tests apply
/// `max(case tolerance, TOLERANCE_FLOOR)` and say so.
pub use chosen::{Backend, NAME, TOLERANCE_FLOOR};

/// `MEASURED_PRECISION`: on a float32 backend, the rel_l2 every committed case is held to (its measured error
/// with a margin of ~6×; the cases' own 1e-3 is the format's floor for TF32 backends and would let a
/// 500× regression pass). `None` where the cases' tolerances are the bound. The parity test and `.ci/run`
/// (`ditcache parity --max-rel-l2`) apply it.
pub use chosen::MEASURED_PRECISION;

/// The default device of the backend.
pub fn device() -> burn::tensor::Device<Backend> {
    Default::default()
}
