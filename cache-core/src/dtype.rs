//! Tensors an engine builds on the host, in the model's dtype: a half-precision model (bfloat16, float16) meets
//! only tensors of its own dtype, as torch's hooks hand back `.to(hidden_states.dtype)`; burn-flex refuses an
//! operation on two dtypes with a panic.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

/// `values` (row-major, `shape`) as a tensor on `like`'s device in `like`'s dtype, rounded to nearest even on
/// the host (torch's `.to(dtype)`); float32 values stay as they are.
pub fn host_tensor_like<B: Backend, const D: usize, const L: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    like: &Tensor<B, L>,
) -> Tensor<B, D> {
    let dtype = like.dtype();
    let data = TensorData::new(values, shape);
    let data = if dtype == DType::F32 { data } else { data.convert_dtype(dtype) };
    Tensor::from_data(data, (&like.device(), dtype))
}
