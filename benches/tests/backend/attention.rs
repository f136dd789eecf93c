//! Attention at lengths that are not a multiple of any kernel tile (1, 31, 33, CogVideoX's 226 text tokens,
//! 226 + 64), in query blocks that bound the score memory (`models::ops::generic::attention_in_blocks`) and
//! through the backend's own `ModelBackend::attention`, against a float64 evaluation on the host. Inputs are
//! laid out as the models hand them over: `[B, L, H, hd]` with the head axis swapped in (strided views), batch 2.
//!
//! Part of `tests/backend.rs` (one test binary per backend build: each one links all of burn's wgpu or CUDA
//! code again).

use benches::backend::{device, Backend as B, TOLERANCE_FLOOR};
use benches::parity::rel_l2;
use burn::tensor::{Tensor, TensorData};
use models::ops::generic::{attention_in_blocks, ATTENTION_SCORE_BUDGET};
use models::ModelBackend;

const BATCH: usize = 2;
const HEADS: usize = 3;
const HEAD_DIM: usize = 16;

/// Deterministic values in about [-2, 2] (a different stream per `seed`).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
        })
        .collect()
}

/// `[B, L, H, hd]` values, as the tensor the models reshape their projections into.
struct Input {
    len: usize,
    data: Vec<f32>,
}

impl Input {
    fn new(len: usize, seed: u64) -> Self {
        Self { len, data: values(BATCH * len * HEADS * HEAD_DIM, seed) }
    }

    fn at(&self, b: usize, h: usize, i: usize, d: usize) -> f64 {
        self.data[((b * self.len + i) * HEADS + h) * HEAD_DIM + d] as f64
    }

    /// `[B, H, L, hd]` as a strided view of `[B, L, H, hd]` (the models' `swap_dims(1, 2)`).
    fn tensor(&self) -> Tensor<B, 4> {
        let t = Tensor::<B, 4>::from_data(TensorData::new(self.data.clone(), [BATCH, self.len, HEADS, HEAD_DIM]), &device());
        t.swap_dims(1, 2)
    }
}

/// `softmax(q kᵀ / √hd) v` in float64, `[B, H, L, hd]` row-major.
fn reference(q: &Input, k: &Input, v: &Input) -> Vec<f32> {
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let mut out = Vec::with_capacity(BATCH * HEADS * q.len * HEAD_DIM);
    for b in 0..BATCH {
        for h in 0..HEADS {
            for i in 0..q.len {
                let scores: Vec<f64> = (0..k.len)
                    .map(|j| (0..HEAD_DIM).map(|d| q.at(b, h, i, d) * k.at(b, h, j, d)).sum::<f64>() * scale)
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..HEAD_DIM {
                    let o: f64 = weights.iter().enumerate().map(|(j, w)| w * v.at(b, h, j, d)).sum();
                    out.push((o / total) as f32);
                }
            }
        }
    }
    out
}

fn host(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Float32 against float64 is ~1e-7; the backend's precision floor where it computes below float32.
fn tolerance() -> f64 {
    1e-5f64.max(TOLERANCE_FLOOR)
}

/// (query length, key length) pairs: none a multiple of 32 but 226 + 64 = 290's neighbours, single rows and
/// keys, more queries than keys and the reverse.
const LENGTHS: [(usize, usize); 6] = [(1, 1), (1, 226), (31, 31), (33, 226), (290, 33), (226, 290)];

#[test]
fn attention_in_query_blocks_equals_float64_at_odd_lengths() {
    for (i, &(l, s)) in LENGTHS.iter().enumerate() {
        let seed = 10 * i as u64;
        let (q, k, v) = (Input::new(l, seed + 1), Input::new(s, seed + 2), Input::new(s, seed + 3));
        let want = reference(&q, &k, &v);
        // 7 rows per block (blocks of 7 and a remainder), 200 rows (rounded to 128: 128, 128, 34 at 290), and
        // everything at once.
        for budget in [BATCH * HEADS * s * 7, BATCH * HEADS * s * 200, ATTENTION_SCORE_BUDGET] {
            let got = host(attention_in_blocks(q.tensor(), k.tensor(), v.tensor(), budget));
            assert_eq!(got.len(), want.len());
            let err = rel_l2(&got, &want);
            assert!(err < tolerance(), "L {l}, S {s}, budget {budget}: rel_l2 {err}");
        }
    }
}

#[test]
fn the_backends_attention_equals_float64_at_odd_lengths() {
    for (i, &(l, s)) in LENGTHS.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let (q, k, v) = (Input::new(l, seed + 1), Input::new(s, seed + 2), Input::new(s, seed + 3));
        let got = host(<B as ModelBackend>::attention(q.tensor(), k.tensor(), v.tensor()));
        let err = rel_l2(&got, &reference(&q, &k, &v));
        assert!(err < tolerance(), "L {l}, S {s}: rel_l2 {err}");
    }
}
