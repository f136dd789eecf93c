//! Inputs that used to be accepted and then ignored, or that panicked, are refused with a typed error that
//! names both values: engine configurations made for another step count (in the library, not only in the
//! CLI), case tensors of another rank, and decisions the reference does not record.

mod common;

use benches::backend::{device, Backend as B};
use benches::parity::{committed_cases_dir, decisions_diff, load_denoise_case, run_case};
use cache_core::{ConfigError, Decision, StepTrace};
use cache_engines::{build, CacheConfig};
use models::weights::{read_safetensors, save_safetensors};
use models::{DenoiseOptions, ModelError};

/// A committed case whose cache configuration was made for `steps` steps, run for the case's own count.
fn run_with_steps(case: &str, steps: usize) -> Result<(), ModelError> {
    let mut c = load_denoise_case::<B>(&committed_cases_dir().join(case), &device()).unwrap();
    match &mut c.cache {
        CacheConfig::MagCache(m) => m.num_inference_steps = steps,
        CacheConfig::TeaCache(t) => t.num_steps = steps,
        other => panic!("{case}: {other:?}"),
    }
    // `build` takes it (it cannot know the generation's steps); the generation refuses it before its first step.
    let mut strategy = build::<B>(&c.cache, &c.model.host_info()).unwrap();
    c.model.denoise(c.input, &mut *strategy, DenoiseOptions::default()).map(|_| ())
}

#[test]
fn engines_configured_for_another_step_count_refuse_the_generation() {
    // The cases run 12 steps.
    for (case, engine, field) in [("magcache_sincos", "MagCache", "num_inference_steps"), ("teacache_sincos", "TeaCache", "num_steps")] {
        let e = run_with_steps(case, 10).unwrap_err();
        let ModelError::Cache(ConfigError::StepMismatch { engine: en, field: f, configured: 10, generation: 12, .. }) = &e else {
            panic!("{case}: {e:?}")
        };
        assert_eq!((*en, *f), (engine, field));
        assert!(e.to_string().contains("10") && e.to_string().contains("12"), "{e}");
        run_with_steps(case, 12).unwrap();
    }
}

#[test]
fn a_case_tensor_of_another_rank_is_the_cases_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    for (case, name) in [("forward_sincos", "hidden_states"), ("forward_sincos", "encoder_hidden_states"), ("denoise_sincos", "latents"), ("denoise_sincos", "prompt_embeds")] {
        let dir = tmp.path().join(format!("{case}_{name}"));
        common::copy_dir(&committed_cases_dir().join(case), &dir);
        let path = dir.join("case.safetensors");
        let mut t = read_safetensors(&path).unwrap();
        let x = t.get_mut(name).unwrap();
        let n = x.data.len();
        x.shape = vec![1, n];
        save_safetensors(&path, &t).unwrap();
        let report = run_case::<B>(&dir, &device());
        assert!(!report.pass);
        let error = report.error.unwrap_or_default();
        assert!(error.contains(name) && error.contains("2-D") && error.contains("expected a"), "{case}/{name}: {error}");
    }
}

#[test]
fn a_case_whose_engine_was_made_for_other_steps_fails_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("magcache_sincos");
    common::copy_dir(&committed_cases_dir().join("magcache_sincos"), &dir);
    let spec_path = dir.join("case.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    spec["cache"]["num_inference_steps"] = 20.into();
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let report = run_case::<B>(&dir, &device());
    assert!(!report.pass);
    let error = report.error.unwrap_or_default();
    assert!(error.contains("MagCache") && error.contains("20") && error.contains("12"), "{error}");
}

fn step(step: usize, timestep: f64) -> StepTrace {
    StepTrace { step, timestep, ..Default::default() }
}

#[test]
fn decisions_differ_on_timesteps_and_on_keys_only_the_engine_decides() {
    let reference: Vec<StepTrace> = (0..3).map(|i| StepTrace { blocks: Some(Decision::Compute), ..step(i, 999.0 - i as f64) }).collect();
    assert_eq!(decisions_diff(&reference, &reference), None);
    // Another timestep at step 1.
    let mut ours = reference.clone();
    ours[1].timestep = 900.0;
    let d = decisions_diff(&reference, &ours).unwrap();
    assert!(d.contains("step 1") && d.contains("900") && d.contains("998"), "{d}");
    // A key the reference does not decide (the unconditional branch), on step 2.
    let mut ours = reference.clone();
    ours[2].uncond = Some(Decision::Skip);
    let d = decisions_diff(&reference, &ours).unwrap();
    assert!(d.contains("step 2") && d.contains("uncond"), "{d}");
    // An attention site only ours decides.
    let mut ours = reference.clone();
    ours[0].attention.insert("transformer_blocks.0.attn1".into(), Decision::Compute);
    assert!(decisions_diff(&reference, &ours).unwrap().contains("transformer_blocks.0.attn1"));
    // A step more.
    let mut ours = reference.clone();
    ours.push(step(3, 996.0));
    assert!(decisions_diff(&reference, &ours).unwrap().contains("4 steps"));
}
