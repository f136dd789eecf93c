//! `LatteTransformer3DModel`, read top to bottom as diffusers 0.42 writes it
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/latte_transformer_3d.py>,
//! blocks from `attention.py`'s `BasicTransformerBlock` with `norm_type="ada_norm_single"`).
//!
//! Spatial blocks (`transformer_blocks.{i}`: self-attention `attn1` within each frame, cross-attention `attn2`
//! to the prompt, feed-forward) alternate with temporal blocks (`temporal_transformer_blocks.{i}`:
//! self-attention `attn1` across frames at each patch position, feed-forward).
//!
//! Field names are diffusers' attribute names; as in [`crate::cogvideox`], `to_out.0` is `to_out` and
//! `ff.net.0.proj` / `ff.net.2` are `ff.net_0_proj` / `ff.net_2`.
//!
//! Hooks see batch-first views (see [`JointStates`]): the stack's state as `[B, F·P, D]` (frame-major, P
//! patches per frame), spatial and cross attention outputs as `[B, F·P, D]`, temporal ones as `[B, P·F, D]`.
//! First Block Cache's head block is `transformer_blocks.0`; the tail is everything after it up to the last
//! temporal block (the temporal positional embedding included), with the tail's output taken back to the
//! frame-major layout.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use cache_core::{
    attention_site, block_stack, module_site, step_signal, AttentionKind, AttentionSite, CacheStrategy, CallContext, HostInfo,
    JointStates, ModuleSite,
};

use crate::embeddings;
use crate::error::{ModelError, Result};
use crate::input::{checked, denoiser_call, ForwardInput};
use super::config::LatteConfig;
use crate::nn::{gelu_tanh, FeedForward, LayerNorm, Linear, TimestepEmbedding};
use crate::ops::ModelBackend;
use crate::weights::{Init, VarBuilder, WeightSource};

/// Positional tables for one input size ([`LatteTransformer3DModel::positions`]).
#[derive(Debug, Clone)]
pub struct LattePositions<B: Backend> {
    /// 2-D sin-cos table added after patch embedding, `[1, P, D]`.
    pub spatial: Tensor<B, 3>,
    /// 1-D sin-cos table over frames, added before the first temporal block, `[1, F, D]`; none for one frame.
    pub temporal: Option<Tensor<B, 3>>,
    /// Frames, patch rows, patch columns.
    pub grid: (usize, usize, usize),
}

/// `AdaLayerNormSingle`: the timestep embedding, and six modulation vectors per block from it.
#[derive(Module, Debug)]
pub struct AdaLayerNormSingle<B: Backend> {
    /// `adaln_single.emb.timestep_embedder` (its input, `emb.time_proj`, has no weights).
    pub emb_timestep_embedder: TimestepEmbedding<B>,
    /// `adaln_single.linear`: `D → 6·D`.
    pub linear: Linear<B>,
}

impl<B: ModelBackend> AdaLayerNormSingle<B> {
    /// # Shapes
    /// `[B, 256]` sinusoidal projection → (`[B, 6·D]` modulations, `[B, D]` embedded timestep)
    pub fn forward(&self, t_proj: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let embedded = self.emb_timestep_embedder.forward(t_proj);
        (self.linear.forward(silu(embedded.clone())), embedded)
    }
}

/// `PixArtAlphaTextProjection`: `linear_2(gelu_tanh(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct CaptionProjection<B: Backend> {
    /// `caption_projection.linear_1`.
    pub linear_1: Linear<B>,
    /// `caption_projection.linear_2`.
    pub linear_2: Linear<B>,
}

/// `Attention` with `AttnProcessor2_0`: multi-head attention, keys and values from `context`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `to_q`.
    pub to_q: Linear<B>,
    /// `to_k`.
    pub to_k: Linear<B>,
    /// `to_v`.
    pub to_v: Linear<B>,
    /// `to_out.0`.
    pub to_out: Linear<B>,
    /// Number of heads.
    pub heads: usize,
}

impl<B: ModelBackend> Attention<B> {
    fn load(vb: &mut VarBuilder<'_, B>, name: &str, cfg: &LatteConfig) -> Result<Self> {
        let mut vb = vb.pp(name);
        let (d, bias) = (cfg.inner_dim(), cfg.attention_bias);
        Ok(Self {
            to_q: Linear::load(&mut vb, "to_q", d, d, bias)?,
            to_k: Linear::load(&mut vb, "to_k", d, d, bias)?,
            to_v: Linear::load(&mut vb, "to_v", d, d, bias)?,
            to_out: Linear::load(&mut vb, "to_out.0", d, d, true)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn split(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [n, l, d] = x.dims();
        x.reshape([n, l, self.heads, d / self.heads]).swap_dims(1, 2)
    }

    /// # Shapes
    /// `x`: `[N, L, D]`, `context`: `[N, S, D]` → `[N, L, D]`
    pub fn forward(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, l, d] = x.dims();
        let q = self.split(self.to_q.forward(x));
        let k = self.split(self.to_k.forward(context.clone()));
        let v = self.split(self.to_v.forward(context));
        let out = <B as ModelBackend>::attention(q, k, v);
        self.to_out.forward(out.swap_dims(1, 2).reshape([n, l, d]))
    }
}

/// `BasicTransformerBlock(norm_type="ada_norm_single")`: modulated self-attention, optional cross-attention
/// (unnormalised input, as PixArt), modulated feed-forward.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// `norm1`.
    pub norm1: LayerNorm<B>,
    /// `attn1`.
    pub attn1: Attention<B>,
    /// `norm2` (used before the feed-forward).
    pub norm2: LayerNorm<B>,
    /// `attn2` (spatial blocks only).
    pub attn2: Option<Attention<B>>,
    /// `ff`.
    pub ff: FeedForward<B>,
    /// `scale_shift_table` `[6, D]`.
    pub scale_shift_table: Param<Tensor<B, 2>>,
    /// Index in its block list.
    pub index: usize,
    /// `transformer_blocks` (spatial) or `temporal_transformer_blocks`.
    #[module(skip)]
    pub stack: &'static str,
}

/// The prompt stream a spatial block's cross-attention reads, one copy per frame row.
struct CrossContext<B: Backend> {
    /// `[B·F, S, D]`.
    text: Tensor<B, 3>,
}

impl<B: ModelBackend> BasicTransformerBlock<B> {
    fn load(vb: &mut VarBuilder<'_, B>, stack: &'static str, index: usize, cfg: &LatteConfig) -> Result<Self> {
        let mut vb = vb.pp(index);
        let d = cfg.inner_dim();
        let (eps, affine) = (cfg.norm_eps, cfg.norm_elementwise_affine);
        let spatial = stack == "transformer_blocks";
        Ok(Self {
            norm1: LayerNorm::load(&mut vb, "norm1", d, eps, affine)?,
            attn1: Attention::load(&mut vb, "attn1", cfg)?,
            norm2: LayerNorm::load(&mut vb, "norm2", d, eps, affine)?,
            attn2: if spatial { Some(Attention::load(&mut vb, "attn2", cfg)?) } else { None },
            ff: FeedForward::load(&mut vb, d)?,
            scale_shift_table: vb.param("scale_shift_table", [6, d], Init::Normal(1.0 / (d as f64).sqrt()))?,
            index,
            stack,
        })
    }

    /// The attention sites of this block, as diffusers names them.
    pub fn sites(&self) -> Vec<AttentionSite> {
        let kind = if self.attn2.is_some() { AttentionKind::Spatial } else { AttentionKind::Temporal };
        let mut v = vec![AttentionSite { stack: self.stack, index: self.index, attn: "attn1", kind }];
        if self.attn2.is_some() {
            v.push(AttentionSite { stack: self.stack, index: self.index, attn: "attn2", kind: AttentionKind::Cross });
        }
        v
    }

    /// The feed-forward of this block as a module site (`{stack}.{i}.ff`).
    pub fn ff_site(&self) -> ModuleSite {
        ModuleSite { stack: self.stack, index: self.index, name: "ff" }
    }

    /// `norm1(x) · (1 + scale_msa) + shift_msa`: what TeaCache's authors measure on Latte.
    ///
    /// # Shapes
    /// `x`: `[B, R·T, D]`, `mods`: `[B, 6·D]` → `[B, R·T, D]`
    fn modulated_input(&self, x: Tensor<B, 3>, mods: &Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, _, d] = x.dims();
        let mods = self.scale_shift_table.val().unsqueeze_dim::<3>(0) + mods.clone().reshape([b, 6, d]);
        let [shift_msa, scale_msa, ..]: [Tensor<B, 3>; 6] = mods.chunk(6, 1).try_into().expect("six chunks");
        self.norm1.forward_modulated(x, scale_msa, shift_msa)
    }

    /// # Shapes
    /// - `x`: `[B, R·T, D]`, `R` attention rows of `T` tokens per sample (frames × patches for a spatial
    ///   block, patches × frames for a temporal one) → the same shape
    /// - `mods`: `[B, 6·D]` (adaLN-single's output)
    fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: Tensor<B, 3>,
        rows: usize,
        mods: &Tensor<B, 2>,
        cross: Option<&CrossContext<B>>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 3>> {
        let [b, n, d] = x.dims();
        let as_rows = |t: Tensor<B, 3>| t.reshape([b * rows, n / rows, d]);
        let mods = self.scale_shift_table.val().unsqueeze_dim::<3>(0) + mods.clone().reshape([b, 6, d]);
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp]: [Tensor<B, 3>; 6] =
            mods.chunk(6, 1).try_into().expect("six chunks");
        let sites = self.sites();

        let norm = self.norm1.forward_modulated(x.clone(), scale_msa, shift_msa);
        let attn = attention_site(strategy, ctx, &sites[0], || {
            let rows = as_rows(norm);
            JointStates::single(self.attn1.forward(rows.clone(), rows).reshape([b, n, d]))
        });
        let x = gate_msa * checked(attn, [b, n, d], &sites[0])? + x;

        let x = match (&self.attn2, cross) {
            (Some(attn2), Some(cross)) => {
                let out = attention_site(strategy, ctx, &sites[1], || {
                    JointStates::single(attn2.forward(as_rows(x.clone()), cross.text.clone()).reshape([b, n, d]))
                });
                checked(out, [b, n, d], &sites[1])? + x
            }
            _ => x,
        };

        let norm = self.norm2.forward_modulated(x.clone(), scale_mlp, shift_mlp);
        let ff = module_site(strategy, ctx, &self.ff_site(), || JointStates::single(self.ff.forward(norm)));
        Ok(gate_mlp * checked(ff, [b, n, d], &self.ff_site())? + x)
    }
}

/// `[B, F·P, D]` (frame-major) ↔ `[B, P·F, D]` (patch-major).
fn transpose_tokens<B: Backend>(x: Tensor<B, 3>, outer: usize, inner: usize) -> Tensor<B, 3> {
    let [b, n, d] = x.dims();
    x.reshape([b, outer, inner, d]).swap_dims(1, 2).reshape([b, n, d])
}

/// The Latte transformer.
#[derive(Module, Debug)]
pub struct LatteTransformer3DModel<B: Backend> {
    /// `pos_embed.proj` (a `Conv2d` with kernel = stride = patch size, held as a linear map on patches).
    pub pos_embed_proj: Linear<B>,
    /// `transformer_blocks` (spatial).
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// `temporal_transformer_blocks`.
    pub temporal_transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// `norm_out` (no affine parameters, eps 1e-6).
    pub norm_out: LayerNorm<B>,
    /// `scale_shift_table` `[2, D]`.
    pub scale_shift_table: Param<Tensor<B, 2>>,
    /// `proj_out`.
    pub proj_out: Linear<B>,
    /// `adaln_single`.
    pub adaln_single: AdaLayerNormSingle<B>,
    /// `caption_projection`.
    pub caption_projection: CaptionProjection<B>,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: LatteConfig,
}

impl<B: ModelBackend> LatteTransformer3DModel<B> {
    /// Builds the model from a weight source (a checkpoint, or random weights from a seed), checking every
    /// weight's name and shape; a checkpoint with weights the model does not use is refused.
    pub fn load(config: &LatteConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self> {
        config.validate()?;
        crate::weights::check_dtype::<B>("LatteTransformer3DModel", weights.dtype(), false, device)?;
        let cfg = config;
        let mut vb = VarBuilder::new(weights, device);
        let d = cfg.inner_dim();
        let p = cfg.patch_size();
        let pos_embed_proj = Linear::load_patch_conv(&mut vb.pp("pos_embed"), "proj", cfg.in_channels(), p, d, true)?;
        let mut blocks = vb.pp("transformer_blocks");
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| BasicTransformerBlock::load(&mut blocks, "transformer_blocks", i, cfg))
            .collect::<Result<Vec<_>>>()?;
        let mut blocks = vb.pp("temporal_transformer_blocks");
        let temporal_transformer_blocks = (0..cfg.num_layers)
            .map(|i| BasicTransformerBlock::load(&mut blocks, "temporal_transformer_blocks", i, cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm_out = LayerNorm::load(&mut vb, "norm_out", d, 1e-6, false)?;
        let scale_shift_table = vb.param("scale_shift_table", [2, d], Init::Normal(1.0 / (d as f64).sqrt()))?;
        let proj_out = Linear::load(&mut vb, "proj_out", d, p * p * cfg.out_channels(), true)?;
        let mut ada = vb.pp("adaln_single");
        let adaln_single = AdaLayerNormSingle {
            emb_timestep_embedder: TimestepEmbedding::load(&mut ada.pp("emb"), "timestep_embedder", 256, d)?,
            linear: Linear::load(&mut ada, "linear", d, 6 * d, true)?,
        };
        let mut cap = vb.pp("caption_projection");
        let caption_projection = CaptionProjection {
            linear_1: Linear::load(&mut cap, "linear_1", cfg.caption_channels(), d, true)?,
            linear_2: Linear::load(&mut cap, "linear_2", d, d, true)?,
        };
        weights.finish()?;
        Ok(Self {
            pos_embed_proj,
            transformer_blocks,
            temporal_transformer_blocks,
            norm_out,
            scale_shift_table,
            proj_out,
            adaln_single,
            caption_projection,
            config: config.clone(),
        })
    }

    /// Loads a diffusers model directory (`config.json` and its safetensors, single or sharded).
    pub fn from_pretrained(dir: &std::path::Path, device: &B::Device) -> Result<Self> {
        let config = LatteConfig::from_json_file(&dir.join("config.json"))?;
        let mut weights = WeightSource::from_model_dir(dir)?;
        Self::load(&config, &mut weights, device)
    }

    /// What this model offers to cache engines: spatial (`transformer_blocks.{i}.attn1`), cross
    /// (`transformer_blocks.{i}.attn2`) and temporal (`temporal_transformer_blocks.{i}.attn1`) sites, in call
    /// order, and its block count (spatial and temporal blocks).
    pub fn host_info(&self) -> HostInfo {
        let sites = self
            .transformer_blocks
            .iter()
            .zip(&self.temporal_transformer_blocks)
            .flat_map(|(s, t)| s.sites().into_iter().chain(t.sites()))
            .collect();
        let n = self.transformer_blocks.len();
        let modules = self
            .transformer_blocks
            .iter()
            .zip(&self.temporal_transformer_blocks)
            .flat_map(|(s, t)| [s.ff_site(), t.ff_site()])
            .collect();
        let module_names = crate::host::latte_names(n);
        let step_signal = Some("transformer_blocks.0 norm1-modulated input".into());
        HostInfo { sites, num_blocks: 2 * n, tensor_format: "BCFHW".into(), modules, module_names, step_signal, other_step_signals: vec![], per_branch_calls: false, hands_sigma: false }
    }

    /// The mean work of one attention site as a share of the mean block's work (what a reused site saves,
    /// in block units), for `frames` frames of `patches` patches and `text` prompt tokens. From multiply-adds
    /// per video token: self-attention `4·D²` projections plus `2·L·D` scores and weighted sums; the cross
    /// site's query/output projections `2·D²`, its key/value projections on the prompt `2·D²·S/P`, scores
    /// `2·S·D`; each block's feed-forward `8·D²`. Three sites per spatial–temporal pair of blocks.
    pub fn attention_share(&self, frames: usize, patches: usize, text: usize) -> f64 {
        let d = self.config.inner_dim() as f64;
        let (f, p, s) = (frames as f64, patches as f64, text as f64);
        let spatial = 4.0 * d * d + 2.0 * p * d;
        let cross = 2.0 * d * d + 2.0 * s * d + 2.0 * d * d * s / p;
        let temporal = 4.0 * d * d + 2.0 * f * d;
        let attn = spatial + cross + temporal;
        let pair = attn + 2.0 * 8.0 * d * d;
        (attn / 3.0) / (pair / 2.0)
    }

    /// The work of one block's feed-forward (`8·D²` per token) as a share of the mean block's work, with the
    /// same accounting as [`LatteTransformer3DModel::attention_share`].
    pub fn ff_share(&self, frames: usize, patches: usize, text: usize) -> f64 {
        // A pair of blocks does `attn + 16·D²` = three sites' work plus two feed-forwards; with
        // share = (attn / 3) / (pair / 2), one feed-forward over the mean block is 1 − 1.5·share.
        1.0 - 1.5 * self.attention_share(frames, patches, text)
    }

    /// Positional tables for latents of `frames × height × width` (latent pixels), as `PatchEmbed` and the
    /// model's `temp_pos_embed` build them (for any input size, diffusers recomputes the 2-D table; the result
    /// equals the table of the input's own size, computed here).
    pub fn positions(&self, frames: usize, height: usize, width: usize, device: &B::Device) -> Result<LattePositions<B>> {
        let cfg = &self.config;
        let p = cfg.patch_size();
        if height % p != 0 || width % p != 0 || height == 0 || width == 0 || frames == 0 {
            return Err(ModelError::Shape(format!(
                "latent size {frames}x{height}x{width} must be non-empty with height and width divisible by patch_size {p}"
            )));
        }
        if frames > 1 && frames != cfg.video_length {
            return Err(ModelError::Shape(format!(
                "{frames} frames: Latte's temporal positional table has video_length = {} frames (or use 1 frame)",
                cfg.video_length
            )));
        }
        let d = cfg.inner_dim();
        let (gh, gw) = (height / p, width / p);
        let base = cfg.sample_size / p;
        let interpolation = (cfg.sample_size / 64).max(1) as f64;
        let spatial = embeddings::sincos_2d(d, gh, gw, base.max(1), interpolation);
        let spatial = Tensor::from_data(TensorData::new(spatial, [1, gh * gw, d]), device);
        let temporal = (frames > 1).then(|| {
            let table = embeddings::sincos_1d_table(d, frames);
            Tensor::from_data(TensorData::new(table, [1, frames, d]), device)
        });
        Ok(LattePositions { spatial, temporal, grid: (frames, gh, gw) })
    }

    fn check(&self, x: &ForwardInput<B>, positions: &LattePositions<B>) -> Result<()> {
        let cfg = &self.config;
        x.check_common(1, cfg.in_channels(), cfg.caption_channels())?;
        let [_, _, f, h, w] = x.hidden_states.dims();
        let p = cfg.patch_size();
        if h % p != 0 || w % p != 0 || positions.grid != (f, h / p, w / p) {
            return Err(ModelError::Shape(format!(
                "latents {f}x{h}x{w} do not match the positions (grid {:?}) or patch size {p}",
                positions.grid
            )));
        }
        Ok(())
    }

    /// The denoiser call, with a cache strategy at its hook points.
    ///
    /// `ctx` says which step this is and what the batch holds (`ctx.batch_size` is checked against the input).
    ///
    /// # Shapes
    /// - `input.hidden_states`: `[B, C, F, H, W]` (diffusers' Latte layout)
    /// - `input.encoder_hidden_states`: `[B, S, caption_channels]`
    /// - returns `[B, out_channels, F, H, W]`
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: ForwardInput<B>,
        positions: &LattePositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 5>> {
        self.check(&input, positions)?;
        denoiser_call(input, ctx, strategy, |input, ctx, strategy| self.forward_blocks(input, positions, ctx, strategy))
    }

    fn forward_blocks<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: ForwardInput<B>,
        positions: &LattePositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 5>> {
        let cfg = &self.config;
        let device = input.hidden_states.device();
        let [b, c, f, h, w] = input.hidden_states.dims();
        let d = cfg.inner_dim();
        let p = cfg.patch_size();
        let (gh, gw) = (h / p, w / p);
        let np = gh * gw;

        // 1. Patch embedding and 2-D positions, per frame
        let patches = input
            .hidden_states
            .swap_dims(1, 2)
            .reshape([b * f, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * f, np, c * p * p]);
        let x = (self.pos_embed_proj.forward(patches) + positions.spatial.clone()).reshape([b, f * np, d]);

        // 2. adaLN-single: timestep embedding and block modulations (per sample; broadcast over rows)
        let t_proj = embeddings::timestep_embedding(&input.timestep, 256, true, 0.0);
        let t_proj = Tensor::<B, 2>::from_data(TensorData::new(t_proj, [b, 256]), &device);
        let (mods, embedded_timestep) = self.adaln_single.forward(t_proj);

        // 3. Prompt projection, one copy per frame for the spatial blocks' cross-attention
        let text = self.caption_projection.linear_1.forward(input.encoder_hidden_states);
        let text = self.caption_projection.linear_2.forward(gelu_tanh(text));
        let [_, s, _] = text.dims();
        let cross = CrossContext { text: text.unsqueeze_dim::<4>(1).repeat_dim(1, f).reshape([b * f, s, d]) };

        // 4. Spatial and temporal blocks, interleaved; the first spatial block is the head
        let temporal = |s: &mut S, i: usize, x: Tensor<B, 3>| -> Result<Tensor<B, 3>> {
            let mut y = transpose_tokens(x, f, np);
            if let (0, Some(table)) = (i, &positions.temporal) {
                y = (y.reshape([b * np, f, d]) + table.clone()).reshape([b, np * f, d]);
            }
            let y = self.temporal_transformer_blocks[i].forward(y, np, &mods, None, ctx, s)?;
            Ok(transpose_tokens(y, np, f))
        };
        let x = match self.transformer_blocks.split_first() {
            None => x,
            Some((head, rest)) => {
                step_signal(strategy, ctx, || head.modulated_input(x.clone(), &mods));
                let out = block_stack(
                    strategy,
                    ctx,
                    JointStates::single(x),
                    |s, x| Ok(JointStates::single(head.forward(x.hidden, f, &mods, Some(&cross), ctx, s)?)),
                    |s, x| {
                        let mut y = temporal(s, 0, x.hidden)?;
                        for (i, spatial) in rest.iter().enumerate() {
                            y = spatial.forward(y, f, &mods, Some(&cross), ctx, s)?;
                            y = temporal(s, i + 1, y)?;
                        }
                        Ok(JointStates::single(y))
                    },
                )?;
                checked(out, [b, f * np, d], &"the block stack")?
            }
        };

        // 5. Output modulation and projection
        let table = self.scale_shift_table.val().unsqueeze_dim::<3>(0) + embedded_timestep.unsqueeze_dim::<3>(1);
        let [shift, scale]: [Tensor<B, 3>; 2] = table.chunk(2, 1).try_into().expect("two chunks");
        let x = self.norm_out.forward_modulated(x, scale, shift);
        let x = self.proj_out.forward(x);

        // 6. Unpatchify to [B, C_out, F, H, W]
        let co = cfg.out_channels();
        let x = x.reshape([b * f, gh, gw, p, p, co]).permute([0, 5, 1, 3, 2, 4]).reshape([b, f, co, h, w]);
        Ok(x.swap_dims(1, 2))
    }
}
