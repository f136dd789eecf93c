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

/// Prompt embeddings of a model trained with attribute tokens.
pub struct Prompts {
    table: BTreeMap<String, HostTensor>,
    tokens: usize,
}

impl Prompts {
    /// Reads `attribute_embeddings.safetensors` of a model directory; `tokens` is the text length.
    pub fn load(dir: &std::path::Path, tokens: usize) -> Result<Self, String> {
        let table = read_safetensors(&dir.join("attribute_embeddings.safetensors")).map_err(|e| e.to_string())?;
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
