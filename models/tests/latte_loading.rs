//! Latte checkpoints and pipeline directories: what a broken one reports (the committed parity case
//! `latte_denoise` is a diffusers `save_pretrained` of a small Latte and its DDIMScheduler).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_ndarray::NdArray;
use models::weights::{read_safetensors, save_safetensors};
use models::{HostTensor, LattePipeline, LatteTransformer3DModel, ModelError};

type B = NdArray<f32>;

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cases/latte_denoise")
}

/// A copy of the case's pipeline directory with other weights and scheduler config.
fn pipeline_dir(weights: &BTreeMap<String, HostTensor>, scheduler: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("transformer");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::copy(case_dir().join("transformer/config.json"), t.join("config.json")).unwrap();
    save_safetensors(&t.join("diffusion_pytorch_model.safetensors"), weights).unwrap();
    std::fs::create_dir_all(dir.path().join("scheduler")).unwrap();
    std::fs::write(dir.path().join("scheduler/scheduler_config.json"), scheduler).unwrap();
    dir
}

fn weights() -> BTreeMap<String, HostTensor> {
    read_safetensors(&case_dir().join("transformer/diffusion_pytorch_model.safetensors")).unwrap()
}

fn scheduler() -> String {
    std::fs::read_to_string(case_dir().join("scheduler/scheduler_config.json")).unwrap()
}

#[test]
fn the_case_directory_loads_as_a_pipeline() {
    let p = LattePipeline::<B>::from_pretrained(&case_dir(), &Default::default()).unwrap();
    let host = p.transformer.host_info();
    let names: Vec<String> = host.sites.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names,
        [
            "transformer_blocks.0.attn1",
            "transformer_blocks.0.attn2",
            "temporal_transformer_blocks.0.attn1",
            "transformer_blocks.1.attn1",
            "transformer_blocks.1.attn2",
            "temporal_transformer_blocks.1.attn1"
        ]
    );
    assert_eq!((host.num_blocks, host.tensor_format.as_str()), (4, "BCFHW"));
}

#[test]
fn missing_and_unused_weights_are_named() {
    let mut w = weights();
    w.remove("temporal_transformer_blocks.1.attn1.to_v.weight").unwrap();
    let dir = pipeline_dir(&w, &scheduler());
    let err = LattePipeline::<B>::from_pretrained(dir.path(), &Default::default()).unwrap_err();
    assert!(matches!(&err, ModelError::MissingWeight { name, .. } if name == "temporal_transformer_blocks.1.attn1.to_v.weight"), "{err}");

    let mut w = weights();
    w.insert("temporal_transformer_blocks.0.attn2.to_q.weight".into(), HostTensor { shape: vec![1], data: vec![0.0] });
    let dir = pipeline_dir(&w, &scheduler());
    let err = LatteTransformer3DModel::<B>::from_pretrained(&dir.path().join("transformer"), &Default::default()).unwrap_err();
    assert!(matches!(&err, ModelError::UnusedWeights { names } if names == &["temporal_transformer_blocks.0.attn2.to_q.weight"]), "{err}");
}

#[test]
fn other_schedulers_are_refused_by_name() {
    let dir = pipeline_dir(&weights(), &scheduler().replace("\"DDIMScheduler\"", "\"DPMSolverMultistepScheduler\""));
    let err = LattePipeline::<B>::from_pretrained(dir.path(), &Default::default()).unwrap_err();
    assert!(matches!(&err, ModelError::Unsupported(m) if m.contains("DPMSolverMultistepScheduler")), "{err}");
}

#[test]
fn a_frame_count_other_than_video_length_is_a_shape_error() {
    let m = LatteTransformer3DModel::<B>::from_pretrained(&case_dir().join("transformer"), &Default::default()).unwrap();
    assert_eq!(m.config.video_length, 3);
    assert!(m.positions(3, 8, 8, &Default::default()).is_ok());
    assert!(m.positions(1, 8, 8, &Default::default()).is_ok());
    assert!(matches!(m.positions(4, 8, 8, &Default::default()), Err(ModelError::Shape(_))));
    assert!(matches!(m.positions(3, 7, 8, &Default::default()), Err(ModelError::Shape(_))));
}
