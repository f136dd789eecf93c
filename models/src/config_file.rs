//! Reading diffusers' `config.json` / `scheduler_config.json` files, the same way for every model and scheduler:
//! typed errors naming the file, and unknown keys refused (keys diffusers writes for itself start with `_`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ModelError, Result};

/// The file at `path` as JSON.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Parse { path: path.to_owned(), reason: e.to_string() })
}

/// `json` (read from `path`) as a configuration.
pub(crate) fn config_from<T: serde::de::DeserializeOwned>(path: &Path, json: serde_json::Value) -> Result<T> {
    serde_json::from_value(json).map_err(|e| ModelError::Parse { path: path.to_owned(), reason: e.to_string() })
}

/// The file at `path` as a configuration.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    config_from(path, read_json(path)?)
}

/// Refuses keys of a configuration's catch-all map that diffusers does not write for itself (`_class_name`,
/// `_diffusers_version`, …): a field this implementation does not know would otherwise be ignored.
pub(crate) fn refuse_unknown(what: &str, extra: &BTreeMap<String, serde_json::Value>) -> Result<()> {
    let unknown: Vec<&str> = extra.keys().filter(|k| !k.starts_with('_')).map(String::as_str).collect();
    match unknown.is_empty() {
        true => Ok(()),
        false => Err(ModelError::InvalidConfig(format!("unknown {what}field(s): {}", unknown.join(", ")))),
    }
}

/// The model directory of a diffusers pipeline directory (`transformer/`, when it holds a `config.json`), or
/// `dir` itself (a model directory).
pub(crate) fn transformer_dir(dir: &Path) -> std::path::PathBuf {
    let t = dir.join("transformer");
    if t.join("config.json").exists() {
        t
    } else {
        dir.to_path_buf()
    }
}
