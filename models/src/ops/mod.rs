//! The few hot operations of the models, as a backend extension (the burn book's "backend extension"
//! pattern): [`ModelBackend`] is burn's `Backend` plus these operations. Its default methods are the
//! plain burn-op code in [`generic`], which is what wgpu and CUDA run (burn's fusion already fuses their
//! elementwise chains). `NdArray` overrides them with fused float32 kernels on the raw buffers
//! (`ops::cpu`, feature `ndarray`): one pass per fused op, a packed GEMM, rayon at one level only.
//!
//! A backend the project does not know takes the generic path with one line:
//! `impl models::ops::ModelBackend for MyBackend {}`.
//!
//! [`profile`] times these operations on synchronous backends, and [`set_cpu_fast_path`] switches the CPU
//! kernels off at run time (both for `ditcache forward --profile`, to compare the two paths in one sitting).

pub mod generic;
#[cfg(feature = "ndarray")]
mod cpu;
#[cfg(feature = "flex")]
mod flex;
pub mod profile;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{backend::Backend, Tensor};

/// burn's `Backend` with the models' hot operations. Every method has the generic burn-op code as its
/// default; a backend overrides the ones it has a faster kernel for, with the same results up to float32
/// rounding.
pub trait ModelBackend: Backend {
    /// `x Wᵀ + b` with `W` held as `[d_in, d_out]` (burn's `linear`).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]`, `weight`: `[d_in, d_out]`, `bias`: `[d_out]` → `[..., d_out]`
    fn linear<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, D> {
        generic::linear(x, weight, bias)
    }

    /// `gelu_tanh(linear(x))`, the first half of a feed-forward.
    ///
    /// # Shapes
    /// as [`ModelBackend::linear`]
    fn linear_gelu_tanh<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        generic::linear_gelu_tanh(x, weight, bias)
    }

    /// `GELU(approximate="tanh")`, see [`generic::gelu_tanh`].
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        generic::gelu_tanh(x)
    }

    /// `torch.nn.LayerNorm` over the last dimension (biased variance), with optional affine parameters.
    ///
    /// # Shapes
    /// `x`: `[..., d]`, `weight`, `bias`: `[d]` → `[..., d]`
    fn layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        bias: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        generic::layer_norm(x, weight, bias, eps)
    }

    /// adaLN modulation of a LayerNorm: `layer_norm(x)·(1 + scale) + shift`.
    ///
    /// # Shapes
    /// `x`: `[B, N, d]`, `scale`, `shift`: `[B, 1, d]` (or `[1, 1, d]`) → `[B, N, d]`
    fn layer_norm_modulate(
        x: Tensor<Self, 3>,
        weight: Option<Tensor<Self, 1>>,
        bias: Option<Tensor<Self, 1>>,
        eps: f64,
        scale: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        generic::layer_norm_modulate(x, weight, bias, eps, scale, shift)
    }

    /// RMSNorm over the last dimension, see [`generic::rms_norm`] (FLUX's q/k norms).
    ///
    /// # Shapes
    /// `x`: `[..., d]`, `weight`: `[d]` → `[..., d]`
    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Option<Tensor<Self, 1>>, eps: f64) -> Tensor<Self, D> {
        generic::rms_norm(x, weight, eps)
    }

    /// Rotary position embedding of interleaved pairs, see [`generic::rotary`].
    ///
    /// # Shapes
    /// `x`: `[B, H, L, hd]`, `cos`, `sin`: `[1, 1, L, hd]` → `[B, H, L, hd]`
    fn rotary(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        generic::rotary(x, cos, sin)
    }

    /// `softmax(q kᵀ / √head_dim) v`, no mask (`F.scaled_dot_product_attention` as diffusers calls it).
    ///
    /// # Shapes
    /// `q`: `[B, H, L, hd]`, `k`: `[B, H, S, hd]`, `v`: `[B, H, S, hd_v]` → `[B, H, L, hd_v]`
    fn attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>) -> Tensor<Self, 4> {
        generic::attention(q, k, v)
    }
}

#[cfg(feature = "wgpu")]
impl ModelBackend for burn_wgpu::Wgpu<f32, i32> {}

#[cfg(feature = "cuda")]
impl ModelBackend for burn_cuda::Cuda<f32, i32> {}

static CPU_FAST_PATH: AtomicBool = AtomicBool::new(true);

/// Switches the CPU kernels on (the default) or off for the whole process; off, `NdArray` runs the generic
/// burn-op code of [`generic`]. For comparing the two paths (`ditcache forward --generic-ops`); results are
/// the same up to float32 rounding.
pub fn set_cpu_fast_path(on: bool) {
    CPU_FAST_PATH.store(on, Ordering::Relaxed);
}

/// Whether the CPU kernels are on (see [`set_cpu_fast_path`]).
pub fn cpu_fast_path() -> bool {
    CPU_FAST_PATH.load(Ordering::Relaxed)
}
