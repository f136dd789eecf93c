//! Builds a cache strategy from its configuration.

use burn::tensor::backend::Backend;
use cache_core::{
    CacheConfig, CacheStrategy, ConfigError, HostInfo, Identity, PyramidAttentionBroadcastConfig, Stack, WeightSchedule,
};
use cache_fastercache::FasterCache;
use cache_fbc::FirstBlockCache;
use cache_pab::PyramidAttentionBroadcast;

/// A boxed strategy for `config`, after checking that `host` can take it.
pub fn build<B: Backend>(config: &CacheConfig, host: &HostInfo) -> Result<Box<dyn CacheStrategy<B>>, ConfigError> {
    config.check_host(host)?;
    build_checked(config)
}

fn build_checked<B: Backend>(config: &CacheConfig) -> Result<Box<dyn CacheStrategy<B>>, ConfigError> {
    Ok(match config {
        CacheConfig::None => Box::new(Identity),
        CacheConfig::FirstBlockCache(c) => Box::new(FirstBlockCache::<B>::new(c.clone())),
        CacheConfig::PyramidAttentionBroadcast(c) => Box::new(PyramidAttentionBroadcast::<B>::new(c.clone())?),
        CacheConfig::FasterCache(c) => Box::new(FasterCache::<B>::new(c.clone())?),
        CacheConfig::Stack { strategies } => {
            Box::new(Stack::new(strategies.iter().map(build_checked).collect::<Result<_, _>>()?))
        }
    })
}

/// A short label of a configuration, for tables: `fbc(0.05)`, `pab(s2)`, `fastercache`, `a+b`.
pub fn label(config: &CacheConfig) -> String {
    match config {
        CacheConfig::None => "none".into(),
        CacheConfig::FirstBlockCache(c) => format!("fbc({})", c.threshold),
        CacheConfig::PyramidAttentionBroadcast(c) => {
            let mut parts = Vec::new();
            if let Some(s) = c.spatial_attention_block_skip_range {
                parts.push(format!("s{s}"));
            }
            if let Some(t) = c.temporal_attention_block_skip_range {
                parts.push(format!("t{t}"));
            }
            if let Some(x) = c.cross_attention_block_skip_range {
                parts.push(format!("x{x}"));
            }
            let w = c.spatial_attention_timestep_skip_range;
            if w != PyramidAttentionBroadcastConfig::default().spatial_attention_timestep_skip_range {
                parts.push(format!("{}-{}", w.0, w.1));
            }
            format!("pab({})", parts.join(","))
        }
        CacheConfig::FasterCache(c) => {
            let w = match c.attention_weight {
                WeightSchedule::Constant(w) => format!("{w}"),
                WeightSchedule::Linear { start, end } => format!("{start}..{end}"),
            };
            format!("fastercache(u{},w{w})", c.unconditional_batch_skip_range)
        }
        CacheConfig::Stack { strategies } => strategies.iter().map(label).collect::<Vec<_>>().join("+"),
    }
}
