//! Replays parity cases (format: `shared/design/parity-cases.md`, with the Latte additions of
//! `docs/parity-cases.md`) and compares with what diffusers computed. The model family comes from
//! `transformer/config.json`'s `_class_name`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cache_core::StepTrace;
use cache_engines::CacheConfig;
use burn::tensor::FloatDType;
use models::weights::read_safetensors;
use models::{DenoiseInput, DenoiseOptions, ForwardInput, HostTensor, ModelBackend, StepNoise};

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
    /// `"flux"` or `"wan"` (`parity-cases-flux-wan.md`); absent for CogVideoX and Latte.
    #[serde(default)]
    pub family: Option<String>,
    /// FLUX: true classifier-free guidance scale (> 1 with negative embeddings).
    #[serde(default)]
    pub true_cfg_scale: Option<f64>,
    /// FLUX / Wan: image height in pixels, as passed to the pipeline.
    #[serde(default)]
    pub height: Option<usize>,
    /// FLUX / Wan: image width in pixels.
    #[serde(default)]
    pub width: Option<usize>,
    /// Wan: frames as passed to the pipeline (`4(F − 1) + 1` for `F` latent frames).
    #[serde(default)]
    pub num_frames: Option<usize>,
    /// Wan 2.2: the fraction of `num_train_timesteps` below which `transformer_2` runs.
    #[serde(default)]
    pub boundary_ratio: Option<f64>,
    /// Wan 2.2: the guidance scale of `transformer_2`'s steps.
    #[serde(default)]
    pub guidance_scale_2: Option<f64>,
    /// Denoise only: videos per prompt (`latents` has `prompts × this` rows); absent means 1.
    #[serde(default)]
    pub num_videos_per_prompt: Option<usize>,
    /// The cache strategy, or null.
    #[serde(default)]
    pub cache: Option<serde_json::Value>,
    /// `{"rel_l2": ...}`.
    pub tolerance: Tolerance,
    /// `"bfloat16"` or `"float16"` for a half-precision case (`parity-cases-half.md`); absent means float32.
    #[serde(default)]
    pub dtype: Option<String>,
}

/// The precisions a case can be written at (`case.json`'s `dtype`, `parity-cases-half.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseDtype {
    /// Absent, or `"float32"`.
    Float32,
    /// `"bfloat16"`.
    BFloat16,
    /// `"float16"`.
    Float16,
}

impl CaseDtype {
    /// Reads `case.json`'s `dtype` (torch's names, with or without `torch.`); another name is the case's error.
    pub fn parse(name: Option<&str>) -> Result<Self, String> {
        match name.map(|n| n.strip_prefix("torch.").unwrap_or(n)) {
            None | Some("float32") => Ok(Self::Float32),
            Some("bfloat16") => Ok(Self::BFloat16),
            Some("float16") => Ok(Self::Float16),
            Some(other) => Err(format!("case.json: dtype {other:?} is not one of float32, bfloat16, float16")),
        }
    }

    /// burn's dtype.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::Float32 => FloatDType::F32,
            Self::BFloat16 => FloatDType::BF16,
            Self::Float16 => FloatDType::F16,
        }
    }

    /// torch's name.
    pub fn name(self) -> &'static str {
        models::weights::dtype_name(self.float_dtype())
    }
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
    /// Where the decisions first differ, when they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions_diff: Option<String>,
    /// Whether the case passed.
    pub pass: bool,
    /// The backend's precision floor, when it raised the case's tolerance (`crate::backend::TOLERANCE_FLOOR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance_floor: Option<f64>,
    /// The caller's tighter bound, when it lowered the case's tolerance ([`run_case_within`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rel_l2: Option<f64>,
    /// The precision the case was computed in (`float32`, `bfloat16`, `float16`: the case's); null when it
    /// was not computed.
    pub dtype: Option<&'static str>,
    /// The backend that computed it, where [`crate::backend::replay`] chose it (half-precision cases run on
    /// burn-flex in the ndarray build).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    /// Why the case failed without a number, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The case asks for a dtype the model family or the backend does not compute in (`error` says which):
    /// not computed, not passed, and not a failure of what was computed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
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
    run_case_within::<B>(dir, device, None)
}

/// [`run_case`], holding the case to `max_rel_l2` where that is below its own tolerance: the format's
/// tolerances (1e-3 for a generation) leave room for TF32 backends, and a float32 backend that reaches
/// ~1e-6 is held to what it measured, so that a regression of a few hundred times is caught.
pub fn run_case_within<B: ModelBackend>(dir: &Path, device: &B::Device, max_rel_l2: Option<f64>) -> CaseReport {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
    let refusal = refusal::<B>(dir, device);
    let refused = refusal.is_some();
    let outcome = match refusal {
        Some(why) => Err(why),
        None => try_run_case::<B>(dir, device),
    };
    match outcome {
        Ok(Outcome { kind, rel_l2, tolerance, decisions_diff, dtype }) => {
            let floor = crate::backend::TOLERANCE_FLOOR;
            let raised = tolerance.max(floor);
            // The caller's bound is a float32 backend's measured precision: a half-precision case keeps its own.
            let max_rel_l2 = max_rel_l2.filter(|_| dtype == CaseDtype::Float32);
            let bound = max_rel_l2.map_or(raised, |m| raised.min(m));
            let decisions_match = decisions_diff.as_ref().map(Option::is_none);
            CaseReport {
                case: name,
                kind,
                rel_l2: Some(rel_l2),
                tolerance: Some(tolerance),
                pass: rel_l2 <= bound && decisions_match != Some(false),
                decisions_match,
                decisions_diff: decisions_diff.flatten(),
                tolerance_floor: (floor > tolerance).then_some(floor),
                max_rel_l2: max_rel_l2.filter(|&m| m < raised),
                dtype: Some(dtype.name()),
                backend: None,
                error: None,
                refused: false,
            }
        }
        Err(e) => CaseReport {
            case: name,
            kind: "unknown".into(),
            rel_l2: None,
            tolerance: None,
            decisions_match: None,
            decisions_diff: None,
            pass: false,
            tolerance_floor: None,
            max_rel_l2: None,
            dtype: None,
            backend: None,
            error: Some(e),
            refused,
        },
    }
}

/// What a case measured: its error, its own tolerance, and (for a case with `trace.json`) where the
/// decisions differ (`Some(None)`: nowhere).
struct Outcome {
    kind: String,
    rel_l2: f64,
    tolerance: f64,
    decisions_diff: Option<Option<String>>,
    dtype: CaseDtype,
}

/// A denoise case's error and, for a case with `trace.json`, where the decisions differ.
pub(crate) type Measured = (f64, Option<Option<String>>);

fn try_run_case<B: ModelBackend>(dir: &Path, device: &B::Device) -> Result<Outcome, String> {
    let spec = read_spec(dir)?;
    let tolerance = spec.tolerance.rel_l2;
    let dtype = computed_dtype(&spec)?;
    match spec.family.as_deref() {
        None => {}
        Some("flux") => {
            let (rel_l2, decisions_diff) = match spec.kind.as_str() {
                "forward" => (crate::parity_flux::run_forward::<B>(dir, device)?, None),
                "denoise" => crate::parity_flux::run_denoise::<B>(dir, &spec, device)?,
                other => return Err(format!("unknown case kind {other:?}")),
            };
            return Ok(Outcome { kind: spec.kind, rel_l2, tolerance, decisions_diff, dtype });
        }
        Some("wan") => {
            let (rel_l2, decisions_diff) = match spec.kind.as_str() {
                "forward" => (crate::parity_wan::run_forward::<B>(dir, device)?, None),
                "denoise" => crate::parity_wan::run_denoise::<B>(dir, &spec, device)?,
                other => return Err(format!("unknown case kind {other:?}")),
            };
            return Ok(Outcome { kind: spec.kind, rel_l2, tolerance, decisions_diff, dtype });
        }
        Some(other) => {
            return Err(format!("case family {other:?} is not supported (supported: flux, wan, or none for CogVideoX/Latte)"))
        }
    }
    match spec.kind.as_str() {
        "forward" => {
            let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
            let model = VideoModel::<B>::from_dir_as(dir, device, dtype.float_dtype()).map_err(|e| e.to_string())?;
            let rel_l2 = run_forward(&model, &tensors, device, dtype.float_dtype())?;
            Ok(Outcome { kind: spec.kind, rel_l2, tolerance, decisions_diff: None, dtype })
        }
        "denoise" => {
            let (rel_l2, decisions_diff) = run_denoise::<B>(dir, &spec, device)?;
            Ok(Outcome { kind: spec.kind, rel_l2, tolerance, decisions_diff, dtype })
        }
        other => Err(format!("unknown case kind {other:?}")),
    }
}

pub(crate) fn take<'a>(tensors: &'a BTreeMap<String, HostTensor>, name: &str) -> Result<&'a HostTensor, String> {
    tensors.get(name).ok_or_else(|| format!("case.safetensors has no `{name}`"))
}

/// The case tensor `name` as a `D`-D tensor; another rank is the case's error, not a panic.
pub(crate) fn tensor<B: ModelBackend, const D: usize>(
    tensors: &BTreeMap<String, HostTensor>,
    name: &str,
    device: &B::Device,
) -> Result<burn::tensor::Tensor<B, D>, String> {
    tensor_as(tensors, name, device, FloatDType::F32)
}

/// [`tensor`] as `dtype`, rounded on the host as torch's `.to(dtype)` rounds (`parity-cases-half.md`: inputs are
/// stored as float32 and cast before use).
fn tensor_as<B: ModelBackend, const D: usize>(
    tensors: &BTreeMap<String, HostTensor>,
    name: &str,
    device: &B::Device,
    dtype: FloatDType,
) -> Result<burn::tensor::Tensor<B, D>, String> {
    take(tensors, name)?.try_to_tensor_as::<B, D>(name, device, dtype).map_err(|e| format!("case.safetensors: {e}"))
}

fn run_forward<B: ModelBackend>(
    model: &VideoModel<B>,
    tensors: &BTreeMap<String, HostTensor>,
    device: &B::Device,
    dtype: FloatDType,
) -> Result<f64, String> {
    let expected = take(tensors, "sample")?;
    let input = ForwardInput {
        hidden_states: tensor_as::<B, 5>(tensors, "hidden_states", device, dtype)?,
        encoder_hidden_states: tensor_as::<B, 3>(tensors, "encoder_hidden_states", device, dtype)?,
        timestep: take(tensors, "timestep")?.data.clone(),
    };
    let out = model.forward(input).map_err(|e| e.to_string())?;
    computed_in(FloatDType::from(out.dtype()), dtype)?;
    let out = HostTensor::from_tensor(out);
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
    /// The noise a stochastic scheduler added at each step (`step_noise.{i}`, `parity-cases-dpm.md`); the
    /// library's seeded draws for a case without it.
    pub step_noise: StepNoise<B>,
}

impl<B: ModelBackend> DenoiseCase<B> {
    /// The options that replay the case: its recorded noise, no progress bar.
    pub fn options(&self) -> DenoiseOptions<'static, B> {
        DenoiseOptions { step_noise: self.step_noise.clone(), ..Default::default() }
    }
}

/// Checks that the model computed in the case's dtype: a case is never passed at another precision
/// (`parity-cases-half.md`).
fn computed_in(computed: FloatDType, case: FloatDType) -> Result<(), String> {
    if computed == case {
        return Ok(());
    }
    Err(format!(
        "the case is {}, the model computed in {}",
        models::weights::dtype_name(case),
        models::weights::dtype_name(computed)
    ))
}

/// Why the case is refused, when it asks for a dtype that its model family or the backend `B` does not compute
/// in ([`models::weights::check_dtype`]); `None` for a case that runs (or fails for another reason).
fn refusal<B: ModelBackend>(dir: &Path, device: &B::Device) -> Option<String> {
    let spec = read_spec(dir).ok()?;
    let dtype = computed_dtype(&spec).ok()?;
    if dtype == CaseDtype::Float32 {
        return None;
    }
    let dtype = dtype.float_dtype();
    let checked = match spec.family.as_deref() {
        Some("flux") => models::weights::check_dtype::<B>("FluxTransformer2DModel", dtype, false, device),
        Some("wan") => models::weights::check_dtype::<B>("WanTransformer3DModel", dtype, false, device),
        Some(_) => return None,
        None => match VideoModel::<B>::check_dtype(dir, device, dtype) {
            Err(e @ models::ModelError::UnsupportedDtype { .. }) => Err(e),
            // An unreadable config is the replay's error, not a refusal.
            _ => Ok(()),
        },
    };
    checked.err().map(|e| e.to_string())
}

/// The case's precision (`case.json`'s `dtype`).
fn computed_dtype(spec: &CaseSpec) -> Result<CaseDtype, String> {
    CaseDtype::parse(spec.dtype.as_deref())
}

/// The precision a case directory asks for; float32 when its `case.json` cannot be read (the replay says why).
pub fn case_dtype(dir: &Path) -> CaseDtype {
    read_spec(dir).ok().and_then(|s| computed_dtype(&s).ok()).unwrap_or(CaseDtype::Float32)
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
    let dtype = computed_dtype(spec)?.float_dtype();
    let tensors = read_safetensors(&dir.join("case.safetensors")).map_err(|e| e.to_string())?;
    if !dir.join("scheduler").join("scheduler_config.json").exists() {
        return Err(format!("{}: a denoise case needs scheduler/scheduler_config.json", dir.display()));
    }
    let mut model = VideoModel::<B>::from_dir_as(dir, device, dtype).map_err(|e| e.to_string())?;
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
        latents: tensor_as::<B, 5>(&tensors, "latents", device, dtype)?,
        prompt_embeds: tensor_as::<B, 3>(&tensors, "prompt_embeds", device, dtype)?,
        pooled_prompt_embeds: None,
        negative_pooled_prompt_embeds: None,
        negative_prompt_embeds: match tensors.contains_key("negative_prompt_embeds") {
            true => Some(tensor_as::<B, 3>(&tensors, "negative_prompt_embeds", device, dtype)?),
            false => None,
        },
        num_videos_per_prompt: spec.num_videos_per_prompt.unwrap_or(1),
        num_inference_steps: steps,
        guidance_scale: guidance,
    };
    let expected = take(&tensors, "final_latents")?.clone();
    let trace = read_trace(dir)?;
    let step_noise = recorded_noise::<B>(&tensors, steps, device)?;
    Ok(DenoiseCase { model, input, cache, expected, trace, step_noise })
}

/// The steps of `trace.json`, when the case has one.
pub(crate) fn read_trace(dir: &Path) -> Result<Option<Vec<StepTrace>>, String> {
    let trace_path = dir.join("trace.json");
    if !trace_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&trace_path).map_err(|e| format!("{}: {e}", trace_path.display()))?;
    let t: TraceFile = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", trace_path.display()))?;
    Ok(Some(t.steps))
}

/// `step_noise.0` … `step_noise.{steps-1}` when the case records them (all or none).
fn recorded_noise<B: ModelBackend>(
    tensors: &BTreeMap<String, HostTensor>,
    steps: usize,
    device: &B::Device,
) -> Result<StepNoise<B>, String> {
    let recorded = tensors.keys().filter(|k| k.starts_with("step_noise.")).count();
    if recorded == 0 {
        return Ok(StepNoise::default());
    }
    if recorded != steps {
        return Err(format!("case.safetensors records step_noise for {recorded} steps, the case has {steps}"));
    }
    (0..steps)
        .map(|i| tensor::<B, 5>(tensors, &format!("step_noise.{i}"), device))
        .collect::<Result<_, _>>()
        .map(StepNoise::Recorded)
}

fn run_denoise<B: ModelBackend>(
    dir: &Path,
    spec: &CaseSpec,
    device: &B::Device,
) -> Result<(f64, Option<Option<String>>), String> {
    let mut case = load_denoise_spec::<B>(dir, spec, device)?;
    computed_in(case.model.dtype(), computed_dtype(spec)?.float_dtype())?;
    let mut strategy =
        cache_engines::build::<B>(&case.cache, &case.model.host_info()).map_err(|e| e.to_string())?;
    let options = case.options();
    let out = case.model.denoise(case.input, &mut *strategy, options).map_err(|e| e.to_string())?;
    let out = HostTensor::from_tensor(out);
    if out.shape != case.expected.shape {
        return Err(format!("final latents shape {:?}, expected {:?}", out.shape, case.expected.shape));
    }
    let decisions = case.trace.map(|t| decisions_diff(&t, &strategy.stats().steps));
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

/// Where our decisions first differ from the reference's, or `None` when they are equal step by step: the
/// same steps at the same timesteps, and the same decision on every key either side decides (a key the
/// engine decides that the reference lacks is a difference too).
pub fn decisions_diff(reference: &[StepTrace], ours: &[StepTrace]) -> Option<String> {
    if reference.len() != ours.len() {
        return Some(format!("{} steps decided, the reference has {}", ours.len(), reference.len()));
    }
    reference.iter().zip(ours).find_map(|(r, o)| {
        let at = format!("step {} (reference timestep {})", r.step, r.timestep);
        // Every scheduler's timesteps are float32; serde_json's default float parsing may land one float64 ulp
        // off the written decimal, so the comparison is of the float32 values.
        if r.step != o.step || r.timestep as f32 != o.timestep as f32 {
            return Some(format!("{at}: ours is step {} at timestep {}", o.step, o.timestep));
        }
        if r.transformer != o.transformer {
            return Some(format!("{at}: model {:?} ran, reference {:?}", o.transformer, r.transformer));
        }
        entry_diff(r, o).map(|d| format!("{at}: {d}"))
    })
}

/// Where one step entry's decisions differ (the cache contexts' entries included, by name).
fn entry_diff(r: &StepTrace, o: &StepTrace) -> Option<String> {
    if r.blocks != o.blocks {
        return Some(format!("blocks {:?}, reference {:?}", o.blocks, r.blocks));
    }
    if r.uncond != o.uncond {
        return Some(format!("uncond {:?}, reference {:?}", o.uncond, r.uncond));
    }
    if r.attention != o.attention {
        return Some(format!("attention {:?}, reference {:?}", o.attention, r.attention));
    }
    let (rk, ok): (Vec<_>, Vec<_>) = (r.contexts.keys().collect(), o.contexts.keys().collect());
    if rk != ok {
        return Some(format!("cache contexts {ok:?}, reference {rk:?}"));
    }
    r.contexts.iter().find_map(|(name, rc)| entry_diff(rc, &o.contexts[name]).map(|d| format!("context `{name}`: {d}")))
}
