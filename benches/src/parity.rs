//! Replays parity cases (format: `shared/design/parity-cases.md`, with the Latte additions of
//! `docs/parity-cases.md`) and compares with what diffusers computed. The model family comes from
//! `transformer/config.json`'s `_class_name`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cache_core::StepTrace;
use cache_engines::CacheConfig;
use models::weights::read_safetensors;
use models::{DenoiseInput, DenoiseOptions, ForwardInput, HostTensor, ModelBackend};

use crate::video_model::VideoModel;
use serde::{Deserialize, Serialize};

/// `case.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseSpec {
    /// `forward` or `denoise`.
    pub kind: String,
    /// Denoise only.
    pub num_inference_steps: Option<usize>,
    /// Denoise only.
    pub guidance_scale: Option<f64>,
    /// Denoise only: videos per prompt (`latents` has `prompts × this` rows); absent means 1.
    #[serde(default)]
    pub num_videos_per_prompt: Option<usize>,
    /// The cache strategy, or null.
    #[serde(default)]
    pub cache: Option<serde_json::Value>,
    /// `{"rel_l2": ...}`.
    pub tolerance: Tolerance,
}

/// The tolerance of a case.
#[derive(Debug, Clone, Deserialize)]
pub struct Tolerance {
    /// Bound on `||ours - ref|| / ||ref||`.
    pub rel_l2: f64,
}

/// One case's result: the JSON line `ditcache parity` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// The case directory's name.
    pub case: String,
    /// `forward` / `denoise` (or `unknown` when the case could not be read).
    pub kind: String,
    /// Relative L2 error of the compared tensor.
    pub rel_l2: Option<f64>,
    /// The case's bound.
    pub tolerance: Option<f64>,
    /// Whether the cache decisions equal `trace.json`'s; null when the case has no decisions to compare.
    pub decisions_match: Option<bool>,
    /// Whether the case passed.
    pub pass: bool,
    /// The backend's precision floor, when it raised the case's tolerance (`crate::backend::TOLERANCE_FLOOR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance_floor: Option<f64>,
    /// Why the case failed without a number, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The repository's `tests/cases`, found from [`crate::crate_dir`] (cargo sets `CARGO_MANIFEST_DIR` for tests;
/// a binary run on another machine, as `tools/gpu/check.sh` can, is given it).
pub fn committed_cases_dir() -> PathBuf {
    crate::crate_dir().join("../tests/cases")
}

/// `||a - b|| / ||b||` over all elements.
pub fn rel_l2(ours: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in ours.iter().zip(reference) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Expands the arguments: a case directory (holding `case.json`) stays, a directory of cases gives its cases.
pub fn expand_case_dirs(args: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for a in args {
        if a.join("case.json").exists() || !a.is_dir() {
            out.push(a.clone());
            continue;
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(a)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("case.json").exists()).collect())
            .unwrap_or_default();
        if subs.is_empty() {
            out.push(a.clone());
        }
        subs.sort();
        out.extend(subs);
    }
    out
}

/// Runs one case; never panics on a bad case, reporting the reason instead.
pub fn run_case<B: ModelBackend>(dir: &Path, device: &B::Device) -> CaseReport {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
    match try_run_case::<B>(dir, device) {
        Ok((kind, err, tol, decisions_match)) => {
            let floor = crate::backend::TOLERANCE_FLOOR;
            CaseReport {
                case: name,
                kind,
                rel_l2: Some(err),
                tolerance: Some(tol),
                decisions_match,
                pass: err <= tol.max(floor) && decisions_match != Some(false),
                tolerance_floor: (floor > tol).then_some(floor),
                error: None,
            }
        }
        Err(e) => CaseReport {
            case: name,
            kind: "unknown".into(),
            rel_l2: None,
            tolerance: None,
            decisions_match: None,
            pass: false,
            tolerance_floor: None,
            error: Some(e),
        },
    }
}

type Outcome = (String, f64, f64, Option<bool>);

fn try_run_case<B: ModelBackend>(dir: &Path, device: &B::Device) -> Result<Outcome, String> {
    let spec = read_spec(dir)?;
    let tol = spec.tolerance.rel_l2;
    match spec.kind.as_str() {
        "forward" => {
            let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
            let model = VideoModel::<B>::from_dir(dir, device).map_err(|e| e.to_string())?;
            let err = run_forward(&model, &tensors, device)?;
            Ok((spec.kind, err, tol, None))
        }
        "denoise" => {
            let (err, decisions) = run_denoise::<B>(dir, &spec, device)?;
            Ok((spec.kind, err, tol, decisions))
        }
        other => Err(format!("unknown case kind {other:?}")),
    }
}

fn take<'a>(tensors: &'a BTreeMap<String, HostTensor>, name: &str) -> Result<&'a HostTensor, String> {
    tensors.get(name).ok_or_else(|| format!("case.safetensors has no `{name}`"))
}

fn run_forward<B: ModelBackend>(
    model: &VideoModel<B>,
    tensors: &BTreeMap<String, HostTensor>,
    device: &B::Device,
) -> Result<f64, String> {
    let hidden = take(tensors, "hidden_states")?;
    let expected = take(tensors, "sample")?;
    if hidden.shape.len() != 5 {
        return Err("hidden_states must be 5-D".into());
    }
    let input = ForwardInput {
        hidden_states: hidden.to_tensor::<B, 5>(device),
        encoder_hidden_states: take(tensors, "encoder_hidden_states")?.to_tensor::<B, 3>(device),
        timestep: take(tensors, "timestep")?.data.clone(),
    };
    let out = HostTensor::from_tensor(model.forward(input).map_err(|e| e.to_string())?);
    if out.shape != expected.shape {
        return Err(format!("output shape {:?}, expected {:?}", out.shape, expected.shape));
    }
    Ok(rel_l2(&out.data, &expected.data))
}

/// A denoise case, loaded: the model, its scheduler, the inputs, the cache configuration and the reference.
pub struct DenoiseCase<B: ModelBackend> {
    /// The transformer and its scheduler (from `scheduler/scheduler_config.json`).
    pub model: VideoModel<B>,
    /// What the generation starts from.
    pub input: DenoiseInput<B>,
    /// The case's cache strategy (`CacheConfig::None` when null).
    pub cache: CacheConfig,
    /// diffusers' final latents.
    pub expected: HostTensor,
    /// diffusers' decisions, when the case has a `trace.json`.
    pub trace: Option<Vec<StepTrace>>,
}

/// Reads `case.json` of a case directory.
fn read_spec(dir: &Path) -> Result<CaseSpec, String> {
    let spec_path = dir.join("case.json");
    let text = std::fs::read_to_string(&spec_path).map_err(|e| format!("cannot read {}: {e}", spec_path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", spec_path.display()))
}

/// Loads a denoise case directory.
pub fn load_denoise_case<B: ModelBackend>(dir: &Path, device: &B::Device) -> Result<DenoiseCase<B>, String> {
    load_denoise_spec(dir, &read_spec(dir)?, device)
}

fn load_denoise_spec<B: ModelBackend>(dir: &Path, spec: &CaseSpec, device: &B::Device) -> Result<DenoiseCase<B>, String> {
    if spec.kind != "denoise" {
        return Err(format!("{} is a {:?} case", dir.display(), spec.kind));
    }
    let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
    if !dir.join("scheduler").join("scheduler_config.json").exists() {
        return Err(format!("{}: a denoise case needs scheduler/scheduler_config.json", dir.display()));
    }
    let mut model = VideoModel::<B>::from_dir(dir, device).map_err(|e| e.to_string())?;
    let cache: CacheConfig = match &spec.cache {
        None | Some(serde_json::Value::Null) => CacheConfig::None,
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("case.json `cache`: {e}"))?,
    };
    let steps = spec.num_inference_steps.ok_or("denoise case without num_inference_steps")?;
    let guidance = spec.guidance_scale.ok_or("denoise case without guidance_scale")?;
    let expected_t: Vec<i64> = take(&tensors, "timesteps")?.data.iter().map(|&v| v as i64).collect();
    let ours_t = model.timesteps(steps).map_err(|e| e.to_string())?;
    if ours_t != expected_t {
        return Err(format!("timesteps differ: ours {ours_t:?}, diffusers {expected_t:?}"));
    }
    let input = DenoiseInput {
        latents: take(&tensors, "latents")?.to_tensor::<B, 5>(device),
        prompt_embeds: take(&tensors, "prompt_embeds")?.to_tensor::<B, 3>(device),
        negative_prompt_embeds: tensors.get("negative_prompt_embeds").map(|t| t.to_tensor::<B, 3>(device)),
        num_videos_per_prompt: spec.num_videos_per_prompt.unwrap_or(1),
        num_inference_steps: steps,
        guidance_scale: guidance,
    };
    let expected = take(&tensors, "final_latents")?.clone();
    let trace_path = dir.join("trace.json");
    let trace = if trace_path.exists() {
        let text = std::fs::read_to_string(&trace_path).map_err(|e| format!("{}: {e}", trace_path.display()))?;
        let t: TraceFile = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", trace_path.display()))?;
        Some(t.steps)
    } else {
        None
    };
    Ok(DenoiseCase { model, input, cache, expected, trace })
}

fn run_denoise<B: ModelBackend>(dir: &Path, spec: &CaseSpec, device: &B::Device) -> Result<(f64, Option<bool>), String> {
    let mut case = load_denoise_spec::<B>(dir, spec, device)?;
    let mut strategy =
        cache_engines::build::<B>(&case.cache, &case.model.host_info()).map_err(|e| e.to_string())?;
    let out = case.model.denoise(case.input, &mut *strategy, DenoiseOptions::default()).map_err(|e| e.to_string())?;
    let out = HostTensor::from_tensor(out);
    if out.shape != case.expected.shape {
        return Err(format!("final latents shape {:?}, expected {:?}", out.shape, case.expected.shape));
    }
    let decisions = case.trace.map(|t| decisions_match(&t, &strategy.stats().steps));
    Ok((worst_row_rel_l2(&out.data, &case.expected.data, out.shape[0]), decisions))
}

/// The largest [`rel_l2`] over the `rows` equal rows of a batch (one video each): a batch passes only when every
/// video does. For one row this is `rel_l2`.
pub fn worst_row_rel_l2(ours: &[f32], reference: &[f32], rows: usize) -> f64 {
    let n = reference.len() / rows.max(1);
    if n == 0 || ours.len() != reference.len() {
        return rel_l2(ours, reference);
    }
    ours.chunks(n).zip(reference.chunks(n)).map(|(a, b)| rel_l2(a, b)).fold(0.0, f64::max)
}

/// `trace.json`.
#[derive(Debug, Deserialize)]
struct TraceFile {
    steps: Vec<StepTrace>,
}

/// Whether our decisions equal the reference's, step by step, on every key the reference decides.
pub fn decisions_match(reference: &[StepTrace], ours: &[StepTrace]) -> bool {
    reference.len() == ours.len()
        && reference.iter().zip(ours).all(|(r, o)| {
            r.step == o.step
                && (r.blocks.is_none() || r.blocks == o.blocks)
                && (r.uncond.is_none() || r.uncond == o.uncond)
                && (r.attention.is_empty() || r.attention == o.attention)
        })
}
