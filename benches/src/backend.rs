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
    /// Its kernels are compiled Rust: nothing is compiled or tuned at run time.
    pub const COMPILES_KERNELS: bool = false;
    /// burn-ndarray holds float32 and float64 only; half-precision cases run on burn-flex, burn 0.21's other
    /// CPU backend, whose tensors carry their dtype (bfloat16 and float16 included).
    pub type HalfBackend = burn_flex::Flex;
    /// Its name.
    pub const HALF_NAME: &str = "flex";
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
    /// cubecl compiles each kernel (WGSL) on its first launch and autotunes each new shape.
    pub const COMPILES_KERNELS: bool = true;
    /// Half-precision cases run here too, where the adapter has the dtype (WGSL has float16 as an extension and
    /// no bfloat16): refused otherwise.
    pub type HalfBackend = Backend;
    /// Its name.
    pub const HALF_NAME: &str = NAME;
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
    /// cubecl compiles each kernel (NVRTC) on its first launch and autotunes each new shape.
    pub const COMPILES_KERNELS: bool = true;
    /// Half-precision cases run here too: burn-cuda's tensors carry their dtype (bfloat16, float16).
    pub type HalfBackend = Backend;
    /// Its name.
    pub const HALF_NAME: &str = NAME;
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

/// `HalfBackend`: where this build computes half-precision parity cases (`parity-cases-half.md`): the build's own
/// backend on wgpu and CUDA, burn-flex on the ndarray build. [`replay`] picks it by the case's dtype.
pub use chosen::{HalfBackend, HALF_NAME};

/// Replays one case ([`crate::parity::run_case_within`]) on the backend that computes its dtype: this build's
/// for float32, [`HalfBackend`] for bfloat16 and float16 (which refuses a dtype it lacks). The report names
/// the backend.
pub fn replay(dir: &std::path::Path, max_rel_l2: Option<f64>) -> crate::parity::CaseReport {
    use crate::parity::{case_dtype, run_case_within, CaseDtype};
    let (mut report, name) = match case_dtype(dir) {
        CaseDtype::Float32 => (run_case_within::<Backend>(dir, &device(), max_rel_l2), NAME),
        CaseDtype::BFloat16 | CaseDtype::Float16 => {
            (run_case_within::<HalfBackend>(dir, &device_of::<HalfBackend>(), max_rel_l2), HALF_NAME)
        }
    };
    report.backend = Some(name);
    report
}

/// The default device of backend `B` (this build's, or [`HalfBackend`]), after [`configure_kernel_caches`].
pub fn device_of<B: burn::tensor::backend::Backend>() -> B::Device {
    configure_kernel_caches();
    Default::default()
}

/// `COMPILES_KERNELS`: whether the backend compiles kernels and autotunes shapes at run time (wgpu, CUDA),
/// so that a process's first generation is slower than the next ones.
pub use chosen::COMPILES_KERNELS;

/// Where wgpu and CUDA keep what they compile and tune, for the next process: the workspace's
/// `target/cubecl` (CUDA's compiled kernels under `cuda/`, autotune results under `autotune/`; burn-wgpu's
/// WGSL kernels have no persistent cache in cubecl 0.10, only their autotune results do).
pub fn kernel_cache_dir() -> std::path::PathBuf {
    crate::crate_dir().join("../target/cubecl")
}

/// The default device of the backend; on wgpu and CUDA, first points cubecl's caches at
/// [`kernel_cache_dir`] ([`configure_kernel_caches`]).
pub fn device() -> burn::tensor::Device<Backend> {
    device_of::<Backend>()
}

/// cubecl 0.10 compiles every kernel again in every process unless its `compilation.cache` is set (off by
/// default), and keeps autotune results beside the nearest `Cargo.toml` of the working directory (so tests,
/// run from `benches/`, and the CLI, run from the workspace, tuned separately). This sets both to
/// [`kernel_cache_dir`] where the configuration (a `cubecl.toml` or `burn.toml` in the working directory or
/// above, then `CUBECL_*` variables) leaves them at their defaults, before any device reads it; a
/// configuration cubecl has already loaded is left as it is. Nothing on ndarray.
pub fn configure_kernel_caches() {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use cubecl_runtime::config::cache::CacheConfig;
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let mut state = CubeClRuntimeConfig::storage().lock();
            if state.is_some() {
                return;
            }
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            let dir = kernel_cache_dir();
            if config.compilation.cache.is_none() {
                config.compilation.cache = Some(CacheConfig::File(dir.clone()));
            }
            if matches!(config.autotune.cache, CacheConfig::Target) {
                config.autotune.cache = CacheConfig::File(dir);
            }
            *state = Some(std::sync::Arc::new(config));
        });
    }
}

/// The device memory cubecl's pool holds (wgpu, CUDA), read after the queued work has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceMemory {
    /// Bytes of the live tensors (without padding).
    pub in_use: u64,
    /// Bytes the pool has reserved on the device: what the process takes from the device, an upper bound of
    /// its peak use since the pool last released pages (cubecl 0.10 keeps no peak counter of its own).
    pub reserved: u64,
}

/// The device memory of `device` now ([`DeviceMemory`]), after waiting for its queued work; `None` on
/// ndarray, whose tensors are ordinary host allocations, and for a device of another backend than this
/// build's.
pub fn device_memory<B: burn::tensor::backend::Backend>(device: &B::Device) -> Option<DeviceMemory> {
    #[cfg(all(feature = "wgpu", not(feature = "ndarray")))]
    type Runtime = burn_wgpu::WgpuRuntime;
    #[cfg(all(feature = "cuda", not(any(feature = "ndarray", feature = "wgpu"))))]
    type Runtime = cubecl_cuda::CudaRuntime;
    #[cfg(all(any(feature = "wgpu", feature = "cuda"), not(feature = "ndarray")))]
    {
        use cubecl_runtime::runtime::Runtime as _;
        let ours = (device as &dyn std::any::Any).downcast_ref::<<Runtime as cubecl_runtime::runtime::Runtime>::Device>()?;
        B::sync(device).ok()?;
        let usage = Runtime::client(ours).memory_usage().ok()?;
        Some(DeviceMemory { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved })
    }
    #[cfg(not(all(any(feature = "wgpu", feature = "cuda"), not(feature = "ndarray"))))]
    {
        let _ = device;
        None
    }
}

/// Hands the pool's free pages on `device` back (after its queued work), so that the next
/// [`device_memory`] reads what the work after it reserved; nothing on ndarray.
pub fn release_free_device_memory<B: burn::tensor::backend::Backend>(device: &B::Device) {
    let _ = B::sync(device);
    B::memory_cleanup(device);
}
