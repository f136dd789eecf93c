//! `WanTransformer3DModel` (text-to-video), read top to bottom as diffusers 0.42.1 writes it
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/transformer_wan.py>):
//! `WanAttnProcessor.__call__` (RMS q/k norms across heads on the whole projection, interleaved rotary pairs),
//! `WanTimeTextImageEmbedding` (sinusoidal timestep → `time_embedder` → `temb`, `time_proj(silu(temb))` →
//! six modulations per block; `text_embedder` = `PixArtAlphaTextProjection(gelu_tanh)`), `WanRotaryPosEmbed`
//! (per-axis tables in float64), `WanTransformerBlock` (self-attention,
//! cross-attention behind `norm2`, feed-forward, `scale_shift_table + timestep_proj` modulation) and the
//! model's forward (3-D patch embedding, blocks, `norm_out` modulated by `temb`, `proj_out`, unpatchify).
//!
//! Field names are diffusers' attribute names (`blocks.3.attn1.to_q.weight`); sequential containers are the
//! exception Rust forces (`attn1.to_out.0` is `attn1.to_out`, `ffn.net.0.proj` is `ffn.net_0_proj`).
//!
//! Cache hooks: the input latents (SeaCache's indicator, [`cache_core::input_latents`]); the block stack
//! `blocks` with `blocks.0` as the head block (one stream: the video tokens; the text tokens are the same for
//! every block); attention sites `blocks.{i}.attn1` (self-attention over all video tokens: spatial-temporal,
//! counted as [`AttentionKind::Spatial`]) and `blocks.{i}.attn2` ([`AttentionKind::Cross`]); module sites
//! `blocks.{i}.ffn`. No step signal yet (TeaCache4Wan2.1's rule is not ported; TeaCache refuses the host).

use burn::module::{Module, Param};
use crate::ops::generic::silu;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use cache_core::{
    attention_site, block_stack, input_latents, module_site, step_signal_named, AttentionKind, AttentionSite, CacheStrategy,
    CallContext, HostInfo, JointStates, ModuleSite,
};

use super::config::WanConfig;
use crate::embeddings;
use crate::error::{ModelError, Result};
use crate::input::{checked, denoiser_call, ForwardInput};
use crate::nn::{apply_rotary, gelu_tanh, FeedForward, LayerNorm, Linear, RmsNorm, TimestepEmbedding};
use crate::ops::ModelBackend;

/// The name of Wan's second step signal (the blocks' modulation input), which TeaCache4Wan2.1 measures under
/// `use_ret_steps`; the default is `temb`.
pub const TIMESTEP_PROJ: &str = "timestep_proj";
use crate::weights::{Init, VarBuilder, WeightSource};

/// The rotary tables of one latent grid (`WanRotaryPosEmbed` of the post-patch `(F, H, W)` grid), computed
/// once per generation ([`WanTransformer3DModel::positions`]).
#[derive(Debug, Clone)]
pub struct WanPositions<B: Backend> {
    /// `[1, 1, L, head_dim]`, each pair's cosine repeated.
    pub cos: Tensor<B, 4>,
    /// `[1, 1, L, head_dim]`, each pair's sine repeated.
    pub sin: Tensor<B, 4>,
    /// The post-patch grid `(frames, rows, columns)`.
    pub grid: [usize; 3],
}

/// `PixArtAlphaTextProjection(act_fn="gelu_tanh")`: `linear_2(gelu_tanh(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TextEmbedder<B: Backend> {
    /// `linear_1`: `text_dim → D`.
    pub linear_1: Linear<B>,
    /// `linear_2`: `D → D`.
    pub linear_2: Linear<B>,
}

/// `WanTimeTextImageEmbedding` without the image embedder.
#[derive(Module, Debug)]
pub struct ConditionEmbedder<B: Backend> {
    /// `time_embedder` (`freq_dim` sinusoidal channels in).
    pub time_embedder: TimestepEmbedding<B>,
    /// `time_proj`: `D → 6·D`.
    pub time_proj: Linear<B>,
    /// `text_embedder`.
    pub text_embedder: TextEmbedder<B>,
    /// `freq_dim`.
    pub freq_dim: usize,
}

impl<B: ModelBackend> ConditionEmbedder<B> {
    fn load(vb: &mut VarBuilder<'_, B>, cfg: &WanConfig) -> Result<Self> {
        let mut vb = vb.pp("condition_embedder");
        let d = cfg.inner_dim();
        let mut te = vb.pp("text_embedder");
        let text_embedder = TextEmbedder {
            linear_1: Linear::load(&mut te, "linear_1", cfg.text_dim, d, true)?,
            linear_2: Linear::load(&mut te, "linear_2", d, d, true)?,
        };
        Ok(Self {
            time_embedder: TimestepEmbedding::load(&mut vb, "time_embedder", cfg.freq_dim, d)?,
            time_proj: Linear::load(&mut vb, "time_proj", d, 6 * d, true)?,
            text_embedder,
            freq_dim: cfg.freq_dim,
        })
    }

    /// `(temb [B, D], timestep_proj [B, 6, D])` of one timestep per sample (`Timesteps(freq_dim,
    /// flip_sin_to_cos=True, downscale_freq_shift=0)` in float32).
    fn time(&self, timestep: &[f32], device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let b = timestep.len();
        let proj = embeddings::timestep_embedding(timestep, self.freq_dim, true, 0.0);
        let temb = self.time_embedder.forward(Tensor::from_data(TensorData::new(proj, [b, self.freq_dim]), device));
        let d = temb.dims()[1];
        let timestep_proj = self.time_proj.forward(silu(temb.clone())).reshape([b, 6, d]);
        (temb, timestep_proj)
    }

    /// # Shapes
    /// `[B, S, text_dim]` → `[B, S, D]`
    fn text(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let t = &self.text_embedder;
        t.linear_2.forward(gelu_tanh(t.linear_1.forward(x)))
    }
}

/// `WanAttention` with `WanAttnProcessor` (text-to-video: no image key/value projections).
#[derive(Module, Debug)]
pub struct WanAttention<B: Backend> {
    /// `to_q`.
    pub to_q: Linear<B>,
    /// `to_k`.
    pub to_k: Linear<B>,
    /// `to_v`.
    pub to_v: Linear<B>,
    /// `to_out.0`.
    pub to_out: Linear<B>,
    /// `norm_q`: RMSNorm over all heads' channels (`dim_head · heads`).
    pub norm_q: RmsNorm<B>,
    /// `norm_k`.
    pub norm_k: RmsNorm<B>,
    /// Number of heads.
    pub heads: usize,
}

impl<B: ModelBackend> WanAttention<B> {
    fn load(vb: &mut VarBuilder<'_, B>, name: &str, cfg: &WanConfig) -> Result<Self> {
        let mut vb = vb.pp(name);
        let d = cfg.inner_dim();
        Ok(Self {
            to_q: Linear::load(&mut vb, "to_q", d, d, true)?,
            to_k: Linear::load(&mut vb, "to_k", d, d, true)?,
            to_v: Linear::load(&mut vb, "to_v", d, d, true)?,
            to_out: Linear::load(&mut vb, "to_out.0", d, d, true)?,
            norm_q: RmsNorm::load(&mut vb, "norm_q", d, cfg.eps, true)?,
            norm_k: RmsNorm::load(&mut vb, "norm_k", d, cfg.eps, true)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, l, d] = x.dims();
        x.reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2)
    }

    /// Self-attention (`context` `None`, rotary positions) or cross-attention to `context`.
    ///
    /// # Shapes
    /// `x`: `[B, L, D]`, `context`: `[B, S, D]` → `[B, L, D]`
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>, pos: Option<&WanPositions<B>>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let kv = context.unwrap_or_else(|| x.clone());
        let q = self.heads(self.norm_q.forward(self.to_q.forward(x)));
        let k = self.heads(self.norm_k.forward(self.to_k.forward(kv.clone())));
        let v = self.heads(self.to_v.forward(kv));
        let (q, k) = match pos {
            Some(p) => (apply_rotary(q, &p.cos, &p.sin), apply_rotary(k, &p.cos, &p.sin)),
            None => (q, k),
        };
        let o = <B as ModelBackend>::attention(q, k, v).swap_dims(1, 2).reshape([b, l, d]);
        self.to_out.forward(o)
    }
}

/// `WanTransformerBlock`.
#[derive(Module, Debug)]
pub struct WanTransformerBlock<B: Backend> {
    /// `norm1` (FP32LayerNorm, no affine).
    pub norm1: LayerNorm<B>,
    /// `attn1`: self-attention with rotary positions.
    pub attn1: WanAttention<B>,
    /// `attn2`: cross-attention to the text.
    pub attn2: WanAttention<B>,
    /// `norm2`: LayerNorm with affine parameters when `cross_attn_norm`, else identity.
    pub norm2: Option<LayerNorm<B>>,
    /// `ffn` (`D → ffn_dim → D`, tanh GELU).
    pub ffn: FeedForward<B>,
    /// `norm3` (no affine).
    pub norm3: LayerNorm<B>,
    /// `scale_shift_table` `[1, 6, D]`.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    /// Index in `blocks`.
    pub index: usize,
}

impl<B: ModelBackend> WanTransformerBlock<B> {
    fn load(vb: &mut VarBuilder<'_, B>, index: usize, cfg: &WanConfig) -> Result<Self> {
        let mut vb = vb.pp(index);
        let d = cfg.inner_dim();
        Ok(Self {
            norm1: LayerNorm::load(&mut vb, "norm1", d, cfg.eps, false)?,
            attn1: WanAttention::load(&mut vb, "attn1", cfg)?,
            attn2: WanAttention::load(&mut vb, "attn2", cfg)?,
            norm2: if cfg.cross_attn_norm { Some(LayerNorm::load(&mut vb, "norm2", d, cfg.eps, true)?) } else { None },
            ffn: FeedForward::load_inner(&mut vb, "ffn", d, cfg.ffn_dim)?,
            norm3: LayerNorm::load(&mut vb, "norm3", d, cfg.eps, false)?,
            scale_shift_table: vb.param("scale_shift_table", [1, 6, d], Init::Normal(1.0 / (d as f64).sqrt()))?,
            index,
        })
    }

    fn site(&self, attn: &'static str, kind: AttentionKind) -> AttentionSite {
        AttentionSite { stack: "blocks", index: self.index, attn, kind }
    }

    /// `blocks.{i}.attn1` (self) and `blocks.{i}.attn2` (cross).
    pub fn sites(&self) -> [AttentionSite; 2] {
        [self.site("attn1", AttentionKind::Spatial), self.site("attn2", AttentionKind::Cross)]
    }

    /// `blocks.{i}.ffn`.
    pub fn ffn_site(&self) -> ModuleSite {
        ModuleSite { stack: "blocks", index: self.index, name: "ffn" }
    }

    /// # Shapes
    /// `x`: `[B, L, D]`, `text`: `[B, S, D]`, `timestep_proj`: `[B, 6, D]` → `[B, L, D]`
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: Tensor<B, 3>,
        text: &Tensor<B, 3>,
        timestep_proj: &Tensor<B, 3>,
        pos: &WanPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 3>> {
        let dims = x.dims();
        let mods = self.scale_shift_table.val() + timestep_proj.clone();
        let [shift, scale, gate, c_shift, c_scale, c_gate]: [Tensor<B, 3>; 6] =
            mods.chunk(6, 1).try_into().unwrap_or_else(|_| unreachable!("six modulations"));

        let [self_site, cross_site] = self.sites();
        let nx = self.norm1.forward_modulated(x.clone(), scale, shift);
        let attn = attention_site(strategy, ctx, &self_site, || JointStates::single(self.attn1.forward(nx, None, Some(pos))));
        let x = x + checked(attn, dims, &self_site)? * gate;

        let nx = match &self.norm2 {
            Some(norm) => norm.forward(x.clone()),
            None => x.clone(),
        };
        let attn = attention_site(strategy, ctx, &cross_site, || JointStates::single(self.attn2.forward(nx, Some(text.clone()), None)));
        let x = x + checked(attn, dims, &cross_site)?;

        let nx = self.norm3.forward_modulated(x.clone(), c_scale, c_shift);
        let ff = module_site(strategy, ctx, &self.ffn_site(), || JointStates::single(self.ffn.forward(nx)));
        Ok(x + checked(ff, dims, &self.ffn_site())? * c_gate)
    }
}

/// The Wan 2.1 / 2.2 text-to-video transformer.
#[derive(Module, Debug)]
pub struct WanTransformer3DModel<B: Backend> {
    /// `patch_embedding` (a Conv3d whose kernel is its stride, as the linear map on flattened patches).
    pub patch_embedding: Linear<B>,
    /// `condition_embedder`.
    pub condition_embedder: ConditionEmbedder<B>,
    /// `blocks`.
    pub blocks: Vec<WanTransformerBlock<B>>,
    /// `scale_shift_table` `[1, 2, D]`: `(shift, scale) = table + temb` for `norm_out`.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    /// `norm_out` (no affine).
    pub norm_out: LayerNorm<B>,
    /// `proj_out`: `D → out_channels · pt · ph · pw`.
    pub proj_out: Linear<B>,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: WanConfig,
}

impl<B: ModelBackend> WanTransformer3DModel<B> {
    /// Builds the model from a weight source (a checkpoint, or random weights from a seed), checking every
    /// weight's name and shape; a checkpoint with weights the model does not use is refused.
    pub fn load(config: &WanConfig, weights: &mut WeightSource, device: &B::Device) -> Result<Self> {
        config.validate()?;
        crate::weights::check_dtype::<B>("WanTransformer3DModel", weights.dtype(), false, device)?;
        let cfg = config;
        let d = cfg.inner_dim();
        let [pt, ph, pw] = cfg.patch_size;
        let patch_in = cfg.in_channels * pt * ph * pw;
        let mut vb = VarBuilder::new(weights, device);
        let patch_embedding = {
            let mut pe = vb.pp("patch_embedding");
            let bound = 1.0 / (patch_in as f64).sqrt();
            let w = pe.host("weight", &[d, cfg.in_channels, pt, ph, pw], Init::Uniform(bound))?;
            let weight: Tensor<B, 2> = pe.upload(&w.reshaped(&[d, patch_in]).transposed());
            Linear { weight: Param::from_tensor(weight), bias: Some(pe.param("bias", [d], Init::Uniform(bound))?) }
        };
        let condition_embedder = ConditionEmbedder::load(&mut vb, cfg)?;
        let mut bvb = vb.pp("blocks");
        let blocks = (0..cfg.num_layers).map(|i| WanTransformerBlock::load(&mut bvb, i, cfg)).collect::<Result<Vec<_>>>()?;
        let scale_shift_table = vb.param("scale_shift_table", [1, 2, d], Init::Normal(1.0 / (d as f64).sqrt()))?;
        let norm_out = LayerNorm::load(&mut vb, "norm_out", d, cfg.eps, false)?;
        let proj_out = Linear::load(&mut vb, "proj_out", d, cfg.out_channels() * pt * ph * pw, true)?;
        weights.finish()?;
        Ok(Self { patch_embedding, condition_embedder, blocks, scale_shift_table, norm_out, proj_out, config: config.clone() })
    }

    /// Loads a diffusers model directory (`config.json` and its safetensors, single or sharded, any float dtype).
    pub fn from_pretrained(dir: &std::path::Path, device: &B::Device) -> Result<Self> {
        let config = WanConfig::from_json_file(&dir.join("config.json"))?;
        let mut weights = WeightSource::from_model_dir(dir)?;
        Self::load(&config, &mut weights, device)
    }

    /// What this model offers to cache engines: attention sites `attn1`/`attn2`, module sites `ffn`, the block
    /// count, the latents' layout (`BCFHW`), diffusers' module names, one call per guidance branch.
    pub fn host_info(&self) -> HostInfo {
        HostInfo {
            sites: self.blocks.iter().flat_map(WanTransformerBlock::sites).collect(),
            num_blocks: self.blocks.len(),
            tensor_format: "BCFHW".into(),
            modules: self.blocks.iter().map(WanTransformerBlock::ffn_site).collect(),
            module_names: crate::host::wan_names(&self.config),
            // What TeaCache4Wan2.1 measures (teacache_generate.py l. 520): `e` = diffusers' `temb` `[B, 1, D]`,
            // or with `use_ret_steps` `e0` = `timestep_proj` `[B, 6, D]`.
            step_signal: Some("temb".into()),
            other_step_signals: vec![TIMESTEP_PROJ.into()],
            per_branch_calls: true,
            hands_sigma: true,
        }
    }

    /// The shares of a block's work done by its attention (self and cross) and by its feed-forward, at `tokens`
    /// video tokens and `text` prompt tokens, from multiply-adds per video token: self-attention `4·D²` (q, k,
    /// v, out) + `2·L·D` (scores, weighted sum), cross-attention `2·D²` (q, out) + `2·S·D·(D/L + 1)` (the text's
    /// k, v per video token, scores and sum), feed-forward `2·D·ffn_dim`; norms and modulation left out.
    pub fn block_shares(&self, tokens: usize, text: usize) -> (f64, f64) {
        let (d, l, s, ff) = (self.config.inner_dim() as f64, tokens.max(1) as f64, text as f64, self.config.ffn_dim as f64);
        let attn = 4.0 * d * d + 2.0 * l * d + 2.0 * d * d + 2.0 * s * d * (d / l + 1.0);
        let ffn = 2.0 * d * ff;
        (attn / (attn + ffn), ffn / (attn + ffn))
    }

    /// The post-patch grid `(F/pt, H/ph, W/pw)` of latents `[B, C, F, H, W]`, refused when a size is not a
    /// multiple of the patch or exceeds the rotary tables.
    pub fn grid(&self, frames: usize, height: usize, width: usize) -> Result<[usize; 3]> {
        let p = self.config.patch_size;
        let size = [frames, height, width];
        let grid = [frames / p[0], height / p[1], width / p[2]];
        if (0..3).any(|i| size[i] % p[i] != 0 || grid[i] == 0) {
            return Err(ModelError::Shape(format!("latent (F, H, W) = {size:?} is not a positive multiple of patch_size {p:?}")));
        }
        if let Some(&n) = grid.iter().find(|&&n| n > self.config.rope_max_seq_len) {
            return Err(ModelError::Shape(format!(
                "{n} patches along an axis exceed rope_max_seq_len {}",
                self.config.rope_max_seq_len
            )));
        }
        Ok(grid)
    }

    /// `WanRotaryPosEmbed` of a post-patch grid: per axis (widths [`WanConfig::rope_dims`])
    /// `get_1d_rotary_pos_embed(dim, rope_max_seq_len, 10000, use_real, repeat_interleave_real)` with float64
    /// angles cast to float32, indexed by (frame, row, column) and concatenated; the processor rotates the pairs
    /// `(x[2j], x[2j+1])` with the column-`2j` cosine and column-`2j+1` sine, equal per pair.
    ///
    /// # Shapes
    /// tables `[1, 1, F·H·W, head_dim]`
    pub fn positions(&self, grid: [usize; 3], device: &B::Device) -> WanPositions<B> {
        let hd = self.config.attention_head_dim;
        // Per axis and position: the (cos, sin) of each pair of that axis's width.
        let axis_rows = |dim: usize, n: usize| -> Vec<Vec<(f32, f32)>> {
            (0..n)
                .map(|p| {
                    (0..dim / 2)
                        .map(|j| {
                            let freq = 1.0 / 10000f64.powf((2 * j) as f64 / dim as f64);
                            let angle = p as f64 * freq;
                            (angle.cos() as f32, angle.sin() as f32)
                        })
                        .collect()
                })
                .collect()
        };
        let dims = self.config.rope_dims();
        let rows: Vec<Vec<Vec<(f32, f32)>>> = (0..3).map(|a| axis_rows(dims[a], grid[a])).collect();
        let [nf, nh, nw] = grid;
        let n = nf * nh * nw;
        let (mut cos, mut sin) = (Vec::with_capacity(n * hd), Vec::with_capacity(n * hd));
        for f in 0..nf {
            for h in 0..nh {
                for w in 0..nw {
                    for (axis, pos) in [f, h, w].into_iter().enumerate() {
                        for &(c, s) in &rows[axis][pos] {
                            cos.extend([c, c]);
                            sin.extend([s, s]);
                        }
                    }
                }
            }
        }
        let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, n, hd]), device);
        WanPositions { cos: t(cos), sin: t(sin), grid }
    }

    fn check(&self, x: &ForwardInput<B>, pos: &WanPositions<B>) -> Result<()> {
        x.check_common(1, self.config.in_channels, self.config.text_dim)?;
        let [_, _, f, h, w] = x.hidden_states.dims();
        let grid = self.grid(f, h, w)?;
        if grid != pos.grid {
            return Err(ModelError::Shape(format!("positions are for the grid {:?}, the latents give {grid:?}", pos.grid)));
        }
        Ok(())
    }

    /// The denoiser call, with a cache strategy at its hook points. A Wan call holds one guidance branch (the
    /// pipeline calls the model per branch, in cache contexts `cond` / `uncond`).
    ///
    /// # Shapes
    /// `input.hidden_states`: `[B, in_channels, F, H, W]` → `[B, out_channels, F, H, W]`
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: ForwardInput<B>,
        pos: &WanPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 5>> {
        self.check(&input, pos)?;
        denoiser_call(input, ctx, strategy, |input, ctx, strategy| self.forward_blocks(input, pos, ctx, strategy))
    }

    fn forward_blocks<S: CacheStrategy<B> + ?Sized>(
        &self,
        input: ForwardInput<B>,
        pos: &WanPositions<B>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Result<Tensor<B, 5>> {
        let [b, c, f, h, w] = input.hidden_states.dims();
        let device = input.hidden_states.device();
        input_latents(strategy, ctx, &input.hidden_states);
        let [pt, ph, pw] = self.config.patch_size;
        let [nf, nh, nw] = pos.grid;
        // [B, C, F, H, W] → tokens in (frame, row, column) order, each patch flattened as (c, pt, ph, pw) like
        // the Conv3d weight. In two permutes of at most 6 dimensions (burn-ndarray's limit).
        let (rows, cols) = (nh * nw, ph * pw);
        let x: Tensor<B, 5> = input.hidden_states.reshape([b * c * nf * pt, nh, ph, nw, pw]);
        let x: Tensor<B, 6> = x.permute([0, 1, 3, 2, 4]).reshape([b, c, nf, pt, rows, cols]);
        let patches = x.permute([0, 2, 4, 1, 3, 5]).reshape([b, nf * rows, c * pt * cols]);
        let x = self.patch_embedding.forward(patches);

        let (temb, timestep_proj) = self.condition_embedder.time(&input.timestep, &device);
        let text = self.condition_embedder.text(input.encoder_hidden_states);

        // TeaCache4Wan2.1 (teacache_generate.py l. 520): `e` (diffusers' `temb`), or `e0` (`timestep_proj`)
        // under `use_ret_steps`.
        step_signal_named(strategy, ctx, |name| match name {
            Some(TIMESTEP_PROJ) => timestep_proj.clone(),
            _ => temb.clone().unsqueeze_dim(1),
        });
        let (head, tail) = self.blocks.split_first().ok_or_else(|| ModelError::InvalidConfig("no blocks".into()))?;
        let run = |block: &WanTransformerBlock<B>, s: &mut S, x: JointStates<B>| -> Result<JointStates<B>> {
            block.forward(x.hidden, &text, &timestep_proj, pos, ctx, s).map(JointStates::single)
        };
        let x = block_stack(
            strategy,
            ctx,
            JointStates::single(x),
            |s, x| run(head, s, x),
            |s, x| tail.iter().try_fold(x, |y, block| run(block, s, y)),
        )?
        .hidden;

        let mods = self.scale_shift_table.val() + temb.unsqueeze_dim::<3>(1);
        let [shift, scale]: [Tensor<B, 3>; 2] = mods.chunk(2, 1).try_into().unwrap_or_else(|_| unreachable!("two modulations"));
        let x = self.proj_out.forward(self.norm_out.forward_modulated(x, scale, shift));
        let oc = self.config.out_channels();
        // [B, L, (pt, ph, pw, oc)] → [B, oc, F, H, W], the inverse of the patching above.
        let x: Tensor<B, 6> = x.reshape([b, nf, rows, pt, cols, oc]);
        let x: Tensor<B, 5> = x.permute([0, 5, 1, 3, 2, 4]).reshape([b * oc * nf * pt, nh, nw, ph, pw]);
        Ok(x.permute([0, 1, 3, 2, 4]).reshape([b, oc, f, h, w]))
    }
}
