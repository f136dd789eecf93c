//! The project's trained model (`assets/shapes`): a small CogVideoX trained on clips of moving shapes by
//! `tools/train/train_shapes.py`, and its prompt embeddings, one per attribute value.

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
    fn a_text_of_one_token_per_attribute_embeds_every_attribute() {
        let table = BTreeMap::from([("shape.disc".to_string(), row(2)), ("direction.up".to_string(), row(2))]);
        let p = Prompts::new(table, 4).unwrap();
        let e = p.embed("shape=disc,direction=up").unwrap();
        assert_eq!((e.shape, e.data), (vec![1, 4, 2], vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]));
    }
}
