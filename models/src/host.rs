//! diffusers' module names of each family (`named_modules()` of the diffusers class), so that engines selecting
//! modules by name (TaylorSeer) can tell a pattern that names a module the host cannot hook from one that names
//! nothing.

/// `prefix.{i}.{rel}` for each block `i` and each name relative to the block (`""` is the block itself).
pub(crate) fn block_names(prefix: &str, blocks: usize, rel: &[String]) -> Vec<String> {
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
pub(crate) fn cogvideox_block() -> Vec<String> {
    let mut v: Vec<String> = ["", "norm1", "norm1.silu", "norm1.linear", "norm1.norm"].map(String::from).to_vec();
    v.extend(prefixed("attn1", &ATTN));
    v.extend(["attn1.norm_q", "attn1.norm_k", "attn1.to_out.1"].map(String::from));
    v.extend(["norm2", "norm2.silu", "norm2.linear", "norm2.norm"].map(String::from));
    v.extend(["ff", "ff.net", "ff.net.0", "ff.net.0.proj", "ff.net.1", "ff.net.2", "ff.net.3"].map(String::from));
    v
}

/// `BasicTransformerBlock`'s modules as Latte builds them, relative to the block (`cross`: with `attn2`).
pub(crate) fn latte_block(cross: bool) -> Vec<String> {
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
