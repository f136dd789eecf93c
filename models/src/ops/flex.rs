//! burn-flex (burn 0.21's CPU backend with per-tensor float16/bfloat16): the generic path, with the linear
//! map computed in float32 and rounded once. torch's half-precision `addmm` accumulates in float32 and adds
//! the bias before its one rounding; flex's bf16 matmul converts both operands to float32 anyway and rounds
//! its product, and a separate bias add would round a second time.

use burn::tensor::Tensor;

use super::generic::{f32, in_f32, linear};
use super::ModelBackend;

impl ModelBackend for burn_flex::Flex {
    fn linear<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, D> {
        in_f32(x, |x| linear(x, f32(weight), bias.map(f32)))
    }

    fn linear_gelu_tanh<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        super::generic::gelu_tanh(Self::linear(x, weight, bias))
    }
}
