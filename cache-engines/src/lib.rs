//! # cache-engines: every engine behind one configuration
//!
//! The facade a user depends on to turn a configuration (code, JSON or TOML) into an engine for a model:
//! [`CacheConfig`] is the tagged union of every engine's configuration with diffusers' names
//! (`{"type": "first_block_cache", "threshold": 0.05}`, `type = "mag_cache"`, `"sea_cache"`, `"teacache"` or `"easycache"` in TOML; a stack is
//! `{"type": "stack", "strategies": [...]}`), [`CacheConfig::check_host`] says whether a model can take it,
//! [`build`] makes the engine ([`build_experts`] the pair of a two-model pipeline), [`Preset`] names the three presets (quality targets), [`Calibration`] resolves them for a model. `cache-core` knows no engine; adding an
//! engine touches its crate and this one.

mod calibration;
mod calibrator;
mod label;
mod polyfit;
mod preset;
mod resolve;

use std::path::Path;

use burn::tensor::backend::Backend;
pub use cache_core::{self, CacheStrategy, ConfigError, HostInfo, Identity, Stack};
pub use cache_fastercache::{FasterCache, FasterCacheConfig, TensorFormat, WeightSchedule};
pub use cache_fbc::{FbcDecision, FirstBlockCache, FirstBlockCacheConfig};
pub use cache_magcache::{MagCache, MagCacheConfig, FLUX_MAG_RATIOS};
pub use cache_pab::{PyramidAttentionBroadcast, PyramidAttentionBroadcastConfig};
pub use cache_taylorseer::{patterns_for_host as cache_taylorseer_patterns, FactorDtype, TaylorSeer, TaylorSeerCacheConfig};
pub use cache_magcache::schedule as magcache_schedule;
pub use cache_seacache::{schedule as seacache_schedule, FailOpen as SeaCacheFailOpen, LatentLayout, SeaCache, SeaCacheConfig};
pub use cache_easycache::{EasyCache, EasyCacheConfig};
pub use cache_teacache::{schedule as teacache_schedule, TeaCache, TeaCacheConfig, PUBLISHED_COEFFICIENTS as TEACACHE_PUBLISHED_COEFFICIENTS,
    PUBLISHED_RET_STEPS_COEFFICIENTS as TEACACHE_PUBLISHED_RET_STEPS_COEFFICIENTS};
pub use calibration::{CalibratedPreset, Calibration, ModelId, PresetConfig, TeaCacheFit};
pub use resolve::{candidates, predicted_error, resolve_presets, Candidate, Verification, MARGIN_DB, MAX_VERIFICATIONS};
pub use calibrator::Calibrator;
pub use polyfit::fit_polynomial;
pub use preset::Preset;
use serde::{Deserialize, Serialize};

/// A cache strategy's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CacheConfig {
    /// No caching.
    None,
    /// First Block Cache.
    FirstBlockCache(FirstBlockCacheConfig),
    /// Pyramid Attention Broadcast.
    PyramidAttentionBroadcast(PyramidAttentionBroadcastConfig),
    /// FasterCache.
    FasterCache(FasterCacheConfig),
    /// MagCache.
    MagCache(MagCacheConfig),
    /// TaylorSeer.
    #[serde(rename = "taylorseer_cache")]
    TaylorSeerCache(TaylorSeerCacheConfig),
    /// TeaCache (the authors' rule; not in diffusers).
    #[serde(rename = "teacache")]
    TeaCache(TeaCacheConfig),
    /// SeaCache (`sea_cache`).
    SeaCache(SeaCacheConfig),
    /// EasyCache (the authors' rule; not in diffusers).
    #[serde(rename = "easycache")]
    EasyCache(EasyCacheConfig),
    /// Several strategies, consulted in this order at every hook.
    Stack {
        /// The members.
        strategies: Vec<CacheConfig>,
    },
}

/// Pairs of engines a stack refuses, with why: each pair would decide the same thing, or one would change
/// what the other's state assumes.
fn conflict(a: &CacheConfig, b: &CacheConfig) -> Option<&'static str> {
    use CacheConfig as C;
    Some(match (a, b) {
        // A replaced call reaches no other engine's hooks: their per-call state (step counters, residuals,
        // factors) would miss it.
        (C::EasyCache(_), _) | (_, C::EasyCache(_)) => {
            "EasyCache replaces whole denoiser calls, which the other engines' per-call state would miss"
        }
        (C::FirstBlockCache(_), C::FirstBlockCache(_)) => "two First Block Caches decide the same tail",
        (C::FasterCache(_), C::FasterCache(_)) => "two FasterCaches rebuild the same unconditional branch",
        (C::MagCache(_), C::MagCache(_)) => "two MagCaches decide the same block stack",
        (C::MagCache(_), C::FirstBlockCache(_)) | (C::FirstBlockCache(_), C::MagCache(_)) => {
            "MagCache and First Block Cache both decide the block stack"
        }
        (C::TaylorSeerCache(_), C::TaylorSeerCache(_)) => "two TaylorSeers predict the same modules",
        (C::TeaCache(_), C::TeaCache(_)) => "two TeaCaches decide the same block stack",
        (C::TeaCache(_), C::MagCache(_) | C::FirstBlockCache(_)) | (C::MagCache(_) | C::FirstBlockCache(_), C::TeaCache(_)) => {
            "TeaCache decides the whole block stack, as MagCache and First Block Cache do"
        }
        (C::TeaCache(_), C::FasterCache(_)) | (C::FasterCache(_), C::TeaCache(_)) => {
            "FasterCache's conditional-only calls change the batch TeaCache's residuals were stored for"
        }
        (C::MagCache(_), C::FasterCache(_)) | (C::FasterCache(_), C::MagCache(_)) => {
            "FasterCache's conditional-only calls change the batch MagCache's residual was stored for"
        }
        (C::TaylorSeerCache(_), C::FasterCache(_)) | (C::FasterCache(_), C::TaylorSeerCache(_)) => {
            "FasterCache's conditional-only calls change the batch TaylorSeer's factors were stored for"
        }
        (C::SeaCache(_), C::SeaCache(_)) => "two SeaCaches decide the same block stack",
        (C::SeaCache(_), C::MagCache(_) | C::TeaCache(_) | C::FirstBlockCache(_))
        | (C::MagCache(_) | C::TeaCache(_) | C::FirstBlockCache(_), C::SeaCache(_)) => {
            "SeaCache decides the whole block stack, as MagCache, TeaCache and First Block Cache do"
        }
        (C::SeaCache(_), C::FasterCache(_)) | (C::FasterCache(_), C::SeaCache(_)) => {
            "FasterCache's conditional-only calls change the batch SeaCache's residuals and indicators were stored for"
        }
        _ => return None,
    })
}

/// A stack's own rules: no nesting, no conflicting pair (its members' values are checked separately).
fn check_stack(strategies: &[CacheConfig]) -> Result<(), ConfigError> {
    if strategies.iter().any(|s| matches!(s, CacheConfig::Stack { .. })) {
        return Err(ConfigError::Conflict("stacks do not nest; list the strategies in one stack".into()));
    }
    for (i, a) in strategies.iter().enumerate() {
        if let Some(why) = strategies[i + 1..].iter().find_map(|b| conflict(a, b)) {
            return Err(ConfigError::Conflict(why.into()));
        }
    }
    Ok(())
}

impl CacheConfig {
    /// Reads a JSON or TOML file (by extension; anything but `.toml` is read as JSON) and validates it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = cache_core::read_config_file(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values (each engine's own checks) and stacks: no nesting, no conflicting pair.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            CacheConfig::None => Ok(()),
            CacheConfig::FirstBlockCache(c) => c.validate(),
            CacheConfig::PyramidAttentionBroadcast(c) => c.validate(),
            CacheConfig::FasterCache(c) => c.validate(),
            CacheConfig::MagCache(c) => c.validate(),
            CacheConfig::TaylorSeerCache(c) => c.validate(),
            CacheConfig::TeaCache(c) => c.validate(),
            CacheConfig::SeaCache(c) => c.validate(),
            CacheConfig::EasyCache(c) => c.validate(),
            CacheConfig::Stack { strategies } => {
                check_stack(strategies)?;
                strategies.iter().try_for_each(CacheConfig::validate)
            }
        }
    }

    /// [`CacheConfig::validate`], then checks that `host` has what the configuration asks to cache (each
    /// engine's `check_host` validates its own values first).
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        match self {
            CacheConfig::None => Ok(()),
            CacheConfig::FirstBlockCache(c) => c.check_host(host),
            CacheConfig::PyramidAttentionBroadcast(c) => c.check_host(host),
            CacheConfig::FasterCache(c) => c.check_host(host),
            CacheConfig::MagCache(c) => c.check_host(host),
            CacheConfig::TaylorSeerCache(c) => c.check_host(host),
            CacheConfig::TeaCache(c) => c.check_host(host),
            CacheConfig::SeaCache(c) => c.check_host(host),
            CacheConfig::EasyCache(c) => c.check_host(host),
            CacheConfig::Stack { strategies } => {
                check_stack(strategies)?;
                strategies.iter().try_for_each(|s| s.check_host(host))
            }
        }
    }

    /// Refuses a configuration made for another step count (TeaCache's and EasyCache's `num_steps`, MagCache's
    /// `num_inference_steps`), before anything is built; the engines refuse the same at the start of a
    /// generation ([`CacheStrategy::check_steps`]).
    pub fn check_steps(&self, num_inference_steps: usize) -> Result<(), ConfigError> {
        match self {
            CacheConfig::TeaCache(c) => c.check_steps(num_inference_steps),
            CacheConfig::MagCache(c) => c.check_steps(num_inference_steps),
            CacheConfig::EasyCache(c) => c.check_steps(num_inference_steps),
            CacheConfig::Stack { strategies } => strategies.iter().try_for_each(|s| s.check_steps(num_inference_steps)),
            _ => Ok(()),
        }
    }

    /// A short label for tables: `fbc(0.05)`, `pab(s2)`, `magcache(0.1,k3)`, `seacache(0.25,o1,k2)`,
    /// `taylorseer(i4,o1)`, `easycache(0.05,r10)`, `a+b`.
    pub fn label(&self) -> String {
        label::label(self)
    }
}

/// A boxed engine for `config`, after checking that `host` can take it.
pub fn build<B: Backend>(config: &CacheConfig, host: &HostInfo) -> Result<Box<dyn CacheStrategy<B>>, ConfigError> {
    config.check_host(host)?;
    build_checked(config, host)
}

/// Engines for a pipeline with two models taking turns in one generation (Wan 2.2's `transformer` and
/// `transformer_2`), after checking both hosts: an engine each, except EasyCache, whose pair shares one state as
/// the authors' module globals do ([`EasyCache::share`]).
#[allow(clippy::type_complexity)]
pub fn build_experts<B: Backend>(
    config: &CacheConfig,
    host: &HostInfo,
    host_2: &HostInfo,
) -> Result<(Box<dyn CacheStrategy<B>>, Box<dyn CacheStrategy<B>>), ConfigError> {
    config.check_host(host)?;
    config.check_host(host_2)?;
    if let CacheConfig::EasyCache(c) = config {
        let first = EasyCache::<B>::new(c.clone());
        let second = first.share();
        return Ok((Box::new(first), Box::new(second)));
    }
    Ok((build_checked(config, host)?, build_checked(config, host_2)?))
}

fn build_checked<B: Backend>(config: &CacheConfig, host: &HostInfo) -> Result<Box<dyn CacheStrategy<B>>, ConfigError> {
    Ok(match config {
        CacheConfig::None => Box::new(Identity),
        CacheConfig::FirstBlockCache(c) => Box::new(FirstBlockCache::<B>::new(c.clone())),
        CacheConfig::PyramidAttentionBroadcast(c) => Box::new(PyramidAttentionBroadcast::<B>::new(c.clone())?),
        CacheConfig::FasterCache(c) => Box::new(FasterCache::<B>::new(c.clone())?),
        CacheConfig::MagCache(c) => Box::new(MagCache::<B>::new(c.clone())),
        CacheConfig::TaylorSeerCache(c) => Box::new(TaylorSeer::<B>::new(c.clone())?),
        CacheConfig::TeaCache(c) => Box::new(TeaCache::<B>::new(c.clone())),
        // The host's latent layout (BCFHW or BFCHW) decides how the indicator reads the latents.
        CacheConfig::SeaCache(c) => Box::new(SeaCache::<B>::for_host(c.clone(), host)?),
        CacheConfig::EasyCache(c) => Box::new(EasyCache::<B>::new(c.clone())),
        CacheConfig::Stack { strategies } => {
            Box::new(Stack::new(strategies.iter().map(|s| build_checked(s, host)).collect::<Result<_, _>>()?))
        }
    })
}
