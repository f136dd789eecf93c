//! Weights under diffusers' own names: loaded from a diffusers model directory (single or sharded
//! safetensors, f32/f16/bf16/f64), or drawn at random from a seed (PyTorch's default initialisation).
//!
//! Models are built through a [`VarBuilder`], which hands out each weight by its full diffusers name,
//! checks its shape, and remembers what was used, so that [`WeightSource::finish`] can refuse a checkpoint
//! that holds weights the model does not use.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Param, ParamId};
use burn::tensor::{backend::Backend, DType, FloatDType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// A float32 tensor in host memory, in PyTorch's (row-major) layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Moves it to a device.
    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.data.clone(), self.shape.clone()), device)
    }

    /// Moves it to a device as a tensor of `dtype`: converted on the host with round-to-nearest-even, as torch's
    /// `.to(dtype)` rounds (burn-flex's on-device cast from float32 goes through float64 and misrounds a few
    /// values in 10⁵), exactly for values already representable in `dtype` (a half-precision checkpoint).
    pub fn to_tensor_as<B: Backend, const D: usize>(&self, device: &B::Device, dtype: FloatDType) -> Tensor<B, D> {
        let data = TensorData::new(self.data.clone(), self.shape.clone());
        if dtype == FloatDType::F32 {
            return Tensor::from_data(data, (device, DType::F32));
        }
        let dtype = DType::from(dtype);
        Tensor::from_data(data.convert_dtype(dtype), (device, dtype))
    }

    /// [`HostTensor::to_tensor`] for data that comes from a user's file: a tensor of another rank, or whose
    /// data does not fill its shape, is a typed error naming `name` instead of a panic in burn's `from_data`.
    pub fn try_to_tensor<B: Backend, const D: usize>(&self, name: &str, device: &B::Device) -> Result<Tensor<B, D>> {
        self.try_to_tensor_as(name, device, FloatDType::F32)
    }

    /// [`HostTensor::try_to_tensor`] as a tensor of `dtype` ([`HostTensor::to_tensor_as`]).
    pub fn try_to_tensor_as<B: Backend, const D: usize>(&self, name: &str, device: &B::Device, dtype: FloatDType) -> Result<Tensor<B, D>> {
        if self.shape.len() != D {
            return Err(ModelError::Shape(format!("`{name}` has shape {:?} ({}-D), expected a {D}-D tensor", self.shape, self.shape.len())));
        }
        let n: usize = self.shape.iter().product();
        if n != self.data.len() {
            return Err(ModelError::Shape(format!("`{name}` has shape {:?} ({n} values) but holds {}", self.shape, self.data.len())));
        }
        Ok(self.to_tensor_as(device, dtype))
    }

    /// The transpose of a 2-D tensor, materialised row-major (`[r, c]` → `[c, r]`).
    ///
    /// Weights are transposed here, on the host, rather than as a `transpose()` view on the device: a
    /// strided right-hand side reaches burn-wgpu's fused gemv matmul kernel (cubek-matmul 0.2), which reads
    /// it as row-major and returns wrong values (docs/backends.md).
    ///
    /// # Panics
    /// If the tensor is not 2-D (a programming error: callers pass weights whose shape they checked).
    pub fn transposed(&self) -> Self {
        let [r, c] = self.shape[..] else { panic!("transposed() takes a 2-D tensor, got {:?}", self.shape) };
        let mut data = Vec::with_capacity(r * c);
        for j in 0..c {
            data.extend((0..r).map(|i| self.data[i * c + j]));
        }
        Self { shape: vec![c, r], data }
    }

    /// The same values under another shape of as many elements (row-major, nothing moves).
    ///
    /// # Panics
    /// If the element counts differ (a programming error).
    pub fn reshaped(self, shape: &[usize]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), self.data.len(), "reshape {:?} → {shape:?}", self.shape);
        Self { shape: shape.to_vec(), data: self.data }
    }

    /// Reads a tensor back from a device.
    pub fn from_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        let shape = t.dims().to_vec();
        let data = t.into_data().convert::<f32>().into_vec::<f32>().expect("float tensor");
        Self { shape, data }
    }
}

/// How a weight is initialised when the source draws weights at random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound]` (PyTorch's `nn.Linear`/`nn.Conv2d` default: `bound = 1/sqrt(fan_in)`).
    Uniform(f64),
    /// All ones (LayerNorm weight).
    Ones,
    /// All zeros (LayerNorm bias).
    Zeros,
    /// Normal with this standard deviation (diffusers' `torch.randn(...) / dim**0.5` tables).
    Normal(f64),
}

/// Reads the safetensors files of a checkpoint lazily by name; each header is parsed once.
struct Checkpoint {
    /// Weight name → (index into `files`, dtype, shape, absolute byte range in that file).
    index: HashMap<String, (usize, Dtype, Vec<usize>, std::ops::Range<usize>)>,
    files: Vec<Vec<u8>>,
}

enum Source {
    Checkpoint(Checkpoint),
    Random { seed: u64, drawn: BTreeMap<String, HostTensor> },
    Memory(BTreeMap<String, HostTensor>),
}

/// Where a model's weights come from.
pub struct WeightSource {
    source: Source,
    used: BTreeSet<String>,
    dtype: FloatDType,
}

impl WeightSource {
    /// Random weights from a seed: each weight's values depend on the seed and its name only, so the same
    /// config and seed give the same model on every backend.
    pub fn random(seed: u64) -> Self {
        Self { source: Source::Random { seed, drawn: BTreeMap::new() }, used: BTreeSet::new(), dtype: FloatDType::F32 }
    }

    /// Weights already in memory, by diffusers name.
    pub fn from_tensors(tensors: BTreeMap<String, HostTensor>) -> Self {
        Self { source: Source::Memory(tensors), used: BTreeSet::new(), dtype: FloatDType::F32 }
    }

    /// The weights of a diffusers model directory: `diffusion_pytorch_model.safetensors`, or the sharded
    /// `diffusion_pytorch_model.safetensors.index.json` and its shards.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("diffusion_pytorch_model.safetensors");
        let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
        let checkpoint = if single.exists() {
            Checkpoint::from_files(vec![single])?
        } else if index.exists() {
            let text = read(&index)?;
            let json: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| ModelError::Parse { path: index.clone(), reason: e.to_string() })?;
            let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Parse {
                path: index.clone(),
                reason: "no `weight_map` object".into(),
            })?;
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            Checkpoint::from_files(shards.into_iter().map(|s| dir.join(s)).collect())?
        } else {
            return Err(ModelError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no diffusion_pytorch_model.safetensors nor its .index.json",
                ),
            });
        };
        Ok(Self { source: Source::Checkpoint(checkpoint), used: BTreeSet::new(), dtype: FloatDType::F32 })
    }

    /// The weights as `dtype` on the device (float32 by default, whatever the files hold): a model loaded so
    /// computes in that dtype, as diffusers' `from_pretrained(..., torch_dtype=...)` does. Only the model families
    /// that say so run in half precision (`CogVideoXTransformer3DModel::load`); the others refuse it.
    pub fn with_dtype(mut self, dtype: FloatDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The dtype weights are put on the device in ([`WeightSource::with_dtype`]).
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// Fetches one weight in PyTorch layout, checking its shape.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<HostTensor> {
        let t = match &mut self.source {
            Source::Checkpoint(c) => c.get(name)?,
            Source::Memory(m) => m.get(name).cloned(),
            Source::Random { seed, drawn } => {
                let t = random_tensor(*seed, name, shape, init);
                drawn.insert(name.to_owned(), t.clone());
                Some(t)
            }
        };
        let t = t.ok_or_else(|| ModelError::MissingWeight { name: name.to_owned(), expected: shape.to_vec() })?;
        if t.shape != shape {
            return Err(ModelError::WeightShape {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        self.used.insert(name.to_owned());
        Ok(t)
    }

    /// Whether the source holds a weight of this name (a random source holds none until drawn): for a layout
    /// choice between two forms of the same checkpoint.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Checkpoint(c) => c.index.contains_key(name),
            Source::Memory(m) => m.contains_key(name),
            Source::Random { .. } => false,
        }
    }

    /// Ends loading: an error naming every weight of the checkpoint that the model did not take.
    pub fn finish(&self) -> Result<()> {
        let names: Vec<String> = match &self.source {
            Source::Checkpoint(c) => c.index.keys().filter(|k| !self.used.contains(*k)).cloned().collect(),
            Source::Memory(m) => m.keys().filter(|k| !self.used.contains(*k)).cloned().collect(),
            Source::Random { .. } => Vec::new(),
        };
        if names.is_empty() {
            Ok(())
        } else {
            let mut names = names;
            names.sort();
            Err(ModelError::UnusedWeights { names })
        }
    }

    /// The weights drawn so far by a random source (to save the model for another implementation).
    pub fn drawn(&self) -> Option<&BTreeMap<String, HostTensor>> {
        match &self.source {
            Source::Random { drawn, .. } => Some(drawn),
            _ => None,
        }
    }
}

impl Checkpoint {
    fn from_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut index = HashMap::new();
        let mut files = Vec::with_capacity(paths.len());
        for (i, path) in paths.into_iter().enumerate() {
            let bytes = read(&path)?;
            let (header, meta) = SafeTensors::read_metadata(&bytes)
                .map_err(|e| ModelError::Parse { path: path.clone(), reason: e.to_string() })?;
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                if base + end > bytes.len() || start > end {
                    return Err(ModelError::Parse { path, reason: format!("tensor `{name}` lies outside the file") });
                }
                index.insert(name, (i, info.dtype, info.shape.clone(), base + start..base + end));
            }
            files.push(bytes);
        }
        Ok(Self { index, files })
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some((i, dtype, shape, range)) = self.index.get(name) else { return Ok(None) };
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), &self.files[*i][range.clone()])
            .map_err(|e| ModelError::Parse { path: PathBuf::from(name), reason: e.to_string() })?;
        Ok(Some(view_to_host(name, &view)?))
    }
}

/// Converts a stored tensor to float32 (floats of any width; integers such as timesteps, exactly up to 2^24).
fn view_to_host(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<HostTensor> {
    let raw = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        Dtype::I64 => raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        Dtype::I32 => raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32).collect(),
        other => return Err(ModelError::WeightDtype { name: name.to_owned(), dtype: format!("{other:?}") }),
    };
    Ok(HostTensor { shape: view.shape().to_vec(), data })
}

/// Reads every tensor of a safetensors file as float32.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = read(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::Parse { path: path.to_owned(), reason: e.to_string() })?;
    st.tensors().iter().map(|(name, view)| Ok((name.clone(), view_to_host(name, view)?))).collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}

/// SplitMix64: a tiny, well-mixed generator; enough for weight initialisation.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn random_tensor(seed: u64, name: &str, shape: &[usize], init: Init) -> HostTensor {
    let n: usize = shape.iter().product();
    let data = match init {
        Init::Ones => vec![1.0; n],
        Init::Zeros => vec![0.0; n],
        Init::Uniform(bound) => {
            let mut rng = SplitMix64(seed ^ name_hash(name));
            (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
        }
        Init::Normal(std) => randn(seed ^ name_hash(name), shape).data.iter().map(|v| v * std as f32).collect(),
    };
    HostTensor { shape: shape.to_vec(), data }
}

/// Standard-normal values from a seed (Box–Muller over SplitMix64), e.g. for initial latents.
pub fn randn(seed: u64, shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64(seed);
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        data.push((r * th.cos()) as f32);
        if data.len() < n {
            data.push((r * th.sin()) as f32);
        }
    }
    HostTensor { shape: shape.to_vec(), data }
}

/// Writes tensors as a float32 safetensors file (diffusers' `diffusion_pytorch_model.safetensors` form).
pub fn save_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (k.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("consistent view"))
        })
        .collect();
    let out = safetensors::serialize(views, &None)
        .map_err(|e| ModelError::Parse { path: path.to_owned(), reason: e.to_string() })?;
    std::fs::write(path, out).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}

/// torch's name of a float dtype (`bfloat16`, `float16`, `float32`, `float64`).
pub fn dtype_name(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::F64 => "float64",
        FloatDType::F32 | FloatDType::Flex32 => "float32",
        FloatDType::F16 => "float16",
        FloatDType::BF16 => "bfloat16",
    }
}

/// Checks a model's compute dtype before loading: `half` says whether the family runs in half precision
/// (float16/bfloat16), and the backend must hold and compute that dtype on `device` (burn-ndarray has float32
/// and float64 only; burn-flex, burn-cuda have all four).
pub fn check_dtype<B: Backend>(model: &str, dtype: FloatDType, half: bool, device: &B::Device) -> Result<()> {
    let refuse = |reason: String| {
        Err(ModelError::UnsupportedDtype { model: model.to_owned(), dtype: dtype_name(dtype).to_owned(), reason })
    };
    match dtype {
        FloatDType::F32 => Ok(()),
        FloatDType::F16 | FloatDType::BF16 if !half => {
            refuse("this family's model code computes float32 only (half precision: CogVideoX)".into())
        }
        FloatDType::F16 | FloatDType::BF16 if B::supports_dtype(device, dtype.into()) => Ok(()),
        FloatDType::F16 | FloatDType::BF16 => refuse(format!(
            "the backend has no {} arithmetic on this device (burn-ndarray: float32 and float64 only; WGSL: no \
             bfloat16; on the CPU, burn-flex has both half precisions)",
            dtype_name(dtype)
        )),
        FloatDType::F64 | FloatDType::Flex32 => refuse("the models compute float32 or half precision".into()),
    }
}

/// Hands out weights under a name prefix, like candle's `VarBuilder`: `vb.pp("attn1").linear(...)`.
pub struct VarBuilder<'a, B: Backend> {
    source: &'a mut WeightSource,
    prefix: String,
    device: &'a B::Device,
}

impl<'a, B: Backend> VarBuilder<'a, B> {
    /// A builder at the root of the model's names.
    pub fn new(source: &'a mut WeightSource, device: &'a B::Device) -> Self {
        Self { source, prefix: String::new(), device }
    }

    /// The device weights are put on.
    pub fn device(&self) -> &B::Device {
        self.device
    }

    /// A builder one name level down (`prefix.name`).
    pub fn pp(&mut self, name: impl std::fmt::Display) -> VarBuilder<'_, B> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{}", self.prefix, name) };
        VarBuilder { source: self.source, prefix, device: self.device }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Fetches a weight in PyTorch layout.
    pub fn host(&mut self, name: &str, shape: &[usize], init: Init) -> Result<HostTensor> {
        let full = self.full(name);
        self.source.get(&full, shape, init)
    }

    /// Whether the source holds `prefix.name` ([`WeightSource::contains`]).
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.full(name))
    }

    /// Fetches a weight as a parameter, in PyTorch layout.
    pub fn param<const D: usize>(&mut self, name: &str, shape: [usize; D], init: Init) -> Result<Param<Tensor<B, D>>> {
        let t = self.host(name, &shape, init)?;
        Ok(Param::initialized(ParamId::new(), self.upload(&t)))
    }

    /// A weight fetched with [`VarBuilder::host`] (and rearranged there), on the device in the source's dtype.
    pub fn upload<const D: usize>(&self, t: &HostTensor) -> Tensor<B, D> {
        t.to_tensor_as(self.device, self.source.dtype)
    }

    /// The dtype weights are put on the device in ([`WeightSource::with_dtype`]).
    pub fn dtype(&self) -> FloatDType {
        self.source.dtype
    }
}
