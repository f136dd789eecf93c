//! Every committed parity case passes against diffusers' numbers; a case whose reference is off fails.

mod common;


use benches::backend::{device, replay, Backend, HalfBackend, HALF_NAME, MEASURED_PRECISION, TOLERANCE_FLOOR};
use benches::parity::{committed_cases_dir, expand_case_dirs, run_case};
use models::weights::{read_safetensors, save_safetensors};

/// The committed cases (`tests/cases`): a case that disappears, or one added without being counted here, fails.
const COMMITTED_CASES: usize = 88;

#[test]
fn every_committed_case_passes_at_the_backends_measured_precision() {
    let cases = expand_case_dirs(&[committed_cases_dir()]);
    assert_eq!(cases.len(), COMMITTED_CASES, "the committed cases: {cases:?}");
    let mut failures = Vec::new();
    for dir in &cases {
        let report = replay(dir, MEASURED_PRECISION);
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

/// `parity-cases-half.md`: a half-precision case computes in its dtype where the backend has it (burn-flex in
/// the ndarray build), and is refused with its reason elsewhere, never computed in float32 and passed (in
/// float32 it lands within any tolerance a bf16 case can have); `"float32"` is the default spelled out; a dtype
/// outside the format is the case's error.
#[test]
fn a_half_precision_case_runs_in_its_dtype_or_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let with_dtype = |case: &str, dtype: &str| {
        let dir = tmp.path().join(format!("{case}_{}", dtype.replace('.', "_")));
        common::copy_dir(&committed_cases_dir().join(case), &dir);
        let path = dir.join("case.json");
        let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        spec["dtype"] = dtype.into();
        std::fs::write(&path, spec.to_string()).unwrap();
        dir
    };
    let plain = run_case::<Backend>(&committed_cases_dir().join("forward_sincos"), &device());
    assert!(plain.pass && plain.dtype == Some("float32") && !plain.refused, "{plain:?}");
    let spelled = run_case::<Backend>(&with_dtype("forward_sincos", "float32"), &device());
    assert!(spelled.pass && spelled.dtype == Some("float32") && spelled.rel_l2 == plain.rel_l2, "{spelled:?}");

    // In the case's dtype on the backend that has it; refused by one that has not (burn-ndarray: float32 and
    // float64 only).
    let bf16 = committed_cases_dir().join("half_forward_sincos_bf16");
    let report = replay(&bf16, MEASURED_PRECISION);
    let has_bf16 = <HalfBackend as burn::tensor::backend::Backend>::supports_dtype(
        &Default::default(),
        burn::tensor::DType::BF16,
    );
    if has_bf16 {
        assert!(report.pass && report.dtype == Some("bfloat16") && report.backend == Some(HALF_NAME), "{report:?}");
    } else {
        assert!(!report.pass && report.refused && report.rel_l2.is_none(), "{report:?}");
    }
    #[cfg(feature = "ndarray")]
    {
        let on_ndarray = run_case::<Backend>(&bf16, &device());
        assert!(!on_ndarray.pass && on_ndarray.refused && on_ndarray.dtype.is_none(), "{on_ndarray:?}");
        assert!(on_ndarray.error.as_deref().unwrap().contains("has no bfloat16 arithmetic"), "{on_ndarray:?}");
    }

    // The families whose model code computes float32 only refuse half precision on every backend.
    for (case, dtype) in [("latte_forward", "bfloat16"), ("flux_forward_dev", "torch.float16"), ("wan_forward", "bfloat16")] {
        let report = replay(&with_dtype(case, dtype), MEASURED_PRECISION);
        assert!(!report.pass && report.refused && report.rel_l2.is_none(), "{report:?}");
        assert!(report.error.as_deref().unwrap().contains("computes float32 only"), "{report:?}");
    }
    let odd = run_case::<Backend>(&with_dtype("forward_sincos", "int8"), &device());
    assert!(!odd.pass && !odd.refused && odd.error.as_deref().unwrap().contains("dtype \"int8\""), "{odd:?}");
}
