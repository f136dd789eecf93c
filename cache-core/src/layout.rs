//! Parameter layout for GPU backends: every weight stored contiguous in the layout its op reads.
//!
//! burn 0.21's wgpu backend (fusion + autotune, cubek-matmul 0.2.0) picks a fused gemv kernel for a matmul
//! whose left-hand side has one row — every batch-1 call of a timestep embedder or an adaLN projection. That
//! kernel assumes a row-major right-hand side and reads a strided one (such as `weight.transpose()`, or a
//! `burn::nn::Linear` built with `LinearLayout::Col`) wrongly, without an error. A host model loaded that way
//! gives another video than diffusers on wgpu — and on CUDA, wherever autotune picks that kernel — while
//! every batch-2 call is right. Storing the weights contiguous avoids it; `docs/backends.md` tells the story
//! and `benches/tests/wgpu_gemv.rs` watches the upstream fault.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{backend::Backend, Tensor};

/// Rewrites every float parameter of a module as a contiguous tensor of the same logical shape and values.
///
/// Call it once after loading a host model whose weights may be strided views (transposed at load,
/// `LinearLayout::Col`, sliced from a fused tensor). On a parameter that is already contiguous it only
/// copies. Load/save mappers (such as `LinearLayout::Col`'s) and `require_grad` are kept.
pub fn contiguous_params<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut Contiguous)
}

/// The [`ModuleMapper`] behind [`contiguous_params`].
struct Contiguous;

impl<B: Backend> ModuleMapper<B> for Contiguous {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| {
            let (device, grad, dtype) = (t.device(), t.is_require_grad(), t.dtype());
            // `into_data` reads the logical values in row-major order, whatever the strides on the device; the
            // parameter keeps its dtype (a bfloat16 weight is not widened).
            Tensor::from_data(t.into_data(), (&device, dtype)).set_require_grad(grad)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::TensorData;
    use burn_ndarray::NdArray;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        w: Param<Tensor<B, 2>>,
        b: Option<Param<Tensor<B, 1>>>,
    }

    #[test]
    fn keeps_values_and_shapes_of_strided_parameters() {
        type B = NdArray<f32>;
        let dev = Default::default();
        let w = Tensor::<B, 2>::from_data(TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]), &dev);
        let m = Two::<B> {
            w: Param::from_tensor(w.transpose()),
            b: Some(Param::from_tensor(Tensor::from_data(TensorData::new(vec![7f32, 8.], [2]), &dev))),
        };
        let m = contiguous_params(m);
        // The transpose of [[1, 2, 3], [4, 5, 6]], read row-major.
        assert_eq!(m.w.val().dims(), [3, 2]);
        assert_eq!(m.w.val().into_data().to_vec::<f32>().unwrap(), vec![1., 4., 2., 5., 3., 6.]);
        assert_eq!(m.b.unwrap().val().into_data().to_vec::<f32>().unwrap(), vec![7., 8.]);
    }
}
