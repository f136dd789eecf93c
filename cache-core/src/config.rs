//! What every engine's configuration shares: the typed [`ConfigError`], the [`HostInfo`] a model offers,
//! value checks, diffusers' identifier matching and site classification, and reading a config file.
//! Each engine's config struct lives in the engine's crate; the tagged union of all of them lives in the
//! facade crate (`cache-engines`).

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::context::{AttentionKind, AttentionSite, ModuleSite};

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A threshold below zero.
    #[error("`{field}` must not be negative, got {value}")]
    Negative {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// A skip range (a period) of zero.
    #[error("`{field}` must be at least 1")]
    ZeroSkipRange {
        /// The field.
        field: &'static str,
    },
    /// A timestep window whose low end is not below its high end.
    #[error("`{field}` = ({lo}, {hi}): the low end must be below the high end")]
    EmptyRange {
        /// The field.
        field: &'static str,
        /// Low end.
        lo: f64,
        /// High end.
        hi: f64,
    },
    /// `tensor_format` other than BCFHW, BFCHW, BCHW.
    #[error("unknown tensor_format {0:?} (expected BCFHW, BFCHW or BCHW)")]
    UnknownTensorFormat(String),
    /// A `tensor_format` other than the layout the model produces.
    #[error("tensor_format {config:?} is not the layout this model produces ({host:?}): set `tensor_format` to {host:?}")]
    TensorFormatMismatch {
        /// The configuration's layout.
        config: String,
        /// The model's output layout ([`HostInfo::tensor_format`]).
        host: String,
    },
    /// A block identifier that is not a valid regular expression.
    #[error("invalid block identifier {pattern:?}: {reason}")]
    BadIdentifier {
        /// The pattern.
        pattern: String,
        /// The regex error.
        reason: String,
    },
    /// The model has nothing the configuration asks to cache.
    #[error("the model cannot host this strategy: {0}")]
    NotHostable(String),
    /// Two strategies of a stack would both decide the same thing.
    #[error("conflicting strategies in a stack: {0}")]
    Conflict(String),
    /// A required field is missing.
    #[error("`{field}` is required: {hint}")]
    Missing {
        /// The field.
        field: &'static str,
        /// How to get a value.
        hint: String,
    },
    /// A calibration made for another model or schedule than the one it is used with.
    #[error("calibration mismatch: it was made for {what} {calibrated}, not {found}")]
    Mismatch {
        /// What differs (`model class`, `attention sites`, `num_inference_steps`, ...).
        what: &'static str,
        /// The calibration's value.
        calibrated: String,
        /// The value of the model or generation it was used with.
        found: String,
    },
    /// A configuration made for another step count than the generation's.
    #[error("{engine} `{field}` is {configured} but the generation has {generation} steps ({why})")]
    StepMismatch {
        /// The engine (`TeaCache`, `MagCache`).
        engine: &'static str,
        /// The configuration's field.
        field: &'static str,
        /// Its value.
        configured: usize,
        /// The generation's `num_inference_steps`.
        generation: usize,
        /// What would go wrong.
        why: &'static str,
    },
    /// The file could not be read or parsed.
    #[error("cannot read cache config {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A timestep window `(low, high)`; a timestep is inside when `low < t < high` (strictly, as diffusers).
pub type TimestepRange = (f64, f64);

/// Whether `t` is strictly inside `range`.
pub fn in_range(range: TimestepRange, t: f64) -> bool {
    range.0 < t && t < range.1
}

/// What a model offers to cache engines (its attention sites and whether it has a block stack).
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// Every attention site, in call order within a step.
    pub sites: Vec<AttentionSite>,
    /// Blocks in the stack that First Block Cache splits into head and tail.
    pub num_blocks: usize,
    /// The layout of the model's output, as FasterCache's `tensor_format` names it (`BFCHW` for CogVideoX,
    /// `BCFHW` for Latte), or `BLC` for FLUX's packed tokens (no FasterCache layout: one call per guidance
    /// branch); presets use it, and a FasterCache config stating another layout is refused.
    pub tensor_format: String,
    /// Hookable modules other than attention (each block's feed-forward), in call order within a step.
    pub modules: Vec<ModuleSite>,
    /// Every module of the model as diffusers' `named_modules()` lists it, hookable or not: engines that
    /// select modules by name (TaylorSeer) refuse a pattern that names one they cannot hook.
    pub module_names: Vec<String>,
    /// What the model hands to [`crate::CacheStrategy::observe_step_signal`] (for the engines' messages and
    /// calibration files), or `None` when it hands nothing (TeaCache then cannot run on it).
    pub step_signal: Option<String>,
    /// Further signals a strategy may ask for by name instead of the default
    /// ([`crate::CacheStrategy::step_signal_name`]; Wan: `timestep_proj`); empty for most hosts.
    pub other_step_signals: Vec<String>,
    /// Whether the pipeline calls the model once per guidance branch, in cache contexts `cond` / `uncond`
    /// (FLUX's true CFG, Wan), rather than in one batched `[uncond, cond]` call (CogVideoX, Latte): an engine
    /// written for the batched call (FasterCache's unconditional-branch cache) refuses such a host.
    pub per_branch_calls: bool,
    /// Whether the pipeline hands every call the scheduler's sigma of its step ([`crate::StepContext::sigma`];
    /// `WanPipeline` does): SeaCache's gate reads it and refuses a host that hands none.
    pub hands_sigma: bool,
}

/// A skip range (period) of zero is an error.
pub fn check_skip(field: &'static str, v: Option<usize>) -> Result<(), ConfigError> {
    if v == Some(0) {
        return Err(ConfigError::ZeroSkipRange { field });
    }
    Ok(())
}

/// A window whose low end is not below its high end is an error.
pub fn check_range(field: &'static str, r: TimestepRange) -> Result<(), ConfigError> {
    if !(r.0 < r.1) {
        return Err(ConfigError::EmptyRange { field, lo: r.0, hi: r.1 });
    }
    Ok(())
}

/// Compiled identifier patterns (diffusers matches with `re.search`).
#[derive(Debug, Clone)]
pub struct Identifiers(Vec<regex::Regex>);

impl Identifiers {
    /// Compiles the patterns.
    pub fn new(patterns: &[String]) -> Result<Self, ConfigError> {
        patterns
            .iter()
            .map(|p| {
                regex::Regex::new(p).map_err(|e| ConfigError::BadIdentifier { pattern: p.clone(), reason: e.to_string() })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether any pattern is found in `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.is_match(name))
    }
}

/// How an attention-level engine treats one site: which of its three classes, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteClass {
    /// Spatial self-attention settings apply.
    Spatial,
    /// Temporal self-attention settings apply.
    Temporal,
    /// Cross-attention settings apply.
    Cross,
}

/// diffusers' classification: spatial if a spatial identifier matches a self-attention site and a spatial
/// range is set; else temporal likewise; else cross for cross-attention sites.
pub fn classify(
    site: &AttentionSite,
    spatial: Option<&Identifiers>,
    temporal: Option<&Identifiers>,
    cross: Option<&Identifiers>,
) -> Option<SiteClass> {
    let name = site.to_string();
    let is_cross = site.kind == AttentionKind::Cross;
    if !is_cross && spatial.is_some_and(|i| i.matches(&name)) {
        Some(SiteClass::Spatial)
    } else if !is_cross && temporal.is_some_and(|i| i.matches(&name)) {
        Some(SiteClass::Temporal)
    } else if is_cross && cross.is_some_and(|i| i.matches(&name)) {
        Some(SiteClass::Cross)
    } else {
        None
    }
}

/// An error when a range is `set` but no site has `class` (diffusers would ignore it silently).
pub fn require_class(
    classes: &[Option<SiteClass>],
    class: SiteClass,
    set: Option<usize>,
    field: &str,
) -> Result<(), ConfigError> {
    if set.is_some() && !classes.contains(&Some(class)) {
        // diffusers would ignore the field silently; say why it would have no effect.
        let hint = if class == SiteClass::Temporal && classes.contains(&Some(SiteClass::Spatial)) {
            " (sites are classified spatial first, and diffusers' default spatial identifier \
             `transformer_blocks` also matches `temporal_transformer_blocks`: anchor it as `^transformer_blocks`)"
        } else {
            ""
        };
        return Err(ConfigError::NotHostable(format!(
            "`{field}` is set but no attention site of the model matches its {class:?} identifiers{hint}"
        )));
    }
    Ok(())
}

/// Reads a JSON or TOML file (by extension; anything but `.toml` is read as JSON).
pub fn read_config_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let err = |reason: String| ConfigError::Parse { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    } else {
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

/// `value` as TOML text, the form [`read_config_file`] reads back. TOML has no null: unset optional fields
/// (JSON `null`) are left out, which their `serde(default)` restores.
pub fn to_toml<T: serde::Serialize>(value: &T) -> Result<String, String> {
    fn strip(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip).collect()),
            other => other,
        }
    }
    let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
    toml::to_string(&strip(json)).map_err(|e| e.to_string())
}
