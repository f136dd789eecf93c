//! Short labels of configurations, for tables.

use crate::{CacheConfig, PyramidAttentionBroadcastConfig, WeightSchedule};

pub(crate) fn label(config: &CacheConfig) -> String {
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
        CacheConfig::MagCache(c) if c.calibrate => "magcache(calibrate)".into(),
        CacheConfig::MagCache(c) => format!("magcache({},k{})", c.threshold, c.max_skip_steps),
        CacheConfig::TaylorSeerCache(c) => {
            let after = c.disable_cache_after_step.map(|a| format!(",a{a}")).unwrap_or_default();
            format!("taylorseer(i{},o{},b{}{after})", c.cache_interval, c.max_order, c.disable_cache_before_step)
        }
        CacheConfig::TeaCache(c) => format!("teacache({})", c.rel_l1_thresh),
        CacheConfig::SeaCache(c) => format!("seacache({},o{},k{})", c.threshold, c.residual_order, c.max_consecutive_cached),
        CacheConfig::EasyCache(c) => format!("easycache({},r{})", c.thresh, c.ret_steps),
        CacheConfig::Stack { strategies } => strategies.iter().map(label).collect::<Vec<_>>().join("+"),
    }
}
