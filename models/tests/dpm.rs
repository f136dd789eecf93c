//! `CogVideoXDPMScheduler`: the committed case `denoise_dpm` (diffusers 0.42.1 with the noise each step added,
//! format `shared/design/parity-cases-dpm.md`) replays to diffusers' final latents; a CogVideoX directory's
//! scheduler class comes from its `_class_name`, and another class, or none, is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn_ndarray::NdArray;
use cache_core::Identity;
use models::weights::read_safetensors;
use models::{
    CogVideoXScheduler, DenoiseInput, DenoiseOptions, HostTensor, ModelError, StepNoise, VideoModel,
};

type B = NdArray<f32>;

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cases").join(name)
}

/// The case's model, inputs, recorded noise and diffusers' final latents.
struct Case {
    model: VideoModel<B>,
    input: DenoiseInput<B>,
    noise: Vec<Tensor<B, 5>>,
    expected: HostTensor,
}

fn load(name: &str) -> Case {
    let dir = case_dir(name);
    let dev = Default::default();
    let t = read_safetensors(&dir.join("case.safetensors")).unwrap();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let steps = spec["num_inference_steps"].as_u64().unwrap() as usize;
    let mut input = DenoiseInput::new(
        t["latents"].to_tensor(&dev),
        t["prompt_embeds"].to_tensor(&dev),
        steps,
        spec["guidance_scale"].as_f64().unwrap(),
    );
    input.negative_prompt_embeds = Some(t["negative_prompt_embeds"].to_tensor(&dev));
    let noise = (0..steps).map(|i| t[&format!("step_noise.{i}")].to_tensor(&dev)).collect();
    let model = VideoModel::<B>::from_dir(&dir, &dev).unwrap();
    Case { model, input, noise, expected: t["final_latents"].clone() }
}

fn rel_l2(ours: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = ours.iter().zip(reference).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn run(c: &mut Case, step_noise: StepNoise<B>) -> Result<HostTensor, ModelError> {
    let options = DenoiseOptions { step_noise, ..Default::default() };
    Ok(HostTensor::from_tensor(c.model.denoise(c.input.clone(), &mut Identity, options)?))
}

#[test]
fn the_dpm_case_replays_diffusers_with_its_recorded_noise() {
    let mut c = load("denoise_dpm");
    let VideoModel::CogVideoX { scheduler, .. } = &c.model else { panic!("a CogVideoX case") };
    assert_eq!(scheduler.class_name(), "CogVideoXDPMScheduler");
    let t = read_safetensors(&case_dir("denoise_dpm").join("case.safetensors")).unwrap();
    let mut step_errors = Vec::new();
    let mut on_step = |i: usize, _t: i64, pred: &Tensor<B, 5>| {
        let ours = HostTensor::from_tensor(pred.clone());
        step_errors.push(rel_l2(&ours.data, &t[&format!("noise_pred.{i}")].data));
    };
    let step_noise = StepNoise::Recorded(c.noise.clone());
    let options = DenoiseOptions { step_noise, on_step: Some(&mut on_step), ..Default::default() };
    let out = HostTensor::from_tensor(c.model.denoise(c.input.clone(), &mut Identity, options).unwrap());
    assert_eq!(out.shape, c.expected.shape);
    let err = rel_l2(&out.data, &c.expected.data);
    let steps: Vec<String> = step_errors.iter().map(|e| format!("{e:.1e}")).collect();
    eprintln!("denoise_dpm: rel_l2 vs diffusers {err:.3e} (guided outputs per step: {})", steps.join(", "));
    assert!(err <= 1e-5, "rel_l2 vs diffusers {err}");
}

#[test]
fn seeded_noise_is_reproducible_and_is_not_torchs() {
    let mut c = load("denoise_dpm");
    let a = run(&mut c, StepNoise::Seeded(7)).unwrap();
    assert_eq!(a.data, run(&mut c, StepNoise::Seeded(7)).unwrap().data);
    assert_ne!(a.data, run(&mut c, StepNoise::default()).unwrap().data);
    // The noise is part of the result: our own draws do not give diffusers' latents.
    assert!(rel_l2(&a.data, &c.expected.data) > 1e-2);
}

#[test]
fn recorded_noise_of_another_count_or_shape_is_a_shape_error() {
    let mut c = load("denoise_dpm");
    let short = c.noise[..c.noise.len() - 1].to_vec();
    assert!(matches!(run(&mut c, StepNoise::Recorded(short)), Err(ModelError::Shape(m)) if m.contains("steps")));
    let mut wrong = c.noise.clone();
    wrong[2] = wrong[2].clone().narrow(1, 0, 1);
    assert!(matches!(run(&mut c, StepNoise::Recorded(wrong)), Err(ModelError::Shape(m)) if m.contains("noise 2")));
}

/// A copy of the case's pipeline directory with another scheduler config.
fn with_scheduler(config: &str) -> tempfile::TempDir {
    let src = case_dir("denoise_dpm");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["transformer", "scheduler"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join("transformer").join(file), dir.path().join("transformer").join(file)).unwrap();
    }
    std::fs::write(dir.path().join("scheduler/scheduler_config.json"), config).unwrap();
    dir
}

fn scheduler_config() -> BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(case_dir("denoise_dpm").join("scheduler/scheduler_config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn from_dir(dir: &Path) -> Result<VideoModel<B>, ModelError> {
    VideoModel::<B>::from_dir(dir, &Default::default())
}

#[test]
fn other_scheduler_classes_are_refused_by_name() {
    let mut cfg = scheduler_config();
    cfg.insert("_class_name".into(), "DDPMScheduler".into());
    let dir = with_scheduler(&serde_json::to_string(&cfg).unwrap());
    let err = from_dir(dir.path()).unwrap_err();
    let classes = ["DDPMScheduler", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"];
    let named = |m: &str| classes.iter().all(|c| m.contains(c));
    assert!(matches!(&err, ModelError::Unsupported(m) if named(m)), "{err}");
}

#[test]
fn a_scheduler_config_without_class_name_is_refused() {
    let mut cfg = scheduler_config();
    cfg.remove("_class_name");
    let dir = with_scheduler(&serde_json::to_string(&cfg).unwrap());
    let err = from_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, ModelError::InvalidConfig(m) if m.contains("_class_name")), "{err}");
}

#[test]
fn the_class_name_picks_the_scheduler() {
    let mut cfg = scheduler_config();
    for class in ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"] {
        cfg.insert("_class_name".into(), class.into());
        let dir = with_scheduler(&serde_json::to_string(&cfg).unwrap());
        let VideoModel::CogVideoX { scheduler, .. } = from_dir(dir.path()).unwrap() else { panic!("CogVideoX") };
        assert_eq!(scheduler.class_name(), class);
        let direct = CogVideoXScheduler::from_json_file(&dir.path().join("scheduler/scheduler_config.json")).unwrap();
        assert_eq!(direct.class_name(), class);
    }
    // The class-specific readers refuse a file that names the other class (it would parse, and run as the
    // wrong scheduler).
    let path = with_scheduler(&serde_json::to_string(&cfg).unwrap());
    let path = path.path().join("scheduler/scheduler_config.json");
    models::CogVideoXDPMSchedulerConfig::from_json_file(&path).unwrap();
    let err = models::CogVideoXDDIMSchedulerConfig::from_json_file(&path).unwrap_err();
    assert!(matches!(&err, ModelError::Unsupported(m) if m.contains("CogVideoXDPMScheduler") && m.contains("CogVideoXDDIMScheduler")), "{err}");
    // Unknown fields are refused under either class, as the DDIM config always did.
    cfg.insert("eta".into(), 0.0.into());
    let dir = with_scheduler(&serde_json::to_string(&cfg).unwrap());
    assert!(matches!(from_dir(dir.path()), Err(ModelError::InvalidConfig(m)) if m.contains("eta")));
}

/// The scheduler alone, fed diffusers' guided outputs (`noise_pred.{i}`) and noise, carrying `x₀` and the
/// previous timestep as the pipeline does: what is left of a replay's error is the transformer's. `denoise_dpm`
/// ends on a second-order step (`166 − 1000/6 = 0`), `fastercache_dpm` on a first-order one (`82 − 83 < 0`,
/// `ᾱ_prev = 1`).
#[test]
fn the_scheduler_alone_follows_diffusers_steps_bit_for_bit() {
    for name in ["denoise_dpm", "fastercache_dpm"] {
        let dir = case_dir(name);
        let dev = Default::default();
        let t = read_safetensors(&dir.join("case.safetensors")).unwrap();
        let path = dir.join("scheduler/scheduler_config.json");
        let CogVideoXScheduler::Dpm(mut s) = CogVideoXScheduler::from_json_file(&path).unwrap() else {
            panic!("{name}: a DPM case")
        };
        let expected: Vec<i64> = t["timesteps"].data.iter().map(|&v| v as i64).collect();
        let timesteps = s.set_timesteps(expected.len()).unwrap().to_vec();
        assert_eq!(timesteps, expected);
        let mut latents: Tensor<B, 5> = t["latents"].to_tensor(&dev);
        let mut old = None;
        for (i, &ts) in timesteps.iter().enumerate() {
            let back = i.checked_sub(1).map(|j| timesteps[j]);
            let pred = t[&format!("noise_pred.{i}")].to_tensor(&dev);
            let noise = t[&format!("step_noise.{i}")].to_tensor(&dev);
            let (prev, x0) = s.step(pred, old.take(), ts, back, latents, noise).unwrap();
            (latents, old) = (prev, Some(x0));
        }
        // Coefficients float64, rounded to float32 once, as PyTorch does: the same float32 operations.
        let ours = HostTensor::from_tensor(latents).data;
        assert!(ours == t["final_latents"].data, "{name}: the steps differ from diffusers'");
    }
}
