//! Positional and timestep embeddings, computed on the host with diffusers' arithmetic (dtypes included),
//! since they are small and their rounding decides parity.

/// diffusers' `get_timestep_embedding` (`Timesteps` module, `max_period` 10000, `scale` 1), one row per timestep.
///
/// # Shapes
/// returns `[timesteps.len(), dim]`, row-major.
pub fn timestep_embedding(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, freq_shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let log_max = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> =
        (0..half).map(|i| ((log_max * i as f32) / (half as f32 - freq_shift)).exp()).collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args = freqs.iter().map(|f| t * f);
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.map(|a| (a.sin(), a.cos())).unzip();
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

/// `get_1d_sincos_pos_embed_from_grid`: frequencies in float64, `[sin..., cos...]`.
fn sincos_1d(dim: usize, pos: f64, out: &mut Vec<f64>) {
    let half = dim / 2;
    let omega = |i: usize| 1.0 / 10000f64.powf(i as f64 / (dim as f64 / 2.0));
    out.extend((0..half).map(|i| (pos * omega(i)).sin()));
    out.extend((0..half).map(|i| (pos * omega(i)).cos()));
}

/// diffusers' `get_3d_sincos_pos_embed` for CogVideoX's video tokens, in token order (frame, row, column).
/// The spatial half is `[emb(column), emb(row)]` because diffusers builds its grid in (W, H) order.
///
/// # Shapes
/// returns `[frames * height * width, dim]`, row-major, as float32.
pub fn sincos_3d(
    dim: usize,
    frames: usize,
    height: usize,
    width: usize,
    spatial_interpolation_scale: f64,
    temporal_interpolation_scale: f64,
) -> Vec<f32> {
    let dim_spatial = 3 * dim / 4;
    let dim_temporal = dim / 4;
    // Positions are float32 in diffusers (`arange(float32) / scale`), frequencies float64.
    let pos = |i: usize, scale: f64| (i as f32 / scale as f32) as f64;
    let mut out = Vec::with_capacity(frames * height * width * dim);
    let mut row = Vec::with_capacity(dim);
    for t in 0..frames {
        for h in 0..height {
            for w in 0..width {
                row.clear();
                sincos_1d(dim_temporal, pos(t, temporal_interpolation_scale), &mut row);
                sincos_1d(dim_spatial / 2, pos(w, spatial_interpolation_scale), &mut row);
                sincos_1d(dim_spatial / 2, pos(h, spatial_interpolation_scale), &mut row);
                out.extend(row.iter().map(|&v| v as f32));
            }
        }
    }
    out
}

/// diffusers' `get_2d_sincos_pos_embed` (as `PatchEmbed` calls it) for a `grid_h × grid_w` patch grid, in
/// token order (row, column); each row is `[emb(column), emb(row)]`. Positions are float32
/// (`arange / (grid / base_size) / interpolation_scale`), frequencies float64, as in diffusers.
///
/// # Shapes
/// returns `[grid_h * grid_w, dim]`, row-major, as float32.
pub fn sincos_2d(dim: usize, grid_h: usize, grid_w: usize, base_size: usize, interpolation_scale: f64) -> Vec<f32> {
    let pos = |i: usize, grid: usize| {
        let step = (grid as f64 / base_size as f64) as f32;
        ((i as f32 / step) / interpolation_scale as f32) as f64
    };
    let mut out = Vec::with_capacity(grid_h * grid_w * dim);
    let mut row = Vec::with_capacity(dim);
    for h in 0..grid_h {
        for w in 0..grid_w {
            row.clear();
            sincos_1d(dim / 2, pos(w, grid_w), &mut row);
            sincos_1d(dim / 2, pos(h, grid_h), &mut row);
            out.extend(row.iter().map(|&v| v as f32));
        }
    }
    out
}

/// `get_1d_sincos_pos_embed_from_grid(dim, arange(n))`: one row per integer position.
///
/// # Shapes
/// returns `[n, dim]`, row-major, as float32.
pub fn sincos_1d_table(dim: usize, n: usize) -> Vec<f32> {
    let mut row = Vec::with_capacity(dim);
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        row.clear();
        sincos_1d(dim, i as f64, &mut row);
        out.extend(row.iter().map(|&v| v as f32));
    }
    out
}

/// `torch.linspace(start, end, steps)` in float32, including its symmetric evaluation from both ends.
fn linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (steps - 1 - i) as f32 })
        .collect()
}

/// `get_1d_rotary_pos_embed(use_real=True, repeat_interleave_real=True)`: float32 cos and sin, each `[n, dim]`.
fn rotary_1d(dim: usize, pos: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let freqs: Vec<f32> = (0..dim / 2).map(|j| 1.0 / 10000f32.powf((2 * j) as f32 / dim as f32)).collect();
    let mut cos = Vec::with_capacity(pos.len() * dim);
    let mut sin = Vec::with_capacity(pos.len() * dim);
    for &p in pos {
        for &f in &freqs {
            let a = p * f;
            cos.extend([a.cos(); 2]);
            sin.extend([a.sin(); 2]);
        }
    }
    (cos, sin)
}

/// The CogVideoX pipeline's `get_resize_crop_region_for_grid`, with Python's round-half-to-even.
pub fn resize_crop_region_for_grid(
    grid: (usize, usize),
    target_width: usize,
    target_height: usize,
) -> ((usize, usize), (usize, usize)) {
    let (h, w) = (grid.0 as f64, grid.1 as f64);
    let (tw, th) = (target_width as f64, target_height as f64);
    let (resize_h, resize_w) = if h / w > th / tw {
        (th, (th / h * w).round_ties_even())
    } else {
        ((tw / w * h).round_ties_even(), tw)
    };
    let top = ((th - resize_h) / 2.0).round_ties_even();
    let left = ((tw - resize_w) / 2.0).round_ties_even();
    ((top as usize, left as usize), ((top + resize_h) as usize, (left + resize_w) as usize))
}

/// diffusers' `get_3d_rotary_pos_embed(grid_type="linspace")` as the CogVideoX pipeline calls it.
///
/// # Shapes
/// returns `(cos, sin)`, each `[frames * grid_h * grid_w, head_dim]`, row-major.
pub fn rotary_3d(
    head_dim: usize,
    crops: ((usize, usize), (usize, usize)),
    grid_h: usize,
    grid_w: usize,
    frames: usize,
) -> (Vec<f32>, Vec<f32>) {
    let ((top, left), (bottom, right)) = crops;
    let gh = linspace_f32(top as f64, bottom as f64 * (grid_h - 1) as f64 / grid_h as f64, grid_h);
    let gw = linspace_f32(left as f64, right as f64 * (grid_w - 1) as f64 / grid_w as f64, grid_w);
    let gt = linspace_f32(0.0, (frames * (frames - 1)) as f64 / frames as f64, frames);
    let (dt, dh) = (head_dim / 4, head_dim / 8 * 3);
    let dw = dh;
    let (tc, ts) = rotary_1d(dt, &gt);
    let (hc, hs) = rotary_1d(dh, &gh);
    let (wc, ws) = rotary_1d(dw, &gw);
    let n = frames * grid_h * grid_w;
    let mut cos = Vec::with_capacity(n * head_dim);
    let mut sin = Vec::with_capacity(n * head_dim);
    for t in 0..frames {
        for h in 0..grid_h {
            for w in 0..grid_w {
                cos.extend_from_slice(&tc[t * dt..(t + 1) * dt]);
                cos.extend_from_slice(&hc[h * dh..(h + 1) * dh]);
                cos.extend_from_slice(&wc[w * dw..(w + 1) * dw]);
                sin.extend_from_slice(&ts[t * dt..(t + 1) * dt]);
                sin.extend_from_slice(&hs[h * dh..(h + 1) * dh]);
                sin.extend_from_slice(&ws[w * dw..(w + 1) * dw]);
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_region_matches_diffusers_examples() {
        // CogVideoX-5b at its native 480x720: latent grid 30x45 = base grid, no crop.
        assert_eq!(resize_crop_region_for_grid((30, 45), 45, 30), ((0, 0), (30, 45)));
        // A square grid in a 45x30 base: height-limited, width round(30/8*8)=30, left (45-30)/2=7.5 -> 8 (even).
        assert_eq!(resize_crop_region_for_grid((8, 8), 45, 30), ((0, 8), (30, 38)));
    }

    #[test]
    fn linspace_is_symmetric_like_torch() {
        let v = linspace_f32(0.0, 7.0 * 7.0 / 8.0, 8);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[7], 6.125);
        assert!((v[4] - 3.5).abs() < 1e-6);
    }

    #[test]
    fn timestep_embedding_flips_to_cos_first() {
        let e = timestep_embedding(&[0.0], 4, true, 0.0);
        assert_eq!(e, vec![1.0, 1.0, 0.0, 0.0]);
        let e = timestep_embedding(&[1.0], 4, false, 0.0);
        // freqs: exp(0) = 1, exp(-ln(1e4) / 2) = 0.01
        assert!((e[0] - 1f32.sin()).abs() < 1e-7 && (e[1] - 0.01f32.sin()).abs() < 1e-7);
    }
}
