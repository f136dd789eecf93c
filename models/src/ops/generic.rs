//! The operations of [`super::ModelBackend`] in plain burn ops: the default on every backend, and the
//! reference the CPU kernels are tested against.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, Tensor};

/// burn's `linear`: `x W + b` with `W` as `[d_in, d_out]`.
pub fn linear<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, D> {
    burn::tensor::module::linear(x, weight, bias)
}

/// GELU with the tanh approximation (`GELU(approximate="tanh")`), as `x / (1 + exp(−2u))` with
/// `u = √(2/π)·(x + 0.044715·x³)`: equal to `0.5·x·(1 + tanh(u))`, at one `exp` and one division per element
/// instead of `powf` and `tanh` (a quarter of the S model's CPU time with burn's `gelu_approximate`).
/// A true division, not `recip()`, which may be an approximate reciprocal on SIMD backends.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const TWO_SQRT_2_OVER_PI: f64 = 2.0 * 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let minus_2u = (cube * 0.044715 + x.clone()) * (-TWO_SQRT_2_OVER_PI);
    x / (minus_2u.exp() + 1.0)
}

/// `gelu_tanh(linear(x))`.
pub fn linear_gelu_tanh<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    gelu_tanh(linear(x, weight, bias))
}

/// LayerNorm over the last dimension: `(x − mean) / √(var + eps) · weight + bias`, biased variance.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Option<Tensor<B, 1>>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let mut y = (x - mean) / (var + eps).sqrt();
    if let Some(w) = weight {
        y = y * w.unsqueeze();
    }
    if let Some(b) = bias {
        y = y + b.unsqueeze();
    }
    y
}

/// adaLN modulation of a LayerNorm: `layer_norm(x)·(1 + scale) + shift`.
pub fn layer_norm_modulate<B: Backend>(
    x: Tensor<B, 3>,
    weight: Option<Tensor<B, 1>>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
    scale: Tensor<B, 3>,
    shift: Tensor<B, 3>,
) -> Tensor<B, 3> {
    layer_norm(x, weight, bias, eps) * (scale + 1.0) + shift
}

/// burn's attention with its default scale `1/√head_dim` and no mask.
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    burn_attention(q, k, v, None, None, AttentionModuleOptions::default())
}

/// RMSNorm over the last dimension (`torch.nn.RMSNorm` / diffusers' `RMSNorm` in float32):
/// `x / √(mean(x²) + eps) · weight`. A true division, not `recip()`.
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Option<Tensor<B, 1>>, eps: f64) -> Tensor<B, D> {
    let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
    let y = x / (ms + eps).sqrt();
    match weight {
        Some(w) => y * w.unsqueeze(),
        None => y,
    }
}

/// diffusers' `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`: each pair `(x₀, x₁)` of the head
/// dimension becomes `(x₀·cos − x₁·sin, x₁·cos + x₀·sin)`, with `cos`/`sin` repeated per pair.
pub fn rotary<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, l, hd] = x.dims();
    let pairs = x.clone().reshape([b, h, l, hd / 2, 2]);
    let real = pairs.clone().narrow(4, 0, 1);
    let imag = pairs.narrow(4, 1, 1);
    let rotated = Tensor::cat(vec![imag.neg(), real], 4).reshape([b, h, l, hd]);
    x * cos + rotated * sin
}
