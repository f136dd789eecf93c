//! `CogVideoXTransformer3DModel`, read top to bottom as diffusers 0.42 writes it
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/cogvideox_transformer_3d.py>).
//!
//! Field names are diffusers' attribute names, so `transformer_blocks.3.attn1.to_q.weight` is
//! `model.transformer_blocks[3].attn1.to_q.weight`. Sequential containers are the exception Rust forces:
//! `attn1.to_out.0` is `attn1.to_out`, `ff.net.0.proj` is `ff.net_0_proj` and `ff.net.2` is `ff.net_2`.

use burn::module::Module;
use crate::ops::generic::silu;
use burn::tensor::{backend::Backend, FloatDType, Tensor, TensorData};
use cache_core::{
    attention_site, block_stack, module_site, step_signal, AttentionKind, AttentionSite, CacheStrategy, CallContext,
    HostInfo, JointStates, ModuleSite,
};

use super::config::CogVideoXConfig;
use crate::embeddings;
use crate::error::{ModelError, Result};
use crate::input::{checked, denoiser_call, ForwardInput};
use crate::nn::{FeedForward, LayerNorm, Linear, TimestepEmbedding};
use crate::ops::ModelBackend;
use crate::weights::{HostTensor, VarBuilder, WeightSource};

/// Positional information for one input size, computed once per generation
/// ([`CogVideoXTransformer3DModel::positions`]) and passed to every forward.
#[derive(Debug, Clone)]
pub enum Positions<B: Backend> {
    /// CogVideoX-2b: sin-cos table added to the video tokens after patch embedding, `[1, tokens, inner_dim]`.
    SinCos(Tensor<B, 3>),
    /// CogVideoX-5b: rotary cos and sin applied to video-token queries and keys, each `[1, 1, tokens, head_dim]`.
    Rotary {
        /// cos table.
        cos: Tensor<B, 4>,
        /// sin table.
        sin: Tensor<B, 4>,
    },
}

impl<B: Backend> Positions<B> {
    fn tokens(&self) -> usize {
        match self {
            Positions::SinCos(t) => t.dims()[1],
            Positions::Rotary { cos, .. } => cos.dims()[2],
        }
    }
}

/// `CogVideoXPatchEmbed` (CogVideoX 1.0: a patch convolution and a text projection).
#[derive(Module, Debug)]
pub struct CogVideoXPatchEmbed<B: Backend> {
    /// `patch_embed.proj` (a `Conv2d` with kernel = stride = patch size, held as a linear map on patches).
    pub proj: Linear<B>,
    /// `patch_embed.text_proj`.
    pub text_proj: Linear<B>,
    /// Spatial patch size.
    pub patch_size: usize,
}

impl<B: ModelBackend> CogVideoXPatchEmbed<B> {
    fn load(vb: &mut VarBuilder<'_, B>, cfg: &CogVideoXConfig) -> Result<Self> {
        let d = cfg.inner_dim();
        Ok(Self {
            proj: Linear::load_patch_conv(vb, "proj", cfg.in_channels, cfg.patch_size, d, cfg.patch_bias)?,
            text_proj: Linear::load(vb, "text_proj", cfg.text_embed_dim, d, true)?,
            patch_size: cfg.patch_size,
        })
    }

    /// # Shapes
    /// - `text`: `[B, S, text_embed_dim]` → `[B, S, D]`
    /// - `video`: `[B, F, C, H, W]` → `[B, F·(H/p)·(W/p), D]`, tokens in (frame, row, column) order
    pub fn forward(&self, text: Tensor<B, 3>, video: Tensor<B, 5>) -> JointStates<B> {
        let [b, f, c, h, w] = video.dims();
        let p = self.patch_size;
        let (hp, wp) = (h / p, w / p);
        let patches = video
            .reshape([b * f, c, hp, p, wp, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, f * hp * wp, c * p * p]);
        JointStates::joint(self.proj.forward(patches), self.text_proj.forward(text))
    }
}

/// `CogVideoXLayerNormZero`: one LayerNorm shared by both streams, each modulated by its own
/// shift/scale from the time embedding, plus the two gates.
#[derive(Module, Debug)]
pub struct CogVideoXLayerNormZero<B: Backend> {
    /// `linear`: `time_embed_dim → 6·dim`.
    pub linear: Linear<B>,
    /// `norm`.
    pub norm: LayerNorm<B>,
}

/// Outputs of [`CogVideoXLayerNormZero::forward`].
struct Modulated<B: Backend> {
    states: JointStates<B>,
    gate: Tensor<B, 3>,
    enc_gate: Tensor<B, 3>,
}

impl<B: ModelBackend> CogVideoXLayerNormZero<B> {
    fn load(vb: &mut VarBuilder<'_, B>, name: &str, cfg: &CogVideoXConfig) -> Result<Self> {
        let mut vb = vb.pp(name);
        let d = cfg.inner_dim();
        Ok(Self {
            linear: Linear::load(&mut vb, "linear", cfg.time_embed_dim, 6 * d, true)?,
            norm: LayerNorm::load(&mut vb, "norm", d, cfg.norm_eps, cfg.norm_elementwise_affine)?,
        })
    }

    fn forward(&self, hidden: &Tensor<B, 3>, encoder: &Tensor<B, 3>, temb: &Tensor<B, 2>) -> Modulated<B> {
        let mods = self.linear.forward(silu(temb.clone())).unsqueeze_dim::<3>(1).chunk(6, 2);
        let [shift, scale, gate, enc_shift, enc_scale, enc_gate]: [Tensor<B, 3>; 6] =
            mods.try_into().expect("six chunks");
        let hidden = self.norm.forward_modulated(hidden.clone(), scale, shift);
        let encoder = self.norm.forward_modulated(encoder.clone(), enc_scale, enc_shift);
        Modulated { states: JointStates::joint(hidden, encoder), gate, enc_gate }
    }
}

/// `Attention` with `CogVideoXAttnProcessor2_0`: joint self-attention over `[text, video]` tokens,
/// LayerNorm on per-head queries and keys, rotary embeddings on video tokens.
#[derive(Module, Debug)]
pub struct CogVideoXAttention<B: Backend> {
    /// `to_q`.
    pub to_q: Linear<B>,
    /// `to_k`.
    pub to_k: Linear<B>,
    /// `to_v`.
    pub to_v: Linear<B>,
    /// `norm_q` (`qk_norm="layer_norm"`, eps 1e-6).
    pub norm_q: LayerNorm<B>,
    /// `norm_k`.
    pub norm_k: LayerNorm<B>,
    /// `to_out.0`.
    pub to_out: Linear<B>,
    /// Number of heads.
    pub heads: usize,
}

impl<B: ModelBackend> CogVideoXAttention<B> {
    fn load(vb: &mut VarBuilder<'_, B>, cfg: &CogVideoXConfig) -> Result<Self> {
        let d = cfg.inner_dim();
        let hd = cfg.attention_head_dim;
        let bias = cfg.attention_bias;
        Ok(Self {
            to_q: Linear::load(vb, "to_q", d, d, bias)?,
            to_k: Linear::load(vb, "to_k", d, d, bias)?,
            to_v: Linear::load(vb, "to_v", d, d, bias)?,
            norm_q: LayerNorm::load(vb, "norm_q", hd, 1e-6, true)?,
            norm_k: LayerNorm::load(vb, "norm_k", hd, 1e-6, true)?,
            to_out: Linear::load(vb, "to_out.0", d, d, true)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, l, d] = x.dims();
        x.reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2)
    }

    /// # Shapes
    /// - `x.hidden`: `[B, N, D]`, `x.encoder`: `[B, S, D]` → the same shapes
    pub fn forward(&self, hidden: Tensor<B, 3>, encoder: Tensor<B, 3>, positions: &Positions<B>) -> JointStates<B> {
        let s = encoder.dims()[1];
        let tokens = Tensor::cat(vec![encoder, hidden], 1);
        let [b, l, d] = tokens.dims();
        let q = self.norm_q.forward(self.heads(self.to_q.forward(tokens.clone())));
        let k = self.norm_k.forward(self.heads(self.to_k.forward(tokens.clone())));
        let v = self.heads(self.to_v.forward(tokens));
        let (q, k) = match positions {
            Positions::Rotary { cos, sin } => (rope_video(q, s, cos, sin), rope_video(k, s, cos, sin)),
            Positions::SinCos(_) => (q, k),
        };
        let out = <B as ModelBackend>::attention(q, k, v);
        let out = self.to_out.forward(out.swap_dims(1, 2).reshape([b, l, d]));
        JointStates::joint(out.clone().narrow(1, s, l - s), out.narrow(1, 0, s))
    }
}

/// [`crate::nn::apply_rotary`] on the tokens after the first `text` ones.
fn rope_video<B: ModelBackend>(x: Tensor<B, 4>, text: usize, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let l = x.dims()[2];
    let txt = x.clone().narrow(2, 0, text);
    let vid = crate::nn::apply_rotary(x.narrow(2, text, l - text), cos, sin);
    Tensor::cat(vec![txt, vid], 2)
}

/// `CogVideoXBlock`: modulated joint attention, then a modulated feed-forward over `[text, video]`.
#[derive(Module, Debug)]
pub struct CogVideoXBlock<B: Backend> {
    /// `norm1`.
    pub norm1: CogVideoXLayerNormZero<B>,
    /// `attn1`.
    pub attn1: CogVideoXAttention<B>,
    /// `norm2`.
    pub norm2: CogVideoXLayerNormZero<B>,
    /// `ff`.
    pub ff: FeedForward<B>,
    /// Index in `transformer_blocks` (names the attention site).
    pub index: usize,
}

impl<B: ModelBackend> CogVideoXBlock<B> {
    fn load(vb: &mut VarBuilder<'_, B>, index: usize, cfg: &CogVideoXConfig) -> Result<Self> {
        let mut vb = vb.pp(index);
        Ok(Self {
            norm1: CogVideoXLayerNormZero::load(&mut vb, "norm1", cfg)?,
            attn1: CogVideoXAttention::load(&mut vb.pp("attn1"), cfg)?,
            norm2: CogVideoXLayerNormZero::load(&mut vb, "norm2", cfg)?,
            ff: FeedForward::load(&mut vb, cfg.inner_dim())?,
            index,
        })
    }

    /// The attention site of this block, as diffusers names it.
    pub fn site(&self) -> AttentionSite {
        AttentionSite { stack: "transformer_blocks", index: self.index, attn: "attn1", kind: AttentionKind::Spatial }
    }

    /// The feed-forward of this block as a module site (`transformer_blocks.{i}.ff`).
    pub fn ff_site(&self) -> ModuleSite {
        ModuleSite { stack: "transformer_blocks", index: self.index, name: "ff" }
    }

    /// # Shapes
    /// `x.hidden`: `[B, N, D]`, `x.encoder`: `[B, S, D]`, `temb`: `[B, time_embed_dim]` → the same shapes
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: JointStates<B>,
        temb: &Tensor<B, 2>,
        positions: &Positions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<JointStates<B>> {
        let (hidden, encoder) = streams(x)?;
        let s = encoder.dims()[1];
        let m = self.norm1.forward(&hidden, &encoder, temb);
        let (mh, me) = streams(m.states)?;
        let attn = attention_site(strategy, ctx, &self.site(), || self.attn1.forward(mh, me, positions));
        let (attn_hidden, attn_encoder) = streams(attn)?;
        let hidden = hidden + m.gate * attn_hidden;
        let encoder = encoder + m.enc_gate * attn_encoder;

        let m = self.norm2.forward(&hidden, &encoder, temb);
        let (mh, me) = streams(m.states)?;
        let mh_dims = mh.dims();
        let l = s + mh_dims[1];
        let ff = module_site(strategy, ctx, &self.ff_site(), || JointStates::single(self.ff.forward(Tensor::cat(vec![me, mh], 1))));
        let ff = checked(ff, [mh_dims[0], l, mh_dims[2]], &self.ff_site())?;
        Ok(JointStates::joint(
            hidden + m.gate * ff.clone().narrow(1, s, l - s),
            encoder + m.enc_gate * ff.narrow(1, 0, s),
        ))
    }
}

/// Both streams of a joint-attention state; a strategy that dropped the text stream is an error.
fn streams<B: Backend>(x: JointStates<B>) -> Result<(Tensor<B, 3>, Tensor<B, 3>)> {
    match x.encoder {
        Some(encoder) => Ok((x.hidden, encoder)),
        None => Err(ModelError::Strategy("CogVideoX blocks need the text stream; the strategy returned none".into())),
    }
}

/// `AdaLayerNorm` with `chunk_dim=1`: `norm(x)·(1 + scale) + shift`, `(shift, scale)` from the time embedding.
#[derive(Module, Debug)]
pub struct AdaLayerNorm<B: Backend> {
    /// `norm_out.linear`.
    pub linear: Linear<B>,
    /// `norm_out.norm`.
    pub norm: LayerNorm<B>,
}

impl<B: ModelBackend> AdaLayerNorm<B> {
    /// # Shapes
    /// `x`: `[B, N, D]`, `temb`: `[B, time_embed_dim]` → `[B, N, D]`
    pub fn forward(&self, x: Tensor<B, 3>, temb: &Tensor<B, 2>) -> Tensor<B, 3> {
        let mods = self.linear.forward(silu(temb.clone())).unsqueeze_dim::<3>(1).chunk(2, 2);
        let [shift, scale]: [Tensor<B, 3>; 2] = mods.try_into().expect("two chunks");
        self.norm.forward_modulated(x, scale, shift)
    }
}

/// The CogVideoX transformer.
#[derive(Module, Debug)]
pub struct CogVideoXTransformer3DModel<B: Backend> {
    /// `patch_embed`.
    pub patch_embed: CogVideoXPatchEmbed<B>,
    /// `time_embedding` (its input, `time_proj`, has no weights).
    pub time_embedding: TimestepEmbedding<B>,
    /// `transformer_blocks`.
    pub transformer_blocks: Vec<CogVideoXBlock<B>>,
    /// `norm_final`.
    pub norm_final: LayerNorm<B>,
    /// `norm_out`.
    pub norm_out: AdaLayerNorm<B>,
    /// `proj_out`.
    pub proj_out: Linear<B>,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: CogVideoXConfig,
}

impl<B: ModelBackend> CogVideoXTransformer3DModel<B> {
    /// Builds the model from a weight source (a checkpoint, or random weights from a seed), checking every
    /// weight's name and shape; a checkpoint with weights the model does not use is refused.
    ///
    /// The model computes in the source's dtype ([`WeightSource::with_dtype`]): float32, or bfloat16/float16 on a
    /// backend that has them, as diffusers runs `from_pretrained(..., torch_dtype=...)` (the class keeps no
    /// module in float32). Time and sin-cos position tables are built in float32 and rounded to it, as diffusers
    /// casts them; rotary tables stay float32 and the rotation computes in float32 (`apply_rotary_emb`).
    pub fn load(config: &CogVideoXConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self> {
        config.validate()?;
        crate::weights::check_dtype::<B>("CogVideoXTransformer3DModel", weights.dtype(), true, device)?;
        let mut vb = VarBuilder::new(weights, device);
        let cfg = config;
        let d = cfg.inner_dim();
        let patch_embed = CogVideoXPatchEmbed::load(&mut vb.pp("patch_embed"), cfg)?;
        let time_embedding = TimestepEmbedding::load(&mut vb, "time_embedding", d, cfg.time_embed_dim)?;
        let mut blocks_vb = vb.pp("transformer_blocks");
        let transformer_blocks =
            (0..cfg.num_layers).map(|i| CogVideoXBlock::load(&mut blocks_vb, i, cfg)).collect::<Result<Vec<_>>>()?;
        let norm_final = LayerNorm::load(&mut vb, "norm_final", d, cfg.norm_eps, cfg.norm_elementwise_affine)?;
        let mut no = vb.pp("norm_out");
        let norm_out = AdaLayerNorm {
            linear: Linear::load(&mut no, "linear", cfg.time_embed_dim, 2 * d, true)?,
            norm: LayerNorm::load(&mut no, "norm", d, cfg.norm_eps, cfg.norm_elementwise_affine)?,
        };
        let out_dim = cfg.patch_size * cfg.patch_size * cfg.out_channels();
        let proj_out = Linear::load(&mut vb, "proj_out", d, out_dim, true)?;
        weights.finish()?;
        Ok(Self {
            patch_embed,
            time_embedding,
            transformer_blocks,
            norm_final,
            norm_out,
            proj_out,
            config: config.clone(),
        })
    }

    /// Loads a diffusers model directory (`config.json` and its safetensors, single or sharded).
    pub fn from_pretrained(dir: &std::path::Path, device: &B::Device) -> Result<Self> {
        Self::from_pretrained_as(dir, device, FloatDType::F32)
    }

    /// [`Self::from_pretrained`] computing in `dtype` (`torch_dtype`), see [`Self::load`].
    pub fn from_pretrained_as(dir: &std::path::Path, device: &B::Device, dtype: FloatDType) -> Result<Self> {
        let config = CogVideoXConfig::from_json_file(&dir.join("config.json"))?;
        let mut weights = WeightSource::from_model_dir(dir)?.with_dtype(dtype);
        Self::load(&config, &mut weights, device)
    }

    /// What this model offers to cache engines: its attention sites, its feed-forwards as module sites, its
    /// block count, and diffusers' names of all its modules.
    pub fn host_info(&self) -> HostInfo {
        let n = self.transformer_blocks.len();
        HostInfo {
            sites: self.transformer_blocks.iter().map(CogVideoXBlock::site).collect(),
            num_blocks: n,
            tensor_format: "BFCHW".into(),
            modules: self.transformer_blocks.iter().map(CogVideoXBlock::ff_site).collect(),
            module_names: crate::host::cogvideox_names(n),
            step_signal: Some("emb".into()),
            other_step_signals: Vec::new(),
            per_branch_calls: false,
            hands_sigma: false,
        }
    }

    /// The share of a block's work done by its attention site, for `tokens` tokens (text + video), from
    /// multiply-adds: projections `4·D²`, scores and weighted sum `2·L·D`, feed-forward `8·D²` per token.
    pub fn attention_share(&self, tokens: usize) -> f64 {
        crate::host::block_shares(self.config.inner_dim(), tokens).0
    }

    /// The share of a block's work done by its feed-forward (`8·D²` per token), same accounting as
    /// [`CogVideoXTransformer3DModel::attention_share`].
    pub fn ff_share(&self, tokens: usize) -> f64 {
        crate::host::block_shares(self.config.inner_dim(), tokens).1
    }

    /// The dtype the model computes in (its weights').
    pub fn dtype(&self) -> FloatDType {
        self.proj_out.weight.val().dtype().into()
    }

    /// Positional embeddings for latents of `frames × height × width` (latent frames, latent pixels):
    /// sin-cos tables as `CogVideoXPatchEmbed` builds them, or rotary tables as `CogVideoXPipeline` does.
    pub fn positions(&self, frames: usize, height: usize, width: usize, device: &B::Device) -> Result<Positions<B>> {
        let cfg = &self.config;
        let p = cfg.patch_size;
        if height % p != 0 || width % p != 0 || frames == 0 {
            return Err(ModelError::Shape(format!(
                "latent size {frames}x{height}x{width} must be non-empty with height and width divisible by patch_size {p}"
            )));
        }
        let (gh, gw) = (height / p, width / p);
        let n = frames * gh * gw;
        if cfg.use_rotary_positional_embeddings {
            let crops = embeddings::resize_crop_region_for_grid((gh, gw), cfg.sample_width / p, cfg.sample_height / p);
            let hd = cfg.attention_head_dim;
            let (cos, sin) = embeddings::rotary_3d(hd, crops, gh, gw, frames);
            let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, n, hd]), device);
            Ok(Positions::Rotary { cos: t(cos), sin: t(sin) })
        } else {
            // diffusers keeps a table for the configured sample size and recomputes it for any other input
            // size; both equal the table of the input's own size, computed here.
            let d = cfg.inner_dim();
            let table = embeddings::sincos_3d(
                d,
                frames,
                gh,
                gw,
                cfg.spatial_interpolation_scale,
                cfg.temporal_interpolation_scale,
            );
            let table = HostTensor { shape: vec![1, n, d], data: table };
            Ok(Positions::SinCos(table.to_tensor_as(device, self.dtype())))
        }
    }

    fn check(&self, x: &ForwardInput<B>, positions: &Positions<B>) -> Result<()> {
        let cfg = &self.config;
        x.check_common(2, cfg.in_channels, cfg.text_embed_dim)?;
        let [_, f, _, h, w] = x.hidden_states.dims();
        let p = cfg.patch_size;
        if h % p != 0 || w % p != 0 || positions.tokens() != f * (h / p) * (w / p) {
            return Err(ModelError::Shape(format!(
                "latents {f}x{h}x{w} do not match the positions ({} tokens) or patch size {p}",
                positions.tokens()
            )));
        }
        Ok(())
    }

    /// The denoiser call, with a cache strategy at its hook points.
    ///
    /// `ctx` says which step this is and what the batch holds (`ctx.batch_size` is checked against the input).
    ///
    /// # Shapes
    /// returns `[B, F, out_channels, H, W]`
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: ForwardInput<B>,
        positions: &Positions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 5>> {
        self.check(&input, positions)?;
        denoiser_call(input, ctx, strategy, |input, ctx, strategy| self.forward_blocks(input, positions, ctx, strategy))
    }

    fn forward_blocks<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: ForwardInput<B>,
        positions: &Positions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 5>> {
        let cfg = &self.config;
        let device = input.hidden_states.device();
        let [b, f, _, h, w] = input.hidden_states.dims();
        let d = cfg.inner_dim();

        // 1. Time embedding
        let t_proj = embeddings::timestep_embedding(&input.timestep, d, cfg.flip_sin_to_cos, cfg.freq_shift as f32);
        let t_proj = HostTensor { shape: vec![b, d], data: t_proj }.to_tensor_as::<B, 2>(&device, self.dtype());
        let temb = self.time_embedding.forward(t_proj);

        // 2. Patch embedding
        let mut x = self.patch_embed.forward(input.encoder_hidden_states, input.hidden_states);
        if let Positions::SinCos(table) = positions {
            x.hidden = x.hidden + table.clone();
        }

        // 3. Transformer blocks, the first one apart so a strategy can skip the rest
        if let Some((head, tail)) = self.transformer_blocks.split_first() {
            step_signal(strategy, ctx, || temb.clone().unsqueeze_dim(1));
            x = block_stack(
                strategy,
                ctx,
                x,
                |s, x| head.forward(x, &temb, positions, ctx, s),
                |s, x| tail.iter().try_fold(x, |y, block| block.forward(y, &temb, positions, ctx, s)),
            )?;
        }

        // 4. Output: norm_final, norm_out, proj_out
        let hidden = self.norm_final.forward(x.hidden);
        let hidden = self.norm_out.forward(hidden, &temb);
        let hidden = self.proj_out.forward(hidden);

        // 5. Unpatchify
        let p = cfg.patch_size;
        let c = cfg.out_channels();
        Ok(hidden
            .reshape([b * f, h / p, w / p, c, p, p])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, f, c, h, w]))
    }
}
