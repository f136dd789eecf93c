//! The backend this build was made for, chosen by Cargo feature: `ndarray` (default), `wgpu` or `cuda`.

#[cfg(feature = "ndarray")]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn_ndarray::NdArray<f32>;
    /// Its name.
    pub const NAME: &str = "ndarray";
}

#[cfg(all(feature = "wgpu", not(feature = "ndarray")))]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn_wgpu::Wgpu<f32, i32>;
    /// Its name.
    pub const NAME: &str = "wgpu";
}

#[cfg(all(feature = "cuda", not(any(feature = "ndarray", feature = "wgpu"))))]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn_cuda::Cuda<f32, i32>;
    /// Its name.
    pub const NAME: &str = "cuda";
}

#[cfg(not(any(feature = "ndarray", feature = "wgpu", feature = "cuda")))]
compile_error!("enable one backend feature: `ndarray` (default), `wgpu` or `cuda`");

pub use chosen::{Backend, NAME};

/// The default device of the backend.
pub fn device() -> burn::tensor::Device<Backend> {
    Default::default()
}
