//! Attention without a mask on raw f32 buffers: per (batch, head, block of query rows), scores by one GEMM,
//! softmax numerators in place, the weighted sum of values by a second GEMM written straight into the
//! `[B, L, H, hd]` layout the output projection reads, then the rows divided by their softmax sums.
//! Memory is one block of scores per thread (`ROWS × S`), never the whole `L × S` matrix.

use rayon::prelude::*;

use super::kernels;
use super::matmul::{gemm_on_thread, Mat};

/// Most query rows per task: enough for the GEMMs to run at speed, few enough that long sequences
/// (CogVideoX-2b's 17k tokens) keep a few MB of scores per thread. Rows are split evenly over the
/// blocks, so no block is a small remainder.
const ROWS: usize = 256;

/// A 4-D view's first element and strides, in elements.
#[derive(Clone, Copy)]
pub(super) struct View4 {
    pub ptr: *const f32,
    pub dims: [usize; 4],
    pub strides: [isize; 4],
}

// SAFETY: the views are only read, and they outlive the parallel loop.
unsafe impl Send for View4 {}
unsafe impl Sync for View4 {}

impl View4 {
    /// The `(b, h)` matrix from row `r`, rows along dim 2, columns along dim 3.
    ///
    /// # Safety
    /// `b`, `h`, `r` within the view's dims.
    unsafe fn mat(&self, b: usize, h: usize, r: usize) -> Mat {
        let s = self.strides;
        let ptr = self.ptr.offset(b as isize * s[0] + h as isize * s[1] + r as isize * s[2]);
        Mat { ptr, rs: s[2], cs: s[3] }
    }
}

/// `softmax(q kᵀ · scale) v` for `q` `[B, H, L, hd]`, `k` `[B, H, S, hd]`, `v` `[B, H, S, hd_v]` (shapes
/// checked by the caller); returns the output as a row-major `[B, L, H, hd_v]` buffer.
pub(super) fn attention(q: View4, k: View4, v: View4, scale: f32) -> Vec<f32> {
    let [b, h, l, hd] = q.dims;
    let s = k.dims[2];
    let hdv = v.dims[3];
    let mut out = vec![0f32; b * l * h * hdv];
    if out.is_empty() {
        return out;
    }
    let blocks = l.div_ceil(ROWS);
    let rows_per_block = l.div_ceil(blocks);
    let out_addr = out.as_mut_ptr() as usize;
    let row_stride = (h * hdv) as isize;
    (0..b * h * blocks).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, unit| {
        let (bh, blk) = (unit / blocks, unit % blocks);
        let (bi, hi) = (bh / h, bh % h);
        let r0 = blk * rows_per_block;
        let rows = rows_per_block.min(l - r0);
        scores.clear();
        scores.resize(rows * s, 0.0);
        // SAFETY: indices within the dims the caller checked; each unit writes only its own rows
        // (bi, r0..r0+rows) of head hi in `out`, which outlives the loop.
        unsafe {
            let qm = q.mat(bi, hi, r0);
            let km = k.mat(bi, hi, 0);
            let kt = Mat { ptr: km.ptr, rs: km.cs, cs: km.rs };
            gemm_on_thread(rows, s, hd, scores.as_mut_ptr(), s as isize, false, qm, kt, scale);
            let mut inv = [0f32; ROWS];
            for (i, row) in scores.chunks_exact_mut(s.max(1)).enumerate().take(rows) {
                inv[i] = 1.0 / kernels::softmax_numerator(row).max(f32::MIN_POSITIVE);
            }
            let dst = (out_addr as *mut f32).offset(((bi * l + r0) * h + hi) as isize * hdv as isize);
            let p = Mat { ptr: scores.as_ptr(), rs: s as isize, cs: 1 };
            gemm_on_thread(rows, hdv, s, dst, row_stride, false, p, v.mat(bi, hi, 0), 1.0);
            for (i, f) in inv.iter().enumerate().take(rows) {
                let row = std::slice::from_raw_parts_mut(dst.offset(i as isize * row_stride), hdv);
                row.iter_mut().for_each(|x| *x *= f);
            }
        }
    });
    out
}
