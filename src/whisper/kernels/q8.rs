//! Integer products for q8_0 weights: activations are quantized to the same 32-value blocks,
//! and each block pair becomes one integer dot product and one float multiply.
//!
//! Widening q8_0 weights to f32 and running a float product (what candle's generic path and
//! our float path amount to) spends four bytes of bandwidth and one float multiply-add per
//! weight. Integer dot-product instructions multiply and add four or more byte pairs at once:
//! x86-64's AVX2 `pmaddubsw`/`pmaddwd` (two instructions per 16 pairs), AVX-VNNI or AVX-512
//! VNNI `vpdpbusd` (one instruction per 32 pairs), aarch64's `sdot` (dotprod: Cortex-A76 and
//! later, so Raspberry Pi 5) and, without it, `smull`/`smlal` widening multiplies (Cortex-A72,
//! the Pi 4). Which of them a CPU has is only known at run time — a binary built for every Pi
//! must not assume `sdot` — so [`Path::best`] detects it once, and every path computes the same
//! integers, which the tests below check against the portable one on whatever CPU runs them
//! (CI runs them under emulated A72 and A76).
//!
//! Activations are quantized as ggml does for q8_0 × q8_0: per 32 values, scale
//! `max |x| / 127`, values rounded to the nearest integer in −127..=127. The sign trick of the
//! x86 paths (`|w| · sign(w)·x`, unsigned × signed bytes) needs one side to exclude −128, which
//! that range guarantees; weights may hold any byte.

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

/// Values per q8_0 block, and its size in the weights: an f16 scale then 32 signed bytes.
pub const BLOCK: usize = 32;
pub const BLOCK_BYTES: usize = 34;

/// Activation rows quantized to q8_0 blocks.
pub struct Rows {
    /// Row-major values, `k` per row.
    values: Vec<i8>,
    /// One scale per block, `k / 32` per row.
    scales: Vec<f32>,
    k: usize,
}

impl Rows {
    /// Quantizes `x` (rows of `k` values; `k` a multiple of 32).
    pub fn quantize(x: &[f32], k: usize) -> Self {
        assert!(
            k.is_multiple_of(BLOCK) && x.len().is_multiple_of(k),
            "{} values in rows of {k}",
            x.len()
        );
        let mut values = vec![0i8; x.len()];
        let mut scales = vec![0f32; x.len() / BLOCK];
        values
            .par_chunks_mut(BLOCK * 64)
            .zip(scales.par_chunks_mut(64))
            .zip(x.par_chunks(BLOCK * 64))
            .for_each(|((q, s), x)| {
                for ((q, s), x) in q.chunks_mut(BLOCK).zip(s).zip(x.chunks(BLOCK)) {
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    for (q, &v) in q.iter_mut().zip(x) {
                        *q = (v * inv).round() as i8;
                    }
                    *s = d;
                }
            });
        Self { values, scales, k }
    }

    pub fn len(&self) -> usize {
        self.values.len() / self.k
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn row(&self, r: usize) -> (&[i8], &[f32]) {
        let blocks = self.k / BLOCK;
        (
            &self.values[r * self.k..(r + 1) * self.k],
            &self.scales[r * blocks..(r + 1) * blocks],
        )
    }
}

/// Which instructions compute the block dot products. Only [`Path::best`] and
/// [`Path::available`] make one, so a path always runs on a CPU that has its instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "aarch64")]
    Smull,
    #[cfg(target_arch = "aarch64")]
    Sdot,
}

impl Path {
    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Path> {
        #[allow(unused_mut)]
        let mut paths = vec![Path(Kind::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                paths.push(Path(Kind::Avx2));
                if is_x86_feature_detected!("avxvnni") {
                    paths.push(Path(Kind::AvxVnni));
                }
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    paths.push(Path(Kind::Avx512Vnni));
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            // NEON is part of the aarch64 baseline.
            paths.push(Path(Kind::Smull));
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                paths.push(Path(Kind::Sdot));
            }
        }
        paths
    }

    /// The fastest path of this CPU, detected once.
    pub fn best() -> Path {
        static BEST: OnceLock<Path> = OnceLock::new();
        *BEST.get_or_init(|| *Self::available().last().expect("portable is always there"))
    }

    /// Whether this path uses integer dot-product instructions at all (not the scalar loop,
    /// which is slower than widening the weights for a float product).
    pub fn is_vectorised(self) -> bool {
        self.0 != Kind::Portable
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Kind::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kind::AvxVnni => "avx-vnni",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni => "avx512-vnni",
            #[cfg(target_arch = "aarch64")]
            Kind::Smull => "neon-smull",
            #[cfg(target_arch = "aarch64")]
            Kind::Sdot => "neon-sdot",
        }
    }

    /// `Σ_b xs_b · ws_b · Σ_i x_i · w_i` over one quantized activation row and one row of q8_0
    /// weight blocks.
    fn dot(self, x: &[i8], xs: &[f32], w: &[u8]) -> f32 {
        debug_assert_eq!(x.len() / BLOCK * BLOCK_BYTES, w.len());
        debug_assert_eq!(x.len() / BLOCK, xs.len());
        // SAFETY (every arm): the path was made by `available`, which checked its features.
        match self.0 {
            Kind::Portable => dot_portable(x, xs, w),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => unsafe { x86::dot_avx2(x, xs, w) },
            #[cfg(target_arch = "x86_64")]
            Kind::AvxVnni => unsafe { x86::dot_avx_vnni(x, xs, w) },
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni => unsafe { x86::dot_avx512_vnni(x, xs, w) },
            #[cfg(target_arch = "aarch64")]
            Kind::Smull => unsafe { arm::dot_smull(x, xs, w) },
            #[cfg(target_arch = "aarch64")]
            Kind::Sdot => unsafe { arm::dot_sdot(x, xs, w) },
        }
    }

    /// `out[r][j] = x[r] · w[j]` for every quantized row `r` and each of the `n` weight rows,
    /// spread over the current rayon pool by tiles of weight rows, each tile kept in cache while
    /// every activation row passes over it.
    pub fn matmul(self, x: &Rows, w: &[u8], n: usize) -> Vec<f32> {
        let k = x.k;
        let row_bytes = k / BLOCK * BLOCK_BYTES;
        assert_eq!(w.len(), n * row_bytes, "q8_0 weights for {n} rows of {k}");
        let rows = x.len();
        let mut out = vec![0f32; rows * n];
        // A tile of weight rows stays within a core's L2 (≤ 128 KB), and there are a few tiles
        // per thread so that uneven progress evens out.
        let tile = (128 * 1024 / row_bytes)
            .min(n.div_ceil(4 * rayon::current_num_threads()))
            .max(1);
        let out_ptr = OutPtr(out.as_mut_ptr());
        (0..n.div_ceil(tile)).into_par_iter().for_each(|t| {
            let dst = out_ptr;
            let cols = t * tile..((t + 1) * tile).min(n);
            for r in 0..rows {
                let (xr, xs) = x.row(r);
                for j in cols.clone() {
                    let d = self.dot(xr, xs, &w[j * row_bytes..(j + 1) * row_bytes]);
                    // SAFETY: column j belongs to this tile only; r·n + j < rows·n.
                    unsafe { *dst.0.add(r * n + j) = d };
                }
            }
        });
        out
    }
}

/// Output pointer shared by tiles that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every tile writes its own columns of the output, which outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

fn scale_of(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// The exact integer sum of each block pair, scaled in f32: the reference every path matches.
fn dot_portable(x: &[i8], xs: &[f32], w: &[u8]) -> f32 {
    x.chunks_exact(BLOCK)
        .zip(xs)
        .zip(w.chunks_exact(BLOCK_BYTES))
        .map(|((x, &s), b)| {
            let sum: i32 = x
                .iter()
                .zip(&b[2..])
                .map(|(&a, &q)| a as i32 * q as i8 as i32)
                .sum();
            s * scale_of(b) * sum as f32
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{scale_of, BLOCK, BLOCK_BYTES};

    /// The three x86 paths differ only in how 32 byte pairs become 8 lane sums.
    #[inline(always)]
    unsafe fn dot_with(
        x: &[i8],
        xs: &[f32],
        w: &[u8],
        pairs: impl Fn(__m256i, __m256i) -> __m256i,
    ) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, &s) in xs.iter().enumerate() {
            // SAFETY: block b of x (32 bytes) and of w (34 bytes) are in bounds.
            let (xv, wv) = unsafe {
                (
                    _mm256_loadu_si256(x.as_ptr().add(b * BLOCK) as *const __m256i),
                    _mm256_loadu_si256(w.as_ptr().add(b * BLOCK_BYTES + 2) as *const __m256i),
                )
            };
            // |w| as unsigned bytes (−128 too: 128), times x with w's sign: the products of x
            // and w, for any weight byte.
            let sums = pairs(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            let d = _mm256_set1_ps(s * scale_of(&w[b * BLOCK_BYTES..]));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc);
        }
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let half = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(half, _mm_shuffle_ps(half, half, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(x: &[i8], xs: &[f32], w: &[u8]) -> f32 {
        // |x| ≤ 127 and |w| ≤ 128, so a pair of products fits pmaddubsw's saturating 16 bits.
        unsafe {
            dot_with(x, xs, w, |a, b| {
                _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
            })
        }
    }

    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub unsafe fn dot_avx_vnni(x: &[i8], xs: &[f32], w: &[u8]) -> f32 {
        unsafe {
            dot_with(x, xs, w, |a, b| {
                _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b)
            })
        }
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    pub unsafe fn dot_avx512_vnni(x: &[i8], xs: &[f32], w: &[u8]) -> f32 {
        unsafe {
            dot_with(x, xs, w, |a, b| {
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
            })
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::{scale_of, BLOCK, BLOCK_BYTES};

    /// The two aarch64 paths differ only in how 32 byte pairs become 4 lane sums.
    #[inline(always)]
    unsafe fn dot_with(
        x: &[i8],
        xs: &[f32],
        w: &[u8],
        pairs: impl Fn(int8x16_t, int8x16_t, int8x16_t, int8x16_t) -> int32x4_t,
    ) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        for (b, &s) in xs.iter().enumerate() {
            // SAFETY: block b of x (32 bytes) and of w (34 bytes) are in bounds.
            let sums = unsafe {
                let xp = x.as_ptr().add(b * BLOCK);
                let wp = w.as_ptr().add(b * BLOCK_BYTES + 2) as *const i8;
                pairs(
                    vld1q_s8(xp),
                    vld1q_s8(xp.add(16)),
                    vld1q_s8(wp),
                    vld1q_s8(wp.add(16)),
                )
            };
            let d = s * scale_of(&w[b * BLOCK_BYTES..]);
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(sums), d);
        }
        vaddvq_f32(acc)
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn dot_smull(x: &[i8], xs: &[f32], w: &[u8]) -> f32 {
        // Two products of bytes in −127..=127 fit 16 bits; pairwise widening adds make 32.
        unsafe {
            dot_with(x, xs, w, |x0, x1, w0, w1| {
                let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(x0), vget_low_s8(w0)), x0, w0);
                let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(x1), vget_low_s8(w1)), x1, w1);
                vpadalq_s16(vpaddlq_s16(p0), p1)
            })
        }
    }

    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn dot_sdot(x: &[i8], xs: &[f32], w: &[u8]) -> f32 {
        // `vdotq_s32` is not a stable intrinsic yet; the instruction itself is one line.
        unsafe {
            dot_with(x, xs, w, |x0, x1, w0, w1| {
                let mut acc = vdupq_n_s32(0);
                std::arch::asm!(
                    "sdot {acc:v}.4s, {x0:v}.16b, {w0:v}.16b",
                    "sdot {acc:v}.4s, {x1:v}.16b, {w1:v}.16b",
                    acc = inout(vreg) acc,
                    x0 = in(vreg) x0,
                    x1 = in(vreg) x1,
                    w0 = in(vreg) w0,
                    w1 = in(vreg) w1,
                    options(pure, nomem, nostack),
                );
                acc
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// q8_0 weight rows as GGUF stores them, with values across the whole byte range.
    fn weights(n: usize, k: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
        let mut bytes = Vec::new();
        let mut float = Vec::new();
        let mut s = seed;
        for _ in 0..n * k / BLOCK {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let scale = f16::from_f32(0.001 + (s >> 20) as f32 / 1e5);
            bytes.extend_from_slice(&scale.to_le_bytes());
            for _ in 0..BLOCK {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let q = (s >> 24) as u8; // −128..=127, as another quantizer may write
                bytes.push(q);
                float.push(scale.to_f32() * q as i8 as f32);
            }
        }
        (bytes, float)
    }

    fn activations(rows: usize, k: usize) -> Vec<f32> {
        (0..rows * k)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * (1.0 + (i % 97) as f32))
            .collect()
    }

    #[test]
    fn quantized_activations_are_within_half_a_step_and_exclude_minus_128() {
        let x = activations(3, 64);
        let q = Rows::quantize(&x, 64);
        for (b, (xs, s)) in x.chunks(BLOCK).zip(&q.scales).enumerate() {
            for (i, &v) in xs.iter().enumerate() {
                let qv = q.values[b * BLOCK + i];
                assert!(qv >= -127);
                assert!((qv as f32 * s - v).abs() <= s / 2.0 + 1e-6);
            }
        }
        let zeros = Rows::quantize(&[0.0; 32], 32);
        assert_eq!(zeros.scales, vec![0.0]);
        assert!(zeros.values.iter().all(|&v| v == 0));
    }

    #[test]
    fn every_path_of_this_cpu_computes_the_portable_sums() {
        let paths = Path::available();
        eprintln!(
            "q8_0 paths here: {:?}, best {}",
            paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
            Path::best().name()
        );
        let (k, n, rows) = (384, 37, 5);
        let (w, _) = weights(n, k, 1);
        let x = Rows::quantize(&activations(rows, k), k);
        let row_bytes = k / BLOCK * BLOCK_BYTES;
        for p in &paths {
            for r in 0..rows {
                for j in 0..n {
                    let (xr, xs) = x.row(r);
                    let wj = &w[j * row_bytes..(j + 1) * row_bytes];
                    let (want, got) = (dot_portable(xr, xs, wj), p.dot(xr, xs, wj));
                    // Same integers; the float sum over blocks runs in another order, so the
                    // difference is bounded by rounding of the blocks' magnitudes.
                    let magnitude: f32 = (0..k / BLOCK)
                        .map(|b| {
                            let blk = &wj[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                            dot_portable(&xr[b * BLOCK..(b + 1) * BLOCK], &xs[b..b + 1], blk).abs()
                        })
                        .sum();
                    assert!(
                        (want - got).abs() <= 1e-5 * magnitude.max(1e-3),
                        "{}: row {r} col {j}: {got} vs {want}",
                        p.name()
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_is_close_to_the_float_product_of_what_was_quantized() {
        let (k, n, rows) = (256, 300, 70);
        let (w, wf) = weights(n, k, 2);
        let xf = activations(rows, k);
        let x = Rows::quantize(&xf, k);
        for p in Path::available() {
            let got = p.matmul(&x, &w, n);
            let mut err = 0f64;
            let mut norm = 0f64;
            for r in 0..rows {
                for j in 0..n {
                    let want: f32 = (0..k).map(|i| xf[r * k + i] * wf[j * k + i]).sum();
                    err += ((got[r * n + j] - want) as f64).powi(2);
                    norm += (want as f64).powi(2);
                }
            }
            let rel = (err / norm).sqrt();
            // Activations rounded to 8 bits: well under 1 % of the product.
            assert!(rel < 0.01, "{}: relative error {rel}", p.name());
        }
    }

    #[test]
    fn the_best_path_uses_the_cpus_integer_instructions() {
        let best = Path::best();
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            assert_ne!(best.name(), "portable");
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            best.name(),
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                "neon-sdot"
            } else {
                "neon-smull"
            }
        );
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        assert_eq!(best.name(), "portable");
    }
}
