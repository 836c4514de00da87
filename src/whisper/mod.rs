//! The Whisper engine wing: an audio file in, timed segments of text out.
//!
//! ```text
//!  file ──► audio ──► mel ──► model (encoder, decoder) ──► decode ──► segments ──► output
//!          (16 kHz)   (log-mel)   ▲ kernels                 ▲ tokenizer
//!                                 └── weights ◄── ct2 / safetensors / GGUF ◄── catalog
//! ```
//!
//! - [`audio`]: any container/codec Telegram sends (OGG/Opus, MP4/AAC, MP3, WAV, FLAC) →
//!   16 kHz mono `f32` samples.
//! - [`mel`]: samples → Whisper's log-mel spectrogram, one 30 s window at a time.
//! - [`catalog`]: model names → Hugging Face repositories, download, import and lookup in the
//!   models directory.
//! - [`ct2`], [`weights`]: model directories in three formats → one set of named tensors.
//! - [`model`]: the Whisper encoder/decoder network on candle, with [`kernels`] for attention,
//!   GELU and the per-token products.
//! - [`tokenizer`]: token ids ↔ text and the special tokens.
//! - [`decode`]: the long-form decoding loop (timestamps, fallback, no-speech) → segments.
//! - [`engine`]: a loaded model running transcriptions on its own bounded thread pool.
//! - [`output`]: segments → txt, srt, vtt, json.
//!
//! The wing knows nothing of who asks: no daemon, no Telegram, no spool, no config file. The
//! command line and the daemon both drive it through [`engine::Engine`] (`tests/layout.rs`
//! keeps it that way).

pub mod audio;
pub mod catalog;
pub mod ct2;
pub mod decode;
pub mod engine;
pub mod kernels;
pub mod mel;
pub mod model;
pub mod output;
pub mod tokenizer;
pub mod weights;
