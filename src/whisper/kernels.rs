//! CPU kernels for the places where candle's generic ops cost more than the arithmetic.
//!
//! **Products over many rows** ([`dense`]): the encoder's projections, MLP and convolutions, and
//! the cross-attention keys and values, each one `gemm` call with its bias, residual and GELU
//! folded in.
//!
//! **Attention.** Composed from candle ops, one encoder layer of tiny materialises a
//! `heads × 1500 × 1500` score tensor (54 MB) three times — product, scaled copy, softmax — each a
//! fresh allocation whose pages the kernel must zero, and the scaling and softmax run on one
//! thread with scalar `expf`. [`attention`] instead walks blocks of query rows per head: scores
//! for the block go into a small per-thread buffer that stays in cache (the `1/√d` scale folded
//! into the product), are normalised in place, and multiplied by the values straight into the
//! output with heads already merged. Blocks are independent, so they are spread over the current
//! rayon pool; each product is one single-threaded [`gemm`] call.
//!
//! **GELU.** candle's `gelu_erf` calls scalar libm `erff` element by element on one thread.
//! [`gelu_erf`] uses a branch-free erf (Abramowitz–Stegun 7.1.26, |error| ≤ 5e-7 in f32) over a
//! branch-free `exp`, which the compiler vectorises, in parallel chunks.
//!
//! **Vocabulary projection.** Every decoded token multiplies one hidden vector by the whole
//! token embedding (51 864 × 384 for tiny): a pass over 80 MB in f32 that is bound by memory
//! bandwidth, not arithmetic. The checkpoints ship that matrix in f16, so [`project_half`] keeps
//! it in f16 and widens each row in registers (F16C or AVX-512 on x86-64, `fcvtl` on aarch64),
//! accumulating in f32 — the same products on half the bytes. On x86-64 it streams four matrix
//! rows against each load of the activations, which halves the time of the decoder layers'
//! smaller products (their matrices sit in cache, where the loads and lane sums were the cost).
//!
//! **Quantized weights.** candle multiplies GGUF weights by quantizing every activation row and
//! taking one vector dot product per (row, column), and on x86-64 its fast dot products exist
//! only in builds for AVX2 machines. [`project_q8_0`] instead picks at run time the integer
//! dot-product instructions the CPU has ([`q8`]) and multiplies q8_0 blocks by quantized
//! activations in tiles that stay in cache. Without such instructions it takes f32 activations
//! for few-row products, and the model widens the matrix to f32 for a product over many rows.
//!
//! Activations are always f32 (weights may be f16 or quantized).

use std::cell::RefCell;
use std::ops::{Deref, Range};
use std::sync::RwLockReadGuard;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use gemm::Parallelism;
use half::f16;
use rayon::prelude::*;

pub mod dense;
pub mod q8;
use q8::{BLOCK as Q8_0_BLOCK, BLOCK_BYTES as Q8_0_BYTES};

/// Where the element-wise loops below are compiled more than once, the builds for these
/// instruction sets, the first the CPU has chosen at run time: the release binary targets the
/// architecture's baseline (SSE2 on x86-64, no FMA), where `exp` and `erf` run four lanes at a
/// time. aarch64's baseline already has NEON with FMA.
macro_rules! simd_versions {
    ($item:item) => {
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512vl+avx2+fma",
            "x86_64+avx2+fma",
        ))]
        $item
    };
}

/// Query rows per attention block: a 64 × 1500 score block is 384 KB, inside a core's L2.
const BLOCK_ROWS: usize = 64;
/// Elements per parallel GELU chunk.
const GELU_CHUNK: usize = 16 * 1024;
/// Fewest matrix rows per parallel task of the f16 projection (a 512 × 384 f16 slice is 384 KB).
const PROJECT_MIN_CHUNK: usize = 512;

/// Scaled dot-product attention with heads merged into the output.
///
/// `q`: `(batch, heads, n, head_dim)`; `k`, `v`: `(batch, heads, len, head_dim)` (any strides
/// with a contiguous last dimension, such as a narrowed KV cache). Returns
/// `(batch, n, heads · head_dim)`. With `causal`, the `n` queries are the last `n` of the `len`
/// positions and query `i` sees keys `0 ..= len − n + i`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &Attention { causal })
}

/// Exact (erf) GELU: `x · ½ · (1 + erf(x / √2))`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Gelu)
}

/// A contiguous f32 tensor's elements, borrowed while the guard lives.
pub(crate) struct F32s<'a> {
    storage: RwLockReadGuard<'a, Storage>,
    range: std::ops::Range<usize>,
}

impl Deref for F32s<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(data)) => &data[self.range.clone()],
            _ => unreachable!("checked by contiguous_f32"),
        }
    }
}

/// The elements of `t`, which must be a contiguous f32 tensor on the CPU.
pub(crate) fn contiguous_f32(t: &Tensor) -> Result<F32s<'_>> {
    let (storage, layout) = t.storage_and_layout();
    if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
        candle_core::bail!("expected an f32 tensor on the CPU, got {:?}", t.dtype());
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!(
            "expected a contiguous tensor, got strides {:?}",
            layout.stride()
        );
    };
    Ok(F32s {
        storage,
        range: start..end,
    })
}

/// `x · wᵀ` for f32 `x` (`(…, k)`) and an f16 matrix `w` (`(n, k)`): `(…, n)`.
pub fn project_half(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &ProjectHalf)
}

/// `x · wᵀ` for f32 `x` (`(…, k)`) and a q8_0 matrix `w` (`(n, k)`): `(…, n)`. With integer
/// dot products ([`q8`]) when the CPU has them, any number of rows; otherwise f32 activations
/// against the blocks, meant for few rows.
pub fn project_q8_0(x: &Tensor, w: &QTensor) -> Result<Tensor> {
    if w.dtype() != GgmlDType::Q8_0 {
        candle_core::bail!("project_q8_0: weights are {:?}", w.dtype());
    }
    let (n, k) = w.shape().dims2()?;
    let dims = x.dims().to_vec();
    if dims.last() != Some(&k) || k % Q8_0_BLOCK != 0 {
        candle_core::bail!("project_q8_0: {dims:?} × {:?}ᵀ", w.shape().dims());
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let bytes = w.data()?;
    let row_bytes = k / Q8_0_BLOCK * Q8_0_BYTES;
    if bytes.len() != n * row_bytes {
        candle_core::bail!("project_q8_0: {} bytes for {n} × {k}", bytes.len());
    }
    let path = q8::Path::best();
    let out = if path.is_vectorised() {
        path.matmul(&q8::Rows::quantize(&xs, k), &bytes, n)
    } else {
        project_rows(&xs, k, n, |cols, xr, out| {
            for (o, j) in out.iter_mut().zip(cols) {
                *o = dot_q8_0(xr, &bytes[j * row_bytes..(j + 1) * row_bytes]);
            }
        })
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank ≥ 1") = n;
    Tensor::from_vec(out, out_dims, x.device())
}

/// `out[r][j] = dot(j, x[r])` for the `k`-wide rows of `x` and `n` matrix rows `j`, spread over
/// the current rayon pool by matrix rows: a few tasks per thread for the vocabulary, one task
/// for a matrix too small to be worth waking other threads for. `fill(cols, x_row, out)` writes
/// the products of one activation row with the matrix rows `cols` into `out` (`cols.len()`
/// long), so a kernel can stream several matrix rows against one load of the activations.
fn project_rows(
    x: &[f32],
    k: usize,
    n: usize,
    fill: impl Fn(Range<usize>, &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let rows = x.len() / k;
    let mut out = vec![0f32; rows * n];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let chunk = (n / (4 * rayon::current_num_threads())).clamp(PROJECT_MIN_CHUNK, 1024);
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let dst = out_ptr;
        let cols = c * chunk..((c + 1) * chunk).min(n);
        for r in 0..rows {
            // SAFETY: columns `cols` of every row belong to this task only, and
            // r·n + cols.end ≤ rows·n.
            let out = unsafe {
                std::slice::from_raw_parts_mut(dst.0.add(r * n + cols.start), cols.len())
            };
            fill(cols.clone(), &x[r * k..(r + 1) * k], out);
        }
    });
    out
}

/// `Σ xᵢ·wᵢ` over one row of q8_0 blocks with f32 activations: for CPUs without integer
/// dot-product instructions ([`q8::Path::is_vectorised`]).
fn dot_q8_0(x: &[f32], blocks: &[u8]) -> f32 {
    x.chunks_exact(Q8_0_BLOCK)
        .zip(blocks.chunks_exact(Q8_0_BYTES))
        .map(|(xs, b)| {
            let scale = f16::from_le_bytes([b[0], b[1]]).to_f32();
            scale * dot_widened(xs, &b[2..], |q| f32::from(q as i8))
        })
        .sum()
}

struct Attention {
    causal: bool,
}

/// A rank-4 f32 view: the slice from its start offset and its strides.
struct View<'a> {
    data: &'a [f32],
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a> View<'a> {
    fn new(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Self> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("attention {what}: expected f32, got {:?}", s.dtype());
        };
        let (Ok(dims), Ok(strides)) = (
            <[usize; 4]>::try_from(l.dims()),
            <[usize; 4]>::try_from(l.stride()),
        ) else {
            candle_core::bail!("attention {what}: expected rank 4, got {:?}", l.dims());
        };
        if strides[3] != 1 {
            candle_core::bail!("attention {what}: last dimension must be contiguous");
        }
        Ok(Self {
            data: &data[l.start_offset()..],
            dims,
            strides,
        })
    }

    /// The `(rows, head_dim)` matrix of batch `b`, head `h`, starting at row `r`.
    fn rows(&self, b: usize, h: usize, r: usize) -> &'a [f32] {
        &self.data[b * self.strides[0] + h * self.strides[1] + r * self.strides[2]..]
    }
}

/// Output pointer shared by blocks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every block writes a distinct (rows × head columns) region of the output buffer, which
// outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Per-thread score block, reused across calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            View::new(s1, l1, "q")?,
            View::new(s2, l2, "k")?,
            View::new(s3, l3, "v")?,
        );
        let [batch, heads, n, d] = q.dims;
        let len = k.dims[2];
        if k.dims != [batch, heads, len, d] || v.dims != k.dims {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} do not match",
                q.dims,
                k.dims,
                v.dims
            );
        }
        if self.causal && n > len {
            candle_core::bail!("attention: {n} causal queries over {len} keys");
        }
        let width = heads * d;
        let mut out = vec![0f32; batch * n * width];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let scale = 1.0 / (d as f32).sqrt();
        let blocks = n.div_ceil(BLOCK_ROWS);
        let causal = self.causal;
        (0..batch * heads * blocks)
            .into_par_iter()
            .for_each(|task| {
                let (bh, blk) = (task / blocks, task % blocks);
                let (b, h) = (bh / heads, bh % heads);
                let r0 = blk * BLOCK_ROWS;
                let rows = BLOCK_ROWS.min(n - r0);
                SCORES.with_borrow_mut(|scores| {
                    scores.resize(rows * len, 0.0);
                    let qs = q.rows(b, h, r0);
                    let (ks, vs) = (k.rows(b, h, 0), v.rows(b, h, 0));
                    if rows == 1 {
                        // One decoded token: dot products and a weighted sum stream through the
                        // keys and values once, with no packing for a matrix product.
                        let dst = out_ptr;
                        // SAFETY: this block alone writes head h of row r0 (d elements).
                        let o = unsafe {
                            let at = (b * n + r0) * width + h * d;
                            std::slice::from_raw_parts_mut(dst.0.add(at), d)
                        };
                        let visible = if causal { len - n + r0 + 1 } else { len };
                        let (ks, vs) = ((ks, k.strides[2]), (vs, v.strides[2]));
                        attend_one(&qs[..d], ks, vs, scale, &mut scores[..visible], o);
                        return;
                    }
                    // SAFETY: the slices hold `rows`/`len` rows at the given row strides (checked
                    // shapes above), `scores` holds rows × len, and the output region of this block
                    // — rows r0.. of batch b, columns h·d.. — is written by no other block.
                    unsafe {
                        gemm::gemm(
                            rows,
                            len,
                            d,
                            scores.as_mut_ptr(),
                            1,
                            len as isize,
                            false,
                            qs.as_ptr(),
                            1,
                            q.strides[2] as isize,
                            ks.as_ptr(),
                            k.strides[2] as isize,
                            1,
                            0.0,
                            scale,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    for (i, row) in scores.chunks_exact_mut(len).enumerate() {
                        let visible = if causal { len - n + r0 + i + 1 } else { len };
                        softmax_in_place(&mut row[..visible]);
                        row[visible..].fill(0.0);
                    }
                    let dst = out_ptr;
                    // SAFETY: as above.
                    unsafe {
                        gemm::gemm(
                            rows,
                            d,
                            len,
                            dst.0.add((b * n + r0) * width + h * d),
                            1,
                            width as isize,
                            false,
                            scores.as_ptr(),
                            1,
                            len as isize,
                            vs.as_ptr(),
                            1,
                            v.strides[2] as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                });
            });
        Ok((CpuStorage::F32(out), Shape::from((batch, n, width))))
    }
}

simd_versions! {
/// Attention of one query `q` over `scores.len()` keys and values, each given as rows and the
/// row stride.
fn attend_one(
    q: &[f32],
    (k, k_stride): (&[f32], usize),
    (v, v_stride): (&[f32], usize),
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    for (j, s) in scores.iter_mut().enumerate() {
        *s = scale * dot(q, &k[j * k_stride..j * k_stride + d]);
    }
    softmax_in_place(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&v[j * v_stride..j * v_stride + d]) {
            *o += p * x;
        }
    }
}
}

/// `Σ aᵢ·bᵢ`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_widened(a, b, |y| y)
}

/// `Σ aᵢ·widen(bᵢ)` in eight lanes: a sum carried through one loop is a serial dependency the
/// compiler may not reorder, so it would stay scalar.
#[inline(always)]
fn dot_widened<T: Copy>(a: &[f32], b: &[T], widen: impl Fn(T) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| x * widen(y))
        .sum();
    for (xs, ys) in ac.zip(bc) {
        for ((l, &x), &y) in lanes.iter_mut().zip(xs).zip(ys) {
            *l += x * widen(y);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

simd_versions! {
/// `row ← softmax(row)`. Written as separate maps and lane-wise reductions: a float sum or max
/// carried through one loop is a serial dependency the compiler may not reorder, so it would
/// stay scalar.
fn softmax_in_place(row: &mut [f32]) {
    let max = reduce_lanes(row, f32::NEG_INFINITY, |a, x| if x > a { x } else { a });
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let inv = 1.0 / reduce_lanes(row, 0.0, |a, x| a + x);
    for x in row.iter_mut() {
        *x *= inv;
    }
}
}

simd_versions! {
/// `ln Σ eˣ` over `xs`, computed as `max + ln Σ eˣ⁻ᵐᵃˣ` so that nothing overflows; `−∞` when
/// every element is `−∞` (or `xs` is empty). A decoded token needs this over the whole
/// vocabulary for its log-probability, so it runs on the vectorised [`exp`].
pub fn log_sum_exp(xs: &[f32]) -> f32 {
    let max = reduce_lanes(xs, f32::NEG_INFINITY, |a, x| if x > a { x } else { a });
    if max == f32::NEG_INFINITY {
        return max;
    }
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| exp(x - max)).sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += exp(x - max);
        }
    }
    max + (lanes.iter().sum::<f32>() + tail).ln()
}
}

/// Folds `xs` with `f` in eight independent lanes, then folds the lanes.
#[inline(always)]
fn reduce_lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = f(*l, x);
        }
    }
    let acc = tail.iter().fold(init, |a, &x| f(a, x));
    lanes.iter().fold(acc, |a, &x| f(a, x))
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("gelu: expected f32, got {:?}", s.dtype());
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("gelu: input must be contiguous");
        };
        let mut out = data[start..end].to_vec();
        out.par_chunks_mut(GELU_CHUNK).for_each(gelu_in_place);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

simd_versions! {
/// `x ← x · ½ · (1 + erf(x / √2))` for every element.
pub(crate) fn gelu_in_place(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}
}

struct ProjectHalf;

impl CustomOp2 for ProjectHalf {
    fn name(&self) -> &'static str {
        "project-f16"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F16(w)) = (s1, s2) else {
            candle_core::bail!(
                "project: expected f32 × f16, got {:?} × {:?}",
                s1.dtype(),
                s2.dtype()
            );
        };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("project: inputs must be contiguous");
        };
        let (x, w) = (&x[x0..x1], &w[w0..w1]);
        let (n, k) = l2.shape().dims2()?;
        let x_dims = l1.dims();
        if x_dims.last() != Some(&k) {
            candle_core::bail!("project: {x_dims:?} × {:?}ᵀ", l2.dims());
        }
        let rows_kernel = rows_f16_kernel();
        let out = project_rows(x, k, n, |cols, xr, out| {
            rows_kernel(xr, &w[cols.start * k..cols.end * k], out)
        });
        let mut dims = x_dims.to_vec();
        *dims.last_mut().expect("rank ≥ 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `out[j] = Σᵢ xᵢ·w[j·k + i]` for the `out.len()` rows of the f16 matrix `w` (`k = x.len()`
/// columns), accumulated in f32.
type RowsF16 = fn(&[f32], &[f16], &mut [f32]);

/// The fastest kernel this CPU supports. On x86-64 each pass streams four matrix rows against
/// one load of the activations and reduces each row's lanes once at its end; the vocabulary
/// projection is one such call per decoded token over 20–40 M weights.
fn rows_f16_kernel() -> RowsF16 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature the function is compiled for was just detected.
            return |x, w, out| unsafe { rows_f16_avx512(x, w, out) };
        }
        if is_x86_feature_detected!("avx")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return |x, w, out| unsafe { rows_f16_avx2(x, w, out) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return |x, w, out| rows_with(x, w, out, dot_f16_neon);
    }
    #[allow(unreachable_code)]
    |x, w, out| rows_with(x, w, out, dot_f16_portable)
}

/// [`RowsF16`] one row at a time with `dot`.
#[inline(always)]
fn rows_with(x: &[f32], w: &[f16], out: &mut [f32], dot: impl Fn(&[f32], &[f16]) -> f32) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
        *o = dot(x, row);
    }
}

/// Also the columns past a row's last full vector in the x86-64 kernels (none for Whisper's
/// widths, multiples of 64), so it is inlined there.
#[inline(always)]
fn dot_f16_portable(x: &[f32], w: &[f16]) -> f32 {
    dot_widened(x, w, f16::to_f32)
}

/// Four rows per pass in sixteen lanes (`vcvtph2ps` widens sixteen halves at once).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_f16_avx512(x: &[f32], w: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = x.len();
    let body = k - k % 16;
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    for (b, o) in out.chunks_exact_mut(4).enumerate() {
        let row = |r: usize| wp.wrapping_add((4 * b + r) * k);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < body {
            // SAFETY: i + 16 ≤ k elements of x and of each of the block's four rows, which
            // `w` holds (out.len() rows of k).
            unsafe {
                let xv = _mm512_loadu_ps(xp.add(i));
                for (r, a) in acc.iter_mut().enumerate() {
                    let h = _mm256_loadu_si256(row(r).add(i) as *const __m256i);
                    *a = _mm512_fmadd_ps(xv, _mm512_cvtph_ps(h), *a);
                }
            }
            i += 16;
        }
        for (r, (o, a)) in o.iter_mut().zip(acc).enumerate() {
            let start = (4 * b + r) * k + body;
            *o =
                _mm512_reduce_add_ps(a) + dot_f16_portable(&x[body..], &w[start..start + k - body]);
        }
    }
    let done = out.len() - out.len() % 4;
    rows_with(x, &w[done * k..], &mut out[done..], dot_f16_portable);
}

/// Four rows per pass in eight lanes, with F16C widening.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c,fma")]
unsafe fn rows_f16_avx2(x: &[f32], w: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = x.len();
    let body = k - k % 8;
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    for (b, o) in out.chunks_exact_mut(4).enumerate() {
        let row = |r: usize| wp.wrapping_add((4 * b + r) * k);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < body {
            // SAFETY: i + 8 ≤ k elements of x and of each of the block's four rows.
            unsafe {
                let xv = _mm256_loadu_ps(xp.add(i));
                for (r, a) in acc.iter_mut().enumerate() {
                    let h = _mm_loadu_si128(row(r).add(i) as *const __m128i);
                    *a = _mm256_fmadd_ps(xv, _mm256_cvtph_ps(h), *a);
                }
            }
            i += 8;
        }
        for (r, (o, a)) in o.iter_mut().zip(acc).enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
            let start = (4 * b + r) * k + body;
            *o = lanes.iter().sum::<f32>()
                + dot_f16_portable(&x[body..], &w[start..start + k - body]);
        }
    }
    let done = out.len() - out.len() % 4;
    // SAFETY: the features this function is compiled for are those of `dot_f16_x86`.
    rows_with(x, &w[done * k..], &mut out[done..], |x, w| unsafe {
        dot_f16_x86(x, w)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c,fma")]
unsafe fn dot_f16_x86(x: &[f32], w: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(w.len());
    let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const __m128i);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n elements of both slices.
        unsafe {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i / 8)));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i / 8 + 1)));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), w0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), w1, acc1);
        }
        i += 16;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1)) };
    lanes.iter().sum::<f32>() + dot_f16_portable(&x[i..n], &w[i..n])
}

#[cfg(target_arch = "aarch64")]
fn dot_f16_neon(x: &[f32], w: &[f16]) -> f32 {
    use std::arch::aarch64::*;
    let n = x.len().min(w.len());
    let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const u16);
    let mut i = 0;
    // SAFETY: NEON is part of the aarch64 baseline; every load reads i + 8 ≤ n elements.
    // `fcvtl`/`fcvtl2` (widen four halves to singles) are baseline ARMv8 too — unlike f16
    // arithmetic (FEAT_FP16), which the Cortex-A72 lacks.
    unsafe {
        let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        while i + 8 <= n {
            let h = vld1q_u16(wp.add(i));
            let lo: float32x4_t;
            let hi: float32x4_t;
            std::arch::asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                h = in(vreg) h,
                lo = out(vreg) lo,
                hi = out(vreg) hi,
                options(pure, nomem, nostack),
            );
            acc0 = vfmaq_f32(acc0, vld1q_f32(xp.add(i)), lo);
            acc1 = vfmaq_f32(acc1, vld1q_f32(xp.add(i + 4)), hi);
            i += 8;
        }
        vaddvq_f32(vaddq_f32(acc0, acc1)) + dot_f16_portable(&x[i..n], &w[i..n])
    }
}

/// `eˣ` without branches or libm calls, so loops over it vectorise: `x = n·ln2 + r` with
/// |r| ≤ ln2/2, a degree-7 polynomial for `eʳ` (Cephes `expf`, ≈ 1 ulp), and `2ⁿ` built in
/// the exponent bits. Inputs below −87 give e⁻⁸⁷ (≈ 1.6e-38) instead of a subnormal or 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits (round to nearest).
    const SHIFTER: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = t.to_bits() as i32 - SHIFTER.to_bits() as i32;
    let n_f = t - SHIFTER;
    let r = x - n_f * LN2_HI - n_f * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n + 127) as u32) << 23)
}

/// Branch-free `erf` (Abramowitz–Stegun 7.1.26: absolute error ≤ 1.5e-7, ≤ 5e-7 in f32).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let y = 1.0 - poly * exp(-ax * ax);
    y.copysign(x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn erf_is_within_the_published_bound() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((erf(x) as f64 - libm::erf(x as f64)).abs());
            x += 0.001;
        }
        // 1.5e-7 for the formula, the rest f32 rounding of `1 − poly·e^(−x²)` near 0.
        assert!(worst < 5e-7, "absolute error {worst}");
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn log_sum_exp_matches_f64_and_skips_suppressed_entries() {
        // A vocabulary-sized row with a SIMD tail, large logits, and suppressed (−∞) tokens.
        let mut xs: Vec<f32> = (0..51_867)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.03 + 60.0)
            .collect();
        for x in xs.iter_mut().step_by(3) {
            *x = f32::NEG_INFINITY;
        }
        let max = xs
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, |a, x| a.max(x as f64));
        let want = max + xs.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let got = log_sum_exp(&xs) as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        assert_eq!(log_sum_exp(&[2.5]), 2.5);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 9]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
    }

    /// Attention as candle ops: `softmax(q kᵀ / √d + mask) v`, heads merged.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Tensor {
        let (b, h, n, d) = q.dims4().unwrap();
        let len = k.dim(2).unwrap();
        let mut s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        if causal {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..len).map(move |j| {
                        if j > len - n + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n, len), &Device::Cpu).unwrap();
            s = s.broadcast_add(&mask).unwrap();
        }
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        p.matmul(v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, n, h * d))
            .unwrap()
    }

    /// Largest absolute difference between two tensors of one shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn attention_equals_the_composed_ops() {
        let dev = Device::Cpu;
        // 150 queries: two full blocks and a partial one; 2 batches × 3 heads.
        for (n, len, causal) in [
            (150, 150, false),
            (1, 37, false),
            (150, 230, true),
            (1, 9, true),
        ] {
            let q = Tensor::randn(0f32, 1.0, (2, 3, n, 64), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (2, 3, len, 64), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (2, 3, len, 64), &dev).unwrap();
            let got = attention(&q, &k, &v, causal).unwrap();
            assert_eq!(got.dims(), &[2, n, 3 * 64]);
            let diff = max_diff(&got, &reference(&q, &k, &v, causal));
            assert!(
                diff < 1e-5,
                "n {n} len {len} causal {causal}: differs by {diff}"
            );
        }
    }

    #[test]
    fn attention_reads_strided_keys_such_as_a_narrowed_cache() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 3, 64), &dev).unwrap();
        let big_k = Tensor::randn(0f32, 1.0, (1, 2, 40, 64), &dev).unwrap();
        let big_v = Tensor::randn(0f32, 1.0, (1, 2, 40, 64), &dev).unwrap();
        let (k, v) = (
            big_k.narrow(2, 0, 11).unwrap(),
            big_v.narrow(2, 0, 11).unwrap(),
        );
        assert!(!k.is_contiguous());
        let got = attention(&q, &k, &v, true).unwrap();
        let want = reference(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), true);
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn half_projection_equals_the_widened_product() {
        let dev = Device::Cpu;
        // 1103 rows: two full tasks and a partial one ending in a partial block of rows;
        // 389 columns: a SIMD tail.
        let w = Tensor::randn(0f32, 1.0, (1103, 389), &dev).unwrap();
        let w16 = w.to_dtype(candle_core::DType::F16).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 389), &dev).unwrap();
        let got = project_half(&x, &w16).unwrap();
        assert_eq!(got.dims(), &[1, 3, 1103]);
        let wide = w16.to_dtype(candle_core::DType::F32).unwrap();
        let want = x.broadcast_matmul(&wide.t().unwrap()).unwrap();
        assert!(max_diff(&got, &want) < 1e-4);
        let portable = dot_f16_portable(
            &x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..389],
            &w16.get(7).unwrap().to_vec1::<f16>().unwrap(),
        );
        let first: f32 = got
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(7)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((portable - first).abs() < 1e-4);
    }

    #[test]
    fn every_f16_row_kernel_this_cpu_runs_matches_f64() {
        // 7 rows: a block of four and three left over; 389 columns: full lanes and a tail.
        let (rows, k) = (7, 389);
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let w: Vec<f16> = (0..rows * k)
            .map(|i| f16::from_f32(((i * 53) % 97) as f32 / 48.0 - 1.0))
            .collect();
        let want: Vec<f64> = w
            .chunks_exact(k)
            .map(|row| {
                row.iter()
                    .zip(&x)
                    .map(|(a, &b)| a.to_f64() * b as f64)
                    .sum()
            })
            .collect();
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut kernels: Vec<(&str, RowsF16)> = vec![
            ("chosen", rows_f16_kernel()),
            ("portable", |x, w, out| {
                rows_with(x, w, out, dot_f16_portable)
            }),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                kernels.push(("avx512", |x, w, out| unsafe { rows_f16_avx512(x, w, out) }));
            }
            if is_x86_feature_detected!("avx")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("fma")
            {
                kernels.push(("avx2", |x, w, out| unsafe { rows_f16_avx2(x, w, out) }));
            }
        }
        for (name, kernel) in kernels {
            let mut out = vec![f32::NAN; rows];
            kernel(&x, &w, &mut out);
            for (j, (&got, &want)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "{name} row {j}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn q8_0_projection_equals_the_dequantized_product() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (700, 96), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let rel = |a: &Tensor, b: &Tensor| -> f32 {
            (norm(&(a - b).unwrap()) / norm(b))
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        // Few rows (a decoded token) and many (encoder frames), through whichever path this
        // CPU takes.
        for rows in [2, 300] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, 96), &dev).unwrap();
            let got = project_q8_0(&x, &q).unwrap();
            assert_eq!(got.dims(), &[1, rows, 700]);
            let wide = q.dequantize(&dev).unwrap();
            let want = x.broadcast_matmul(&wide.t().unwrap()).unwrap();
            // Exact with f32 activations; within their 8-bit rounding with integer products.
            let tolerance = if q8::Path::best().is_vectorised() {
                0.01
            } else {
                1e-5
            };
            assert!(
                rel(&got, &want) < tolerance,
                "{rows} rows: {}",
                rel(&got, &want)
            );
            // And q8_0 is close to the float weights it came from.
            let float = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            assert!(
                rel(&got, &float) < 0.015,
                "q8_0 relative error {}",
                rel(&got, &float)
            );
        }
        let x: Vec<f32> = (0..96).map(|i| (i as f32 * 0.37).sin()).collect();
        let bytes = q.data().unwrap();
        let wide = q
            .dequantize(&dev)
            .unwrap()
            .get(5)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want: f32 = x.iter().zip(&wide).map(|(a, b)| a * b).sum();
        assert!((dot_q8_0(&x, &bytes[5 * 102..6 * 102]) - want).abs() < 1e-4);
    }

    #[test]
    fn gelu_matches_exact_gelu() {
        let x = Tensor::randn(0f32, 3.0, 100_000, &Device::Cpu).unwrap();
        let diff = max_diff(&gelu_erf(&x).unwrap(), &x.gelu_erf().unwrap());
        assert!(diff < 1e-6, "differs by {diff}");
    }
}
