//! The `quality` / `balanced` / `speed` presets.

use cache_core::{AttentionKind, HostInfo};
use cache_pab::{anchored, default_spatial_ids};

use crate::{CacheConfig, FasterCacheConfig, FirstBlockCacheConfig, PresetConfig, PyramidAttentionBroadcastConfig};

/// The three presets, defined by quality targets: PSNR of the final latents against the uncached ones of at
/// least 40 dB (`quality`), 30 dB (`balanced`), 22 dB (`speed`). A calibration of the model
/// ([`crate::Calibration::preset`]) resolves a preset to the fastest configuration meeting its target;
/// without one, [`CacheConfig::preset`] gives a fixed parameter set that promises no quality level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// ≥ 40 dB. Uncalibrated: FBC 0.02, PAB spatial 1 / temporal 2, no FasterCache.
    Quality,
    /// ≥ 30 dB. Uncalibrated: FBC 0.05, PAB spatial 2 / temporal 3, FasterCache (CogVideoX settings).
    Balanced,
    /// ≥ 22 dB. Uncalibrated: FBC 0.1, PAB spatial 3 / temporal 4, FasterCache (CogVideoX settings).
    Speed,
}

impl Preset {
    /// All three, safest first.
    pub const ALL: [Preset; 3] = [Preset::Quality, Preset::Balanced, Preset::Speed];

    /// `quality`, `balanced` or `speed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quality => "quality",
            Self::Balanced => "balanced",
            Self::Speed => "speed",
        }
    }

    /// The preset's quality target: minimum PSNR (dB) of the final latents against the uncached ones, peak =
    /// the uncached latents' largest magnitude.
    pub fn target_psnr_db(self) -> f64 {
        match self {
            Self::Quality => 40.0,
            Self::Balanced => 30.0,
            Self::Speed => 22.0,
        }
    }
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
    /// A preset without calibration: a fixed parameter set restricted to what `host` has (no temporal PAB on a
    /// model without temporal attention), typed [`PresetConfig::Uncalibrated`] because it promises no quality
    /// level (it can keep 56 dB on one model and lose the video on another). Calibrate the model and use
    /// [`crate::Calibration::preset`] for the target.
    pub fn preset(preset: Preset, host: &HostInfo) -> PresetConfig {
        PresetConfig::Uncalibrated { preset, config: Self::fixed_preset(preset, host) }
    }

    fn fixed_preset(preset: Preset, host: &HostInfo) -> Self {
        let (threshold, spatial, temporal, cross, faster_on) = match preset {
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
        let faster = CacheConfig::FasterCache(FasterCacheConfig::for_host(host));
        // Not on a host FasterCache refuses (FLUX): the rest of the preset still applies.
        if faster_on && faster.check_host(host).is_ok() {
            strategies.push(faster);
        }
        strategies.push(CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold, ..Default::default() }));
        strategies.push(CacheConfig::PyramidAttentionBroadcast(pab));
        CacheConfig::Stack { strategies }
    }

}
