//! A user's own class-conditional DiT (adaLN-Zero blocks, as in Peebles & Xie, "Scalable Diffusion Models
//! with Transformers"), written with burn-nn, that hosts every cache engine of this workspace.
//!
//! Hosting takes five additions, each marked `// cache:` below:
//! 1. `host_info`: the attention and feed-forward sites (named like the module paths) and the number of blocks;
//! 2. the denoiser call: `reuse_call` (the whole call replaced), `begin_forward` (run the conditional half
//!    only if asked), `end_forward` and `after_call`;
//! 3. the block stack: [`block_stack`] around the first block and the rest;
//! 4. each attention: [`attention_site`] around the computation;
//! 5. each MLP: [`module_site`] around it (TaylorSeer predicts any hooked module's output).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use cache_core::{
    attention_site, block_stack, module_site, AttentionKind, AttentionSite, BatchPlan, CacheStrategy, CallContext, HostInfo,
    JointStates, ModuleSite,
};

/// The model's hyper-parameters.
#[derive(Debug, Clone)]
pub struct DiTConfig {
    /// Latent channels.
    pub channels: usize,
    /// Latent height and width.
    pub size: usize,
    /// Patch size.
    pub patch: usize,
    /// Model width.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Blocks.
    pub depth: usize,
    /// Classes; label `num_classes` is the null class of classifier-free guidance.
    pub num_classes: usize,
}

impl DiTConfig {
    /// A small model that runs in a second on a CPU.
    pub fn small() -> Self {
        Self { channels: 4, size: 16, patch: 2, dim: 128, heads: 4, depth: 6, num_classes: 10 }
    }

    /// Random weights from `seed` (burn's default initialisers after seeding the backend's generator, which
    /// is process-wide; adaLN is not zero-initialised, so the untrained model computes something).
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> DiT<B> {
        B::seed(device, seed);
        let d = self.dim;
        let p2c = self.patch * self.patch * self.channels;
        // GPU backends: weights must be contiguous (a transposed view, e.g. PyTorch weights loaded with
        // `LinearLayout::Col`, is read wrongly by burn-wgpu's batch-1 matmul); burn-nn's default layout already
        // is, and `contiguous_params` makes sure whatever the loading did (docs/backends.md).
        cache_core::contiguous_params(DiT {
            x_embedder: LinearConfig::new(p2c, d).init(device),
            t_embedder: [LinearConfig::new(256, d).init(device), LinearConfig::new(d, d).init(device)],
            y_embedder: EmbeddingConfig::new(self.num_classes + 1, d).init(device),
            blocks: (0..self.depth).map(|index| Block::init(self, index, device)).collect(),
            norm_final: LayerNormConfig::new(d).init(device),
            ada_final: LinearConfig::new(d, 2 * d).init(device),
            linear_final: LinearConfig::new(d, p2c).init(device),
            config: self.clone(),
        })
    }
}

/// One adaLN-Zero block: modulated self-attention and MLP, each gated.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    qkv: Linear<B>,
    proj: Linear<B>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    ada: Linear<B>,
    index: usize,
    heads: usize,
}

impl<B: Backend> Block<B> {
    fn init(c: &DiTConfig, index: usize, device: &B::Device) -> Self {
        let d = c.dim;
        Self {
            norm1: LayerNormConfig::new(d).init(device),
            qkv: LinearConfig::new(d, 3 * d).init(device),
            proj: LinearConfig::new(d, d).init(device),
            norm2: LayerNormConfig::new(d).init(device),
            fc1: LinearConfig::new(d, 4 * d).init(device),
            fc2: LinearConfig::new(4 * d, d).init(device),
            ada: LinearConfig::new(d, 6 * d).init(device),
            index,
            heads: c.heads,
        }
    }

    /// cache: this block's attention site, named like its module path (`blocks.3.attn`).
    pub fn site(&self) -> AttentionSite {
        AttentionSite { stack: "blocks", index: self.index, attn: "attn", kind: AttentionKind::Spatial }
    }

    /// cache: this block's MLP as a module site (`blocks.3.mlp`).
    pub fn mlp_site(&self) -> ModuleSite {
        ModuleSite { stack: "blocks", index: self.index, name: "mlp" }
    }

    fn attn(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let qkv = self.qkv.forward(x).reshape([b, n, 3, self.heads, d / self.heads]).permute([2, 0, 3, 1, 4]);
        let [q, k, v]: [Tensor<B, 4>; 3] =
            qkv.chunk(3, 0).into_iter().map(|t| t.squeeze_dim(0)).collect::<Vec<_>>().try_into().expect("q, k, v");
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        self.proj.forward(out.swap_dims(1, 2).reshape([b, n, d]))
    }

    /// # Shapes
    /// `x`: `[B, N, D]`, `c`: `[B, D]` → `[B, N, D]`
    fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: Tensor<B, 3>,
        c: &Tensor<B, 2>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Tensor<B, 3> {
        let [b, _, d] = x.dims();
        let mods = self.ada.forward(silu(c.clone())).reshape([b, 6, d]).chunk(6, 1);
        let [shift1, scale1, gate1, shift2, scale2, gate2]: [Tensor<B, 3>; 6] = mods.try_into().expect("six");
        let h = self.norm1.forward(x.clone()) * (scale1 + 1.0) + shift1;
        // cache: the attention, computed or reused by the strategy.
        let a = attention_site(strategy, ctx, &self.site(), || JointStates::single(self.attn(h))).hidden;
        let x = x + gate1 * a;
        let h = self.norm2.forward(x.clone()) * (scale2 + 1.0) + shift2;
        // cache: the MLP, computed or predicted by the strategy.
        let m = module_site(strategy, ctx, &self.mlp_site(), || JointStates::single(self.fc2.forward(gelu(self.fc1.forward(h)))));
        x + gate2 * m.hidden
    }
}

/// The DiT.
#[derive(Module, Debug)]
pub struct DiT<B: Backend> {
    x_embedder: Linear<B>,
    t_embedder: [Linear<B>; 2],
    y_embedder: Embedding<B>,
    blocks: Vec<Block<B>>,
    norm_final: LayerNorm<B>,
    ada_final: Linear<B>,
    linear_final: Linear<B>,
    #[module(skip)]
    config: DiTConfig,
}

impl<B: Backend> DiT<B> {
    /// The hyper-parameters.
    pub fn config(&self) -> &DiTConfig {
        &self.config
    }

    /// cache: what the model offers to the engines. Its output is an image `[B, C, H, W]`, handed to them as
    /// a one-frame video `[B, C, 1, H, W]`, hence `BCFHW`.
    pub fn host_info(&self) -> HostInfo {
        HostInfo {
            sites: self.blocks.iter().map(Block::site).collect(),
            num_blocks: self.blocks.len(),
            tensor_format: "BCFHW".into(),
            modules: self.blocks.iter().map(Block::mlp_site).collect(),
            // No module list: engines selecting by name see the sites above only.
            module_names: Vec::new(),
            // No step signal: TeaCache's measured tensor is defined per model family by its authors.
            step_signal: None,
            // Both guidance halves in one call.
            other_step_signals: Vec::new(),
            per_branch_calls: false,
            hands_sigma: false,
        }
    }

    /// The denoiser call. `ctx.branch` states the batch: diffusers' DiT pipeline batches
    /// `[cond, uncond]`, i.e. `Branch::Cfg(CfgOrder::CondFirst)`.
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]`, `t`: `B` timesteps, `y`: `[B]` class labels → `[B, C, H, W]`
    pub fn forward<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: Tensor<B, 4>,
        t: &[f32],
        y: Tensor<B, 1, Int>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Tensor<B, 4> {
        // cache: EasyCache may replace the whole call (as a one-frame video); FasterCache may ask for the
        // conditional half only, and rebuilds the other half in end_forward; EasyCache then sees the output.
        let latents = x.clone().unsqueeze_dim::<5>(2);
        if let Some(out) = strategy.reuse_call(ctx, &latents) {
            return out.squeeze_dim(2);
        }
        let out = match (strategy.begin_forward(ctx), ctx.cond_half()) {
            (BatchPlan::CondOnly, Some((rows, half))) => {
                let (x, y) = (x.narrow(0, rows.start, rows.len()), y.narrow(0, rows.start, rows.len()));
                self.forward_blocks(x, &t[rows], y, &half, strategy)
            }
            _ => self.forward_blocks(x, t, y, ctx, strategy),
        };
        let out = strategy.end_forward(ctx, out.unsqueeze_dim(2));
        strategy.after_call(ctx, &latents, &out);
        out.squeeze_dim(2)
    }

    fn forward_blocks<S: CacheStrategy<B> + ?Sized>(
        &self,
        x: Tensor<B, 4>,
        t: &[f32],
        y: Tensor<B, 1, Int>,
        ctx: &CallContext,
        strategy: &mut S,
    ) -> Tensor<B, 4> {
        let DiTConfig { channels: ch, patch: p, dim: d, .. } = self.config;
        let [b, _, h, w] = x.dims();
        let (gh, gw) = (h / p, w / p);
        let device = x.device();
        let patches = x.reshape([b, ch, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, ch * p * p]);
        let pos = Tensor::<B, 2>::from_data(TensorData::new(sincos_2d(d, gh, gw), [gh * gw, d]), &device);
        let x = self.x_embedder.forward(patches) + pos.unsqueeze();
        let t_freq = Tensor::<B, 2>::from_data(TensorData::new(timestep_embedding(t, 256), [b, 256]), &device);
        let t_emb = self.t_embedder[1].forward(silu(self.t_embedder[0].forward(t_freq)));
        let c = t_emb + self.y_embedder.forward(y.unsqueeze_dim(1)).squeeze_dim(1);

        // cache: the block stack, so First Block Cache can skip the blocks after the first.
        let x = match self.blocks.split_first() {
            Some((head, tail)) => {
                block_stack::<B, S, std::convert::Infallible>(
                    strategy,
                    ctx,
                    JointStates::single(x),
                    |s, x| Ok(JointStates::single(head.forward(x.hidden, &c, ctx, s))),
                    |s, x| Ok(JointStates::single(tail.iter().fold(x.hidden, |x, block| block.forward(x, &c, ctx, s)))),
                )
                .unwrap_or_else(|never| match never {})
                .hidden
            }
            None => x,
        };

        let [shift, scale]: [Tensor<B, 2>; 2] = self.ada_final.forward(silu(c)).chunk(2, 1).try_into().expect("two");
        let x = self.norm_final.forward(x) * (scale.unsqueeze_dim(1) + 1.0) + shift.unsqueeze_dim(1);
        let x = self.linear_final.forward(x);
        x.reshape([b, gh, gw, ch, p, p]).permute([0, 3, 1, 4, 2, 5]).reshape([b, ch, h, w])
    }
}

/// Sinusoidal timestep features `[cos, sin]`, `[t.len(), dim]` row-major.
fn timestep_embedding(t: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp()).collect();
    t.iter().flat_map(|&t| freqs.iter().map(move |f| (t * f).cos()).chain(freqs.iter().map(move |f| (t * f).sin()))).collect()
}

/// Fixed 2-D sin-cos positions, `[gh·gw, dim]` row-major.
fn sincos_2d(dim: usize, gh: usize, gw: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega = |i: usize| 1.0 / 10000f32.powf(i as f32 / quarter as f32);
    let mut out = Vec::with_capacity(gh * gw * dim);
    for r in 0..gh {
        for c in 0..gw {
            for pos in [c as f32, r as f32] {
                out.extend((0..quarter).map(|i| (pos * omega(i)).sin()));
                out.extend((0..quarter).map(|i| (pos * omega(i)).cos()));
            }
        }
    }
    out
}
