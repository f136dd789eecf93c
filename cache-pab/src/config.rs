//! `PyramidAttentionBroadcastConfig`: diffusers' fields and defaults, the classification of a model's sites,
//! validation and host check.

use cache_core::{
    check_range, check_skip, classify, require_class, AttentionSite, ConfigError, HostInfo, Identifiers, SiteClass,
    TimestepRange,
};
use serde::{Deserialize, Serialize};

fn default_pab_range() -> TimestepRange {
    (100.0, 800.0)
}

pub fn default_spatial_ids() -> Vec<String> {
    ["blocks", "transformer_blocks", "single_transformer_blocks", "layers", "visual_transformer_blocks"]
        .map(String::from)
        .to_vec()
}

/// `^`-anchored copies of identifiers (so `transformer_blocks` stops matching `temporal_transformer_blocks`).
pub fn anchored(ids: &[String]) -> Vec<String> {
    ids.iter().map(|i| format!("^{i}")).collect()
}

fn default_temporal_ids() -> Vec<String> {
    vec!["temporal_transformer_blocks".into()]
}

fn default_cross_ids() -> Vec<String> {
    ["blocks", "transformer_blocks", "layers"].map(String::from).to_vec()
}

/// Pyramid Attention Broadcast (diffusers' `PyramidAttentionBroadcastConfig`).
///
/// Sites are classified as diffusers does: by a regular-expression search of the identifiers in the site's
/// name, spatial first, then temporal, then cross (cross only for cross-attention sites, the others only for
/// self-attention sites).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PyramidAttentionBroadcastConfig {
    pub spatial_attention_block_skip_range: Option<usize>,
    pub temporal_attention_block_skip_range: Option<usize>,
    pub cross_attention_block_skip_range: Option<usize>,
    pub spatial_attention_timestep_skip_range: TimestepRange,
    pub temporal_attention_timestep_skip_range: TimestepRange,
    pub cross_attention_timestep_skip_range: TimestepRange,
    pub spatial_attention_block_identifiers: Vec<String>,
    pub temporal_attention_block_identifiers: Vec<String>,
    pub cross_attention_block_identifiers: Vec<String>,
    /// Extra: never hold more than this many bytes; compute instead of caching past it.
    pub memory_budget_bytes: Option<usize>,
}

impl Default for PyramidAttentionBroadcastConfig {
    fn default() -> Self {
        Self {
            spatial_attention_block_skip_range: None,
            temporal_attention_block_skip_range: None,
            cross_attention_block_skip_range: None,
            spatial_attention_timestep_skip_range: default_pab_range(),
            temporal_attention_timestep_skip_range: default_pab_range(),
            cross_attention_timestep_skip_range: default_pab_range(),
            spatial_attention_block_identifiers: default_spatial_ids(),
            temporal_attention_block_identifiers: default_temporal_ids(),
            cross_attention_block_identifiers: default_cross_ids(),
            memory_budget_bytes: None,
        }
    }
}

impl PyramidAttentionBroadcastConfig {
    /// The classes of the model's sites under this configuration.
    pub fn classes(&self, sites: &[AttentionSite]) -> Result<Vec<Option<SiteClass>>, ConfigError> {
        let ids = |set: Option<usize>, p: &[String]| set.map(|_| Identifiers::new(p)).transpose();
        let s = ids(self.spatial_attention_block_skip_range, &self.spatial_attention_block_identifiers)?;
        let t = ids(self.temporal_attention_block_skip_range, &self.temporal_attention_block_identifiers)?;
        let c = ids(self.cross_attention_block_skip_range, &self.cross_attention_block_identifiers)?;
        Ok(sites.iter().map(|site| classify(site, s.as_ref(), t.as_ref(), c.as_ref())).collect())
    }

    /// Checks values: zero skip ranges, empty windows, bad identifiers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_skip("spatial_attention_block_skip_range", self.spatial_attention_block_skip_range)?;
        check_skip("temporal_attention_block_skip_range", self.temporal_attention_block_skip_range)?;
        check_skip("cross_attention_block_skip_range", self.cross_attention_block_skip_range)?;
        check_range("spatial_attention_timestep_skip_range", self.spatial_attention_timestep_skip_range)?;
        check_range("temporal_attention_timestep_skip_range", self.temporal_attention_timestep_skip_range)?;
        check_range("cross_attention_timestep_skip_range", self.cross_attention_timestep_skip_range)?;
        self.classes(&[]).map(|_| ())
    }

    /// [`PyramidAttentionBroadcastConfig::validate`], then that every range set has a site of `host` to act on.
    pub fn check_host(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate()?;
        let classes = self.classes(&host.sites)?;
        require_class(&classes, SiteClass::Spatial, self.spatial_attention_block_skip_range, "spatial_attention_block_skip_range")?;
        require_class(&classes, SiteClass::Temporal, self.temporal_attention_block_skip_range, "temporal_attention_block_skip_range")?;
        require_class(&classes, SiteClass::Cross, self.cross_attention_block_skip_range, "cross_attention_block_skip_range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::AttentionKind;

    #[test]
    fn diffusers_identifier_quirk_temporal_blocks_match_spatial_first() {
        // "transformer_blocks" is found inside "temporal_transformer_blocks": diffusers classifies such a
        // site as spatial when a spatial range is set.
        let site = AttentionSite { stack: "temporal_transformer_blocks", index: 0, attn: "attn1", kind: AttentionKind::Temporal };
        let pab = PyramidAttentionBroadcastConfig {
            spatial_attention_block_skip_range: Some(2),
            temporal_attention_block_skip_range: Some(3),
            ..Default::default()
        };
        assert_eq!(pab.classes(&[site]).unwrap(), vec![Some(SiteClass::Spatial)]);
    }
}
