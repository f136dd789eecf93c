//! Typed errors of the model crate: configuration, shapes and weights.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON or safetensors file could not be parsed.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A configuration asks for a feature this implementation refuses (rather than computing it wrong).
    #[error("unsupported config: {0}")]
    Unsupported(String),
    /// A weight the model needs is not in the checkpoint.
    #[error("missing weight `{name}` (expected shape {expected:?})")]
    MissingWeight {
        /// diffusers' name of the weight.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
    },
    /// A weight has another shape than the config implies.
    #[error("weight `{name}` has shape {found:?}, expected {expected:?}")]
    WeightShape {
        /// diffusers' name of the weight.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// A weight is stored in a dtype that cannot be converted to float32.
    #[error("weight `{name}` has unsupported dtype {dtype}")]
    WeightDtype {
        /// diffusers' name of the weight.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A compute dtype the model family, or the backend, does not run in: refused rather than computed at
    /// another precision.
    #[error("{model} does not run in {dtype} here: {reason}")]
    UnsupportedDtype {
        /// The model class.
        model: String,
        /// The dtype asked for (torch's name).
        dtype: String,
        /// Why.
        reason: String,
    },
    /// The checkpoint holds weights the model does not use (a config/checkpoint mismatch).
    #[error("checkpoint has {} weight(s) the model does not use: {}", .names.len(), .names.join(", "))]
    UnusedWeights {
        /// Their names.
        names: Vec<String>,
    },
    /// An input tensor has a shape the model cannot take.
    #[error("shape error: {0}")]
    Shape(String),
    /// The cache strategy's configuration does not fit this generation (another step count).
    #[error("cache configuration: {0}")]
    Cache(cache_core::ConfigError),
    /// A cache strategy returned states the model cannot use (a stream missing, a wrong shape).
    #[error("cache strategy error: {0}")]
    Strategy(String),
}

/// Result alias of the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
