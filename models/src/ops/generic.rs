//! The operations of [`super::ModelBackend`] in plain burn ops: the default on every backend, and the
//! reference the CPU kernels are tested against.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, DType, FloatDType, Tensor};

/// Runs `op` in float32 and rounds its result to `x`'s dtype once, as torch computes a half-precision
/// activation, norm or rotation (float32 inside, one rounding per op) instead of rounding after every burn op
/// of a composite; float32 input runs `op` as it is. Other float operands of `op` are cast by the caller.
pub fn in_f32<B: Backend, const D: usize>(x: Tensor<B, D>, op: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return op(x);
    }
    op(x.cast(FloatDType::F32)).cast(FloatDType::from(dtype))
}

/// `t` in float32 (no-op when it is).
pub fn f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.cast(FloatDType::F32)
}

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
    in_f32(x, |x| {
        let cube = x.clone() * x.clone() * x.clone();
        let minus_2u = (cube * 0.044715 + x.clone()) * (-TWO_SQRT_2_OVER_PI);
        x / (minus_2u.exp() + 1.0)
    })
}

/// SiLU, `x·sigmoid(x)` (in float32 for half-precision input: [`in_f32`]).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    in_f32(x, burn::tensor::activation::silu)
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
    in_f32(x, |x| {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let mut y = (x - mean) / (var + eps).sqrt();
        if let Some(w) = weight {
            y = y * f32(w).unsqueeze();
        }
        if let Some(b) = bias {
            y = y + f32(b).unsqueeze();
        }
        y
    })
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

/// Score elements (`B · H · query rows · S`, float32: 4 bytes each) one burn attention call may materialise:
/// 2^26, 256 MiB per score buffer. burn 0.21's wgpu (WGSL: no tensor-core kernels) and its fallback
/// elsewhere compute `[B, H, L, S]` scores at once; at CogVideoX-2b's real length (17 776 tokens, 30 heads,
/// CFG batch 2) that would be 76 GB.
pub const ATTENTION_SCORE_BUDGET: usize = 1 << 26;

/// burn's attention with its default scale `1/√head_dim` and no mask, in query blocks of at most
/// [`ATTENTION_SCORE_BUDGET`] scores ([`attention_in_blocks`]).
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    attention_in_blocks(q, k, v, ATTENTION_SCORE_BUDGET)
}

/// `softmax(q kᵀ / √head_dim) v` with at most `budget` score elements at a time: the queries in blocks of
/// `budget / (B·H·S)` rows (a multiple of 128 when that is at least 128, the largest query tile of burn's
/// accelerated kernels, so a backend that has them can still pick them), each block one burn attention call,
/// the outputs concatenated. Rows are independent in attention, so any split gives the same values; one call
/// when everything fits. Any length works (no padding, no mask).
///
/// # Shapes
/// `q`: `[B, H, L, hd]`, `k`: `[B, H, S, hd]`, `v`: `[B, H, S, hd_v]` → `[B, H, L, hd_v]`
pub fn attention_in_blocks<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, budget: usize) -> Tensor<B, 4> {
    let [b, h, l, _] = q.dims();
    let s = k.dims()[2];
    let mut rows = (budget / (b * h * s).max(1)).max(1);
    if rows >= 128 {
        rows -= rows % 128;
    }
    if rows >= l {
        return burn_attention(q, k, v, None, None, AttentionModuleOptions::default());
    }
    let blocks = (0..l)
        .step_by(rows)
        .map(|start| {
            let n = rows.min(l - start);
            burn_attention(q.clone().narrow(2, start, n), k.clone(), v.clone(), None, None, AttentionModuleOptions::default())
        })
        .collect();
    Tensor::cat(blocks, 2)
}

/// RMSNorm over the last dimension (`torch.nn.RMSNorm` / diffusers' `RMSNorm` in float32):
/// `x / √(mean(x²) + eps) · weight`. A true division, not `recip()`.
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Option<Tensor<B, 1>>, eps: f64) -> Tensor<B, D> {
    in_f32(x, |x| {
        let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
        let y = x / (ms + eps).sqrt();
        match weight {
            Some(w) => y * f32(w).unsqueeze(),
            None => y,
        }
    })
}

/// diffusers' `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`: each pair `(x₀, x₁)` of the head
/// dimension becomes `(x₀·cos − x₁·sin, x₁·cos + x₀·sin)`, with `cos`/`sin` repeated per pair. Half-precision
/// `x` rotates in float32 and rounds once (`x.float() * cos ... .to(x.dtype)`).
pub fn rotary<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, l, hd] = x.dims();
    in_f32(x, |x| {
        let pairs = x.clone().reshape([b, h, l, hd / 2, 2]);
        let real = pairs.clone().narrow(4, 0, 1);
        let imag = pairs.narrow(4, 1, 1);
        let rotated = Tensor::cat(vec![imag.neg(), real], 4).reshape([b, h, l, hd]);
        x * f32(cos) + rotated * f32(sin)
    })
}
