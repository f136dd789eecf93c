//! [`ModelBackend`] for burn-ndarray: the operations on float32 tensors run as fused kernels on the raw
//! buffers (strided inputs read in place where the kernel can, copied once where it cannot); any other
//! dtype, or shapes the kernels do not cover, take the generic path, which also reports shape errors.

mod attention;
mod kernels;
mod matmul;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_ndarray::{FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use rayon::prelude::*;

use super::{cpu_fast_path, generic, profile, ModelBackend};
use matmul::Mat;

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> ModelBackend for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn linear<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, D> {
        let _t = profile::timer("linear");
        fast(|| tensor(linear(&prim(&x), &prim(&weight), bias.as_ref().map(prim).as_ref(), false)?))
            .unwrap_or_else(|| generic::linear(x, weight, bias))
    }

    fn linear_gelu_tanh<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        let _t = profile::timer("linear+gelu");
        fast(|| tensor(linear(&prim(&x), &prim(&weight), bias.as_ref().map(prim).as_ref(), true)?))
            .unwrap_or_else(|| generic::linear_gelu_tanh(x, weight, bias))
    }

    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        let _t = profile::timer("gelu");
        fast(|| {
            let mut a = f32_view(&prim(&x))?.as_standard_layout().into_owned();
            kernels::gelu_tanh(a.as_slice_mut()?);
            tensor(a)
        })
        .unwrap_or_else(|| generic::gelu_tanh(x))
    }

    fn layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        bias: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        let _t = profile::timer("layer_norm");
        fast(|| tensor(layer_norm(&prim(&x), weight.as_ref().map(prim), bias.as_ref().map(prim), eps, None)?))
            .unwrap_or_else(|| generic::layer_norm(x, weight, bias, eps))
    }

    fn layer_norm_modulate(
        x: Tensor<Self, 3>,
        weight: Option<Tensor<Self, 1>>,
        bias: Option<Tensor<Self, 1>>,
        eps: f64,
        scale: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        let _t = profile::timer("layer_norm+modulate");
        fast(|| {
            let modulation = (prim(&scale), prim(&shift));
            tensor(layer_norm(&prim(&x), weight.as_ref().map(prim), bias.as_ref().map(prim), eps, Some(modulation))?)
        })
        .unwrap_or_else(|| generic::layer_norm_modulate(x, weight, bias, eps, scale, shift))
    }

    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Option<Tensor<Self, 1>>, eps: f64) -> Tensor<Self, D> {
        let _t = profile::timer("rms_norm");
        fast(|| tensor(rms_norm(&prim(&x), weight.as_ref().map(prim), eps)?)).unwrap_or_else(|| generic::rms_norm(x, weight, eps))
    }

    fn rotary(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        let _t = profile::timer("rotary");
        fast(|| tensor(rotary(&prim(&x), &prim(&cos), &prim(&sin))?)).unwrap_or_else(|| generic::rotary(x, cos, sin))
    }

    fn attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>) -> Tensor<Self, 4> {
        let _t = profile::timer("attention");
        fast(|| tensor(attention(&prim(&q), &prim(&k), &prim(&v))?)).unwrap_or_else(|| generic::attention(q, k, v))
    }
}

/// The fast path's result, unless switched off ([`super::set_cpu_fast_path`]) or not applicable (`None`).
fn fast<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    if cpu_fast_path() {
        f()
    } else {
        None
    }
}

/// The tensor's primitive (an `Arc` clone, no copy).
fn prim<B: Backend<FloatTensorPrimitive = NdArrayTensor>, const D: usize>(t: &Tensor<B, D>) -> NdArrayTensor {
    t.clone().into_primitive().tensor()
}

/// A float32 array as a tensor of rank `D` (`None` if the rank differs).
fn tensor<B: Backend<FloatTensorPrimitive = NdArrayTensor>, const D: usize>(a: ArrayD<f32>) -> Option<Tensor<B, D>> {
    (a.ndim() == D).then(|| Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(a.into_shared()))))
}

/// The float32 array of a primitive (no copy), or `None` for another dtype.
fn f32_view(t: &NdArrayTensor) -> Option<ArrayViewD<'_, f32>> {
    match t {
        NdArrayTensor::F32(storage) => Some(storage.view()),
        _ => None,
    }
}

/// A float32 primitive's values in logical order, if it has `len` of them.
fn vector(t: &NdArrayTensor, len: usize) -> Option<Vec<f32>> {
    let v = f32_view(t)?;
    (v.len() == len).then(|| v.iter().copied().collect())
}

fn linear(x: &NdArrayTensor, weight: &NdArrayTensor, bias: Option<&NdArrayTensor>, gelu: bool) -> Option<ArrayD<f32>> {
    let (xv, wv) = (f32_view(x)?, f32_view(weight)?);
    if wv.ndim() != 2 {
        return None;
    }
    let [k, n] = [wv.shape()[0], wv.shape()[1]];
    let mut shape = xv.shape().to_vec();
    if shape.last() != Some(&k) {
        return None;
    }
    let bias = match bias {
        Some(b) => Some(vector(b, n)?),
        None => None,
    };
    let xs = xv.as_standard_layout();
    let m = xs.len() / k.max(1);
    let w = Mat { ptr: wv.as_ptr(), rs: wv.strides()[0], cs: wv.strides()[1] };
    let out = matmul::linear(xs.as_slice()?, m, k, w, n, bias.as_deref(), gelu);
    *shape.last_mut()? = n;
    ArrayD::from_shape_vec(IxDyn(&shape), out).ok()
}

/// LayerNorm over the last dimension; with `modulation` (`scale`, `shift`: `[B, 1, d]` or `[1, 1, d]` for a
/// `[B, N, d]` input) the adaLN modulation `·(1 + scale) + shift` fused in.
fn layer_norm(
    x: &NdArrayTensor,
    weight: Option<NdArrayTensor>,
    bias: Option<NdArrayTensor>,
    eps: f64,
    modulation: Option<(NdArrayTensor, NdArrayTensor)>,
) -> Option<ArrayD<f32>> {
    let xv = f32_view(x)?;
    let d = *xv.shape().last()?;
    let param = |t: Option<NdArrayTensor>| match t {
        Some(t) => vector(&t, d),
        None => Some(Vec::new()),
    };
    let (w, b) = (param(weight)?, param(bias)?);
    let (batch, per_sample) = (xv.shape()[0], xv.len() / xv.shape()[0].max(1));
    let (s1, shift, mod_batch) = match &modulation {
        None => (Vec::new(), Vec::new(), 1),
        Some((scale, shift)) => {
            let (sv, hv) = (f32_view(scale)?, f32_view(shift)?);
            let ok = |a: &ArrayViewD<'_, f32>| {
                a.ndim() == 3 && a.shape()[1] == 1 && a.shape()[2] == d && (a.shape()[0] == batch || a.shape()[0] == 1)
            };
            if xv.ndim() != 3 || !ok(&sv) || !ok(&hv) || sv.shape()[0] != hv.shape()[0] {
                return None;
            }
            let s1: Vec<f32> = sv.iter().map(|s| s + 1.0).collect();
            (s1, hv.iter().copied().collect(), sv.shape()[0])
        }
    };
    let xs = xv.as_standard_layout();
    let xs = xs.as_slice()?;
    let mut out = vec![0f32; xs.len()];
    let eps = eps as f32;
    let rows_per_task = (1 << 14) / d.max(1) + 1;
    out.par_chunks_mut(rows_per_task * d).zip(xs.par_chunks(rows_per_task * d)).enumerate().for_each(
        |(task, (out, x))| {
            for (i, (o, x)) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let sample = ((task * rows_per_task + i) * d / per_sample.max(1)).min(mod_batch - 1);
                let (s1, shift) = if s1.is_empty() {
                    (&[][..], &[][..])
                } else {
                    (&s1[sample * d..(sample + 1) * d], &shift[sample * d..(sample + 1) * d])
                };
                kernels::layer_norm_row(x, o, eps, &w, &b, s1, shift);
            }
        },
    );
    ArrayD::from_shape_vec(IxDyn(xv.shape()), out).ok()
}

/// Elements per rayon task of the row-wise kernels: below it a split costs more than it saves.
const TASK_ELEMENTS: usize = 1 << 14;

/// RMSNorm over the last dimension, rows in parallel.
fn rms_norm(x: &NdArrayTensor, weight: Option<NdArrayTensor>, eps: f64) -> Option<ArrayD<f32>> {
    let xv = f32_view(x)?;
    let d = *xv.shape().last()?;
    let w = match weight {
        Some(w) => vector(&w, d)?,
        None => Vec::new(),
    };
    if d == 0 {
        return None;
    }
    let xs = xv.as_standard_layout();
    let xs = xs.as_slice()?;
    let mut out = vec![0f32; xs.len()];
    let chunk = (TASK_ELEMENTS / d + 1) * d;
    let eps = eps as f32;
    out.par_chunks_mut(chunk).zip(xs.par_chunks(chunk)).for_each(|(out, x)| {
        for (o, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            kernels::rms_norm_row(x, o, eps, &w);
        }
    });
    ArrayD::from_shape_vec(IxDyn(xv.shape()), out).ok()
}

/// Rotary embedding of `[B, H, L, hd]` with `[1, 1, L, hd]` tables, one `L × hd` plane per task.
fn rotary(x: &NdArrayTensor, cos: &NdArrayTensor, sin: &NdArrayTensor) -> Option<ArrayD<f32>> {
    let (xv, cv, sv) = (f32_view(x)?, f32_view(cos)?, f32_view(sin)?);
    if xv.ndim() != 4 {
        return None;
    }
    let (l, hd) = (xv.shape()[2], xv.shape()[3]);
    if hd % 2 != 0 || l * hd == 0 || cv.shape() != [1, 1, l, hd] || sv.shape() != [1, 1, l, hd] {
        return None;
    }
    let xs = xv.as_standard_layout();
    let (cs, ss) = (cv.as_standard_layout(), sv.as_standard_layout());
    let (xs, cs, ss) = (xs.as_slice()?, cs.as_slice()?, ss.as_slice()?);
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(l * hd).zip(xs.par_chunks(l * hd)).for_each(|(o, x)| kernels::rotary_pairs(x, o, cs, ss));
    ArrayD::from_shape_vec(IxDyn(xv.shape()), out).ok()
}

fn attention(q: &NdArrayTensor, k: &NdArrayTensor, v: &NdArrayTensor) -> Option<ArrayD<f32>> {
    let (qv, kv, vv) = (f32_view(q)?, f32_view(k)?, f32_view(v)?);
    if qv.ndim() != 4 || kv.ndim() != 4 || vv.ndim() != 4 {
        return None;
    }
    let view = |a: &ArrayViewD<'_, f32>| attention::View4 {
        ptr: a.as_ptr(),
        dims: [a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]],
        strides: [a.strides()[0], a.strides()[1], a.strides()[2], a.strides()[3]],
    };
    let (qa, ka, va) = (view(&qv), view(&kv), view(&vv));
    let [b, h, l, hd] = qa.dims;
    if ka.dims[..2] != [b, h] || va.dims[..3] != ka.dims[..3] || ka.dims[3] != hd {
        return None;
    }
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let out = attention::attention(qa, ka, va, scale);
    // `[B, L, H, hd_v]` in memory, seen as `[B, H, L, hd_v]`: the caller's swap back to `[B, L, H·hd_v]`
    // is then free.
    let a = ArrayD::from_shape_vec(IxDyn(&[b, l, h, va.dims[3]]), out).ok()?;
    Some(a.permuted_axes(IxDyn(&[0, 2, 1, 3])))
}
