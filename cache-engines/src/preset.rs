//! The `quality` / `balanced` / `speed` presets.

use cache_core::{AttentionKind, HostInfo};
use cache_pab::{anchored, default_spatial_ids};

use crate::{CacheConfig, FasterCacheConfig, FirstBlockCacheConfig, PyramidAttentionBroadcastConfig};

/// The three presets of the seed article.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// FBC 0.02, PAB spatial 1 / temporal 2, no FasterCache.
    Quality,
    /// FBC 0.05, PAB spatial 2 / temporal 3, FasterCache (CogVideoX settings).
    Balanced,
    /// FBC 0.1, PAB spatial 3 / temporal 4, FasterCache (CogVideoX settings).
    Speed,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "quality" => Ok(Self::Quality),
            "balanced" => Ok(Self::Balanced),
            "speed" => Ok(Self::Speed),
            other => Err(format!("unknown preset {other:?} (quality, balanced, speed)")),
        }
    }
}

impl CacheConfig {
    /// A preset, restricted to what `host` has (no temporal PAB on a model without temporal attention).
    pub fn preset(preset: Preset, host: &HostInfo) -> Self {
        let (threshold, spatial, temporal, cross, faster) = match preset {
            Preset::Quality => (0.02, 1, 2, 3, false),
            Preset::Balanced => (0.05, 2, 3, 4, true),
            Preset::Speed => (0.1, 3, 4, 6, true),
        };
        let has = |kind: AttentionKind| host.sites.iter().any(|s| s.kind == kind);
        let pab = PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: Some(spatial),
            // Anchored, so that temporal blocks (`temporal_transformer_blocks`) get the temporal range.
            spatial_attention_block_identifiers: anchored(&default_spatial_ids()),
            temporal_attention_block_skip_range: has(AttentionKind::Temporal).then_some(temporal),
            cross_attention_block_skip_range: has(AttentionKind::Cross).then_some(cross),
            ..Default::default()
        };
        let mut strategies = Vec::new();
        if faster {
            strategies.push(CacheConfig::FasterCache(FasterCacheConfig::for_host(host)));
        }
        strategies.push(CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold, ..Default::default() }));
        strategies.push(CacheConfig::PyramidAttentionBroadcast(pab));
        CacheConfig::Stack { strategies }
    }

}
