//! The project's trained models: `assets/shapes`, a small CogVideoX trained on clips of moving shapes by
//! `tools/train/train_shapes.py`, and `assets/flux_shapes`, a small FLUX.1 trained on images of shapes by
//! `tools/train/train_flux_shapes.py`; their prompt embeddings, one per attribute value (one table for both).

use std::collections::BTreeMap;
use std::path::PathBuf;

use models::weights::read_safetensors;
use models::HostTensor;

/// The attributes of a prompt, in token order, with their values.
pub const ATTRIBUTES: [(&str, &[&str]); 4] = [
    ("shape", &["square", "disc"]),
    ("size", &["small", "large"]),
    ("colour", &["red", "green", "blue", "white"]),
    ("direction", &["right", "left", "down", "up"]),
];

/// Every prompt of the trained model (one value per attribute, in [`ATTRIBUTES`] order): 64.
pub fn all_prompts() -> Vec<String> {
    let mut prompts = vec![String::new()];
    for (name, values) in ATTRIBUTES {
        prompts = prompts
            .iter()
            .flat_map(|p| values.iter().map(move |v| if p.is_empty() { format!("{name}={v}") } else { format!("{p},{name}={v}") }))
            .collect();
    }
    prompts
}

/// The prompt `bench` and `tune` use on the trained model.
pub const DEFAULT_PROMPT: &str = "shape=disc,size=large,colour=red,direction=right";

/// Where the trained model lives in this repository (found from [`crate::crate_dir`]).
pub fn shapes_dir() -> PathBuf {
    crate::crate_dir().join("../assets/shapes")
}

/// Where the trained FLUX model lives in this repository.
pub fn flux_shapes_dir() -> PathBuf {
    crate::crate_dir().join("../assets/flux_shapes")
}

/// The latent size the trained FLUX model was trained at (its `default_sample_size`: 32 × 32 latents, a
/// 256 × 256 image, 256 packed tokens).
pub const FLUX_SHAPES_SAMPLE_SIZE: usize = 32;

/// Where the trained Wan model lives in this repository.
pub fn wan_shapes_dir() -> PathBuf {
    crate::crate_dir().join("../assets/wan_shapes")
}

/// The latent `(frames, height, width)` the trained Wan model was trained at (`tools/train/train_wan_shapes.py`).
pub const WAN_SHAPES_SAMPLE_SIZE: [usize; 3] = [4, 16, 16];

/// The pooled embeddings (CLIP's place in FLUX) of `[k, S, D]` prompt embeddings, as the trained FLUX model
/// was trained with them: per prompt, the mean of its [`ATTRIBUTES`] tokens (`[k, D]`; zeros for the
/// unconditional prompt).
pub fn pooled(embeds: &HostTensor) -> Result<HostTensor, String> {
    let &[k, s, d] = embeds.shape.as_slice() else { return Err(format!("prompt embeddings {:?} are not [k, S, D]", embeds.shape)) };
    let n = ATTRIBUTES.len();
    if s < n {
        return Err(format!("prompt embeddings have {s} tokens, fewer than the {n} attribute tokens"));
    }
    let mut data = vec![0f32; k * d];
    for (p, out) in data.chunks_mut(d).enumerate() {
        for t in 0..n {
            let row = &embeds.data[(p * s + t) * d..(p * s + t + 1) * d];
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v / n as f32);
        }
    }
    Ok(HostTensor { shape: vec![k, d], data })
}

/// Why a model directory's prompt table cannot embed prompts.
#[derive(Debug, thiserror::Error)]
pub enum PromptsError {
    /// `attribute_embeddings.safetensors` is missing or unreadable.
    #[error("{0}")]
    Read(#[from] models::ModelError),
    /// Two embeddings of the table differ in length (a prompt's tokens are rows of one width).
    #[error(
        "attribute_embeddings.safetensors: embeddings differ in length: {first} has {first_len} values, {other} has {other_len}"
    )]
    RaggedRows {
        /// The first embedding, in name order.
        first: String,
        /// Its length.
        first_len: usize,
        /// The first embedding of another length.
        other: String,
        /// Its length.
        other_len: usize,
    },
    /// The text is shorter than one token per attribute.
    #[error(
        "max_text_seq_length {tokens} is below the {} attribute tokens of a prompt ({})",
        ATTRIBUTES.len(),
        ATTRIBUTES.map(|(a, _)| a).join(", ")
    )]
    TooFewTokens {
        /// The model's text length.
        tokens: usize,
    },
}

/// Prompt embeddings of a model trained with attribute tokens.
pub struct Prompts {
    table: BTreeMap<String, HostTensor>,
    tokens: usize,
}

impl Prompts {
    /// Reads `attribute_embeddings.safetensors` of a model directory; `tokens` is the text length
    /// (`max_text_seq_length`). Refuses a table whose embeddings differ in length and a text shorter than
    /// [`ATTRIBUTES`] (a prompt's tokens would not fit).
    pub fn load(dir: &std::path::Path, tokens: usize) -> Result<Self, PromptsError> {
        let table = read_safetensors(&dir.join("attribute_embeddings.safetensors"))?;
        Self::new(table, tokens)
    }

    /// A table of embeddings named `attribute.value`, checked as [`Prompts::load`] checks it.
    pub fn new(table: BTreeMap<String, HostTensor>, tokens: usize) -> Result<Self, PromptsError> {
        if tokens < ATTRIBUTES.len() {
            return Err(PromptsError::TooFewTokens { tokens });
        }
        let mut rows = table.iter().map(|(k, t)| (k, t.data.len()));
        if let Some((first, first_len)) = rows.next() {
            if let Some((other, other_len)) = rows.find(|(_, n)| *n != first_len) {
                return Err(PromptsError::RaggedRows { first: first.clone(), first_len, other: other.clone(), other_len });
            }
        }
        Ok(Self { table, tokens })
    }

    fn dim(&self) -> usize {
        self.table.values().next().map(|t| t.data.len()).unwrap_or(0)
    }

    /// `[1, tokens, dim]` for a prompt like `shape=disc,size=large,colour=red,direction=right`: one token per
    /// attribute (in [`ATTRIBUTES`] order), zeros after. Missing attributes stay zero.
    pub fn embed(&self, prompt: &str) -> Result<HostTensor, String> {
        let dim = self.dim();
        let mut data = vec![0f32; self.tokens * dim];
        for part in prompt.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("prompt part {part:?} is not key=value"))?;
            let slot = ATTRIBUTES
                .iter()
                .position(|(a, _)| *a == k)
                .ok_or_else(|| format!("unknown attribute {k:?} (shape, size, colour, direction)"))?;
            let e = self.table.get(&format!("{k}.{v}")).ok_or_else(|| {
                format!("unknown value {v:?} for {k} (one of {:?})", ATTRIBUTES[slot].1)
            })?;
            data[slot * dim..(slot + 1) * dim].copy_from_slice(&e.data);
        }
        Ok(HostTensor { shape: vec![1, self.tokens, dim], data })
    }

    /// The unconditional prompt: all zeros (what training dropped the condition to).
    pub fn negative(&self) -> HostTensor {
        HostTensor { shape: vec![1, self.tokens, self.dim()], data: vec![0.0; self.tokens * self.dim()] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> HostTensor {
        HostTensor { shape: vec![n], data: vec![1.0; n] }
    }

    #[test]
    fn a_table_of_ragged_embeddings_is_refused_naming_both_lengths() {
        let table = BTreeMap::from([("colour.red".to_string(), row(8)), ("shape.disc".to_string(), row(6))]);
        let err = Prompts::new(table, 8).err().expect("ragged table accepted").to_string();
        assert!(err.contains("colour.red has 8") && err.contains("shape.disc has 6"), "{err}");
    }

    #[test]
    fn a_text_shorter_than_the_attributes_is_refused_naming_both_counts() {
        let table = BTreeMap::from([("shape.disc".to_string(), row(8))]);
        let err = Prompts::new(table, 3).err().expect("3 tokens accepted").to_string();
        assert!(err.contains("max_text_seq_length 3") && err.contains("4 attribute tokens"), "{err}");
    }

    #[test]
    fn the_pooled_embedding_is_the_mean_of_the_attribute_tokens_per_prompt() {
        // Two prompts of 5 tokens, 2 values each: the fifth token is padding and does not count.
        let tokens: Vec<f32> = (0..20).map(|v| v as f32).collect();
        let p = pooled(&HostTensor { shape: vec![2, 5, 2], data: tokens }).unwrap();
        // Prompt 0: rows (0,1) (2,3) (4,5) (6,7) → (3, 4); prompt 1: rows (10,11)..(16,17) → (13, 14).
        assert_eq!((p.shape, p.data), (vec![2, 2], vec![3.0, 4.0, 13.0, 14.0]));
    }

    #[test]
    fn a_text_of_one_token_per_attribute_embeds_every_attribute() {
        let table = BTreeMap::from([("shape.disc".to_string(), row(2)), ("direction.up".to_string(), row(2))]);
        let p = Prompts::new(table, 4).unwrap();
        let e = p.embed("shape=disc,direction=up").unwrap();
        assert_eq!((e.shape, e.data), (vec![1, 4, 2], vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]));
    }
}
