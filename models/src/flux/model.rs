//! `FluxTransformer2DModel`, read top to bottom as diffusers 0.42.1 writes it
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/transformer_flux.py>):
//! `FluxAttnProcessor.__call__` (l. 75–144), `FluxSingleTransformerBlock` (l. 343–405), `FluxTransformerBlock`
//! (l. 408–500), `FluxPosEmbed` (l. 503–532), `FluxTransformer2DModel.forward` (l. 683–821).
//!
//! Field names are diffusers' attribute names (`transformer_blocks.3.attn.add_q_proj.weight`); sequential
//! containers are the exception Rust forces (`attn.to_out.0` is `attn.to_out`, `ff.net.0.proj` is
//! `ff.net_0_proj`).
//!
//! Cache hooks: the block stack is the double-stream blocks followed by the single-stream blocks, with
//! `transformer_blocks.0` as the head block (diffusers' FBC and MagCache registry: both block kinds return
//! `(encoder_hidden_states, hidden_states)`, index 1 the image stream, which is [`JointStates::hidden`]);
//! attention sites `transformer_blocks.{i}.attn` and `single_transformer_blocks.{i}.attn` (spatial: joint
//! attention over text and image tokens); module sites `ff`, `ff_context`, `proj_mlp`, `proj_out`.

use burn::module::Module;
use crate::ops::generic::silu;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use cache_core::{
    attention_site, block_stack, module_site, step_signal, AttentionKind, AttentionSite, BatchPlan, CacheStrategy,
    CallContext, HostInfo, JointStates, ModuleSite,
};

use super::config::FluxConfig;
use crate::embeddings;
use crate::error::{ModelError, Result};
use crate::input::checked;
use crate::nn::{apply_rotary, gelu_tanh, FeedForward, LayerNorm, Linear, RmsNorm, TimestepEmbedding};
use crate::ops::ModelBackend;
use crate::weights::{VarBuilder, WeightSource};

/// The rotary tables of one generation's token ids (`FluxPosEmbed` of `cat(txt_ids, img_ids)`), computed once
/// ([`FluxTransformer2DModel::positions`]) and passed to every forward.
#[derive(Debug, Clone)]
pub struct FluxPositions<B: Backend> {
    /// `[1, 1, S + L, head_dim]`.
    pub cos: Tensor<B, 4>,
    /// `[1, 1, S + L, head_dim]`.
    pub sin: Tensor<B, 4>,
    /// `S`, the text tokens (first in the joint sequence).
    pub text_tokens: usize,
    /// `L`, the image tokens.
    pub image_tokens: usize,
}

/// One FLUX denoiser call's inputs (`FluxTransformer2DModel.forward`'s arguments; the ids are in
/// [`FluxPositions`]).
///
/// # Shapes
/// - `hidden_states`: `[B, L, in_channels]` (packed latents)
/// - `encoder_hidden_states`: `[B, S, joint_attention_dim]`
/// - `pooled_projections`: `[B, pooled_projection_dim]`
/// - `timestep`, `guidance`: `B` values
#[derive(Debug, Clone)]
pub struct FluxInput<B: Backend> {
    /// Packed latents.
    pub hidden_states: Tensor<B, 3>,
    /// Prompt embeddings (T5).
    pub encoder_hidden_states: Tensor<B, 3>,
    /// Pooled prompt embedding (CLIP).
    pub pooled_projections: Tensor<B, 2>,
    /// One timestep per sample, as the pipeline passes it (the scheduler's timestep / 1000).
    pub timestep: Vec<f32>,
    /// The distilled guidance scale per sample; required exactly when the config has `guidance_embeds`.
    pub guidance: Option<Vec<f32>>,
}

/// `PixArtAlphaTextProjection(act_fn="silu")`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TextProjection<B: Backend> {
    /// `linear_1`.
    pub linear_1: Linear<B>,
    /// `linear_2`.
    pub linear_2: Linear<B>,
}

/// `CombinedTimestepTextProjEmbeddings`, or `CombinedTimestepGuidanceTextProjEmbeddings` with a guidance
/// embedder (`guidance_embeds`).
#[derive(Module, Debug)]
pub struct TimeTextEmbed<B: Backend> {
    /// `timestep_embedder` (256 sinusoidal channels in).
    pub timestep_embedder: TimestepEmbedding<B>,
    /// `guidance_embedder`.
    pub guidance_embedder: Option<TimestepEmbedding<B>>,
    /// `text_embedder`.
    pub text_embedder: TextProjection<B>,
}

/// `Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)` of `t · 1000` in float32
/// (the model multiplies the pipeline's `t / 1000` back, l. 737–740).
fn time_proj<B: Backend>(t: &[f32], device: &B::Device) -> Tensor<B, 2> {
    let scaled: Vec<f32> = t.iter().map(|t| t * 1000.0).collect();
    let data = embeddings::timestep_embedding(&scaled, 256, true, 0.0);
    Tensor::from_data(TensorData::new(data, [t.len(), 256]), device)
}

impl<B: ModelBackend> TimeTextEmbed<B> {
    fn load(vb: &mut VarBuilder<'_, B>, cfg: &FluxConfig) -> Result<Self> {
        let mut vb = vb.pp("time_text_embed");
        let d = cfg.inner_dim();
        let timestep_embedder = TimestepEmbedding::load(&mut vb, "timestep_embedder", 256, d)?;
        let guidance_embedder =
            if cfg.guidance_embeds { Some(TimestepEmbedding::load(&mut vb, "guidance_embedder", 256, d)?) } else { None };
        let mut te = vb.pp("text_embedder");
        let text_embedder = TextProjection {
            linear_1: Linear::load(&mut te, "linear_1", cfg.pooled_projection_dim, d, true)?,
            linear_2: Linear::load(&mut te, "linear_2", d, d, true)?,
        };
        Ok(Self { timestep_embedder, guidance_embedder, text_embedder })
    }

    /// # Shapes
    /// `pooled`: `[B, P]` → `[B, D]`
    fn forward(&self, timestep: &[f32], guidance: Option<&[f32]>, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = pooled.device();
        let mut temb = self.timestep_embedder.forward(time_proj(timestep, &device));
        if let (Some(embedder), Some(g)) = (&self.guidance_embedder, guidance) {
            temb = temb + embedder.forward(time_proj(g, &device));
        }
        let p = &self.text_embedder;
        temb + p.linear_2.forward(silu(p.linear_1.forward(pooled)))
    }
}

/// `AdaLayerNormZero` (6 modulations) or `AdaLayerNormZeroSingle` (3): `linear(silu(temb))` chunks and a
/// LayerNorm without affine parameters (eps 1e-6).
#[derive(Module, Debug)]
pub struct AdaNormZero<B: Backend> {
    /// `linear`: `D → chunks·D`.
    pub linear: Linear<B>,
    /// `norm`.
    pub norm: LayerNorm<B>,
}

impl<B: ModelBackend> AdaNormZero<B> {
    fn load(vb: &mut VarBuilder<'_, B>, name: &str, d: usize, chunks: usize) -> Result<Self> {
        let mut vb = vb.pp(name);
        Ok(Self { linear: Linear::load(&mut vb, "linear", d, chunks * d, true)?, norm: LayerNorm::load(&mut vb, "norm", d, 1e-6, false)? })
    }

    /// The modulations as `[B, 1, D]` each, in diffusers' chunk order.
    fn mods<const N: usize>(&self, temb: &Tensor<B, 2>) -> [Tensor<B, 3>; N] {
        let chunks = self.linear.forward(silu(temb.clone())).unsqueeze_dim::<3>(1).chunk(N, 2);
        chunks.try_into().unwrap_or_else(|_| unreachable!("the linear has N·D outputs"))
    }
}

/// `FluxAttention` with `FluxAttnProcessor`: RMS-normalised per-head queries and keys, the text stream's own
/// projections (`add_*_proj`, double-stream blocks), rotary positions over `[text, image]` tokens.
#[derive(Module, Debug)]
pub struct FluxAttention<B: Backend> {
    /// `to_q`.
    pub to_q: Linear<B>,
    /// `to_k`.
    pub to_k: Linear<B>,
    /// `to_v`.
    pub to_v: Linear<B>,
    /// `norm_q` (RMSNorm, eps 1e-6).
    pub norm_q: RmsNorm<B>,
    /// `norm_k`.
    pub norm_k: RmsNorm<B>,
    /// `add_q_proj` (double-stream blocks).
    pub add_q_proj: Option<Linear<B>>,
    /// `add_k_proj`.
    pub add_k_proj: Option<Linear<B>>,
    /// `add_v_proj`.
    pub add_v_proj: Option<Linear<B>>,
    /// `norm_added_q`.
    pub norm_added_q: Option<RmsNorm<B>>,
    /// `norm_added_k`.
    pub norm_added_k: Option<RmsNorm<B>>,
    /// `to_out.0` (absent in single-stream blocks: `pre_only`).
    pub to_out: Option<Linear<B>>,
    /// `to_add_out`.
    pub to_add_out: Option<Linear<B>>,
    /// Number of heads.
    pub heads: usize,
}

impl<B: ModelBackend> FluxAttention<B> {
    fn load(vb: &mut VarBuilder<'_, B>, cfg: &FluxConfig, joint: bool) -> Result<Self> {
        let mut vb = vb.pp("attn");
        let (d, hd) = (cfg.inner_dim(), cfg.attention_head_dim);
        let opt = |vb: &mut VarBuilder<'_, B>, name: &str| -> Result<Option<Linear<B>>> {
            if joint { Linear::load(vb, name, d, d, true).map(Some) } else { Ok(None) }
        };
        let to_q = Linear::load(&mut vb, "to_q", d, d, true)?;
        let to_k = Linear::load(&mut vb, "to_k", d, d, true)?;
        let to_v = Linear::load(&mut vb, "to_v", d, d, true)?;
        let norm_q = RmsNorm::load(&mut vb, "norm_q", hd, 1e-6, true)?;
        let norm_k = RmsNorm::load(&mut vb, "norm_k", hd, 1e-6, true)?;
        let add_q_proj = opt(&mut vb, "add_q_proj")?;
        let add_k_proj = opt(&mut vb, "add_k_proj")?;
        let add_v_proj = opt(&mut vb, "add_v_proj")?;
        let to_out = opt(&mut vb, "to_out.0")?;
        let to_add_out = opt(&mut vb, "to_add_out")?;
        let (norm_added_q, norm_added_k) = if joint {
            (Some(RmsNorm::load(&mut vb, "norm_added_q", hd, 1e-6, true)?), Some(RmsNorm::load(&mut vb, "norm_added_k", hd, 1e-6, true)?))
        } else {
            (None, None)
        };
        Ok(Self {
            to_q, to_k, to_v, norm_q, norm_k, add_q_proj, add_k_proj, add_v_proj, norm_added_q, norm_added_k, to_out,
            to_add_out, heads: cfg.num_attention_heads,
        })
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, l, d] = x.dims();
        x.reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2)
    }

    /// `softmax(q kᵀ/√hd) v` over the rotated `[text, image]` heads, back to `[B, S + L, D]`.
    fn attend(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, pos: &FluxPositions<B>) -> Tensor<B, 3> {
        let [b, h, l, hd] = q.dims();
        let (q, k) = (apply_rotary(q, &pos.cos, &pos.sin), apply_rotary(k, &pos.cos, &pos.sin));
        <B as ModelBackend>::attention(q, k, v).swap_dims(1, 2).reshape([b, l, h * hd])
    }

    /// The text stream's projections of a double-stream attention; an error for a single-stream one.
    fn text_stream(&self) -> Result<TextStream<'_, B>> {
        match (
            &self.add_q_proj, &self.add_k_proj, &self.add_v_proj, &self.norm_added_q, &self.norm_added_k, &self.to_out,
            &self.to_add_out,
        ) {
            (Some(q), Some(k), Some(v), Some(norm_q), Some(norm_k), Some(out), Some(add_out)) => {
                Ok(TextStream { q, k, v, norm_q, norm_k, out, add_out })
            }
            _ => Err(ModelError::InvalidConfig("a single-stream attention has no text-stream projections".into())),
        }
    }

    /// The double-stream attention: image and text tokens with their own projections ([`Self::text_stream`]),
    /// attended jointly.
    ///
    /// # Shapes
    /// `image`: `[B, L, D]`, `text`: `[B, S, D]` → the same shapes
    fn forward_joint(&self, t: &TextStream<'_, B>, image: Tensor<B, 3>, text: Tensor<B, 3>, pos: &FluxPositions<B>) -> JointStates<B> {
        let s = text.dims()[1];
        let q = Tensor::cat(vec![t.norm_q.forward(self.heads(t.q.forward(text.clone()))), self.norm_q.forward(self.heads(self.to_q.forward(image.clone())))], 2);
        let k = Tensor::cat(vec![t.norm_k.forward(self.heads(t.k.forward(text.clone()))), self.norm_k.forward(self.heads(self.to_k.forward(image.clone())))], 2);
        let v = Tensor::cat(vec![self.heads(t.v.forward(text)), self.heads(self.to_v.forward(image))], 2);
        let o = self.attend(q, k, v, pos);
        let l = o.dims()[1];
        JointStates::joint(t.out.forward(o.clone().narrow(1, s, l - s)), t.add_out.forward(o.narrow(1, 0, s)))
    }

    /// The single-stream attention over the concatenated `[text, image]` tokens (no output projection).
    ///
    /// # Shapes
    /// `x`: `[B, S + L, D]` → `[B, S + L, D]`
    pub fn forward_single(&self, x: Tensor<B, 3>, pos: &FluxPositions<B>) -> Tensor<B, 3> {
        let q = self.norm_q.forward(self.heads(self.to_q.forward(x.clone())));
        let k = self.norm_k.forward(self.heads(self.to_k.forward(x.clone())));
        let v = self.heads(self.to_v.forward(x));
        self.attend(q, k, v, pos)
    }
}

/// The weights a double-stream attention has beyond a single-stream one (`add_*_proj`, `norm_added_*`,
/// `to_out.0`, `to_add_out`), borrowed once they are known to be there.
struct TextStream<'a, B: Backend> {
    q: &'a Linear<B>,
    k: &'a Linear<B>,
    v: &'a Linear<B>,
    norm_q: &'a RmsNorm<B>,
    norm_k: &'a RmsNorm<B>,
    out: &'a Linear<B>,
    add_out: &'a Linear<B>,
}

/// `FluxTransformerBlock`: separate image and text weights, joint attention, then a feed-forward per stream.
#[derive(Module, Debug)]
pub struct FluxTransformerBlock<B: Backend> {
    /// `norm1` (image stream).
    pub norm1: AdaNormZero<B>,
    /// `norm1_context` (text stream).
    pub norm1_context: AdaNormZero<B>,
    /// `attn`.
    pub attn: FluxAttention<B>,
    /// `norm2` (no affine, eps 1e-6).
    pub norm2: LayerNorm<B>,
    /// `ff`.
    pub ff: FeedForward<B>,
    /// `norm2_context`.
    pub norm2_context: LayerNorm<B>,
    /// `ff_context`.
    pub ff_context: FeedForward<B>,
    /// Index in `transformer_blocks`.
    pub index: usize,
}

/// A denoiser-call output back from its 5-D travel form `[B, 1, L, C, 1]` (checked: a strategy handed it back).
fn flat<B: Backend>(out: Tensor<B, 5>, l: usize) -> Result<Tensor<B, 3>> {
    match out.dims() {
        [b, 1, ol, c, 1] if ol == l => Ok(out.reshape([b, l, c])),
        dims => Err(ModelError::Strategy(format!("the strategy's call output has shape {dims:?}, expected [_, 1, {l}, _, 1]"))),
    }
}

/// Both streams of a state; a strategy that dropped the text stream is an error.
fn streams<B: Backend>(x: JointStates<B>) -> Result<(Tensor<B, 3>, Tensor<B, 3>)> {
    match x.encoder {
        Some(encoder) => Ok((x.hidden, encoder)),
        None => Err(ModelError::Strategy("FLUX blocks need the text stream; the strategy returned none".into())),
    }
}

impl<B: ModelBackend> FluxTransformerBlock<B> {
    fn load(vb: &mut VarBuilder<'_, B>, index: usize, cfg: &FluxConfig) -> Result<Self> {
        let mut vb = vb.pp(index);
        let d = cfg.inner_dim();
        Ok(Self {
            norm1: AdaNormZero::load(&mut vb, "norm1", d, 6)?,
            norm1_context: AdaNormZero::load(&mut vb, "norm1_context", d, 6)?,
            attn: FluxAttention::load(&mut vb, cfg, true)?,
            norm2: LayerNorm::load(&mut vb, "norm2", d, 1e-6, false)?,
            ff: FeedForward::load_named(&mut vb, "ff", d)?,
            norm2_context: LayerNorm::load(&mut vb, "norm2_context", d, 1e-6, false)?,
            ff_context: FeedForward::load_named(&mut vb, "ff_context", d)?,
            index,
        })
    }

    /// `transformer_blocks.{i}.attn`.
    pub fn site(&self) -> AttentionSite {
        AttentionSite { stack: "transformer_blocks", index: self.index, attn: "attn", kind: AttentionKind::Spatial }
    }

    fn module(&self, name: &'static str) -> ModuleSite {
        ModuleSite { stack: "transformer_blocks", index: self.index, name }
    }

    /// `norm1`'s modulated image stream: TeaCache4FLUX's step signal on the first block.
    fn modulated_input(&self, image: &Tensor<B, 3>, temb: &Tensor<B, 2>) -> Tensor<B, 3> {
        let [shift, scale, ..] = self.norm1.mods::<6>(temb);
        self.norm1.norm.forward_modulated(image.clone(), scale, shift)
    }

    /// # Shapes
    /// `x.hidden`: `[B, L, D]`, `x.encoder`: `[B, S, D]`, `temb`: `[B, D]` → the same shapes
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: JointStates<B>,
        temb: &Tensor<B, 2>,
        pos: &FluxPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<JointStates<B>> {
        let (image, text) = streams(x)?;
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = self.norm1.mods::<6>(temb);
        let [c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp] = self.norm1_context.mods::<6>(temb);
        let n_image = self.norm1.norm.forward_modulated(image.clone(), scale_msa, shift_msa);
        let n_text = self.norm1_context.norm.forward_modulated(text.clone(), c_scale_msa, c_shift_msa);
        let text_stream = self.attn.text_stream()?;
        let attn = attention_site(strategy, ctx, &self.site(), || self.attn.forward_joint(&text_stream, n_image, n_text, pos));
        let (a_image, a_text) = streams(attn)?;
        let dims = image.dims();
        let image = image + gate_msa * a_image;
        let n = self.norm2.forward_modulated(image.clone(), scale_mlp, shift_mlp);
        let ff = module_site(strategy, ctx, &self.module("ff"), || JointStates::single(self.ff.forward(n)));
        let image = image + gate_mlp * checked(ff, dims, &self.module("ff"))?;

        let text_dims = text.dims();
        let text = text + c_gate_msa * a_text;
        let n = self.norm2_context.forward_modulated(text.clone(), c_scale_mlp, c_shift_mlp);
        let ff = module_site(strategy, ctx, &self.module("ff_context"), || JointStates::single(self.ff_context.forward(n)));
        let text = text + c_gate_mlp * checked(ff, text_dims, &self.module("ff_context"))?;
        Ok(JointStates::joint(image, text))
    }
}

/// `FluxSingleTransformerBlock`: one stream of `[text, image]` tokens, attention and MLP in parallel, one
/// output projection of both.
#[derive(Module, Debug)]
pub struct FluxSingleTransformerBlock<B: Backend> {
    /// `norm` (`AdaLayerNormZeroSingle`).
    pub norm: AdaNormZero<B>,
    /// `proj_mlp`: `D → 4·D`.
    pub proj_mlp: Linear<B>,
    /// `attn`.
    pub attn: FluxAttention<B>,
    /// `proj_out`: `5·D → D`.
    pub proj_out: Linear<B>,
    /// Index in `single_transformer_blocks`.
    pub index: usize,
}

impl<B: ModelBackend> FluxSingleTransformerBlock<B> {
    fn load(vb: &mut VarBuilder<'_, B>, index: usize, cfg: &FluxConfig) -> Result<Self> {
        let mut vb = vb.pp(index);
        let d = cfg.inner_dim();
        Ok(Self {
            norm: AdaNormZero::load(&mut vb, "norm", d, 3)?,
            proj_mlp: Linear::load(&mut vb, "proj_mlp", d, 4 * d, true)?,
            attn: FluxAttention::load(&mut vb, cfg, false)?,
            proj_out: Linear::load(&mut vb, "proj_out", 5 * d, d, true)?,
            index,
        })
    }

    /// `single_transformer_blocks.{i}.attn`.
    pub fn site(&self) -> AttentionSite {
        AttentionSite { stack: "single_transformer_blocks", index: self.index, attn: "attn", kind: AttentionKind::Spatial }
    }

    fn module(&self, name: &'static str) -> ModuleSite {
        ModuleSite { stack: "single_transformer_blocks", index: self.index, name }
    }

    /// `norm`'s modulated image tokens (the step signal when the model has no double-stream block).
    fn modulated_input(&self, image: &Tensor<B, 3>, temb: &Tensor<B, 2>) -> Tensor<B, 3> {
        let [shift, scale, _] = self.norm.mods::<3>(temb);
        self.norm.norm.forward_modulated(image.clone(), scale, shift)
    }

    /// # Shapes
    /// `x.hidden`: `[B, L, D]`, `x.encoder`: `[B, S, D]`, `temb`: `[B, D]` → the same shapes
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: JointStates<B>,
        temb: &Tensor<B, 2>,
        pos: &FluxPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<JointStates<B>> {
        let (image, text) = streams(x)?;
        let s = text.dims()[1];
        let x = Tensor::cat(vec![text, image], 1);
        let [b, l, d] = x.dims();
        let [shift, scale, gate] = self.norm.mods::<3>(temb);
        let nx = self.norm.norm.forward_modulated(x.clone(), scale, shift);
        let mlp = module_site(strategy, ctx, &self.module("proj_mlp"), || JointStates::single(self.proj_mlp.forward(nx.clone())));
        let mlp = gelu_tanh(checked(mlp, [b, l, 4 * d], &self.module("proj_mlp"))?);
        let attn = attention_site(strategy, ctx, &self.site(), || {
            let o = self.attn.forward_single(nx, pos);
            JointStates::joint(o.clone().narrow(1, s, l - s), o.narrow(1, 0, s))
        });
        let (a_image, a_text) = streams(attn)?;
        let attn = Tensor::cat(vec![a_text, a_image], 1);
        if attn.dims() != [b, l, d] {
            return Err(ModelError::Strategy(format!("{}: the strategy's output has shape {:?}, the model needs {:?}", self.site(), attn.dims(), [b, l, d])));
        }
        let out = module_site(strategy, ctx, &self.module("proj_out"), || {
            JointStates::single(self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2)))
        });
        let x = x + gate * checked(out, [b, l, d], &self.module("proj_out"))?;
        Ok(JointStates::joint(x.clone().narrow(1, s, l - s), x.narrow(1, 0, s)))
    }
}

/// `AdaLayerNormContinuous`: `norm(x)·(1 + scale) + shift` with `(scale, shift)` (in that order) from `temb`.
#[derive(Module, Debug)]
pub struct AdaNormContinuous<B: Backend> {
    /// `norm_out.linear`.
    pub linear: Linear<B>,
    /// `norm_out.norm` (no affine, eps 1e-6).
    pub norm: LayerNorm<B>,
}

/// One block of the stack, either kind.
enum StackBlock<'a, B: ModelBackend> {
    Double(&'a FluxTransformerBlock<B>),
    Single(&'a FluxSingleTransformerBlock<B>),
}

impl<B: ModelBackend> StackBlock<'_, B> {
    fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: JointStates<B>,
        temb: &Tensor<B, 2>,
        pos: &FluxPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<JointStates<B>> {
        match self {
            StackBlock::Double(b) => b.forward(x, temb, pos, ctx, strategy),
            StackBlock::Single(b) => b.forward(x, temb, pos, ctx, strategy),
        }
    }
}

/// The FLUX.1 transformer.
#[derive(Module, Debug)]
pub struct FluxTransformer2DModel<B: Backend> {
    /// `time_text_embed`.
    pub time_text_embed: TimeTextEmbed<B>,
    /// `context_embedder`.
    pub context_embedder: Linear<B>,
    /// `x_embedder`.
    pub x_embedder: Linear<B>,
    /// `transformer_blocks` (double-stream).
    pub transformer_blocks: Vec<FluxTransformerBlock<B>>,
    /// `single_transformer_blocks`.
    pub single_transformer_blocks: Vec<FluxSingleTransformerBlock<B>>,
    /// `norm_out`.
    pub norm_out: AdaNormContinuous<B>,
    /// `proj_out`.
    pub proj_out: Linear<B>,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: FluxConfig,
}

impl<B: ModelBackend> FluxTransformer2DModel<B> {
    /// Builds the model from a weight source (a checkpoint, or random weights from a seed), checking every
    /// weight's name and shape; a checkpoint with weights the model does not use is refused.
    pub fn load(config: &FluxConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self> {
        config.validate()?;
        crate::weights::check_dtype::<B>("FluxTransformer2DModel", weights.dtype(), false, device)?;
        let cfg = config;
        let d = cfg.inner_dim();
        let mut vb = VarBuilder::new(weights, device);
        let time_text_embed = TimeTextEmbed::load(&mut vb, cfg)?;
        let context_embedder = Linear::load(&mut vb, "context_embedder", cfg.joint_attention_dim, d, true)?;
        let x_embedder = Linear::load(&mut vb, "x_embedder", cfg.in_channels, d, true)?;
        let mut blocks = vb.pp("transformer_blocks");
        let transformer_blocks =
            (0..cfg.num_layers).map(|i| FluxTransformerBlock::load(&mut blocks, i, cfg)).collect::<Result<Vec<_>>>()?;
        let mut blocks = vb.pp("single_transformer_blocks");
        let single_transformer_blocks = (0..cfg.num_single_layers)
            .map(|i| FluxSingleTransformerBlock::load(&mut blocks, i, cfg))
            .collect::<Result<Vec<_>>>()?;
        let mut no = vb.pp("norm_out");
        let norm_out = AdaNormContinuous {
            linear: Linear::load(&mut no, "linear", d, 2 * d, true)?,
            norm: LayerNorm::load(&mut no, "norm", d, 1e-6, false)?,
        };
        let proj_out = Linear::load(&mut vb, "proj_out", d, cfg.patch_size * cfg.patch_size * cfg.out_channels(), true)?;
        weights.finish()?;
        Ok(Self {
            time_text_embed,
            context_embedder,
            x_embedder,
            transformer_blocks,
            single_transformer_blocks,
            norm_out,
            proj_out,
            config: config.clone(),
        })
    }

    /// Loads a diffusers model directory (`config.json` and its safetensors, single or sharded, any float dtype).
    pub fn from_pretrained(dir: &std::path::Path, device: &B::Device) -> Result<Self> {
        let config = FluxConfig::from_json_file(&dir.join("config.json"))?;
        let mut weights = WeightSource::from_model_dir(dir)?;
        Self::load(&config, &mut weights, device)
    }

    /// What this model offers to cache engines: its attention sites, its module sites (`ff`, `ff_context`,
    /// `proj_mlp`, `proj_out`), its block count (double + single) and diffusers' names of all its modules.
    pub fn host_info(&self) -> HostInfo {
        let double = self.transformer_blocks.iter();
        let single = self.single_transformer_blocks.iter();
        let mut modules: Vec<ModuleSite> = double.clone().flat_map(|b| [b.module("ff"), b.module("ff_context")]).collect();
        modules.extend(single.clone().flat_map(|b| [b.module("proj_mlp"), b.module("proj_out")]));
        HostInfo {
            sites: double.map(FluxTransformerBlock::site).chain(single.map(FluxSingleTransformerBlock::site)).collect(),
            num_blocks: self.transformer_blocks.len() + self.single_transformer_blocks.len(),
            tensor_format: "BLC".into(),
            modules,
            module_names: crate::host::flux_names(&self.config),
            step_signal: Some(match self.transformer_blocks.is_empty() {
                false => "transformer_blocks.0.norm1".into(),
                true => "single_transformer_blocks.0.norm".into(),
            }),
            other_step_signals: Vec::new(),
            per_branch_calls: true,
            hands_sigma: false,
        }
    }

    /// The share of a block's work done by attention at `tokens` joint tokens (text + image), as
    /// `host::block_shares` counts it (double- and single-stream blocks alike).
    pub fn attention_share(&self, tokens: usize) -> f64 {
        crate::host::block_shares(self.config.inner_dim(), tokens).0
    }

    /// The share of a block's work done by its feed-forward (`ff`, `ff_context`; single-stream: `proj_mlp` and
    /// its part of `proj_out`), as `host::block_shares` counts it.
    pub fn ff_share(&self, tokens: usize) -> f64 {
        crate::host::block_shares(self.config.inner_dim(), tokens).1
    }

    /// The rotary tables of `cat(txt_ids, img_ids)` (`FluxPosEmbed(theta=10000)`): per axis, frequencies
    /// `1 / 10000^(2j/d)` and angles in float64 (`freqs_dtype=float64` on CPU and CUDA), each repeated per pair,
    /// cast to float32.
    ///
    /// # Shapes
    /// `txt_ids`: `S` rows, `img_ids`: `L` rows of 3 ids → tables `[1, 1, S + L, head_dim]`
    pub fn positions(&self, txt_ids: &[[f32; 3]], img_ids: &[[f32; 3]], device: &B::Device) -> FluxPositions<B> {
        let hd = self.config.attention_head_dim;
        let n = txt_ids.len() + img_ids.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n * hd), Vec::with_capacity(n * hd));
        for ids in txt_ids.iter().chain(img_ids) {
            for (&pos, &dim) in ids.iter().zip(&self.config.axes_dims_rope) {
                for j in 0..dim / 2 {
                    let freq = 1.0 / 10000f64.powf((2 * j) as f64 / dim as f64);
                    let angle = pos as f64 * freq;
                    let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                    cos.extend([c, c]);
                    sin.extend([s, s]);
                }
            }
        }
        let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, n, hd]), device);
        FluxPositions { cos: t(cos), sin: t(sin), text_tokens: txt_ids.len(), image_tokens: img_ids.len() }
    }

    fn check(&self, x: &FluxInput<B>, pos: &FluxPositions<B>, ctx: &CallContext) -> Result<()> {
        let cfg = &self.config;
        let [b, l, c] = x.hidden_states.dims();
        let [eb, s, ed] = x.encoder_hidden_states.dims();
        let [pb, pd] = x.pooled_projections.dims();
        if c != cfg.in_channels {
            return Err(ModelError::Shape(format!("hidden_states has {c} channels, config in_channels is {}", cfg.in_channels)));
        }
        if eb != b || ed != cfg.joint_attention_dim {
            return Err(ModelError::Shape(format!("encoder_hidden_states is [{eb}, _, {ed}], expected [{b}, _, {}]", cfg.joint_attention_dim)));
        }
        if pb != b || pd != cfg.pooled_projection_dim {
            return Err(ModelError::Shape(format!("pooled_projections is [{pb}, {pd}], expected [{b}, {}]", cfg.pooled_projection_dim)));
        }
        if pos.text_tokens != s || pos.image_tokens != l {
            return Err(ModelError::Shape(format!(
                "ids for {} text and {} image tokens, the input has {s} and {l}",
                pos.text_tokens, pos.image_tokens
            )));
        }
        if x.timestep.len() != b {
            return Err(ModelError::Shape(format!("{} timesteps for a batch of {b}", x.timestep.len())));
        }
        match (&x.guidance, cfg.guidance_embeds) {
            (None, true) => return Err(ModelError::Shape("guidance_embeds: the model needs a guidance value per sample".into())),
            (Some(_), false) => {
                return Err(ModelError::Shape("the model has no guidance embedder (guidance_embeds: false); pass no guidance".into()))
            }
            (Some(g), true) if g.len() != b => return Err(ModelError::Shape(format!("{} guidance values for a batch of {b}", g.len()))),
            _ => {}
        }
        if ctx.batch_size != b {
            return Err(ModelError::Shape(format!("context says batch {}, input has {b}", ctx.batch_size)));
        }
        Ok(())
    }

    /// The denoiser call, with a cache strategy at its hook points. A FLUX call holds one guidance branch
    /// (the pipeline calls the model per branch, in cache contexts `cond` / `uncond`), so a strategy that
    /// asks for the conditional half of a batch is refused.
    ///
    /// # Shapes
    /// returns `[B, L, patch_size² · out_channels]`
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: FluxInput<B>,
        pos: &FluxPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 3>> {
        self.check(&input, pos, ctx)?;
        // The denoiser-call hooks speak 5-D latents: a `[B, L, C]` tensor travels as `[B, 1, L, C, 1]`.
        let [b, l, c] = input.hidden_states.dims();
        let latents = input.hidden_states.clone().reshape([b, 1, l, c, 1]);
        if let Some(out) = strategy.reuse_call(ctx, &latents) {
            return flat(out, l);
        }
        if strategy.begin_forward(ctx) == BatchPlan::CondOnly {
            return Err(ModelError::Strategy(format!(
                "the strategy asked for the conditional half of a `{}` call; FLUX runs each guidance branch as its own call",
                ctx.branch.context_name()
            )));
        }
        let out = self.forward_blocks(input, pos, ctx, strategy)?;
        let [b, l, c] = out.dims();
        let out = strategy.end_forward(ctx, out.reshape([b, 1, l, c, 1]));
        strategy.after_call(ctx, &latents, &out);
        flat(out, l)
    }

    fn forward_blocks<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: FluxInput<B>,
        pos: &FluxPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 3>> {
        let image = self.x_embedder.forward(input.hidden_states);
        let temb = self.time_text_embed.forward(&input.timestep, input.guidance.as_deref(), input.pooled_projections);
        let text = self.context_embedder.forward(input.encoder_hidden_states);

        let blocks: Vec<StackBlock<'_, B>> = self
            .transformer_blocks
            .iter()
            .map(StackBlock::Double)
            .chain(self.single_transformer_blocks.iter().map(StackBlock::Single))
            .collect();
        let (head, tail) = blocks.split_first().ok_or_else(|| ModelError::InvalidConfig("no blocks".into()))?;
        step_signal(strategy, ctx, || match head {
            StackBlock::Double(b) => b.modulated_input(&image, &temb),
            StackBlock::Single(b) => b.modulated_input(&image, &temb),
        });
        let x = block_stack(
            strategy,
            ctx,
            JointStates::joint(image, text),
            |s, x| head.forward(x, &temb, pos, ctx, s),
            |s, x| tail.iter().try_fold(x, |y, block| block.forward(y, &temb, pos, ctx, s)),
        )?;

        let [scale, shift]: [Tensor<B, 3>; 2] = self
            .norm_out
            .linear
            .forward(silu(temb))
            .unsqueeze_dim::<3>(1)
            .chunk(2, 2)
            .try_into()
            .unwrap_or_else(|_| unreachable!("the linear has 2·D outputs"));
        let hidden = self.norm_out.norm.forward_modulated(x.hidden, scale, shift);
        Ok(self.proj_out.forward(hidden))
    }
}
