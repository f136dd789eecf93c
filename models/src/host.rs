//! diffusers' module names of each family (`named_modules()` of the diffusers class), so that engines selecting
//! modules by name (TaylorSeer) can tell a pattern that names a module the host cannot hook from one that names
//! nothing; and the work shares of a block that the bench's work model counts skips with.

/// The shares of a transformer block's work done by its attention and by its feed-forward, for `tokens`
/// tokens of width `d`, from multiply-adds per token: attention projections `4·D²` (q, k, v, out) with scores
/// and weighted sum `2·L·D`, feed-forward `8·D²` (a 4× MLP); modulation and norms left out. FLUX's
/// single-stream blocks come out the same (q, k, v and the attention's part of `proj_out`; `proj_mlp` and the
/// rest of `proj_out`).
pub fn block_shares(d: usize, tokens: usize) -> (f64, f64) {
    let (d, l) = (d as f64, tokens as f64);
    let total = 12.0 * d * d + 2.0 * l * d;
    ((4.0 * d * d + 2.0 * l * d) / total, 8.0 * d * d / total)
}

/// `prefix.{i}.{rel}` for each block `i` and each name relative to the block (`""` is the block itself).
fn block_names(prefix: &str, blocks: usize, rel: &[String]) -> Vec<String> {
    let mut v = vec![prefix.to_string()];
    for i in 0..blocks {
        v.extend(rel.iter().map(|r| if r.is_empty() { format!("{prefix}.{i}") } else { format!("{prefix}.{i}.{r}") }));
    }
    v
}

/// Inside an `Attention` module with `to_q/k/v` and `to_out` (+ dropout).
const ATTN: [&str; 6] = ["", "to_q", "to_k", "to_v", "to_out", "to_out.0"];

fn prefixed(prefix: &str, rel: &[&str]) -> Vec<String> {
    rel.iter().map(|r| if r.is_empty() { prefix.to_string() } else { format!("{prefix}.{r}") }).collect()
}

/// `CogVideoXBlock`'s modules, relative to the block.
fn cogvideox_block() -> Vec<String> {
    let mut v: Vec<String> = ["", "norm1", "norm1.silu", "norm1.linear", "norm1.norm"].map(String::from).to_vec();
    v.extend(prefixed("attn1", &ATTN));
    v.extend(["attn1.norm_q", "attn1.norm_k", "attn1.to_out.1"].map(String::from));
    v.extend(["norm2", "norm2.silu", "norm2.linear", "norm2.norm"].map(String::from));
    v.extend(["ff", "ff.net", "ff.net.0", "ff.net.0.proj", "ff.net.1", "ff.net.2", "ff.net.3"].map(String::from));
    v
}

/// `BasicTransformerBlock`'s modules as Latte builds them, relative to the block (`cross`: with `attn2`).
fn latte_block(cross: bool) -> Vec<String> {
    let mut v: Vec<String> = ["", "norm1"].map(String::from).to_vec();
    v.extend(prefixed("attn1", &ATTN));
    v.push("attn1.to_out.1".into());
    v.push("norm2".into());
    if cross {
        v.extend(prefixed("attn2", &ATTN));
        v.push("attn2.to_out.1".into());
    }
    v.extend(["ff", "ff.net", "ff.net.0", "ff.net.0.proj", "ff.net.1", "ff.net.2"].map(String::from));
    v
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `CogVideoXTransformer3DModel`'s modules with `blocks` blocks.
pub(crate) fn cogvideox_names(blocks: usize) -> Vec<String> {
    let mut v = owned(&["", "patch_embed", "patch_embed.proj", "patch_embed.text_proj", "embedding_dropout", "time_proj",
                        "time_embedding", "time_embedding.linear_1", "time_embedding.act", "time_embedding.linear_2"]);
    v.extend(block_names("transformer_blocks", blocks, &cogvideox_block()));
    v.extend(owned(&["norm_final", "norm_out", "norm_out.silu", "norm_out.linear", "norm_out.norm", "proj_out"]));
    v
}

/// `LatteTransformer3DModel`'s modules with `blocks` spatial and `blocks` temporal blocks.
pub(crate) fn latte_names(blocks: usize) -> Vec<String> {
    let mut v = owned(&["", "pos_embed", "pos_embed.proj"]);
    v.extend(block_names("transformer_blocks", blocks, &latte_block(true)));
    v.extend(block_names("temporal_transformer_blocks", blocks, &latte_block(false)));
    v.extend(owned(&[
        "norm_out", "proj_out", "adaln_single", "adaln_single.emb", "adaln_single.emb.time_proj",
        "adaln_single.emb.timestep_embedder", "adaln_single.emb.timestep_embedder.linear_1",
        "adaln_single.emb.timestep_embedder.act", "adaln_single.emb.timestep_embedder.linear_2", "adaln_single.silu",
        "adaln_single.linear", "caption_projection", "caption_projection.linear_1", "caption_projection.act_1",
        "caption_projection.linear_2",
    ]));
    v
}

/// `FluxTransformer2DModel`'s modules (`named_modules()` order of diffusers 0.42.1).
pub(crate) fn flux_names(cfg: &crate::flux::FluxConfig) -> Vec<String> {
    let mut v = owned(&["", "pos_embed", "time_text_embed", "time_text_embed.time_proj"]);
    let embedder = |v: &mut Vec<String>, name: &str| {
        v.extend(prefixed(&format!("time_text_embed.{name}"), &["", "linear_1", "act", "linear_2"]));
    };
    embedder(&mut v, "timestep_embedder");
    if cfg.guidance_embeds {
        embedder(&mut v, "guidance_embedder");
    }
    v.extend(prefixed("time_text_embed.text_embedder", &["", "linear_1", "act_1", "linear_2"]));
    v.extend(owned(&["context_embedder", "x_embedder"]));
    let ada = |n: &str| prefixed(n, &["", "silu", "linear", "norm"]);
    let ff = |n: &str| prefixed(n, &["", "net", "net.0", "net.0.proj", "net.1", "net.2"]);
    let mut double: Vec<String> = vec![String::new()];
    double.extend(ada("norm1"));
    double.extend(ada("norm1_context"));
    double.extend(prefixed("attn", &["", "norm_q", "norm_k", "to_q", "to_k", "to_v", "to_out", "to_out.0", "to_out.1"]));
    double.extend(prefixed("attn", &["norm_added_q", "norm_added_k", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]));
    double.push("norm2".into());
    double.extend(ff("ff"));
    double.push("norm2_context".into());
    double.extend(ff("ff_context"));
    v.extend(block_names("transformer_blocks", cfg.num_layers, &double));
    let mut single: Vec<String> = vec![String::new()];
    single.extend(ada("norm"));
    single.extend(owned(&["proj_mlp", "act_mlp", "proj_out"]));
    single.extend(prefixed("attn", &["", "norm_q", "norm_k", "to_q", "to_k", "to_v"]));
    v.extend(block_names("single_transformer_blocks", cfg.num_single_layers, &single));
    v.extend(ada("norm_out"));
    v.push("proj_out".into());
    v
}

/// `WanTransformer3DModel`'s modules (`named_modules()` order of diffusers 0.42.1, text-to-video).
pub(crate) fn wan_names(cfg: &crate::wan::WanConfig) -> Vec<String> {
    let mut v = owned(&["", "rope", "patch_embedding", "condition_embedder", "condition_embedder.timesteps_proj"]);
    v.extend(prefixed("condition_embedder.time_embedder", &["", "linear_1", "act", "linear_2"]));
    v.extend(owned(&["condition_embedder.act_fn", "condition_embedder.time_proj"]));
    v.extend(prefixed("condition_embedder.text_embedder", &["", "linear_1", "act_1", "linear_2"]));
    let attn = ["", "to_q", "to_k", "to_v", "to_out", "to_out.0", "to_out.1", "norm_q", "norm_k"];
    let mut block: Vec<String> = owned(&["", "norm1"]);
    block.extend(prefixed("attn1", &attn));
    block.extend(prefixed("attn2", &attn));
    block.push("norm2".into());
    block.extend(prefixed("ffn", &["", "net", "net.0", "net.0.proj", "net.1", "net.2"]));
    block.push("norm3".into());
    v.extend(block_names("blocks", cfg.num_layers, &block));
    v.extend(owned(&["norm_out", "proj_out"]));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_follow_diffusers_named_modules() {
        // diffusers' `named_modules()` of the parity cases' two-block models (tools/reference), in its order.
        let cog = cogvideox_names(2);
        assert_eq!(cog.len(), 67);
        assert_eq!(&cog[10..14], ["transformer_blocks", "transformer_blocks.0", "transformer_blocks.0.norm1",
                                  "transformer_blocks.0.norm1.silu"]);
        assert!(cog.contains(&"transformer_blocks.1.ff.net.3".to_string()));
        let latte = latte_names(2);
        assert_eq!(latte.len(), 98);
        assert!(latte.contains(&"temporal_transformer_blocks.1.ff.net.0.proj".to_string()));
        assert!(!latte.contains(&"temporal_transformer_blocks.0.attn2".to_string()));
        // FluxTransformer2DModel(num_layers=2, num_single_layers=2, guidance_embeds=True).named_modules():
        // 129 names, `single_transformer_blocks` right after `transformer_blocks.1.ff_context.net.2`.
        let cfg = crate::flux::FluxConfig { num_layers: 2, num_single_layers: 2, guidance_embeds: true, ..Default::default() };
        let flux = flux_names(&cfg);
        assert_eq!(flux.len(), 129);
        assert_eq!(&flux[16..20], ["context_embedder", "x_embedder", "transformer_blocks", "transformer_blocks.0"]);
        let i = flux.iter().position(|n| n == "single_transformer_blocks").unwrap();
        assert_eq!(flux[i - 1], "transformer_blocks.1.ff_context.net.2");
        assert_eq!(&flux[125..], ["norm_out.silu", "norm_out.linear", "norm_out.norm", "proj_out"]);
        // WanTransformer3DModel(num_layers=2, ...).named_modules(): 74 names, 28 per block.
        let wan = wan_names(&crate::wan::WanConfig { num_layers: 2, ..Default::default() });
        assert_eq!(wan.len(), 74);
        assert_eq!(&wan[13..18], ["condition_embedder.text_embedder.act_1", "condition_embedder.text_embedder.linear_2", "blocks", "blocks.0", "blocks.0.norm1"]);
        assert_eq!(&wan[25..29], ["blocks.0.attn1.norm_q", "blocks.0.attn1.norm_k", "blocks.0.attn2", "blocks.0.attn2.to_q"]);
        assert_eq!(&wan[36..45], ["blocks.0.norm2", "blocks.0.ffn", "blocks.0.ffn.net", "blocks.0.ffn.net.0", "blocks.0.ffn.net.0.proj",
                                  "blocks.0.ffn.net.1", "blocks.0.ffn.net.2", "blocks.0.norm3", "blocks.1"]);
        assert_eq!(&wan[72..], ["norm_out", "proj_out"]);
    }
}
