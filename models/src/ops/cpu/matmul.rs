//! Matrix products on raw f32 buffers: the `gemm` crate's packed kernels (AVX-512 / AVX2 / NEON picked at run
//! time), always single-threaded, with the parallelism one level up (rayon over row blocks here, over heads
//! in attention). Nesting a threaded GEMM inside a parallel loop is what made burn-ndarray slow on 2 cores.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::kernels;

/// A read-only matrix: its first element and its row and column strides, in elements.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a `Mat` only ever reads memory that outlives the parallel loop it is shared with.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// The same matrix from row `r` on.
    ///
    /// # Safety
    /// Row `r` must lie within the matrix.
    pub unsafe fn from_row(self, r: usize) -> Mat {
        Mat { ptr: self.ptr.offset(r as isize * self.rs), ..self }
    }

    /// The same matrix from column `c` on.
    ///
    /// # Safety
    /// Column `c` must lie within the matrix.
    pub unsafe fn from_col(self, c: usize) -> Mat {
        Mat { ptr: self.ptr.offset(c as isize * self.cs), ..self }
    }
}

/// `dst = beta · a·b` (or `dst += beta · a·b` with `accumulate`), on this thread; `a` is `m×k`, `b` is `k×n`,
/// `dst` `m×n` with row stride `dst_rs` and unit column stride.
///
/// # Safety
/// Every pointer must be valid for the elements its shape and strides reach; `dst` must not alias `a` or `b`.
pub(super) unsafe fn gemm_on_thread(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.offset(i as isize * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    gemm(m, n, k, dst, 1, dst_rs, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0, beta, false, false, false, Parallelism::None);
}

/// Multiply-adds below which a product runs as one task: a task costs more than it saves.
const MIN_PARALLEL_WORK: usize = 1 << 18;

/// Rows per parallel task for an `m×k · k×n` product: one task for small products, otherwise an even split
/// over `threads`.
fn rows_per_task(m: usize, n: usize, k: usize, threads: usize) -> usize {
    if threads == 1 || m * n * k < MIN_PARALLEL_WORK {
        return m.max(1);
    }
    m.div_ceil(threads).next_multiple_of(8).min(m).max(1)
}

/// `x·w (+ bias)` for a contiguous row-major `x` (`m×k`), optionally followed by GELU(tanh) on the result;
/// returns the `m×n` row-major result.
pub(super) fn linear(x: &[f32], m: usize, k: usize, w: Mat, n: usize, bias: Option<&[f32]>, gelu: bool) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if out.is_empty() {
        return out;
    }
    let x = Mat { ptr: x.as_ptr(), rs: k as isize, cs: 1 };
    let threads = rayon::current_num_threads().max(1);
    if threads > 1 && m < 16 * threads && n >= 64 * threads && m * n * k >= MIN_PARALLEL_WORK {
        few_rows(&mut out, m, k, x, w, n, bias, gelu, n.div_ceil(threads).next_multiple_of(16));
        return out;
    }
    let rows = rows_per_task(m, n, k, threads);
    out.par_chunks_mut(rows * n).enumerate().for_each(|(i, chunk)| {
        let r = chunk.len() / n;
        if let Some(b) = bias {
            chunk.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b));
        }
        // SAFETY: `x` holds `m·k` elements and this chunk's rows start at row `i·rows`; `w` is `k×n`
        // by the caller's shape check; `chunk` is this task's own `r×n` block of `out`.
        unsafe {
            gemm_on_thread(r, n, k, chunk.as_mut_ptr(), n as isize, bias.is_some(), x.from_row(i * rows), w, 1.0);
        }
        if gelu {
            kernels::gelu_tanh(chunk);
        }
    });
    out
}

/// [`linear`] for a few rows (a time embedding, an adaLN projection): a matrix-vector product, bound by
/// reading `w`, so the threads split its columns (each reads its share of the weight) instead of the rows.
#[allow(clippy::too_many_arguments)]
fn few_rows(out: &mut [f32], m: usize, k: usize, x: Mat, w: Mat, n: usize, bias: Option<&[f32]>, gelu: bool, cols: usize) {
    let out_addr = out.as_mut_ptr() as usize;
    (0..n.div_ceil(cols)).into_par_iter().for_each(|j| {
        let (c0, c) = (j * cols, cols.min(n - j * cols));
        // SAFETY: each task writes only columns c0..c0+c of the m rows of `out` (row stride n), which
        // outlives the loop; `w` is `k×n` by the caller's shape check.
        unsafe {
            let dst = (out_addr as *mut f32).add(c0);
            let row = |i: usize| std::slice::from_raw_parts_mut(dst.add(i * n), c);
            if let Some(b) = bias {
                (0..m).for_each(|i| row(i).copy_from_slice(&b[c0..c0 + c]));
            }
            gemm_on_thread(m, c, k, dst, n as isize, bias.is_some(), x, w.from_col(c0), 1.0);
            if gelu {
                (0..m).for_each(|i| kernels::gelu_tanh(row(i)));
            }
        }
    });
}
