//! Every committed parity case passes against diffusers' numbers; a case whose reference is off fails.

mod common;


use benches::backend::{device, Backend, MEASURED_PRECISION, TOLERANCE_FLOOR};
use benches::parity::{committed_cases_dir, expand_case_dirs, run_case, run_case_within};
use models::weights::{read_safetensors, save_safetensors};

/// The committed cases (`tests/cases`): a case that disappears, or one added without being counted here, fails.
const COMMITTED_CASES: usize = 83;

#[test]
fn every_committed_case_passes_at_the_backends_measured_precision() {
    let cases = expand_case_dirs(&[committed_cases_dir()]);
    assert_eq!(cases.len(), COMMITTED_CASES, "the committed cases: {cases:?}");
    let mut failures = Vec::new();
    for dir in &cases {
        let report = run_case_within::<Backend>(dir, &device(), MEASURED_PRECISION);
        println!("{}", serde_json::to_string(&report).unwrap());
        if !report.pass {
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "failing cases: {failures:?}");
}

#[test]
fn a_perturbed_reference_fails_and_a_broken_case_reports_why() {
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("forward_sincos");
    common::copy_dir(&committed_cases_dir().join("forward_sincos"), &case);
    let path = case.join("case.safetensors");
    let mut t = read_safetensors(&path).unwrap();
    // Relative noise on the expected sample of ten times the tolerance (1e-5, or the backend's precision floor
    // where that is larger: CUDA's TF32).
    let noise = 10.0 * 1e-5f64.max(TOLERANCE_FLOOR);
    let sample = t.get_mut("sample").unwrap();
    for (i, v) in sample.data.iter_mut().enumerate() {
        *v *= 1.0 + if i % 2 == 0 { noise } else { -noise } as f32;
    }
    save_safetensors(&path, &t).unwrap();
    let report = run_case::<Backend>(&case, &device());
    assert!(!report.pass);
    let err = report.rel_l2.unwrap();
    assert!(err > noise / 2.0 && err < 2.0 * noise, "rel_l2 {err}");

    std::fs::remove_file(case.join("transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let report = run_case::<Backend>(&case, &device());
    assert!(!report.pass);
    assert!(report.error.unwrap().contains("diffusion_pytorch_model.safetensors"));
}
