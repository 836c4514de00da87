//! The Whisper network: audio encoder and text decoder, on candle.
//!
//! Mirrors openai/whisper `whisper/model.py` (AudioEncoder, TextDecoder, ResidualAttentionBlock)
//! with the details that decide whether we produce the same tokens as the reference:
//! exact (erf) GELU, pre-LayerNorm blocks with eps 1e-5, and queries and keys scaled by
//! `head_dim^-1/4` each (applied here once to the scores as `1/sqrt(head_dim)`).
//!
//! Decoding is incremental: [`Decoder::forward`] takes only the new tokens and keeps each layer's
//! self-attention keys/values in a cache, and cross-attention keys/values are computed once per
//! audio window by [`Decoder::set_audio`]. Without that, every generated token would re-run the
//! whole prefix and re-project the 1500 encoder frames in every layer.
//!
//! Every linear layer holds its matrix as stored — f32, f16 or GGUF-quantized — and widens it
//! for the product where needed, so a model in memory is no larger than its file; shapes are
//! read from the weights ([`Dims::from_weights`]), never from a model name. Activations, norms,
//! biases, convolutions and positions are f32.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::kv_cache::KvCache;
use candle_nn::LayerNorm;

use crate::whisper::kernels;
use crate::whisper::kernels::dense::{self, Then};
use crate::whisper::weights::{tensor_bytes, Weights};

/// Whisper's attention heads are always 64 wide (tiny 6×64 … large 20×64).
const HEAD_DIM: usize = 64;
/// LayerNorm epsilon used by every Whisper checkpoint.
const LN_EPS: f64 = 1e-5;
/// From this many activation rows on, an f16 or quantized matrix is widened to f32 for the
/// product (see [`kernels`]): the encoder's 1500 rows, a prompt (up to 224 tokens of previous
/// text), the cross-attention keys and values. Below it — a decoded token — the per-row
/// kernels stream the matrix once in its own format.
const WIDEN_ROWS: usize = 8;

/// Network dimensions (openai `ModelDimensions`), inferred from weight shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Dims {
    /// `n_mels`: mel bins the encoder's first convolution expects (80, or 128 for large-v3).
    pub n_mels: usize,
    /// `n_audio_ctx`: encoder positions (1500 = 30 s after the stride-2 convolution).
    pub n_audio_ctx: usize,
    /// `n_audio_state`: encoder width.
    pub n_audio_state: usize,
    /// `n_audio_layer`.
    pub n_audio_layer: usize,
    /// `n_vocab`: rows of the token embedding.
    pub n_vocab: usize,
    /// `n_text_ctx`: decoder positions (448).
    pub n_text_ctx: usize,
    /// `n_text_state`: decoder width.
    pub n_text_state: usize,
    /// `n_text_layer`.
    pub n_text_layer: usize,
}

impl Dims {
    /// Reads the dimensions off the tensors themselves.
    pub fn from_weights(w: &Weights) -> Result<Self> {
        let conv1 = w.shape("model.encoder.conv1.weight")?;
        let enc_pos = w.shape("model.encoder.embed_positions.weight")?;
        let emb = w.shape("model.decoder.embed_tokens.weight")?;
        let dec_pos = w.shape("model.decoder.embed_positions.weight")?;
        let count = |prefix: &str| {
            (0..)
                .take_while(|i| w.contains(&format!("{prefix}.layers.{i}.fc1.weight")))
                .count()
        };
        Ok(Self {
            n_mels: conv1[1],
            n_audio_ctx: enc_pos[0],
            n_audio_state: enc_pos[1],
            n_audio_layer: count("model.encoder"),
            n_vocab: emb[0],
            n_text_ctx: dec_pos[0],
            n_text_state: emb[1],
            n_text_layer: count("model.decoder"),
        })
    }
}

/// Model-side views of [`Weights`]: how each layer type is assembled from named tensors.
impl Weights {
    /// A linear layer whose products run over many rows (the encoder's 1500 frames, the
    /// cross-attention keys and values): an f16 matrix is widened to f32 for each product.
    fn linear(&self, prefix: &str) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let weight = match self.qtensors.get(&name) {
            Some(q) => Matrix::Candle(QMatMul::QTensor(q.clone())),
            None => {
                let t = self.get(&name)?;
                match t.dtype() {
                    DType::F16 => Matrix::Widened(t),
                    _ => Matrix::Candle(QMatMul::Tensor(t)),
                }
            }
        };
        let bias_name = format!("{prefix}.bias");
        Ok(Linear {
            weight,
            bias: if self.contains(&bias_name) {
                Some(self.get_f32(&bias_name)?)
            } else {
                None
            },
        })
    }

    /// A linear layer run once per decoded token: its matrix is held in f16 when f16 holds it
    /// exactly (stored in f16, or f32 values that f16 represents), since such a product is
    /// bound by how many bytes of weights it streams.
    fn streamed_linear(&self, prefix: &str) -> Result<Linear> {
        let mut l = self.linear(prefix)?;
        l.weight = match l.weight {
            Matrix::Widened(h) => Matrix::Half(h),
            Matrix::Candle(QMatMul::Tensor(t)) => match half_if_exact(&t)? {
                Some(h) => Matrix::Half(h),
                None => Matrix::Candle(QMatMul::Tensor(t)),
            },
            other => other,
        };
        Ok(l)
    }

    fn layer_norm(&self, prefix: &str) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get_f32(&format!("{prefix}.weight"))?,
            self.get_f32(&format!("{prefix}.bias"))?,
            LN_EPS,
        ))
    }

    fn conv(&self, prefix: &str, stride: usize) -> Result<Conv> {
        Ok(Conv {
            weight: dense::taps_outermost(&self.get(&format!("{prefix}.weight"))?)?,
            bias: self.get_f32(&format!("{prefix}.bias"))?,
            stride,
        })
    }
}

/// One of the encoder's convolutions (kernel 3, padding 1), run by [`dense::conv3_gelu`].
struct Conv {
    /// `(out, 3 · in)`, f32, taps outermost.
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl Conv {
    fn bytes(&self) -> usize {
        tensor_bytes(&self.weight) + tensor_bytes(&self.bias)
    }

    /// `x`: time-major rows between two zero rows; GELU applied; `pad` keeps such zero rows
    /// around the output.
    fn forward_gelu(&self, x: &Tensor, pad: bool) -> Result<Tensor> {
        dense::conv3_gelu(x, &self.weight, &self.bias, self.stride, pad)
    }
}

/// The f16 copy of an f32 tensor, if converting loses nothing (checkpoints stored in f16).
fn half_if_exact(t: &Tensor) -> Result<Option<Tensor>> {
    let half = t.to_dtype(DType::F16)?;
    let exact = half
        .to_dtype(DType::F32)?
        .eq(t)?
        .flatten_all()?
        .min(0)?
        .to_scalar::<u8>()?
        == 1;
    Ok(exact.then_some(half))
}

/// How a linear layer's matrix is held.
#[derive(Debug, Clone)]
enum Matrix {
    /// f32 or GGUF-quantized, multiplied by candle.
    Candle(QMatMul),
    /// f16 and used once per decoded token: multiplied by [`kernels::project_half`] for fewer
    /// than [`WIDEN_ROWS`] rows, widened like [`Matrix::Widened`] for a prompt.
    Half(Tensor),
    /// f16, widened to f32 for each product ([`dense::linear`]): for products over
    /// many rows widening one matrix costs little next to the product, and keeping only the f16
    /// copy saves half of the encoder's weights. The values are those of an f32 copy, so the
    /// results are too.
    Widened(Tensor),
}

/// `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
}

impl Linear {
    fn bytes(&self) -> usize {
        let w = match &self.weight {
            Matrix::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Matrix::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t))
            | Matrix::Half(t)
            | Matrix::Widened(t) => tensor_bytes(t),
        };
        w + self.bias.as_ref().map_or(0, tensor_bytes)
    }
}

fn layer_norm_bytes(ln: &LayerNorm) -> usize {
    tensor_bytes(ln.weight()) + ln.bias().map_or(0, tensor_bytes)
}

impl Linear {
    /// `x Wᵀ + b`, then `then`. Products over f32 matrices — stored so, widened from f16, or
    /// dequantized for many rows — are [`dense::linear`], with the bias and `then` folded in.
    fn forward_then(&self, x: &Tensor, then: Then) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let y = match &self.weight {
            Matrix::Half(w) if rows < WIDEN_ROWS => kernels::project_half(&x.contiguous()?, w)?,
            // The integer tiles of `kernels::q8` are not yet faster than a widened f32
            // product over the encoder's 1500 rows (JFK, tiny.en-q8_0: 1.9 s against
            // 0.65 s here), so they serve the few-row products only.
            Matrix::Candle(QMatMul::QTensor(q)) if rows < WIDEN_ROWS => {
                if q.dtype() == GgmlDType::Q8_0 {
                    kernels::project_q8_0(x, q)?
                } else {
                    QMatMul::QTensor(q.clone()).forward(x)?
                }
            }
            Matrix::Candle(QMatMul::QTensor(q)) => {
                return dense::linear(x, &q.dequantize(x.device())?, self.bias.as_ref(), then)
            }
            Matrix::Candle(QMatMul::Tensor(w)) => {
                return dense::linear(x, w, self.bias.as_ref(), then)
            }
            Matrix::Half(w) | Matrix::Candle(QMatMul::TensorF16(w)) | Matrix::Widened(w) => {
                return dense::linear(x, &dense::widen(w)?, self.bias.as_ref(), then)
            }
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match then {
            Then::Nothing => Ok(y),
            Then::Gelu => kernels::gelu_erf(&y),
            Then::Add(r) => y + r,
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, Then::Nothing)
    }
}

/// Multi-head attention (openai `MultiHeadAttention`).
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    n_head: usize,
}

impl Attention {
    /// `per_token`: which projections run once per decoded token (see
    /// [`Weights::streamed_linear`]), as `[query, key/value, out]`.
    fn load(w: &Weights, prefix: &str, n_state: usize, per_token: [bool; 3]) -> Result<Self> {
        let lin = |name: &str, streamed: bool| {
            let p = format!("{prefix}.{name}");
            if streamed {
                w.streamed_linear(&p)
            } else {
                w.linear(&p)
            }
        };
        Ok(Self {
            query: lin("q_proj", per_token[0])?,
            key: lin("k_proj", per_token[1])?,
            value: lin("v_proj", per_token[1])?,
            out: lin("out_proj", per_token[2])?,
            n_head: n_state / HEAD_DIM,
        })
    }

    fn bytes(&self) -> usize {
        [&self.query, &self.key, &self.value, &self.out]
            .iter()
            .map(|l| l.bytes())
            .sum()
    }

    /// `(batch, len, state)` → `(batch, head, len, head_dim)`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        x.reshape((b, n, self.n_head, HEAD_DIM))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn project_kv(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split_heads(&self.key.forward(x)?)?,
            self.split_heads(&self.value.forward(x)?)?,
        ))
    }

    /// Attends `x`'s queries over heads-split `k`, `v`; with `causal`, `x` holds the last
    /// positions of `k`/`v` and each sees only those up to itself.
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
        let q = self.split_heads(&self.query.forward(x)?)?;
        self.out.forward(&kernels::attention(&q, k, v, causal)?)
    }
}

/// Two-layer MLP with exact GELU (openai uses `nn.GELU()`, i.e. erf).
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn bytes(&self) -> usize {
        self.fc1.bytes() + self.fc2.bytes()
    }

    /// `residual + fc2(gelu(fc1(x)))`.
    fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward_then(x, Then::Gelu)?;
        self.fc2.forward_then(&h, Then::Add(residual))
    }
}

struct EncoderLayer {
    attn_ln: LayerNorm,
    attn: Attention,
    mlp_ln: LayerNorm,
    mlp: Mlp,
}

/// Audio encoder: two convolutions, sinusoidal positions, transformer blocks.
pub struct Encoder {
    conv1: Conv,
    conv2: Conv,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    ln_post: LayerNorm,
}

impl Encoder {
    fn load(w: &Weights, d: &Dims) -> Result<Self> {
        let layers = (0..d.n_audio_layer)
            .map(|i| {
                let p = format!("model.encoder.layers.{i}");
                Ok(EncoderLayer {
                    attn_ln: w.layer_norm(&format!("{p}.self_attn_layer_norm"))?,
                    attn: Attention::load(
                        w,
                        &format!("{p}.self_attn"),
                        d.n_audio_state,
                        [false; 3],
                    )?,
                    mlp_ln: w.layer_norm(&format!("{p}.final_layer_norm"))?,
                    mlp: Mlp {
                        fc1: w.linear(&format!("{p}.fc1"))?,
                        fc2: w.linear(&format!("{p}.fc2"))?,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1: w.conv("model.encoder.conv1", 1)?,
            conv2: w.conv("model.encoder.conv2", 2)?,
            positions: w.get_f32("model.encoder.embed_positions.weight")?,
            layers,
            ln_post: w.layer_norm("model.encoder.layer_norm")?,
        })
    }

    /// `mel`: `(batch, n_mels, 3000)` → `(batch, 1500, n_audio_state)`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        self.forward_timed(mel, &mut |_, _| {})
    }

    /// [`forward`](Self::forward), telling `lap` how long each stage took as it finishes (a
    /// stage of every layer is reported once per layer). Benchmarks use it to set each stage's
    /// arithmetic against its time.
    pub fn forward_timed(
        &self,
        mel: &Tensor,
        lap: &mut dyn FnMut(EncoderStage, std::time::Duration),
    ) -> Result<Tensor> {
        let mut last = std::time::Instant::now();
        let mut done = |stage| {
            let now = std::time::Instant::now();
            lap(stage, now - last);
            last = now;
        };
        let batch = mel.dim(0)?;
        let mut convolved = Vec::with_capacity(batch);
        for b in 0..batch {
            // time-major, between two zero rows: the padding of both convolutions
            let x = mel.get(b)?.t()?.pad_with_zeros(0, 1, 1)?.contiguous()?;
            let x = self.conv1.forward_gelu(&x, true)?;
            convolved.push(self.conv2.forward_gelu(&x, false)?);
        }
        let x = Tensor::stack(&convolved, 0)?;
        drop(convolved);
        let n = x.dim(1)?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, n)?)?;
        done(EncoderStage::Convolutions);
        for l in &self.layers {
            let h = l.attn_ln.forward(&x)?;
            done(EncoderStage::Norms);
            let (k, v) = l.attn.project_kv(&h)?;
            let q = l.attn.split_heads(&l.attn.query.forward(&h)?)?;
            done(EncoderStage::Projections);
            let a = kernels::attention(&q, &k, &v, false)?;
            done(EncoderStage::Attention);
            x = l.attn.out.forward_then(&a, Then::Add(&x))?;
            done(EncoderStage::Projections);
            let h = l.mlp_ln.forward(&x)?;
            done(EncoderStage::Norms);
            x = l.mlp.forward_add(&h, &x)?;
            done(EncoderStage::Mlp);
        }
        let x = self.ln_post.forward(&x)?;
        done(EncoderStage::Norms);
        Ok(x)
    }
}

/// The parts of an encoder pass, as [`Encoder::forward_timed`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncoderStage {
    /// Both convolutions with their GELUs, and the positions added.
    Convolutions,
    /// The layer norms.
    Norms,
    /// The query, key, value and output projections of self-attention.
    Projections,
    /// Scores, softmax and the weighted sum of values.
    Attention,
    /// The two-layer MLP with its GELU, and its residual.
    Mlp,
}

impl EncoderStage {
    /// Every stage, in the order a layer runs them.
    pub const ALL: [EncoderStage; 5] = [
        EncoderStage::Convolutions,
        EncoderStage::Norms,
        EncoderStage::Projections,
        EncoderStage::Attention,
        EncoderStage::Mlp,
    ];

    /// Floating-point operations (a multiply-add counts two) of this stage's matrix products
    /// over a whole pass of `frames` mel frames (`frames / 2` positions); 0 for the norms.
    pub fn flops(self, d: &Dims, frames: usize) -> f64 {
        let (n, w, m) = (frames as f64 / 2.0, d.n_audio_state as f64, d.n_mels as f64);
        let layers = d.n_audio_layer as f64;
        match self {
            // conv1: kernel 3 over every frame; conv2: kernel 3, stride 2
            EncoderStage::Convolutions => 2.0 * frames as f64 * w * m * 3.0 + 2.0 * n * w * w * 3.0,
            EncoderStage::Norms => 0.0,
            EncoderStage::Projections => layers * 4.0 * 2.0 * n * w * w,
            // q·kᵀ and scores·v, every head together spanning the width
            EncoderStage::Attention => layers * 2.0 * 2.0 * n * n * w,
            EncoderStage::Mlp => layers * 2.0 * 2.0 * n * w * 4.0 * w,
        }
    }
}

struct DecoderLayer {
    self_ln: LayerNorm,
    self_attn: Attention,
    cross_ln: LayerNorm,
    cross_attn: Attention,
    mlp_ln: LayerNorm,
    mlp: Mlp,
    /// Self-attention keys/values of the tokens decoded so far.
    cache: KvCache,
    /// Cross-attention keys/values of the current audio window.
    audio_kv: Option<(Tensor, Tensor)>,
}

/// Text decoder with incremental state.
pub struct Decoder {
    embed: TokenEmbedding,
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    ln: LayerNorm,
    /// Number of tokens already in the self-attention caches.
    offset: usize,
    n_text_ctx: usize,
}

impl Decoder {
    fn load(w: &Weights, d: &Dims) -> Result<Self> {
        let layers = (0..d.n_text_layer)
            .map(|i| {
                let p = format!("model.decoder.layers.{i}");
                Ok(DecoderLayer {
                    self_ln: w.layer_norm(&format!("{p}.self_attn_layer_norm"))?,
                    self_attn: Attention::load(
                        w,
                        &format!("{p}.self_attn"),
                        d.n_text_state,
                        [true; 3],
                    )?,
                    cross_ln: w.layer_norm(&format!("{p}.encoder_attn_layer_norm"))?,
                    cross_attn: Attention::load(
                        w,
                        &format!("{p}.encoder_attn"),
                        d.n_text_state,
                        // keys/values are projected once per audio window
                        [true, false, true],
                    )?,
                    mlp_ln: w.layer_norm(&format!("{p}.final_layer_norm"))?,
                    mlp: Mlp {
                        fc1: w.streamed_linear(&format!("{p}.fc1"))?,
                        fc2: w.streamed_linear(&format!("{p}.fc2"))?,
                    },
                    cache: KvCache::new(2, d.n_text_ctx),
                    audio_kv: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            embed: TokenEmbedding::load(w, "model.decoder.embed_tokens.weight")?,
            positions: w.get_f32("model.decoder.embed_positions.weight")?,
            layers,
            ln: w.layer_norm("model.decoder.layer_norm")?,
            offset: 0,
            n_text_ctx: d.n_text_ctx,
        })
    }

    /// Starts a new audio window: projects the encoder output once per layer and clears the
    /// token caches.
    pub fn set_audio(&mut self, audio: &Tensor) -> Result<()> {
        for l in &mut self.layers {
            l.audio_kv = Some(l.cross_attn.project_kv(audio)?);
        }
        self.reset();
        Ok(())
    }

    /// Drops the audio window's cross-attention keys/values and the token caches, so an idle
    /// model holds only its weights.
    pub fn release(&mut self) {
        for l in &mut self.layers {
            l.audio_kv = None;
        }
        self.reset();
    }

    /// Forgets decoded tokens (keeps the audio window).
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.cache.reset();
        }
        self.offset = 0;
    }

    /// Tokens in the caches so far.
    pub fn len(&self) -> usize {
        self.offset
    }

    /// True before the first token of a window.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Maximum tokens the decoder can hold.
    pub fn capacity(&self) -> usize {
        self.n_text_ctx
    }

    /// Feeds `tokens` (`(batch, n)`) after those already cached and returns the logits of the
    /// new positions listed in `at` (indices into the `n`), `(batch, at.len(), n_vocab)`. The
    /// vocabulary projection is the costliest step of a token, so a prompt only pays for the
    /// positions the caller reads.
    pub fn forward(&mut self, tokens: &Tensor, at: &[usize]) -> Result<Tensor> {
        let (_, n) = tokens.dims2()?;
        if self.offset + n > self.n_text_ctx {
            candle_core::bail!(
                "decoder context full: {} + {n} tokens > {}",
                self.offset,
                self.n_text_ctx
            );
        }
        let pos = self.positions.narrow(0, self.offset, n)?;
        if let Some(&bad) = at.iter().find(|&&i| i >= n) {
            candle_core::bail!("logits asked for position {bad} of {n} new tokens");
        }
        let mut x = self.embed.lookup(&tokens.flatten_all()?)?;
        x = x.reshape((tokens.dim(0)?, n, ()))?.broadcast_add(&pos)?;
        for l in &mut self.layers {
            let h = l.self_ln.forward(&x)?;
            let (k, v) = l.self_attn.project_kv(&h)?;
            let (k, v) = l.cache.append(&k, &v)?;
            x = (&x + l.self_attn.attend(&h, &k, &v, true)?)?;
            let (ak, av) = l
                .audio_kv
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg("decoder has no audio window".into()))?;
            let h = l.cross_ln.forward(&x)?;
            x = (&x + l.cross_attn.attend(&h, ak, av, false)?)?;
            x = l.mlp.forward_add(&l.mlp_ln.forward(&x)?, &x)?;
        }
        self.offset += n;
        let at: Vec<u32> = at.iter().map(|&i| i as u32).collect();
        let x = x.index_select(&Tensor::new(at, x.device())?, 1)?;
        self.embed.project(&self.ln.forward(&x)?)
    }
}

/// The token embedding, used twice: rows looked up for input tokens, and the whole matrix as
/// the output projection onto the vocabulary (tied weights) — the largest product of every
/// decoded token, so it is held in f16 whenever that is exact (every faster-whisper checkpoint).
struct TokenEmbedding {
    /// f16 or f32.
    table: Tensor,
    proj: Linear,
}

impl TokenEmbedding {
    fn load(w: &Weights, name: &str) -> Result<Self> {
        let proj = w.streamed_linear(name.trim_end_matches(".weight"))?;
        let table = match &proj.weight {
            Matrix::Half(h) | Matrix::Widened(h) => h.clone(),
            Matrix::Candle(_) => w.get_f32(name)?,
        };
        Ok(Self { table, proj })
    }

    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        self.table.embedding(ids)?.to_dtype(DType::F32)
    }

    /// `(batch, n, state)` → `(batch, n, n_vocab)`.
    fn project(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(x)
    }
}

/// A loaded Whisper model.
pub struct Whisper {
    /// Network dimensions.
    pub dims: Dims,
    /// The audio encoder.
    pub encoder: Encoder,
    /// The text decoder with its caches.
    pub decoder: Decoder,
}

impl Whisper {
    /// Bytes of weights the network holds (f32, f16 and quantized alike).
    pub fn bytes(&self) -> usize {
        let e = &self.encoder;
        let encoder = e.conv1.bytes()
            + e.conv2.bytes()
            + tensor_bytes(&e.positions)
            + layer_norm_bytes(&e.ln_post)
            + e.layers
                .iter()
                .map(|l| {
                    layer_norm_bytes(&l.attn_ln)
                        + l.attn.bytes()
                        + layer_norm_bytes(&l.mlp_ln)
                        + l.mlp.bytes()
                })
                .sum::<usize>();
        let d = &self.decoder;
        let embed = d.embed.proj.bytes()
            + match &d.embed.proj.weight {
                // a dequantized lookup table beside the quantized projection
                Matrix::Candle(QMatMul::QTensor(_)) => tensor_bytes(&d.embed.table),
                _ => 0,
            };
        let decoder = embed
            + tensor_bytes(&d.positions)
            + layer_norm_bytes(&d.ln)
            + d.layers
                .iter()
                .map(|l| {
                    layer_norm_bytes(&l.self_ln)
                        + l.self_attn.bytes()
                        + layer_norm_bytes(&l.cross_ln)
                        + l.cross_attn.bytes()
                        + layer_norm_bytes(&l.mlp_ln)
                        + l.mlp.bytes()
                })
                .sum::<usize>();
        encoder + decoder
    }

    /// Builds the network from named weights.
    pub fn new(w: &Weights) -> Result<Self> {
        let dims = Dims::from_weights(w)?;
        if dims.n_audio_state % HEAD_DIM != 0 || dims.n_text_state % HEAD_DIM != 0 {
            candle_core::bail!("model width is not a multiple of {HEAD_DIM}: {dims:?}");
        }
        Ok(Self {
            encoder: Encoder::load(w, &dims)?,
            decoder: Decoder::load(w, &dims)?,
            dims,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::whisper::kernels::tests::max_diff;
    use candle_core::{Device, IndexOp};

    /// A small random-weight Whisper (1 layer each side, width 64) under Hugging Face names.
    pub(crate) fn random_weights(n_vocab: usize) -> Weights {
        let dev = Device::Cpu;
        let d = HEAD_DIM;
        let mut w = Weights::default();
        let mut put = |name: String, shape: &[usize]| {
            let t = Tensor::randn(0f32, 0.2, shape, &dev).unwrap();
            w.tensors.insert(name, t);
        };
        put("model.encoder.conv1.weight".into(), &[d, 80, 3]);
        put("model.encoder.conv1.bias".into(), &[d]);
        put("model.encoder.conv2.weight".into(), &[d, d, 3]);
        put("model.encoder.conv2.bias".into(), &[d]);
        put("model.encoder.embed_positions.weight".into(), &[1500, d]);
        put("model.decoder.embed_tokens.weight".into(), &[n_vocab, d]);
        put("model.decoder.embed_positions.weight".into(), &[448, d]);
        for side in ["encoder", "decoder"] {
            put(format!("model.{side}.layer_norm.weight"), &[d]);
            put(format!("model.{side}.layer_norm.bias"), &[d]);
            let p = format!("model.{side}.layers.0");
            let mut attns = vec!["self_attn"];
            if side == "decoder" {
                attns.push("encoder_attn");
            }
            for a in attns {
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    put(format!("{p}.{a}.{proj}.weight"), &[d, d]);
                    if proj != "k_proj" {
                        put(format!("{p}.{a}.{proj}.bias"), &[d]);
                    }
                }
                put(format!("{p}.{a}_layer_norm.weight"), &[d]);
                put(format!("{p}.{a}_layer_norm.bias"), &[d]);
            }
            put(format!("{p}.fc1.weight"), &[4 * d, d]);
            put(format!("{p}.fc1.bias"), &[4 * d]);
            put(format!("{p}.fc2.weight"), &[d, 4 * d]);
            put(format!("{p}.fc2.bias"), &[d]);
            put(format!("{p}.final_layer_norm.weight"), &[d]);
            put(format!("{p}.final_layer_norm.bias"), &[d]);
        }
        w
    }

    #[test]
    fn dimensions_come_from_the_weights() {
        let m = Whisper::new(&random_weights(600)).unwrap();
        assert_eq!(
            m.dims,
            Dims {
                n_mels: 80,
                n_audio_ctx: 1500,
                n_audio_state: 64,
                n_audio_layer: 1,
                n_vocab: 600,
                n_text_ctx: 448,
                n_text_state: 64,
                n_text_layer: 1,
            }
        );
    }

    /// `w` with every tensor rounded to f16, as a faster-whisper checkpoint holds it: the
    /// decoder's per-token layers and the vocabulary projection then run in f16.
    fn rounded_to_f16(mut w: Weights) -> Weights {
        for t in w.tensors.values_mut() {
            *t = t
                .to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
        }
        w
    }

    #[test]
    fn weight_bytes_count_f16_layers_at_two_bytes() {
        let w = random_weights(600);
        let float = Whisper::new(&w).unwrap().bytes();
        assert_eq!(float, w.bytes(), "every tensor once, at four bytes");
        let half = Whisper::new(&rounded_to_f16(w)).unwrap().bytes();
        // Vocabulary (600 × 64) and the decoder's per-token matrices: self-attention 4 × 64²,
        // cross-attention query and output 2 × 64², MLP 2 × 64 · 256 — two bytes saved each.
        let saved = 2 * (600 * 64 + 6 * 64 * 64 + 2 * 64 * 256);
        assert_eq!(float - half, saved);
    }

    /// `w` with every tensor stored in f16, as a faster-whisper `model.bin` is read.
    fn stored_in_f16(w: &Weights) -> Weights {
        let mut h = Weights::default();
        for (name, t) in &w.tensors {
            h.tensors
                .insert(name.clone(), t.to_dtype(DType::F16).unwrap());
        }
        h
    }

    /// Logits of the last of three tokens after encoding a fixed spectrogram.
    fn logits_of(w: &Weights) -> Vec<f32> {
        let mut m = Whisper::new(w).unwrap();
        // Deterministic, so two calls see the same input.
        let mel = (Tensor::arange(0u32, 80 * 3000, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            * 0.37)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((1, 80, 3000))
            .unwrap();
        let audio = m.encoder.forward(&mel).unwrap();
        m.decoder.set_audio(&audio).unwrap();
        let toks = Tensor::new(&[[5u32, 17, 99]], &Device::Cpu).unwrap();
        m.decoder
            .forward(&toks, &[2])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn f16_weights_stay_f16_and_compute_exactly_like_their_f32_values() {
        let wide = rounded_to_f16(random_weights(600));
        let half = stored_in_f16(&wide);
        // Matrices (linear layers and the token embedding) stay at two bytes; norms, biases,
        // convolutions and positions are widened to f32, which the arithmetic uses.
        let is_matrix = |name: &str| {
            name.contains("_proj.weight")
                || (name.contains(".fc") && name.ends_with(".weight"))
                || name.ends_with("embed_tokens.weight")
        };
        let expected: usize = half
            .tensors
            .iter()
            .map(|(n, t)| t.elem_count() * if is_matrix(n) { 2 } else { 4 })
            .sum();
        assert_eq!(Whisper::new(&half).unwrap().bytes(), expected);
        // The same values, so bit for bit the same logits as f32 weights holding them.
        assert_eq!(logits_of(&half), logits_of(&wide));
    }

    #[test]
    fn cached_incremental_decoding_equals_decoding_the_whole_prefix() {
        for w in [random_weights(600), rounded_to_f16(random_weights(600))] {
            cached_equals_whole(w);
        }
    }

    fn cached_equals_whole(w: Weights) {
        let mut m = Whisper::new(&w).unwrap();
        let mel = Tensor::randn(0f32, 1.0, (1, 80, 3000), &Device::Cpu).unwrap();
        let audio = m.encoder.forward(&mel).unwrap();
        m.decoder.set_audio(&audio).unwrap();
        let toks = [5u32, 17, 99, 3, 250];
        let all = Tensor::new(&[toks], &Device::Cpu).unwrap();
        let full: Vec<f32> = m
            .decoder
            .forward(&all, &[4])
            .unwrap()
            .i((0, 0))
            .unwrap()
            .to_vec1()
            .unwrap();
        m.decoder.reset();
        // Prompt of two, then one token at a time through the cache.
        m.decoder
            .forward(&Tensor::new(&[[5u32, 17]], &Device::Cpu).unwrap(), &[1])
            .unwrap();
        let mut last = Vec::new();
        for t in &toks[2..] {
            last = m
                .decoder
                .forward(&Tensor::new(&[[*t]], &Device::Cpu).unwrap(), &[0])
                .unwrap()
                .i((0, 0))
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        }
        assert_eq!(m.decoder.len(), 5);
        let diff = full
            .iter()
            .zip(&last)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "cached decoding drifts by {diff}");
    }

    #[test]
    fn an_f16_exact_embedding_is_kept_in_f16_and_projects_like_f32() {
        let mut w = random_weights(600);
        let name = "model.decoder.embed_tokens.weight";
        let rounded = w.tensors[name]
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        w.tensors.insert(name.into(), rounded.clone());
        let half = TokenEmbedding::load(&w, name).unwrap();
        assert!(matches!(half.proj.weight, Matrix::Half(_)));
        let float = TokenEmbedding {
            table: rounded.clone(),
            proj: Linear {
                weight: Matrix::Candle(QMatMul::Tensor(rounded)),
                bias: None,
            },
        };
        let ids = Tensor::new(&[3u32, 599], &Device::Cpu).unwrap();
        let (a, b) = (half.lookup(&ids).unwrap(), float.lookup(&ids).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        let x = Tensor::randn(0f32, 1.0, (1, 2, 64), &Device::Cpu).unwrap();
        let diff = max_diff(&half.project(&x).unwrap(), &float.project(&x).unwrap());
        assert!(diff < 1e-4, "projections differ by {diff}");
        // Weights f16 cannot hold stay f32.
        let w = random_weights(600);
        assert!(matches!(
            TokenEmbedding::load(&w, name).unwrap().proj.weight,
            Matrix::Candle(_)
        ));
    }

    #[test]
    fn mlp_uses_exact_erf_gelu() {
        // Identity weights expose the activation: exact GELU(−1) = −0.1586553, the tanh
        // approximation gives −0.1588080.
        let eye = Tensor::eye(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let lin = || Linear {
            weight: Matrix::Candle(QMatMul::Tensor(eye.clone())),
            bias: None,
        };
        let mlp = Mlp {
            fc1: lin(),
            fc2: lin(),
        };
        let x = Tensor::new(&[[[-1f32, 0.5, 2.0, -3.0]]], &Device::Cpu).unwrap();
        // the residual is added after the MLP: zero here, x in the second check
        let y: Vec<f32> = mlp
            .forward_add(&x, &x.zeros_like().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let exact = [-0.158_655_25f32, 0.345_731_14, 1.954_499_7, -0.004_049_71];
        for (a, b) in y.iter().zip(exact) {
            assert!((a - b).abs() < 2e-6, "{a} vs {b}");
        }
        let y: Vec<f32> = mlp
            .forward_add(&x, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for ((a, b), x) in y.iter().zip(exact).zip([-1f32, 0.5, 2.0, -3.0]) {
            assert!((a - b - x).abs() < 2e-6, "{a} vs {b} + {x}");
        }
    }
}
