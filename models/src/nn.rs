//! The small layers diffusers' models are built from, loaded under PyTorch's parameter names.

use burn::module::{Module, Param};
use crate::ops::generic::silu;
use burn::tensor::{backend::Backend, Tensor};

use crate::error::Result;
use crate::ops::ModelBackend;
use crate::weights::{Init, VarBuilder};

/// `torch.nn.Linear`: `y = x Wᵀ + b`. The weight is kept transposed (`[d_in, d_out]`), as burn's `linear` wants,
/// and stored contiguous in that layout (transposed on the host at load, never a strided view: a view gives
/// wrong results in burn-wgpu's fused gemv kernel, see `docs/backends.md`).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]` (PyTorch's `weight`, transposed at load).
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `{name}.weight` `[d_out, d_in]` and, if `bias`, `{name}.bias` `[d_out]`.
    pub fn load(vb: &mut VarBuilder<'_, B>, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let mut vb = vb.pp(name);
        let bound = 1.0 / (d_in as f64).sqrt();
        let weight = vb.host("weight", &[d_out, d_in], Init::Uniform(bound))?;
        let weight: Tensor<B, 2> = vb.upload(&weight.transposed());
        let bias = if bias { Some(vb.param("bias", [d_out], Init::Uniform(bound))?) } else { None };
        Ok(Self { weight: Param::from_tensor(weight), bias })
    }

    /// Loads a `torch.nn.Conv2d` whose kernel equals its stride (a patch embedding) as the linear map it is:
    /// `{name}.weight` `[d_out, c, p, p]` acting on patches flattened in `(c, p, p)` order.
    pub fn load_patch_conv(
        vb: &mut VarBuilder<'_, B>,
        name: &str,
        channels: usize,
        patch: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self> {
        let mut vb = vb.pp(name);
        let d_in = channels * patch * patch;
        let bound = 1.0 / (d_in as f64).sqrt();
        let weight = vb.host("weight", &[d_out, channels, patch, patch], Init::Uniform(bound))?;
        let weight: Tensor<B, 2> = vb.upload(&weight.reshaped(&[d_out, d_in]).transposed());
        let bias = if bias { Some(vb.param("bias", [d_out], Init::Uniform(bound))?) } else { None };
        Ok(Self { weight: Param::from_tensor(weight), bias })
    }

    /// # Shapes
    /// `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: ModelBackend,
    {
        <B as ModelBackend>::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    /// `gelu_tanh(self.forward(x))`, fused where the backend can.
    ///
    /// # Shapes
    /// `[..., d_in]` → `[..., d_out]`
    pub fn forward_gelu_tanh<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: ModelBackend,
    {
        B::linear_gelu_tanh(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// `torch.nn.LayerNorm` over the last dimension, with optional affine parameters.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[d]`, absent when `elementwise_affine=False`.
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// `[d]`, absent when `elementwise_affine=False`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Loads `{name}.weight` and `{name}.bias` when `affine`.
    pub fn load(vb: &mut VarBuilder<'_, B>, name: &str, d: usize, eps: f64, affine: bool) -> Result<Self> {
        let mut vb = vb.pp(name);
        let (weight, bias) = if affine {
            (Some(vb.param("weight", [d], Init::Ones)?), Some(vb.param("bias", [d], Init::Zeros)?))
        } else {
            (None, None)
        };
        Ok(Self { weight, bias, eps })
    }

    /// # Shapes
    /// `[..., d]` → `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: ModelBackend,
    {
        let (w, b) = (self.weight.as_ref().map(|w| w.val()), self.bias.as_ref().map(|b| b.val()));
        <B as ModelBackend>::layer_norm(x, w, b, self.eps)
    }

    /// adaLN modulation: `self.forward(x)·(1 + scale) + shift`, fused where the backend can.
    ///
    /// # Shapes
    /// `x`: `[B, N, d]`, `scale`, `shift`: `[B, 1, d]` → `[B, N, d]`
    pub fn forward_modulated(&self, x: Tensor<B, 3>, scale: Tensor<B, 3>, shift: Tensor<B, 3>) -> Tensor<B, 3>
    where
        B: ModelBackend,
    {
        let (w, b) = (self.weight.as_ref().map(|w| w.val()), self.bias.as_ref().map(|b| b.val()));
        B::layer_norm_modulate(x, w, b, self.eps, scale, shift)
    }
}

/// GELU with the tanh approximation (`GELU(approximate="tanh")`); see [`crate::ops::generic::gelu_tanh`].
pub fn gelu_tanh<B: ModelBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    B::gelu_tanh(x)
}

/// `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// `time_embedding.linear_1`.
    pub linear_1: Linear<B>,
    /// `time_embedding.linear_2`.
    pub linear_2: Linear<B>,
}

impl<B: ModelBackend> TimestepEmbedding<B> {
    /// Loads `{name}.linear_1` (`d_in → d_out`) and `{name}.linear_2` (`d_out → d_out`).
    pub fn load(vb: &mut VarBuilder<'_, B>, name: &str, d_in: usize, d_out: usize) -> Result<Self> {
        let mut vb = vb.pp(name);
        Ok(Self {
            linear_1: Linear::load(&mut vb, "linear_1", d_in, d_out, true)?,
            linear_2: Linear::load(&mut vb, "linear_2", d_out, d_out, true)?,
        })
    }

    /// # Shapes
    /// `[B, in]` → `[B, time_embed_dim]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// `FeedForward` with `GELU(approximate="tanh")`: `net.2(gelu(net.0.proj(x)))`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `net.0.proj`.
    pub net_0_proj: Linear<B>,
    /// `net.2`.
    pub net_2: Linear<B>,
}

impl<B: ModelBackend> FeedForward<B> {
    /// Loads `ff.net.0.proj` (`dim → 4·dim`) and `ff.net.2`.
    pub fn load(vb: &mut VarBuilder<'_, B>, dim: usize) -> Result<Self> {
        Self::load_named(vb, "ff", dim)
    }

    /// Loads `{name}.net.0.proj` (`dim → 4·dim`) and `{name}.net.2` (FLUX's `ff_context`).
    pub fn load_named(vb: &mut VarBuilder<'_, B>, name: &str, dim: usize) -> Result<Self> {
        Self::load_inner(vb, name, dim, 4 * dim)
    }

    /// Loads `{name}.net.0.proj` (`dim → inner`) and `{name}.net.2` (`inner → dim`; Wan's `ffn`, `ffn_dim` wide).
    pub fn load_inner(vb: &mut VarBuilder<'_, B>, name: &str, dim: usize, inner: usize) -> Result<Self> {
        let mut vb = vb.pp(name);
        Ok(Self {
            net_0_proj: Linear::load(&mut vb, "net.0.proj", dim, inner, true)?,
            net_2: Linear::load(&mut vb, "net.2", inner, dim, true)?,
        })
    }

    /// # Shapes
    /// `[B, L, D]` → `[B, L, D]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.net_2.forward(self.net_0_proj.forward_gelu_tanh(x))
    }
}

/// `torch.nn.RMSNorm` over the last dimension: `x / √(mean(x²) + eps) · weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[d]`, absent when `elementwise_affine=False`.
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: ModelBackend> RmsNorm<B> {
    /// Loads `{name}.weight` when `affine`.
    pub fn load(vb: &mut VarBuilder<'_, B>, name: &str, d: usize, eps: f64, affine: bool) -> Result<Self> {
        let weight = if affine { Some(vb.pp(name).param("weight", [d], Init::Ones)?) } else { None };
        Ok(Self { weight, eps })
    }

    /// # Shapes
    /// `[..., d]` → `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::rms_norm(x, self.weight.as_ref().map(|w| w.val()), self.eps)
    }
}

/// diffusers' `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`: each pair `(x₀, x₁)` of the head
/// dimension becomes `(x₀·cos − x₁·sin, x₁·cos + x₀·sin)`, with `cos`/`sin` repeated per pair.
///
/// # Shapes
/// `x`: `[B, H, L, hd]`, `cos`, `sin`: `[1, 1, L, hd]` → `[B, H, L, hd]`
pub fn apply_rotary<B: ModelBackend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    B::rotary(x, cos.clone(), sin.clone())
}
