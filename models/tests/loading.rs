//! Loading diffusers checkpoints: sharded and half-precision forms load to the same model; missing,
//! mis-shaped and unused weights and bad configs are typed errors that name the culprit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_ndarray::NdArray;
use cache_core::{Branch, CallContext, Identity, StepContext};
use models::weights::{read_safetensors, save_safetensors};
use models::{CogVideoXConfig, CogVideoXTransformer3DModel, ForwardInput, HostTensor, ModelError, WeightSource};

type B = NdArray<f32>;

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cases").join(name)
}

fn checkpoint() -> (PathBuf, BTreeMap<String, HostTensor>) {
    let dir = case_dir("forward_sincos").join("transformer");
    let weights = read_safetensors(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    (dir, weights)
}

/// A model directory with the case's config and the given weights.
fn model_dir(weights: &BTreeMap<String, HostTensor>) -> tempfile::TempDir {
    let (src, _) = checkpoint();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    save_safetensors(&dir.path().join("diffusion_pytorch_model.safetensors"), weights).unwrap();
    dir
}

fn load(dir: &Path) -> Result<CogVideoXTransformer3DModel<B>, ModelError> {
    CogVideoXTransformer3DModel::<B>::from_pretrained(dir, &Default::default())
}

/// The case's forward output, as our model computes it.
fn forward(model: &CogVideoXTransformer3DModel<B>) -> Vec<f32> {
    let t = read_safetensors(&case_dir("forward_sincos").join("case.safetensors")).unwrap();
    let device = Default::default();
    let hidden = &t["hidden_states"];
    let [b, f, _, h, w]: [usize; 5] = hidden.shape.clone().try_into().unwrap();
    let input = ForwardInput {
        hidden_states: hidden.to_tensor(&device),
        encoder_hidden_states: t["encoder_hidden_states"].to_tensor(&device),
        timestep: t["timestep"].data.clone(),
    };
    let positions = model.positions(f, h, w, &device).unwrap();
    let ctx = CallContext::new(StepContext { step: 0, num_steps: 1, timestep: 0.0, sigma: None }, Branch::Unguided, b);
    HostTensor::from_tensor(model.forward(input, &positions, &ctx, &mut Identity).unwrap()).data
}

#[test]
fn missing_weight_is_named() {
    let (_, mut w) = checkpoint();
    w.remove("transformer_blocks.1.attn1.to_k.weight").unwrap();
    let dir = model_dir(&w);
    match load(dir.path()) {
        Err(ModelError::MissingWeight { name, expected }) => {
            assert_eq!(name, "transformer_blocks.1.attn1.to_k.weight");
            assert_eq!(expected, vec![32, 32]);
        }
        other => panic!("expected MissingWeight, got {other:?}"),
    }
}

#[test]
fn wrong_shape_is_named() {
    let (_, mut w) = checkpoint();
    w.insert("proj_out.bias".into(), HostTensor { shape: vec![15], data: vec![0.0; 15] });
    let dir = model_dir(&w);
    match load(dir.path()) {
        Err(ModelError::WeightShape { name, expected, found }) => {
            assert_eq!(name, "proj_out.bias");
            assert_eq!((expected, found), (vec![16], vec![15]));
        }
        other => panic!("expected WeightShape, got {other:?}"),
    }
    let msg = load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("proj_out.bias"), "{msg}");
}

#[test]
fn unused_weight_is_an_error() {
    let (_, mut w) = checkpoint();
    w.insert("transformer_blocks.2.attn1.to_q.weight".into(), HostTensor { shape: vec![1], data: vec![0.0] });
    let dir = model_dir(&w);
    match load(dir.path()) {
        Err(ModelError::UnusedWeights { names }) => assert_eq!(names, vec!["transformer_blocks.2.attn1.to_q.weight"]),
        other => panic!("expected UnusedWeights, got {other:?}"),
    }
}

#[test]
fn sharded_checkpoint_loads_to_the_same_model() {
    let (src, w) = checkpoint();
    let reference = forward(&load(&src).unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let names: Vec<&String> = w.keys().collect();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("diffusion_pytorch_model-00001-of-00002.safetensors", a), ("diffusion_pytorch_model-00002-of-00002.safetensors", b)] {
        let shard: BTreeMap<String, HostTensor> = part.iter().map(|k| ((*k).clone(), w[*k].clone())).collect();
        save_safetensors(&dir.path().join(file), &shard).unwrap();
        for k in part {
            map.insert((*k).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.path().join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(forward(&load(dir.path()).unwrap()), reference);
}

#[test]
fn half_precision_weights_are_converted() {
    let (src, w) = checkpoint();
    let reference = forward(&load(&src).unwrap());
    // Write the weights as bf16 by hand (safetensors layout: header length, JSON header, data).
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (k, t) in &w {
        let start = data.len();
        for v in &t.data {
            data.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
        }
        header.insert(k.clone(), serde_json::json!({"dtype": "BF16", "shape": t.shape, "data_offsets": [start, data.len()]}));
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("diffusion_pytorch_model.safetensors"), bytes).unwrap();
    let out = forward(&load(dir.path()).unwrap());
    let err = out.iter().zip(&reference).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt()
        / reference.iter().map(|b| b * b).sum::<f32>().sqrt();
    // bf16 keeps 8 bits of mantissa: a relative error of a few 1e-3 is expected, not 0 and not 1.
    assert!(err > 1e-5 && err < 5e-2, "rel_l2 {err}");
}

#[test]
fn config_refusals_are_typed() {
    let bad = CogVideoXConfig { patch_size_t: Some(2), ..CogVideoXConfig::bench_s() };
    assert!(matches!(bad.validate(), Err(ModelError::Unsupported(m)) if m.contains("patch_size_t")));
    let bad = CogVideoXConfig { ofs_embed_dim: Some(512), ..CogVideoXConfig::bench_s() };
    assert!(matches!(bad.validate(), Err(ModelError::Unsupported(m)) if m.contains("ofs_embed_dim")));
    let bad = CogVideoXConfig { num_layers: 0, ..CogVideoXConfig::bench_s() };
    assert!(matches!(bad.validate(), Err(ModelError::InvalidConfig(m)) if m.contains("num_layers")));
    let json = r#"{"_class_name": "CogVideoXTransformer3DModel", "num_layers": 2, "num_laters": 3}"#;
    let cfg: CogVideoXConfig = serde_json::from_str(json).unwrap();
    assert!(matches!(cfg.validate(), Err(ModelError::InvalidConfig(m)) if m.contains("num_laters")));
    // A real checkpoint's config keys deserialise with diffusers' defaults for the rest.
    let cfg = CogVideoXConfig::from_json_file(&case_dir("forward_rotary").join("transformer/config.json")).unwrap();
    assert!(cfg.use_rotary_positional_embeddings && !cfg.attention_bias);
}

#[test]
fn wrong_input_shapes_are_errors() {
    let cfg = CogVideoXConfig::from_json_file(&case_dir("forward_sincos").join("transformer/config.json")).unwrap();
    let device = Default::default();
    let model = CogVideoXTransformer3DModel::<B>::load(&cfg, &mut WeightSource::random(3), &device).unwrap();
    assert!(matches!(model.positions(2, 7, 8, &device), Err(ModelError::Shape(_))));
    let positions = model.positions(2, 8, 8, &device).unwrap();
    let ctx = CallContext::new(StepContext { step: 0, num_steps: 1, timestep: 1.0, sigma: None }, Branch::Unguided, 1);
    let input = |c: usize, d: usize, t: usize, f: usize| ForwardInput::<B> {
        hidden_states: burn::tensor::Tensor::zeros([1, f, c, 8, 8], &device),
        encoder_hidden_states: burn::tensor::Tensor::zeros([1, 8, d], &device),
        timestep: vec![1.0; t],
    };
    for (c, d, t, f) in [(5, 24, 1, 2), (4, 23, 1, 2), (4, 24, 2, 2), (4, 24, 1, 3)] {
        let r = model.forward(input(c, d, t, f), &positions, &ctx, &mut Identity);
        assert!(matches!(r, Err(ModelError::Shape(_))), "{c} {d} {t} {f}: {r:?}");
    }
    assert!(model.forward(input(4, 24, 1, 2), &positions, &ctx, &mut Identity).is_ok());
}
