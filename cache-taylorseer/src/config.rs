//! `TaylorSeerCacheConfig`: diffusers' fields and defaults, module selection by full-match patterns,
//! validation and host check.

use cache_core::{ConfigError, HostInfo};
use serde::{Deserialize, Serialize};

/// diffusers' default `cache_identifiers` (`_TRANSFORMER_BLOCK_IDENTIFIERS`): full matches, so the module name
/// must *end* in `attn`.
pub const DEFAULT_CACHE_IDENTIFIERS: [&str; 4] =
    ["^blocks.*attn", "^transformer_blocks.*attn", "^single_transformer_blocks.*attn", "^temporal_transformer_blocks.*attn"];
/// diffusers' lite mode: predict `proj_out`, zero whole blocks.
const LITE_CACHE_IDENTIFIERS: [&str; 1] = ["^proj_out$"];
const LITE_SKIP_IDENTIFIERS: [&str; 1] = ["^[^.]*block[^.]*\\.[^.]+$"];

/// The dtype the Taylor factors are stored in (diffusers' `taylor_factors_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactorDtype {
    /// `torch.float32`: exact.
    Float32,
    /// `torch.bfloat16` (diffusers' default): factors rounded to bfloat16 when stored.
    Bfloat16,
    /// `torch.float16`: factors rounded to float16 when stored.
    Float16,
}

fn default_cache_interval() -> usize {
    5
}
fn default_disable_cache_before_step() -> usize {
    3
}
fn default_max_order() -> usize {
    1
}
fn default_dtype() -> FactorDtype {
    FactorDtype::Bfloat16
}

/// TaylorSeer (diffusers' `TaylorSeerCacheConfig`), plus an opt-in memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaylorSeerCacheConfig {
    /// A hooked module computes every `cache_interval`-th call after the warm-up and predicts the others.
    #[serde(default = "default_cache_interval")]
    pub cache_interval: usize,
    /// Calls before this index always compute (and build the factors).
    #[serde(default = "default_disable_cache_before_step")]
    pub disable_cache_before_step: usize,
    /// Calls from this index on always compute.
    #[serde(default)]
    pub disable_cache_after_step: Option<usize>,
    /// The highest derivative kept.
    #[serde(default = "default_max_order")]
    pub max_order: usize,
    /// The storage dtype of the factors.
    #[serde(default = "default_dtype")]
    pub taylor_factors_dtype: FactorDtype,
    /// Full-match patterns of modules that compute on refresh steps and return zeros on predicted ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_predict_identifiers: Option<Vec<String>>,
    /// Full-match patterns of modules whose outputs are predicted (default: diffusers' attention patterns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_identifiers: Option<Vec<String>>,
    /// diffusers' lite mode (its own patterns: `proj_out` predicted, whole blocks zeroed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_lite_mode: bool,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<usize>,
}

impl Default for TaylorSeerCacheConfig {
    fn default() -> Self {
        Self {
            cache_interval: default_cache_interval(),
            disable_cache_before_step: default_disable_cache_before_step(),
            disable_cache_after_step: None,
            max_order: default_max_order(),
            taylor_factors_dtype: default_dtype(),
            skip_predict_identifiers: None,
            cache_identifiers: None,
            use_lite_mode: false,
            memory_budget_bytes: None,
        }
    }
}

/// How a selected module is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Predicted from its Taylor factors.
    Predict,
    /// Zeroed on predicted calls (`skip_predict_identifiers`; wins over a cache pattern).
    Zero,
}

/// Compiled full-match patterns (Python's `re.fullmatch`).
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    predict: Vec<(String, regex::Regex)>,
    zero: Vec<(String, regex::Regex)>,
}

fn compile(patterns: &[String]) -> Result<Vec<(String, regex::Regex)>, ConfigError> {
    patterns
        .iter()
        .map(|p| {
            regex::Regex::new(&format!("^(?:{p})$"))
                .map(|r| (p.clone(), r))
                .map_err(|e| ConfigError::BadIdentifier { pattern: p.clone(), reason: e.to_string() })
        })
        .collect()
}

impl Selection {
    /// The mode of the module `name`, if selected.
    pub(crate) fn mode(&self, name: &str) -> Option<Mode> {
        let hit = |set: &[(String, regex::Regex)]| set.iter().any(|(_, r)| r.is_match(name));
        if hit(&self.zero) {
            Some(Mode::Zero)
        } else if hit(&self.predict) {
            Some(Mode::Predict)
        } else {
            None
        }
    }

    /// The first pattern that selects `name`.
    fn pattern_for(&self, name: &str) -> Option<&str> {
        self.zero.iter().chain(&self.predict).find(|(_, r)| r.is_match(name)).map(|(p, _)| p.as_str())
    }
}

impl TaylorSeerCacheConfig {
    /// The effective patterns, as diffusers resolves them: lite mode's own; else `cache_identifiers` or the
    /// defaults (even when only `skip_predict_identifiers` is set), and `skip_predict_identifiers` or none.
    fn selection(&self) -> Result<Selection, ConfigError> {
        let owned = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (predict, zero) = if self.use_lite_mode {
            (owned(&LITE_CACHE_IDENTIFIERS), owned(&LITE_SKIP_IDENTIFIERS))
        } else {
            (
                self.cache_identifiers.clone().filter(|v| !v.is_empty()).unwrap_or_else(|| owned(&DEFAULT_CACHE_IDENTIFIERS)),
                self.skip_predict_identifiers.clone().unwrap_or_default(),
            )
        };
        Ok(Selection { predict: compile(&predict)?, zero: compile(&zero)? })
    }

    /// Whether call `step` (from 0) of a hooked module computes.
    pub fn computes(&self, step: usize) -> bool {
        let before = self.disable_cache_before_step as i64;
        let interval = self.cache_interval as i64;
        let step_i = step as i64;
        step < self.disable_cache_before_step
            || (step_i - before - 1).rem_euclid(interval) == 0
            || self.disable_cache_after_step.is_some_and(|a| step >= a)
    }

    /// Checks values: a zero interval; a schedule that would predict call 0 with nothing computed (diffusers
    /// raises there); bad patterns.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked_selection().map(|_| ())
    }

    /// [`TaylorSeerCacheConfig::validate`]'s checks, handing back the compiled patterns.
    pub(crate) fn checked_selection(&self) -> Result<Selection, ConfigError> {
        if self.cache_interval == 0 {
            return Err(ConfigError::ZeroSkipRange { field: "cache_interval" });
        }
        if !self.computes(0) {
            return Err(ConfigError::NotHostable(
                "`disable_cache_before_step` = 0 would predict the first call with nothing computed (diffusers \
                 raises); set it to at least 1"
                    .into(),
            ));
        }
        self.selection()
    }

    /// [`TaylorSeerCacheConfig::validate`], then that the patterns select at least one module of `host` and only
    /// modules it can hook (its attention and module sites): diffusers hooks nothing silently where its
    /// default patterns match no module (CogVideoX, Latte), and this engine refuses instead.
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        let sel = self.checked_selection()?;
        let hookable: Vec<String> =
            host.sites.iter().map(|s| s.to_string()).chain(host.modules.iter().map(|m| m.to_string())).collect();
        let names = if host.module_names.is_empty() { &hookable } else { &host.module_names };
        if let Some(name) = names.iter().find(|n| sel.mode(n).is_some() && !hookable.contains(n)) {
            return Err(ConfigError::NotHostable(format!(
                "TaylorSeer pattern {:?} selects `{name}`, which this model cannot hook (hookable: its attention \
                 and feed-forward modules, e.g. {})",
                sel.pattern_for(name).unwrap_or_default(),
                example(host)
            )));
        }
        if !hookable.iter().any(|n| sel.mode(n).is_some()) {
            let why = if self.cache_identifiers.is_none() && !self.use_lite_mode {
                " (diffusers' default patterns must match a name ending in `attn`; this model's attention modules \
                 end in `attn1`/`attn2`, so diffusers would hook nothing and run uncached)"
            } else {
                ""
            };
            return Err(ConfigError::NotHostable(format!(
                "TaylorSeer's patterns select no module of this model{why}: set `cache_identifiers`, e.g. {}",
                example(host)
            )));
        }
        Ok(())
    }
}

/// Patterns that select every attention and module site of `host` (`{stack}\.\d+\.{name}`, one per distinct
/// stack and name): a `cache_identifiers` that predicts all it can hook.
pub fn patterns_for_host(host: &HostInfo) -> Vec<String> {
    let mut pats: Vec<String> = Vec::new();
    let mut add = |stack: &str, name: &str| {
        let p = format!("{stack}\\.\\d+\\.{name}");
        if !pats.contains(&p) {
            pats.push(p);
        }
    };
    host.sites.iter().for_each(|s| add(s.stack, s.attn));
    host.modules.iter().for_each(|m| add(m.stack, m.name));
    pats
}

fn example(host: &HostInfo) -> String {
    format!("{:?}", patterns_for_host(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_schedule_matches_the_design_notes() {
        let c = TaylorSeerCacheConfig { cache_interval: 3, disable_cache_before_step: 2, ..Default::default() };
        let computed: Vec<usize> = (0..12).filter(|&s| c.computes(s)).collect();
        assert_eq!(computed, vec![0, 1, 3, 6, 9]);
        let c = TaylorSeerCacheConfig {
            cache_interval: 4,
            disable_cache_before_step: 3,
            disable_cache_after_step: Some(10),
            ..Default::default()
        };
        let computed: Vec<usize> = (0..12).filter(|&s| c.computes(s)).collect();
        assert_eq!(computed, vec![0, 1, 2, 4, 8, 10, 11]);
    }

    #[test]
    fn patterns_are_full_matches_and_skip_predict_wins() {
        let c = TaylorSeerCacheConfig {
            cache_identifiers: Some(vec![r"transformer_blocks\.\d+\.(attn1|ff)".into()]),
            skip_predict_identifiers: Some(vec![r"transformer_blocks\.1\.ff".into()]),
            ..Default::default()
        };
        let s = c.selection().unwrap();
        assert_eq!(s.mode("transformer_blocks.0.attn1"), Some(Mode::Predict));
        assert_eq!(s.mode("transformer_blocks.1.ff"), Some(Mode::Zero));
        assert_eq!(s.mode("temporal_transformer_blocks.0.attn1"), None, "full match, not search");
        let d = TaylorSeerCacheConfig::default().selection().unwrap();
        assert_eq!(d.mode("transformer_blocks.0.attn1"), None, "the default must end in `attn`");
        assert_eq!(d.mode("transformer_blocks.0.attn"), Some(Mode::Predict));
    }
}
