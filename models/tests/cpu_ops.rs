//! The CPU kernels of `ModelBackend` for NdArray against the generic burn-op code they replace, on the
//! layouts the models hand them (strided views after `swap_dims` / `narrow`, chunked modulations) and on
//! shapes that exercise their edges (odd widths, several attention row blocks, keys longer than queries,
//! value width ≠ key width). The end-to-end check is `ditcache parity` against diffusers.

use burn::tensor::{Distribution, Tensor};
use burn_ndarray::NdArray;
use models::ops::generic;
use models::ModelBackend;

type B = NdArray<f32>;

fn rand<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    <B as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn rel_l2<const D: usize>(got: Tensor<B, D>, want: Tensor<B, D>) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let g = got.into_data().to_vec::<f32>().unwrap();
    let w = want.into_data().to_vec::<f32>().unwrap();
    let num: f64 = g.iter().zip(&w).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

const TOL: f64 = 1e-6;

#[test]
fn linear_matches_burn_on_contiguous_and_strided_inputs() {
    for (m, k, n) in [(1, 7, 5), (3, 384, 384), (577, 129, 67), (600, 256, 1024)] {
        let x = rand([1, m, k], 1);
        let w = rand([k, n], 2);
        let b = rand([n], 3);
        let got = B::linear(x.clone(), w.clone(), Some(b.clone()));
        let e = rel_l2(got, generic::linear(x.clone(), w.clone(), Some(b.clone())));
        assert!(e < TOL, "{m}x{k}x{n}: {e:e}");
        let got = B::linear_gelu_tanh(x.clone(), w.clone(), None);
        let e = rel_l2(got, generic::linear_gelu_tanh(x, w, None));
        assert!(e < TOL, "gelu {m}x{k}x{n}: {e:e}");
    }
    // A strided input (tokens after a head swap) and a strided weight (a transposed view).
    let x = rand([2, 5, 40, 8], 4).swap_dims(1, 2).reshape([2, 40, 40]);
    let x_view = rand([2, 40, 40], 5).swap_dims(1, 2);
    let w = rand([33, 40], 6).transpose();
    for x in [x, x_view] {
        let e = rel_l2(B::linear(x.clone(), w.clone(), None), generic::linear(x, w.clone(), None));
        assert!(e < TOL, "strided: {e:e}");
    }
    // 2-D input (the time embedding) and a mismatched weight, which burn's own path reports.
    let x = rand([2, 16], 7);
    let w = rand([16, 12], 8);
    assert!(rel_l2(B::linear(x.clone(), w.clone(), None), generic::linear(x, w, None)) < TOL);
}

#[test]
fn layer_norms_match_burn_with_and_without_affine_and_modulation() {
    let x = rand([2, 37, 96], 10);
    let (w, b) = (rand([96], 11), rand([96], 12));
    for (w, b) in [(None, None), (Some(w.clone()), Some(b.clone())), (Some(w), None)] {
        let got = B::layer_norm(x.clone(), w.clone(), b.clone(), 1e-5);
        assert!(rel_l2(got, generic::layer_norm(x.clone(), w, b, 1e-5)) < TOL);
    }
    // Per-head norm on a strided `[B, H, L, hd]` view, as the CogVideoX attention's norm_q.
    let heads = rand([2, 37, 96], 13).reshape([2, 37, 6, 16]).swap_dims(1, 2);
    let (w, b) = (Some(rand([16], 14)), Some(rand([16], 15)));
    let got = B::layer_norm(heads.clone(), w.clone(), b.clone(), 1e-6);
    assert!(rel_l2(got, generic::layer_norm(heads, w, b, 1e-6)) < TOL);
    // Modulation from six chunks of one `[B, 1, 6d]` tensor (strided views), per sample and broadcast.
    let mods = rand([2, 1, 6 * 96], 16).chunk(6, 2);
    let (shift, scale) = (mods[0].clone(), mods[1].clone());
    let (w, b) = (Some(rand([96], 17)), Some(rand([96], 18)));
    let got = B::layer_norm_modulate(x.clone(), w.clone(), b.clone(), 1e-5, scale.clone(), shift.clone());
    let want = generic::layer_norm_modulate(x.clone(), w.clone(), b.clone(), 1e-5, scale, shift);
    assert!(rel_l2(got, want) < TOL);
    let (shift, scale) = (rand([1, 1, 96], 19), rand([1, 1, 96], 20));
    let got = B::layer_norm_modulate(x.clone(), w.clone(), b.clone(), 1e-5, scale.clone(), shift.clone());
    let want = generic::layer_norm(x, w, b, 1e-5) * (scale + 1.0) + shift;
    assert!(rel_l2(got, want) < TOL);
}

#[test]
fn gelu_matches_burn() {
    let x = rand([3, 50, 7], 40) * 4.0;
    assert!(rel_l2(B::gelu_tanh(x.clone()), generic::gelu_tanh(x)) < TOL);
}

#[test]
fn attention_matches_burn_across_blocks_lengths_and_layouts() {
    // (batch, heads, queries, keys, head dim, value dim): one row block, several uneven ones,
    // cross-attention with keys ≠ queries, a one-token temporal attention, value width ≠ key width.
    for (b, h, l, s, hd, hdv) in [(2, 3, 10, 10, 16, 16), (1, 2, 601, 601, 64, 64), (2, 2, 33, 7, 8, 8), (4, 2, 1, 1, 8, 8), (1, 1, 20, 50, 12, 5)] {
        let q = rand([b, h, l, hd], 50);
        let k = rand([b, h, s, hd], 51) * 2.0;
        let v = rand([b, h, s, hdv], 52);
        let got = B::attention(q.clone(), k.clone(), v.clone());
        let e = rel_l2(got, generic::attention(q, k, v));
        assert!(e < TOL, "{b}x{h}x{l}x{s}x{hd}x{hdv}: {e:e}");
    }
    // Heads as the models make them: a `[B, L, H·hd]` projection reshaped and swapped (strided).
    let heads = |seed| rand([2, 45, 48], seed).reshape([2, 45, 3, 16]).swap_dims(1, 2);
    let (q, k, v) = (heads(60), heads(61), heads(62));
    let got = B::attention(q.clone(), k.clone(), v.clone());
    // The output goes back to tokens the way the models do it.
    let back = |t: Tensor<B, 4>| t.swap_dims(1, 2).reshape([2, 45, 48]);
    assert!(rel_l2(back(got), back(generic::attention(q, k, v))) < TOL);
}

#[test]
fn rms_norm_matches_burn_and_hand_values() {
    // Hand value: [3, 4] has mean square 12.5; eps 0: [3, 4] / √12.5, times the weight [1, 2].
    let x = Tensor::<B, 1>::from_floats([3.0, 4.0], &Default::default()).reshape([1, 2]);
    let w = Tensor::<B, 1>::from_floats([1.0, 2.0], &Default::default());
    let got = B::rms_norm(x, Some(w), 0.0).into_data().to_vec::<f32>().unwrap();
    let r = 12.5f32.sqrt();
    assert!((got[0] - 3.0 / r).abs() < 1e-6 && (got[1] - 8.0 / r).abs() < 1e-6, "{got:?}");
    // Per-head norm on the strided `[B, H, L, hd]` view FLUX's attention hands it, with and without weight;
    // an odd width (the kernel's tail).
    let heads = rand([2, 37, 128], 30).reshape([2, 37, 4, 32]).swap_dims(1, 2);
    for w in [None, Some(rand([32], 31))] {
        let got = B::rms_norm(heads.clone(), w.clone(), 1e-6);
        assert!(rel_l2(got, generic::rms_norm(heads.clone(), w, 1e-6)) < TOL);
    }
    let odd = rand([3, 5, 13], 32);
    assert!(rel_l2(B::rms_norm(odd.clone(), None, 1e-6), generic::rms_norm(odd, None, 1e-6)) < TOL);
}

#[test]
fn rotary_matches_burn_and_hand_values() {
    // One pair (x₀, x₁) = (1, 2): (1·c₀ − 2·s₀, 2·c₁ + 1·s₁).
    let dev = Default::default();
    let x = Tensor::<B, 1>::from_floats([1.0, 2.0], &dev).reshape([1, 1, 1, 2]);
    let cos = Tensor::<B, 1>::from_floats([0.5, 0.25], &dev).reshape([1, 1, 1, 2]);
    let sin = Tensor::<B, 1>::from_floats([0.75, 0.125], &dev).reshape([1, 1, 1, 2]);
    let got = B::rotary(x, cos, sin).into_data().to_vec::<f32>().unwrap();
    assert_eq!(got, vec![1.0 * 0.5 - 2.0 * 0.75, 2.0 * 0.25 + 1.0 * 0.125]);
    // The strided heads of FLUX's attention (after the q/k norm) and a contiguous batch.
    let (cos, sin) = (rand([1, 1, 37, 32], 40), rand([1, 1, 37, 32], 41));
    let heads = rand([2, 37, 128], 42).reshape([2, 37, 4, 32]).swap_dims(1, 2);
    let got = B::rotary(heads.clone(), cos.clone(), sin.clone());
    assert!(rel_l2(got, generic::rotary(heads, cos.clone(), sin.clone())) < TOL);
    let x = rand([3, 2, 37, 32], 43);
    assert!(rel_l2(B::rotary(x.clone(), cos.clone(), sin.clone()), generic::rotary(x, cos, sin)) < TOL);
}
