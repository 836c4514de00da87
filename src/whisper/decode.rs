//! Turning audio into segments of text: the long-form decoding loop around the network.
//!
//! Follows openai/whisper `transcribe.py` / `decoding.py` and faster-whisper's
//! `transcribe.py::generate_segments`, which is our correctness oracle (same weights, greedy,
//! same token ids):
//!
//! - **Seek loop**: the recording is cut into 30 s windows; after each window, decoding resumes
//!   at the last complete timestamp, so speech cut by a window edge is decoded again whole.
//! - **Logit filters** per step, in the reference's order: suppress blank at the start,
//!   suppress the model's non-speech tokens, timestamp rules (pairs, monotonic, first token a
//!   timestamp ≤ 1 s, force a timestamp when their total probability wins).
//! - **Temperature fallback**: greedy first; if the text compresses too well (a repetition
//!   loop, ratio > 2.4) or is too unlikely (mean log-prob < −1), retry at 0.2, 0.4 … 1.0 with
//!   sampling — unless the window is silence (no-speech prob > 0.6), which is skipped, never
//!   hallucinated into text.
//! - **Prompting**: the previous windows' text is fed back after `<|startofprev|>`, and dropped
//!   after a high-temperature window so one bad window cannot poison the next.

use std::io::Write;
use std::time::Instant;

use candle_core::{Device, IndexOp, Tensor};
use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::SeedableRng;

use crate::whisper::kernels;
use crate::whisper::mel::{LogMel, HOP_LENGTH, N_FRAMES, SAMPLE_RATE};
use crate::whisper::model::Whisper;
use crate::whisper::tokenizer::WhisperTokenizer;
use crate::whisper::weights::ModelConfig;

/// Seconds per timestamp token.
pub const TIME_PRECISION: f64 = 0.02;
/// Mel frames per timestamp step (the encoder's stride-2 convolution).
const INPUT_STRIDE: usize = 2;
/// Temperatures tried in order until a window decodes acceptably.
pub const TEMPERATURES: [f32; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
/// A window whose text compresses better than this is a repetition loop.
pub const COMPRESSION_RATIO_THRESHOLD: f32 = 2.4;
/// A window whose mean token log-probability is below this is a failed decode.
pub const LOGPROB_THRESHOLD: f32 = -1.0;
/// A window is silence when `<|nospeech|>` is likelier than this (and decoding was unsure).
pub const NO_SPEECH_THRESHOLD: f32 = 0.6;
/// Above this temperature, the window's text is not used as the next window's prompt.
const PROMPT_RESET_TEMPERATURE: f32 = 0.5;
/// A window whose loudest 25 ms stretch is quieter than this (dB full scale) holds no speech
/// and is not decoded at all. Whisper's own no-speech test lets some silence through as
/// confident "you" or "Thank you."; a level this low is below any microphone's noise floor
/// of a real recording with speech in it.
pub const SILENCE_DBFS: f32 = -60.0;
/// The first timestamp may not be later than this (openai `max_initial_timestamp`).
const MAX_INITIAL_TIMESTAMP: f64 = 1.0;

/// Why decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("cannot start the inference threads: {0}")]
    Threads(String),
    #[error("unknown language {0:?} (this model knows: {1})")]
    UnknownLanguage(String, String),
    #[error("{0} is an English-only model; it cannot transcribe {1:?}")]
    EnglishOnly(String, String),
}

/// How to decode.
#[derive(Debug, Clone)]
pub struct Options {
    /// Language code to force; `None` detects it (multilingual models only).
    pub language: Option<String>,
    /// Temperatures for the fallback, first one greedy.
    pub temperatures: Vec<f32>,
    /// Feed previous text back as a prompt (openai `condition_on_previous_text`).
    pub condition_on_previous_text: bool,
    /// Seed for the sampling at temperatures above zero (runs are reproducible).
    pub seed: u64,
    /// How much of each window the encoder runs on.
    pub encoder_window: EncoderWindow,
}

/// How much of a 30 s window the encoder runs on.
///
/// Whisper was trained on 30 s windows, so the reference zero-pads a 5 s voice message to 30 s
/// and the encoder — most of a short message's compute — spends five sixths of its work on the
/// padding. Cutting the padding changes what the decoder attends to, and so can change the
/// text: the trimmed window keeps a margin of padding after the audio, and README's benchmarks
/// give its word error rate beside the full window's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EncoderWindow {
    /// Always 30 s: the reference's input, and its output.
    Full,
    /// The window's audio and `margin_s` seconds of padding after it, at most 30 s.
    Trimmed { margin_s: f32 },
}

impl EncoderWindow {
    /// Mel frames the encoder gets for a window holding `content` frames of audio: even, for the
    /// stride-2 convolution, and never more than [`N_FRAMES`].
    pub fn frames(self, content: usize) -> usize {
        match self {
            EncoderWindow::Full => N_FRAMES,
            EncoderWindow::Trimmed { margin_s } => {
                let margin = (margin_s.max(0.0) * (SAMPLE_RATE / HOP_LENGTH) as f32).ceil();
                (content + margin as usize)
                    .next_multiple_of(INPUT_STRIDE)
                    .min(N_FRAMES)
            }
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            language: None,
            temperatures: TEMPERATURES.to_vec(),
            condition_on_previous_text: true,
            seed: 0,
            encoder_window: EncoderWindow::Full,
        }
    }
}

/// One timed piece of text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Segment {
    /// Start in seconds from the start of the recording.
    pub start: f64,
    /// End in seconds.
    pub end: f64,
    /// The text, as the model wrote it (usually with a leading space).
    pub text: String,
    /// Mean log-probability of the window's tokens.
    pub avg_logprob: f32,
    /// Probability that the window held no speech.
    pub no_speech_prob: f32,
    /// Temperature the window was decoded at.
    #[serde(skip)]
    pub temperature: f32,
    /// Token ids of the segment, timestamps included.
    #[serde(skip)]
    pub tokens: Vec<u32>,
}

/// A finished transcription.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// Language code used (detected or forced).
    pub language: String,
    /// Segments in order.
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// All segment texts joined by single spaces.
    pub fn text(&self) -> String {
        self.segments
            .iter()
            .map(|s| s.text.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The result of decoding one window at one temperature.
#[derive(Debug, Clone)]
pub struct WindowResult {
    /// Sampled tokens, without the prompt and without `<|endoftext|>`.
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the sampled tokens and the end token.
    pub sum_logprob: f32,
    /// `sum_logprob / (tokens + 1)`.
    pub avg_logprob: f32,
    /// Probability of `<|nospeech|>` at the start-of-transcript position.
    pub no_speech_prob: f32,
    /// Temperature used.
    pub temperature: f32,
    /// Text length over its zlib-compressed length.
    pub compression_ratio: f32,
}

/// gzip-style compressibility of `text` (openai `compression_ratio`).
pub fn compression_ratio(text: &str) -> f32 {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    let compressed = enc.finish().map(|v| v.len()).unwrap_or(bytes.len());
    bytes.len() as f32 / compressed.max(1) as f32
}

/// The token-level rules applied to each step's logits.
struct LogitFilter<'a> {
    /// Tokens never allowed.
    suppress: &'a [u32],
    /// Tokens not allowed at the first step.
    suppress_begin: &'a [u32],
    eot: u32,
    timestamp_begin: u32,
    /// Highest timestamp allowed as the first token.
    max_initial_timestamp: u32,
}

impl LogitFilter<'_> {
    /// Applies the rules to `logits` given the tokens `sampled` so far in this window.
    /// Mirrors openai `SuppressBlank`, `SuppressTokens` and `ApplyTimestampRules`.
    fn apply(&self, logits: &mut [f32], sampled: &[u32]) {
        let n = logits.len();
        let ninf = f32::NEG_INFINITY;
        let tb = self.timestamp_begin as usize;
        if sampled.is_empty() {
            for &t in self.suppress_begin {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = ninf;
                }
            }
        }
        for &t in self.suppress {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = ninf;
            }
        }
        let is_ts = |t: u32| t >= self.timestamp_begin;
        let last_was_ts = sampled.last().is_some_and(|&t| is_ts(t));
        let penultimate_was_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_was_ts {
            if penultimate_was_ts {
                // A pair just closed: text must follow.
                logits[tb..].fill(ninf);
            } else {
                // An open timestamp: the next is its closing timestamp or the end.
                logits[..self.eot as usize].fill(ninf);
            }
        }
        if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            // Timestamps never go backwards. CTranslate2 (whisper.cc, ApplyTimestampRules)
            // allows an equal one, unlike openai's later `+ 1`; zero-length segments are
            // dropped when segments are cut.
            logits[tb..(last_ts as usize).min(n)].fill(ninf);
        }
        if sampled.is_empty() {
            // The window starts with a timestamp no later than 1 s.
            logits[..tb].fill(ninf);
            let last_allowed = self.max_initial_timestamp as usize + 1;
            if last_allowed < n {
                logits[last_allowed..].fill(ninf);
            }
        }
        // If the timestamps together are likelier than any text token, take a timestamp.
        // (Both sides as log-probabilities would subtract the same normaliser, so the logits
        // compare the same way.)
        let ts_mass = kernels::log_sum_exp(&logits[tb..]);
        let text_max = logits[..tb]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if ts_mass > text_max {
            logits[..tb].fill(ninf);
        }
    }
}

/// Whisper model plus tokenizer: decodes recordings into segments.
pub struct Transcriber {
    /// The network.
    pub model: Whisper,
    /// Its tokenizer.
    pub tokenizer: WhisperTokenizer,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    /// Name shown in messages (e.g. `tiny.en`).
    pub name: String,
}

impl Transcriber {
    /// Wraps a loaded model. `config` supplies the model's suppressed tokens.
    pub fn new(
        model: Whisper,
        tokenizer: WhisperTokenizer,
        config: &ModelConfig,
        name: &str,
    ) -> Self {
        let s = &tokenizer.specials;
        // faster-whisper `get_suppressed_tokens`: the model's list plus the task tokens.
        let mut suppress = config.suppress.clone();
        suppress.extend([
            s.transcribe,
            s.translate,
            s.sot,
            s.sot_prev,
            s.sot_lm,
            s.no_timestamps,
        ]);
        suppress.sort_unstable();
        suppress.dedup();
        let suppress_begin = if config.suppress_begin.is_empty() {
            // The blank (" ", token 220 in both vocabularies) and the end token.
            tokenizer.space.into_iter().chain([s.eot]).collect()
        } else {
            config.suppress_begin.clone()
        };
        Self {
            model,
            tokenizer,
            suppress,
            suppress_begin,
            name: name.to_string(),
        }
    }

    /// True for multilingual models (openai: `n_vocab >= 51865`).
    pub fn is_multilingual(&self) -> bool {
        self.model.dims.n_vocab >= 51865
    }

    /// The start-of-transcript sequence for `language` (`None` on English-only models).
    fn sot_sequence(&self, language: Option<u32>) -> Vec<u32> {
        let s = &self.tokenizer.specials;
        match language {
            Some(lang) if self.is_multilingual() => vec![s.sot, lang, s.transcribe],
            _ => vec![s.sot],
        }
    }

    /// Runs the encoder on one normalised mel window (`n_mels × frames`, at most 3000 frames).
    pub fn encode(&mut self, mel: Vec<f32>) -> Result<Tensor, DecodeError> {
        let n_mels = self.model.dims.n_mels;
        let frames = mel.len() / n_mels;
        log::debug!("encoding {frames} mel frames");
        let t = Tensor::from_vec(mel, (1, n_mels, frames), &Device::Cpu)?;
        Ok(self.model.encoder.forward(&t)?)
    }

    /// Picks the most likely language token for an encoded window (openai `detect_language`).
    pub fn detect_language(&mut self, audio: &Tensor) -> Result<u32, DecodeError> {
        let s = &self.tokenizer.specials;
        let sot = Tensor::new(&[[s.sot]], &Device::Cpu)?;
        self.model.decoder.set_audio(audio)?;
        let logits: Vec<f32> = self
            .model
            .decoder
            .forward(&sot, &[0])?
            .i((0, 0))?
            .to_vec1()?;
        let best = self
            .tokenizer
            .languages
            .iter()
            .filter(|(_, id)| (*id as usize) < logits.len())
            .max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]))
            .map(|(_, id)| *id)
            .ok_or_else(|| DecodeError::UnknownLanguage("auto".into(), "none".into()))?;
        Ok(best)
    }

    /// Decodes one window at one temperature. `audio` must already be set on the decoder.
    pub fn decode_window(
        &mut self,
        prompt: &[u32],
        temperature: f32,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<WindowResult, DecodeError> {
        let s = self.tokenizer.specials.clone();
        let sot_index = prompt.iter().position(|&t| t == s.sot).unwrap_or(0);
        let filter = LogitFilter {
            suppress: &self.suppress,
            suppress_begin: &self.suppress_begin,
            eot: s.eot,
            timestamp_begin: s.timestamp_begin,
            max_initial_timestamp: s.timestamp_begin
                + (MAX_INITIAL_TIMESTAMP / TIME_PRECISION).round() as u32,
        };
        let decoder = &mut self.model.decoder;
        decoder.reset();
        let sample_len = decoder.capacity() / 2;
        let input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
        let both = decoder.forward(&input, &[sot_index, prompt.len() - 1])?;
        let no_speech_prob = {
            let row: Vec<f32> = both.i((0, 0))?.to_vec1()?;
            (row[s.no_speech as usize] - kernels::log_sum_exp(&row)).exp()
        };
        let mut logits: Vec<f32> = both.i((0, 1))?.to_vec1()?;
        let mut tokens = Vec::new();
        let mut sum_logprob = 0f32;
        loop {
            filter.apply(&mut logits, &tokens);
            let lse = kernels::log_sum_exp(&logits);
            let next = if temperature == 0.0 {
                argmax(&logits)
            } else {
                let weights: Vec<f32> = logits
                    .iter()
                    .map(|&l| ((l - lse) / temperature).exp())
                    .collect();
                match WeightedIndex::new(&weights) {
                    Ok(d) => d.sample(rng) as u32,
                    Err(_) => argmax(&logits),
                }
            };
            sum_logprob += logits[next as usize] - lse;
            if next == s.eot
                || tokens.len() + 1 >= sample_len
                || decoder.len() + 1 > decoder.capacity()
            {
                break;
            }
            tokens.push(next);
            let t = Tensor::new(&[[next]], &Device::Cpu)?;
            logits = decoder.forward(&t, &[0])?.i((0, 0))?.to_vec1()?;
        }
        let text = self.tokenizer.decode(&tokens);
        Ok(WindowResult {
            avg_logprob: sum_logprob / (tokens.len() + 1) as f32,
            compression_ratio: compression_ratio(text.trim()),
            tokens,
            sum_logprob,
            no_speech_prob,
            temperature,
        })
    }

    /// Decodes a window, retrying at higher temperatures when the result looks wrong
    /// (faster-whisper `generate_with_fallback`).
    fn decode_with_fallback(
        &mut self,
        prompt: &[u32],
        opts: &Options,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<WindowResult, DecodeError> {
        let mut tried: Vec<WindowResult> = Vec::new();
        let temps = if opts.temperatures.is_empty() {
            &[0.0][..]
        } else {
            &opts.temperatures[..]
        };
        for &t in temps {
            let r = self.decode_window(prompt, t, rng)?;
            let mut needs_fallback = r.compression_ratio > COMPRESSION_RATIO_THRESHOLD
                || r.avg_logprob < LOGPROB_THRESHOLD;
            if r.no_speech_prob > NO_SPEECH_THRESHOLD && r.avg_logprob < LOGPROB_THRESHOLD {
                needs_fallback = false; // silence: nothing to retry
            }
            if !needs_fallback {
                return Ok(r);
            }
            log::debug!(
                "window at t={t}: compression {:.2}, avg logprob {:.2}; falling back",
                r.compression_ratio,
                r.avg_logprob
            );
            tried.push(r);
        }
        // Every temperature failed: keep the likeliest result that is not a loop.
        let last_t = *temps.last().unwrap_or(&0.0);
        let pool: Vec<&WindowResult> = {
            let ok: Vec<_> = tried
                .iter()
                .filter(|r| r.compression_ratio <= COMPRESSION_RATIO_THRESHOLD)
                .collect();
            if ok.is_empty() {
                tried.iter().collect()
            } else {
                ok
            }
        };
        let mut best = pool
            .into_iter()
            .max_by(|a, b| a.avg_logprob.total_cmp(&b.avg_logprob))
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("no decoding result".into()))?;
        best.temperature = last_t;
        Ok(best)
    }

    /// Resolves the language option to a token (or `None` for English-only models). When the
    /// language had to be detected, the encoded first window is returned too, so the decode
    /// loop does not run the encoder on it a second time.
    fn language_token(
        &mut self,
        language: Option<&str>,
        mel: &LogMel,
        window: EncoderWindow,
    ) -> Result<(Option<u32>, String, Option<Tensor>), DecodeError> {
        if !self.is_multilingual() {
            return match language {
                None | Some("en") => Ok((None, "en".into(), None)),
                Some(other) => Err(DecodeError::EnglishOnly(self.name.clone(), other.into())),
            };
        }
        match language {
            Some(code) => {
                let id = self.tokenizer.language_token(code).ok_or_else(|| {
                    let known: Vec<&str> = self
                        .tokenizer
                        .languages
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect();
                    DecodeError::UnknownLanguage(code.into(), known.join(", "))
                })?;
                Ok((Some(id), code.into(), None))
            }
            None => {
                let content = mel.n_frames().min(N_FRAMES);
                let audio = self.encode(mel.window_of_width(0, content, window.frames(content)))?;
                let id = self.detect_language(&audio)?;
                let code = self.tokenizer.language_code(id).unwrap_or("en").to_string();
                log::info!("detected language: {code}");
                Ok((Some(id), code, Some(audio)))
            }
        }
    }

    /// Transcribes 16 kHz mono `samples`, calling `on_segment` as each segment is final.
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        opts: &Options,
        mut on_segment: impl FnMut(&Segment),
    ) -> Result<Transcript, DecodeError> {
        let mel = LogMel::new(samples, self.model.dims.n_mels);
        let (lang_token, language, mut first_window) =
            self.language_token(opts.language.as_deref(), &mel, opts.encoder_window)?;
        let sot_seq = self.sot_sequence(lang_token);
        let s = self.tokenizer.specials.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let content_frames = mel.n_frames();
        let max_prompt = self.model.decoder.capacity() / 2 - 1;
        let mut seek = 0usize;
        let mut all_tokens: Vec<u32> = Vec::new();
        let mut prompt_reset_since = 0usize;
        let mut segments = Vec::new();
        while seek < content_frames {
            let time_offset = (seek * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            let segment_size = N_FRAMES.min(content_frames - seek);
            let segment_duration = (segment_size * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            let level = peak_level_dbfs(
                samples,
                seek * HOP_LENGTH,
                (seek + segment_size) * HOP_LENGTH,
            );
            if level < SILENCE_DBFS {
                log::debug!("skipping silent window at {time_offset:.2}s ({level:.0} dBFS)");
                seek += segment_size;
                continue;
            }
            let encoding = Instant::now();
            // The window encoded for detection is this one: both hold the recording's first
            // `segment_size` frames, at the same width.
            let audio = match first_window.take() {
                Some(a) if seek == 0 => a,
                _ => {
                    // The previous window's cross-attention keys and values are dead: freed
                    // before the encoder allocates its activations, so that two windows never
                    // add up in the peak.
                    self.model.decoder.release();
                    let width = opts.encoder_window.frames(segment_size);
                    self.encode(mel.window_of_width(seek, segment_size, width))?
                }
            };
            self.model.decoder.set_audio(&audio)?;
            let decoding = Instant::now();

            let previous = &all_tokens[prompt_reset_since..];
            let mut prompt = Vec::with_capacity(max_prompt + sot_seq.len() + 1);
            if !previous.is_empty() {
                prompt.push(s.sot_prev);
                prompt.extend_from_slice(&previous[previous.len().saturating_sub(max_prompt)..]);
            }
            prompt.extend_from_slice(&sot_seq);

            let r = self.decode_with_fallback(&prompt, opts, &mut rng)?;
            log::debug!(
                "window at {time_offset:.2}s: temperature {}, avg logprob {:.3}, no-speech {:.3}, compression {:.2}; \
                 encoder {:.0} ms, {} prompt + {} tokens in {:.0} ms",
                r.temperature,
                r.avg_logprob,
                r.no_speech_prob,
                r.compression_ratio,
                (decoding - encoding).as_secs_f64() * 1e3,
                prompt.len(),
                r.tokens.len() + 1,
                decoding.elapsed().as_secs_f64() * 1e3,
            );
            let silent =
                r.no_speech_prob > NO_SPEECH_THRESHOLD && r.avg_logprob <= LOGPROB_THRESHOLD;
            if silent {
                log::debug!(
                    "skipping silent window at {time_offset:.2}s (no-speech {:.2})",
                    r.no_speech_prob
                );
                seek += segment_size;
                continue;
            }
            let (window_segments, advance) =
                split_by_timestamps(&r.tokens, s.timestamp_begin, segment_size, segment_duration);
            for (start, end, tokens) in window_segments {
                let text = self.tokenizer.decode(&tokens);
                // Text without a single letter or digit (". . .", "-") is not a transcript.
                if start == end || !text.chars().any(char::is_alphanumeric) {
                    continue;
                }
                let seg = Segment {
                    start: time_offset + start,
                    end: time_offset + end,
                    text,
                    avg_logprob: r.avg_logprob,
                    no_speech_prob: r.no_speech_prob,
                    temperature: r.temperature,
                    tokens: tokens.clone(),
                };
                all_tokens.extend_from_slice(&tokens);
                on_segment(&seg);
                segments.push(seg);
            }
            seek += advance.max(1);
            if !opts.condition_on_previous_text || r.temperature > PROMPT_RESET_TEMPERATURE {
                prompt_reset_since = all_tokens.len();
            }
        }
        self.model.decoder.release();
        Ok(Transcript { language, segments })
    }
}

/// Loudest 25 ms (400-sample, hop 160) RMS level of `samples[from..to]`, in dB full scale.
pub fn peak_level_dbfs(samples: &[f32], from: usize, to: usize) -> f32 {
    let to = to.min(samples.len());
    let mut peak = 0f32;
    let mut start = from;
    while start < to {
        let frame = &samples[start..(start + 400).min(to)];
        let ms = frame.iter().map(|x| x * x).sum::<f32>() / frame.len() as f32;
        peak = peak.max(ms);
        start += 160;
    }
    10.0 * peak.max(1e-20).log10()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Cuts a window's tokens into segments at timestamp pairs. Returns `(start s, end s,
/// tokens)` relative to the window and how many mel frames to advance (openai `transcribe`).
pub fn split_by_timestamps(
    tokens: &[u32],
    timestamp_begin: u32,
    segment_size: usize,
    segment_duration: f64,
) -> (Vec<(f64, f64, Vec<u32>)>, usize) {
    let is_ts = |t: u32| t >= timestamp_begin;
    let time = |t: u32| (t - timestamp_begin) as f64 * TIME_PRECISION;
    let n = tokens.len();
    let single_timestamp_ending = n >= 2 && !is_ts(tokens[n - 2]) && is_ts(tokens[n - 1]);
    let mut consecutive: Vec<usize> = (1..n)
        .filter(|&i| is_ts(tokens[i - 1]) && is_ts(tokens[i]))
        .collect();
    let mut out = Vec::new();
    if !consecutive.is_empty() {
        if single_timestamp_ending {
            consecutive.push(n);
        }
        let mut last = 0;
        for &cur in &consecutive {
            let slice = &tokens[last..cur];
            if let (Some(&a), Some(&b)) = (slice.first(), slice.last()) {
                if is_ts(a) && is_ts(b) {
                    out.push((time(a), time(b), slice.to_vec()));
                }
            }
            last = cur;
        }
        let advance = if single_timestamp_ending {
            segment_size
        } else {
            let last_ts = tokens[last - 1];
            (last_ts - timestamp_begin) as usize * INPUT_STRIDE
        };
        (out, advance)
    } else {
        let mut duration = segment_duration;
        if let Some(&last_ts) = tokens.iter().rev().find(|&&t| is_ts(t)) {
            if last_ts != timestamp_begin {
                duration = time(last_ts);
            }
        }
        if !tokens.is_empty() {
            out.push((0.0, duration, tokens.to_vec()));
        }
        (out, segment_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trimmed_encoder_window_is_the_audio_and_its_margin_up_to_30_s() {
        assert_eq!(EncoderWindow::Full.frames(500), N_FRAMES);
        let trimmed = EncoderWindow::Trimmed { margin_s: 10.0 };
        assert_eq!(trimmed.frames(500), 1500);
        // Odd lengths round up to the stride-2 convolution's even input.
        assert_eq!(trimmed.frames(501), 1502);
        assert_eq!(trimmed.frames(2500), N_FRAMES);
        assert_eq!(EncoderWindow::Trimmed { margin_s: 0.0 }.frames(1), 2);
        assert_eq!(EncoderWindow::Trimmed { margin_s: -3.0 }.frames(800), 800);
    }

    const TB: u32 = 50364;
    const EOT: u32 = 50257;

    fn filter() -> LogitFilter<'static> {
        LogitFilter {
            suppress: &[1, 2],
            suppress_begin: &[220, EOT],
            eot: EOT,
            timestamp_begin: TB,
            max_initial_timestamp: TB + 50,
        }
    }

    fn flat() -> Vec<f32> {
        vec![0.0; (TB + 1501) as usize]
    }

    #[test]
    fn timestamp_token_means_twenty_ms_steps_from_zero() {
        // <|0.00|> is timestamp_begin itself: no off-by-one 40 ms shift.
        let (segs, advance) = split_by_timestamps(
            &[TB, 100, 200, TB + 50, TB + 50, 300, TB + 125],
            TB,
            3000,
            30.0,
        );
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].0, segs[0].1), (0.0, 1.0));
        assert_eq!((segs[1].0, segs[1].1), (1.0, 2.5));
        // Ends on a single timestamp: the whole window is consumed.
        assert_eq!(advance, 3000);
    }

    #[test]
    fn unfinished_segment_makes_the_next_window_resume_at_the_last_pair() {
        // A segment [0.00 .. 4.00] then text without a closing timestamp.
        let toks = [TB, 11, TB + 200, TB + 200, 12, 13];
        let (segs, advance) = split_by_timestamps(&toks, TB, 3000, 30.0);
        assert_eq!(segs.len(), 1);
        assert_eq!((segs[0].0, segs[0].1), (0.0, 4.0));
        // Resume at 4.00 s = 400 mel frames.
        assert_eq!(advance, 400);
    }

    #[test]
    fn window_without_pairs_is_one_segment_up_to_its_last_timestamp() {
        let (segs, advance) = split_by_timestamps(&[TB, 5, 6, TB + 150], TB, 2000, 20.0);
        assert_eq!(segs, vec![(0.0, 3.0, vec![TB, 5, 6, TB + 150])]);
        assert_eq!(advance, 2000);
    }

    #[test]
    fn first_token_is_an_early_timestamp() {
        let mut l = flat();
        l[42] = 10.0; // a strong text token
        l[(TB + 300) as usize] = 20.0; // a late timestamp
        filter().apply(&mut l, &[]);
        let t = argmax(&l);
        assert!((TB..=TB + 50).contains(&t), "got {t}");
        assert_eq!(l[220], f32::NEG_INFINITY);
        assert_eq!(l[EOT as usize], f32::NEG_INFINITY);
    }

    #[test]
    fn timestamps_come_in_pairs_and_never_go_back() {
        // After <|0.00|> text: timestamps before the last are banned.
        let mut l = flat();
        l[(TB + 10) as usize] = 5.0;
        filter().apply(&mut l, &[TB + 20, 42]);
        assert_eq!(l[(TB + 10) as usize], f32::NEG_INFINITY);
        assert!(
            l[(TB + 20) as usize].is_finite(),
            "equal timestamps allowed, as CTranslate2"
        );
        // After text + closing timestamp (open pair): text is banned, EOT and later ts allowed.
        let mut l = flat();
        l[EOT as usize] = 10.0;
        filter().apply(&mut l, &[TB, 42, TB + 30]);
        assert_eq!(l[42], f32::NEG_INFINITY);
        assert!(l[EOT as usize].is_finite());
        assert!(
            l[(TB + 30) as usize].is_finite(),
            "pair may close at the same time"
        );
        // After a closed pair: another timestamp is banned.
        let mut l = flat();
        filter().apply(&mut l, &[TB, 42, TB + 30, TB + 30]);
        assert!(l[(TB as usize)..].iter().all(|v| *v == f32::NEG_INFINITY));
        // Suppressed tokens stay suppressed.
        assert_eq!(l[1], f32::NEG_INFINITY);
    }

    #[test]
    fn timestamp_mass_beats_a_single_text_token() {
        // 1500 timestamps at 0 vs one text token at 5: logsumexp(ts) = ln(1500) ≈ 7.3 > 5.
        let mut l = flat();
        l[..TB as usize].fill(f32::NEG_INFINITY);
        l[42] = 5.0;
        filter().apply(&mut l, &[TB, 42]);
        assert_eq!(l[42], f32::NEG_INFINITY);
    }

    #[test]
    fn level_of_silence_tone_and_a_short_burst() {
        let silence = vec![0f32; 16000];
        assert!(peak_level_dbfs(&silence, 0, 16000) < -150.0);
        let tone: Vec<f32> = (0..16000).map(|i| (i as f32 * 0.1).sin() * 0.5).collect();
        // A 0.5-amplitude sine has RMS 0.354: −9 dBFS.
        assert!((peak_level_dbfs(&tone, 0, 16000) + 9.03).abs() < 0.2);
        // 50 ms of speech-level sound in ten seconds of silence still counts.
        let mut burst = vec![0f32; 160_000];
        burst[80_000..80_800]
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = (i as f32 * 0.3).sin() * 0.1);
        assert!(peak_level_dbfs(&burst, 0, burst.len()) > SILENCE_DBFS);
        assert!(peak_level_dbfs(&burst, 0, 70_000) < SILENCE_DBFS);
    }

    #[test]
    fn compression_ratio_flags_loops_and_not_speech() {
        let normal = "And so my fellow Americans, ask not what your country can do for you.";
        let looped = "I'm sorry. ".repeat(30);
        assert!(compression_ratio(normal) < COMPRESSION_RATIO_THRESHOLD);
        assert!(compression_ratio(&looped) > COMPRESSION_RATIO_THRESHOLD);
        assert!(compression_ratio(normal).is_finite());
        assert_eq!(compression_ratio(""), 0.0);
    }
}
