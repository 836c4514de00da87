//! voice-transcriber: local Whisper transcription of Telegram voice messages.
//!
//! The data path reads straight through the modules:
//!
//! - [`audio`]: any container/codec Telegram sends (OGG/Opus, MP4/AAC, MP3, WAV, FLAC) →
//!   16 kHz mono `f32` samples.
//! - [`mel`]: samples → Whisper's log-mel spectrogram, one 30 s window at a time.
//! - [`ct2`], [`weights`]: model directories in three formats → named tensors.
//! - [`model`]: the Whisper encoder/decoder network on candle, with [`kernels`] for attention
//!   and GELU.
//! - [`tokenizer`]: token ids ↔ text and the special tokens.
//! - [`decode`]: the long-form decoding loop (timestamps, fallback, no-speech) → segments.
//! - [`engine`]: loads a model and runs transcriptions on its own bounded thread pool.
//! - [`catalog`]: model names → Hugging Face repos, download, import and lookup.
//! - [`output`]: segments → txt, srt, vtt, json.
//! - [`telegram`]: the owner's Telegram account (grammers): new messages in, replies out.

pub mod audio;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod ct2;
pub mod daemon;
pub mod decode;
pub mod engine;
pub mod fsutil;
pub mod inference;
pub mod kernels;
pub mod localchat;
pub mod mel;
pub mod messenger;
pub mod model;
pub mod notify;
pub mod output;
pub mod reply;
pub mod shutdown;
pub mod spool;
pub mod state;
pub mod supervisor;
pub mod telegram;
pub mod tokenizer;
pub mod weights;
