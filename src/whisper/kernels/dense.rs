//! Products over many rows — the encoder's positions, the cross-attention keys and values — with
//! what follows each product folded into it.
//!
//! Composed from candle ops, an encoder layer's `x + fc2(gelu(fc1(h)))` is a product into a
//! fresh buffer, a single-threaded pass adding the bias into a second, the GELU into a third, a
//! product and a bias pass again, and the residual sum into a sixth: every pass streams a
//! buffer larger than the caches, and every fresh buffer's pages are faulted in anew. Here a
//! product is one multi-threaded `gemm` call whose output buffer already holds what is added to
//! it — the bias, or the bias plus the residual — so the sum is the product's own accumulation,
//! and a GELU runs over that same buffer in place, in parallel.
//!
//! The encoder's two convolutions (kernel 3, padding 1) are the same product. Over time-major
//! rows with a zero row at each end, the input window of output position `t` — three
//! consecutive rows, starting `stride · t` rows in — is already one contiguous stretch of
//! memory, so the product reads its rows straight from the activations, overlapping, with no
//! im2col copy; the weights are stored taps-outermost to match.

use candle_core::{DType, Device, Result, Tensor};
use gemm::Parallelism;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::{contiguous_f32, gelu_in_place};

/// Rows per parallel task when filling or finishing an output buffer.
const ROWS_PER_TASK: usize = 64;

/// What is done to `x · wᵀ + b` before it is returned.
#[derive(Clone, Copy)]
pub enum Then<'a> {
    /// Nothing.
    Nothing,
    /// Exact (erf) GELU.
    Gelu,
    /// Adds a tensor of the output's shape (a residual).
    Add(&'a Tensor),
}

/// `x · wᵀ + bias`, then `then`: f32 `x` `(…, k)`, f32 `w` `(n, k)`, `bias` `(n)`; `(…, n)`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, then: Then) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        candle_core::bail!("linear: {dims:?} × {:?}ᵀ", w.dims());
    }
    let rows = x.elem_count() / k;
    let add = match then {
        Then::Add(r) if r.elem_count() != rows * n => {
            candle_core::bail!("linear: adding {:?} to {rows} × {n}", r.dims())
        }
        Then::Add(r) => Some(r),
        _ => None,
    };
    // A strided view (a transposed or narrowed tensor) is copied once; a contiguous one is
    // read in place.
    let (x, add) = (x.contiguous()?, add.map(Tensor::contiguous).transpose()?);
    let out = {
        let x = contiguous_f32(&x)?;
        let w = contiguous_f32(w)?;
        let bias = bias.map(contiguous_f32).transpose()?;
        let add = add.as_ref().map(contiguous_f32).transpose()?;
        let mut out = start(rows, n, bias.as_deref(), add.as_deref());
        product(
            rows,
            n,
            k,
            Lhs {
                data: &x,
                row_stride: k,
            },
            &w,
            &mut out,
            bias.is_some() || add.is_some(),
        );
        if let Then::Gelu = then {
            out.par_chunks_mut(ROWS_PER_TASK * n)
                .for_each(gelu_in_place);
        }
        out
    };
    *dims.last_mut().expect("rank ≥ 1") = n;
    Tensor::from_vec(out, dims, x.device())
}

/// One encoder convolution — kernel 3, padding 1, `stride` — with its bias and GELU.
///
/// `x`: `(rows, c)`, time-major, its first and last row zero (the padding). `w`: `(out, 3·c)`,
/// each output channel's taps outermost ([`taps_outermost`]). Returns `(positions, out)`, or
/// with `pad` the same between two zero rows, ready to be the next convolution's `x`.
pub fn conv3_gelu(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: bool,
) -> Result<Tensor> {
    let (rows, c) = x.dims2()?;
    let (n, k) = w.dims2()?;
    if k != 3 * c || rows < 3 || stride == 0 {
        candle_core::bail!("conv: {:?} over {:?}, stride {stride}", w.dims(), x.dims());
    }
    let positions = (rows - 3) / stride + 1;
    let pad_rows = usize::from(pad);
    let mut out = vec![0f32; (positions + 2 * pad_rows) * n];
    {
        let x = contiguous_f32(x)?;
        let w = contiguous_f32(w)?;
        let bias = contiguous_f32(bias)?;
        let body = &mut out[pad_rows * n..(pad_rows + positions) * n];
        fill_start(body, n, Some(&bias), None);
        let lhs = Lhs {
            data: &x,
            row_stride: stride * c,
        };
        product(positions, n, k, lhs, &w, body, true);
        body.par_chunks_mut(ROWS_PER_TASK * n)
            .for_each(gelu_in_place);
    }
    Tensor::from_vec(out, (positions + 2 * pad_rows, n), x.device())
}

/// A convolution weight `(out, c, taps)` as [`conv3_gelu`] takes it: `(out, taps · c)`, f32.
pub fn taps_outermost(w: &Tensor) -> Result<Tensor> {
    let (out, c, taps) = w.dims3()?;
    w.to_dtype(DType::F32)?
        .permute((0, 2, 1))?
        .contiguous()?
        .reshape((out, taps * c))
}

/// `w` in f32: an f16 matrix widened in parallel slices (F16C or `fcvtl` where the CPU has
/// them), anything else converted by candle.
pub fn widen(w: &Tensor) -> Result<Tensor> {
    if w.dtype() != DType::F16 {
        return w.to_dtype(DType::F32);
    }
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F16(data)) = &*storage else {
        candle_core::bail!("widen: expected f16 on the CPU");
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("widen: the matrix must be contiguous");
    };
    let half: &[f16] = &data[a..b];
    let mut out = vec![0f32; half.len()];
    out.par_chunks_mut(1 << 16)
        .zip(half.par_chunks(1 << 16))
        .for_each(|(o, h)| h.convert_to_f32_slice(o));
    Tensor::from_vec(out, w.dims(), &Device::Cpu)
}

/// A matrix of `k`-wide rows, `row_stride` elements apart (rows may overlap).
struct Lhs<'a> {
    data: &'a [f32],
    row_stride: usize,
}

/// The output buffer before the product: each row the bias plus the row of `add`, or zeros.
fn start(rows: usize, n: usize, bias: Option<&[f32]>, add: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    fill_start(&mut out, n, bias, add);
    out
}

/// Sets each `n`-wide row of `out` to the bias plus the same row of `add`; leaves it as it is
/// when there is neither.
fn fill_start(out: &mut [f32], n: usize, bias: Option<&[f32]>, add: Option<&[f32]>) {
    if bias.is_none() && add.is_none() {
        return;
    }
    out.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(i, chunk)| {
            let first = i * ROWS_PER_TASK * n;
            for (j, row) in chunk.chunks_exact_mut(n).enumerate() {
                match (bias, add) {
                    (Some(b), Some(a)) => {
                        let a = &a[first + j * n..][..n];
                        for ((o, &b), &a) in row.iter_mut().zip(b).zip(a) {
                            *o = b + a;
                        }
                    }
                    (Some(b), None) => row.copy_from_slice(b),
                    (None, Some(a)) => row.copy_from_slice(&a[first + j * n..][..n]),
                    (None, None) => {}
                }
            }
        });
}

/// `dst (+)= lhs · wᵀ` over `m` rows, `w` `(n, k)` row-major; `accumulate` keeps what `dst`
/// holds. Spread over the current rayon pool.
fn product(m: usize, n: usize, k: usize, lhs: Lhs, w: &[f32], dst: &mut [f32], accumulate: bool) {
    assert!(m == 0 || (m - 1) * lhs.row_stride + k <= lhs.data.len());
    assert!(w.len() >= n * k && dst.len() >= m * n);
    if m == 0 {
        return;
    }
    let parallelism = if rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every row `gemm` reads of `lhs` (m rows, `row_stride`
    // apart, k wide) and of `w` (n rows of k, read as the k × n matrix wᵀ), and the m × n
    // elements it writes of `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            1,
            lhs.row_stride as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whisper::kernels::tests::max_diff;

    fn random(dims: &[usize], seed: u64) -> Tensor {
        let mut s = seed;
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn linear_with_bias_gelu_and_residual_equals_the_composed_ops() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let (x, w, b, r) = (
            random(&[1, 150, 96], 1),
            random(&[200, 96], 2),
            random(&[200], 3),
            random(&[1, 150, 200], 4),
        );
        let plain = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let biased = plain.broadcast_add(&b).unwrap();
        pool.install(|| {
            let got = linear(&x, &w, None, Then::Nothing).unwrap();
            assert!(max_diff(&got, &plain) < 1e-4);
            let got = linear(&x, &w, Some(&b), Then::Nothing).unwrap();
            assert!(max_diff(&got, &biased) < 1e-4);
            let got = linear(&x, &w, Some(&b), Then::Gelu).unwrap();
            assert!(max_diff(&got, &biased.gelu_erf().unwrap()) < 1e-4);
            let got = linear(&x, &w, Some(&b), Then::Add(&r)).unwrap();
            assert!(max_diff(&got, &(&biased + &r).unwrap()) < 1e-4);
            let got = linear(&x, &w, None, Then::Add(&r)).unwrap();
            assert!(max_diff(&got, &(&plain + &r).unwrap()) < 1e-4);
        });
        // one thread takes the single-threaded product
        let got = linear(&x, &w, Some(&b), Then::Nothing).unwrap();
        assert!(max_diff(&got, &biased) < 1e-4);
    }

    #[test]
    fn linear_reads_strided_inputs_like_contiguous_ones() {
        let (xt, w, r) = (
            random(&[96, 150], 1),
            random(&[200, 96], 2),
            random(&[200, 150], 3),
        );
        // transposed views: neither is contiguous
        let (x, r) = (xt.t().unwrap(), r.t().unwrap());
        assert!(!x.is_contiguous() && !r.is_contiguous());
        let got = linear(&x, &w, None, Then::Add(&r)).unwrap();
        let want = (x.matmul(&w.t().unwrap()).unwrap() + &r).unwrap();
        assert!(max_diff(&got, &want) < 1e-4);
    }

    #[test]
    fn linear_rejects_mismatched_shapes() {
        let (x, w) = (random(&[4, 8], 1), random(&[3, 7], 2));
        assert!(linear(&x, &w, None, Then::Nothing).is_err());
        let w = random(&[3, 8], 2);
        let r = random(&[4, 4], 3);
        assert!(linear(&x, &w, None, Then::Add(&r)).is_err());
    }

    #[test]
    fn convolutions_over_padded_time_major_rows_equal_candles_conv1d() {
        // channel-major input as the encoder gets it: (batch, channels, frames), odd length
        let (c_in, c_out, frames) = (5, 16, 31);
        let mel = random(&[1, c_in, frames], 5);
        let (w1, b1) = (random(&[c_out, c_in, 3], 6), random(&[c_out], 7));
        let (w2, b2) = (random(&[c_out, c_out, 3], 8), random(&[c_out], 9));
        let conv = |x: &Tensor, w: &Tensor, b: &Tensor, stride| {
            let cfg = candle_nn::Conv1dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            let y = candle_nn::Module::forward(
                &candle_nn::Conv1d::new(w.clone(), Some(b.clone()), cfg),
                x,
            )
            .unwrap();
            y.gelu_erf().unwrap()
        };
        let want = conv(&conv(&mel, &w1, &b1, 1), &w2, &b2, 2)
            .squeeze(0)
            .unwrap()
            .t()
            .unwrap();

        let x = mel
            .squeeze(0)
            .unwrap()
            .t()
            .unwrap()
            .pad_with_zeros(0, 1, 1)
            .unwrap();
        let h = conv3_gelu(&x, &taps_outermost(&w1).unwrap(), &b1, 1, true).unwrap();
        assert_eq!(h.dims(), &[frames + 2, c_out]);
        let zero_rows = Tensor::cat(&[h.get(0).unwrap(), h.get(frames + 1).unwrap()], 0).unwrap();
        assert_eq!(
            zero_rows
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let got = conv3_gelu(&h, &taps_outermost(&w2).unwrap(), &b2, 2, false).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
    }

    #[test]
    fn widening_f16_gives_the_values_candle_converts_to() {
        let w = random(&[70, 1000], 3).to_dtype(DType::F16).unwrap();
        let want = w.to_dtype(DType::F32).unwrap();
        assert_eq!(max_diff(&widen(&w).unwrap(), &want), 0.0);
    }
}
