//! Every engine on a bfloat16 CogVideoX (burn-flex, the ndarray build's half-precision backend): the
//! generation stays in bfloat16, the engines' stored states and masks follow the model's dtype (a float32
//! tensor met by a bfloat16 one is a panic on burn-flex), and an engine at a setting that never reuses equals
//! the uncached generation bit for bit. Parity of the bf16 numbers with diffusers is in `parity.rs`
//! (`half_*` cases).
#![cfg(feature = "ndarray")]

use benches::backend::HalfBackend as B;
use benches::parity::{committed_cases_dir, load_denoise_case, rel_l2, DenoiseCase};
use burn::tensor::DType;
use cache_core::{Decision, StepTrace};
use cache_engines::{build, CacheConfig};
use models::{DenoiseOptions, HostTensor};

fn case() -> DenoiseCase<B> {
    load_denoise_case::<B>(&committed_cases_dir().join("half_denoise_sincos_bf16"), &Default::default()).unwrap()
}

/// One generation with the engine of `config`: the final latents (which must be bfloat16) and the skips.
fn run(c: &mut DenoiseCase<B>, config: &str) -> (Vec<f32>, usize) {
    let config: CacheConfig = serde_json::from_str(config).unwrap();
    let mut strategy = build::<B>(&config, &c.model.host_info()).unwrap();
    let out = c.model.denoise(c.input.clone(), &mut *strategy, DenoiseOptions::default()).unwrap();
    assert_eq!(out.dtype(), DType::BF16, "{config:?}");
    let skips = strategy.stats().steps.iter().filter(|s| skipped(s)).count();
    (HostTensor::from_tensor(out).data, skips)
}

/// Whether the step reused anything (blocks, an attention site or module, the unconditional half).
fn skipped(s: &StepTrace) -> bool {
    s.entries().any(|e| {
        e.blocks == Some(Decision::Skip) || e.uncond == Some(Decision::Skip) || e.attention.values().any(|d| *d == Decision::Skip)
    })
}

#[test]
fn every_engine_runs_in_bfloat16_and_equals_no_cache_where_it_never_reuses() {
    let mut c = case();
    assert_eq!(c.model.dtype(), burn::tensor::FloatDType::BF16);
    let (plain, _) = run(&mut c, r#"{"type": "none"}"#);
    assert!(plain.iter().all(|v| v.is_finite()));
    // (reusing, never reusing) settings of each engine, on the case's 12 steps.
    let engines = [
        (r#"{"type": "first_block_cache", "threshold": 0.35}"#, r#"{"type": "first_block_cache", "threshold": 0.0}"#),
        (
            r#"{"type": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": [0, 1000]}"#,
            r#"{"type": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 1, "spatial_attention_timestep_skip_range": [0, 1000]}"#,
        ),
        (
            r#"{"type": "faster_cache", "spatial_attention_timestep_skip_range": [-1, 1000], "unconditional_batch_timestep_skip_range": [-1, 1000], "tensor_format": "BFCHW"}"#,
            r#"{"type": "faster_cache", "spatial_attention_block_skip_range": 1, "spatial_attention_timestep_skip_range": [-1, 1000], "unconditional_batch_skip_range": 1, "unconditional_batch_timestep_skip_range": [-1, 1000], "tensor_format": "BFCHW"}"#,
        ),
        (
            r#"{"type": "teacache", "rel_l1_thresh": 2.0, "coefficients": [1.0, 0.0], "num_steps": 12}"#,
            r#"{"type": "teacache", "rel_l1_thresh": 0.0, "coefficients": [1.0, 0.0], "num_steps": 12}"#,
        ),
        (
            r#"{"type": "mag_cache", "threshold": 0.5, "max_skip_steps": 3, "retention_ratio": 0.2, "num_inference_steps": 12, "mag_ratios": [1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.9, 0.89]}"#,
            r#"{"type": "mag_cache", "threshold": 0.0, "max_skip_steps": 3, "retention_ratio": 0.2, "num_inference_steps": 12, "mag_ratios": [1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.9, 0.89]}"#,
        ),
        (
            r#"{"type": "taylorseer_cache", "cache_interval": 3, "disable_cache_before_step": 2, "max_order": 2, "taylor_factors_dtype": "bfloat16", "cache_identifiers": ["transformer_blocks\\.\\d+\\.attn1", "transformer_blocks\\.\\d+\\.ff"]}"#,
            r#"{"type": "taylorseer_cache", "cache_interval": 1, "disable_cache_before_step": 2, "max_order": 2, "taylor_factors_dtype": "bfloat16", "cache_identifiers": ["transformer_blocks\\.\\d+\\.attn1", "transformer_blocks\\.\\d+\\.ff"]}"#,
        ),
        (
            r#"{"type": "easycache", "thresh": 0.5, "ret_steps": 3, "num_steps": 12}"#,
            r#"{"type": "easycache", "thresh": 0.0, "ret_steps": 3, "num_steps": 12}"#,
        ),
    ];
    for (reusing, never) in engines {
        let (cached, skips) = run(&mut c, reusing);
        assert!(skips > 0, "{reusing}: no reuse");
        assert!(cached.iter().all(|v| v.is_finite()), "{reusing}");
        let err = rel_l2(&cached, &plain);
        assert!(err > 0.0 && err < 1.0, "{reusing}: rel_l2 {err} from the uncached generation");
        let (exact, none) = run(&mut c, never);
        assert_eq!(none, 0, "{never}");
        assert_eq!(exact, plain, "{never}: differs from the uncached bf16 generation");
    }
}
