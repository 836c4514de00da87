//! Audio input: turn whatever file a chat hands us into the 16 kHz mono `f32` samples in
//! `[-1, 1]` that Whisper expects.
//!
//! Pipeline: symphonia probes the container (OGG, WAV, MP3, FLAC, MP4/M4A, ADTS) and demuxes the
//! first decodable audio track → each packet is decoded (symphonia's decoders, or `opus-rs` for
//! Opus) → the channels are averaged to mono → a streaming rubato FFT resampler converts to
//! 16 kHz as packets arrive. Only the 16 kHz output grows with the file; everything else is one
//! packet or one resampler chunk, so an hour-long clip costs ~230 MB of output and no 48 kHz copy.
//!
//! Why Opus is wired by hand: Telegram voice messages are OGG/Opus and video notes are MP4 with
//! AAC or Opus, but symphonia 0.6 has demuxers for both containers and no Opus decoder. We take
//! packets straight from symphonia's demuxer and feed them to `opus-rs` (a pure-Rust port of
//! libopus 1.6, so no C toolchain or system libopus is needed when cross-building for the Pi).
//! Driving the decoder directly was simpler than registering a symphonia `AudioDecoder`: the only
//! container-specific work is reading `OpusHead` and trimming. The OGG demuxer does not apply the
//! pre-skip (it only records it as the track delay), so we drop the first `pre_skip` samples
//! ourselves; it does apply the end trim from the last page's granule position as the final
//! packet's `trim_end`, which we honour, so the output length matches `opusdec` exactly. Opus is
//! decoded at 48 kHz (what `opusdec` outputs by default) and then resampled with the same
//! resampler as every other input.
//!
//! Damaged input never panics: a packet that fails to decode is skipped (Opus packets are
//! concealed so later audio keeps its timing) and counted; only a stream where nothing decodes,
//! or that ends before its last page, is an error.

mod opus;

use std::fs::File;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};

use log::{debug, warn};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler, WindowFunction};
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::CodecParameters;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use self::opus::{OpusHead, OpusTrackDecoder};

/// The sample rate Whisper consumes.
pub const SAMPLE_RATE: u32 = 16_000;

/// Why a file could not be turned into samples. Messages are one line and name the cause.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is a directory", .0.display())]
    IsDirectory(PathBuf),
    #[error("empty audio: {0}")]
    Empty(&'static str),
    #[error("not an audio file ({0})")]
    NotAudio(String),
    /// A container was recognised but its headers are broken.
    #[error("corrupt/truncated audio file: {0}")]
    Malformed(String),
    #[error("no audio track in the file")]
    NoAudioTrack,
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    /// The stream broke off or could not be decoded. `packet` counts the track's packets from 0.
    #[error("corrupt/truncated {codec} stream at packet {packet}: {reason}")]
    Corrupt {
        codec: String,
        packet: u64,
        reason: String,
    },
    #[error("sample rate changes mid-stream ({from} Hz -> {to} Hz)")]
    RateChange { from: u32, to: u32 },
    #[error("resampling {from} Hz -> {to} Hz failed: {reason}")]
    Resample { from: u32, to: u32, reason: String },
}

/// Decodes any supported file to 16 kHz mono `f32` in `[-1, 1]`.
pub fn decode_file(path: &Path) -> Result<Vec<f32>, AudioError> {
    let file = open_file(path)?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), ext, Some(SAMPLE_RATE)).map(|(samples, _)| samples)
}

/// Same as [`decode_file`] for bytes already in memory; `hint` is an optional file extension such
/// as `"ogg"` that speeds up format detection.
pub fn decode_bytes(bytes: Vec<u8>, hint: Option<&str>) -> Result<Vec<f32>, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty("0 bytes of input"));
    }
    decode_source(Box::new(Cursor::new(bytes)), hint, Some(SAMPLE_RATE)).map(|(samples, _)| samples)
}

/// Decodes to mono at the source's own rate (48 kHz for Opus), returning `(samples, rate)`.
///
/// For checking the decoder against reference tools without a resampler in the way; Whisper
/// callers want [`decode_file`].
pub fn decode_file_native(path: &Path) -> Result<(Vec<f32>, u32), AudioError> {
    let file = open_file(path)?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), ext, None)
}

fn open_file(path: &Path) -> Result<File, AudioError> {
    let io_err = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Checked up front: on Linux opening a directory succeeds and only the read fails, with a
    // less obvious message.
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_dir() {
        return Err(AudioError::IsDirectory(path.to_path_buf()));
    }
    if meta.len() == 0 {
        return Err(AudioError::Empty("0-byte file"));
    }
    File::open(path).map_err(io_err)
}

/// Probes, demuxes and decodes `source`. With `target_rate` the output is resampled to it;
/// without, it stays at the source rate (which must then be constant).
fn decode_source(
    source: Box<dyn MediaSource>,
    hint: Option<&str>,
    target_rate: Option<u32>,
) -> Result<(Vec<f32>, u32), AudioError> {
    let mss = MediaSourceStream::new(source, Default::default());
    let mut probe_hint = Hint::new();
    if let Some(ext) = hint {
        probe_hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &probe_hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(probe_error)?;

    let mut track = TrackDecoder::open(format.as_ref())?;
    let mut out = MonoSink::new(target_rate);
    if let Some((frames, rate)) = track.expected_len {
        out.reserve_for(frames, rate);
    }
    let mut stats = PacketStats::default();

    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A chained OGG stream starts a new logical stream; pick its audio track and go on.
            Err(SymError::ResetRequired) => {
                track = TrackDecoder::open(format.as_ref())?;
                continue;
            }
            // The demuxer cannot continue (e.g. the file ends before the stream's last page):
            // the file is truncated or damaged beyond the packet level.
            Err(err) => {
                return Err(AudioError::Corrupt {
                    codec: track.codec_name.clone(),
                    packet: stats.seen,
                    reason: demux_reason(&err),
                });
            }
        };
        if packet.track_id != track.track_id {
            continue;
        }
        let index = stats.seen;
        stats.seen += 1;
        match track.decode(&packet, &mut out) {
            Ok(()) => stats.ok += 1,
            Err(reason) => {
                debug!(
                    "skipping undecodable {} packet {index}: {reason}",
                    track.codec_name
                );
                stats.failed += 1;
                stats.first_failure.get_or_insert((index, reason));
            }
        }
    }

    if stats.failed > 0 {
        if stats.ok == 0 {
            let (packet, reason) = stats.first_failure.unwrap_or((0, String::new()));
            return Err(AudioError::Corrupt {
                codec: track.codec_name,
                packet,
                reason,
            });
        }
        warn!(
            "skipped {} of {} {} packets that failed to decode",
            stats.failed, stats.seen, track.codec_name
        );
    }
    let (samples, rate) = out.finish()?;
    if samples.is_empty() {
        return Err(AudioError::Empty("the stream contains no samples"));
    }
    Ok((samples, rate))
}

#[derive(Default)]
struct PacketStats {
    seen: u64,
    ok: u64,
    failed: u64,
    first_failure: Option<(u64, String)>,
}

fn probe_error(err: SymError) -> AudioError {
    match err {
        // The probe scans the whole input for a container signature and reports "unsupported"
        // when none matches; every other error comes from a container reader that recognised
        // its signature and then failed on the header behind it.
        SymError::Unsupported(what) if what.contains("probe") => {
            AudioError::NotAudio("unrecognised format".into())
        }
        SymError::Unsupported(what) => {
            AudioError::NotAudio(format!("unsupported container feature: {what}"))
        }
        SymError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            AudioError::Malformed("it ends inside the container header".into())
        }
        other => AudioError::Malformed(other.to_string()),
    }
}

fn demux_reason(err: &SymError) -> String {
    match err {
        SymError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            "file ends before the end of the stream".into()
        }
        other => other.to_string(),
    }
}

/// The decoder for the selected track: symphonia's own, or `opus-rs` for Opus.
struct TrackDecoder {
    track_id: u32,
    codec_name: String,
    kind: DecoderKind,
    /// Reused interleaved copy of one decoded symphonia buffer.
    interleaved: Vec<f32>,
    /// Length in frames and rate the container declares, if it does.
    expected_len: Option<(u64, u32)>,
}

enum DecoderKind {
    Symphonia(Box<dyn AudioDecoder>),
    Opus(Box<OpusTrackDecoder>),
}

impl TrackDecoder {
    /// Picks the first audio track we can decode and builds its decoder.
    fn open(format: &dyn FormatReader) -> Result<Self, AudioError> {
        let codecs = symphonia::default::get_codecs();
        let audio_tracks = || {
            format
                .tracks()
                .iter()
                .filter_map(|t| match &t.codec_params {
                    Some(CodecParameters::Audio(params)) => Some((t, params)),
                    _ => None,
                })
        };
        let chosen = audio_tracks()
            .find(|(_, p)| p.codec == CODEC_ID_OPUS || codecs.get_audio_decoder(p.codec).is_some());
        let Some((track, params)) = chosen else {
            return Err(match audio_tracks().next() {
                Some((_, p)) => AudioError::UnsupportedCodec(format!("codec id {}", p.codec)),
                None => AudioError::NoAudioTrack,
            });
        };

        let expected_len = track.num_frames.zip(if params.codec == CODEC_ID_OPUS {
            Some(opus::OPUS_RATE)
        } else {
            params.sample_rate
        });

        if params.codec == CODEC_ID_OPUS {
            let dec = open_opus(format, track)?;
            return Ok(TrackDecoder {
                track_id: track.id,
                codec_name: "Opus".into(),
                kind: DecoderKind::Opus(Box::new(dec)),
                interleaved: Vec::new(),
                expected_len,
            });
        }

        let codec_name = codecs.get_audio_decoder(params.codec).map_or_else(
            || format!("codec {}", params.codec),
            |r| r.codec.info.short_name.to_string(),
        );
        // Gapless mode makes the decoders apply the demuxer's delay/padding trims (MP3 LAME tags).
        let dec = codecs
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|e| AudioError::UnsupportedCodec(format!("{codec_name}: {e}")))?;
        Ok(TrackDecoder {
            track_id: track.id,
            codec_name,
            kind: DecoderKind::Symphonia(dec),
            interleaved: Vec::new(),
            expected_len,
        })
    }

    /// Decodes one packet into `out`. An error means this packet was skipped.
    fn decode(
        &mut self,
        packet: &symphonia::core::packet::Packet,
        out: &mut MonoSink,
    ) -> Result<(), String> {
        let trim_start = usize::try_from(packet.trim_start.get()).unwrap_or(usize::MAX);
        let trim_end = usize::try_from(packet.trim_end.get()).unwrap_or(usize::MAX);
        match &mut self.kind {
            DecoderKind::Opus(dec) => {
                let channels = dec.channels();
                match dec.decode(&packet.data, trim_start, trim_end) {
                    Ok(samples) => out
                        .push(samples, channels, opus::OPUS_RATE)
                        .map_err(|e| e.to_string()),
                    Err(reason) => {
                        // Fill the packet's duration with concealment so the rest of the audio
                        // stays aligned; the packet still counts as failed.
                        let frames = usize::try_from(packet.block_dur().get()).unwrap_or(0);
                        if let Ok(samples) = dec.conceal(frames, trim_start, trim_end) {
                            out.push(samples, channels, opus::OPUS_RATE)
                                .map_err(|e| e.to_string())?;
                        }
                        Err(reason)
                    }
                }
            }
            DecoderKind::Symphonia(dec) => match dec.decode(packet) {
                Ok(buf) => {
                    if buf.frames() == 0 {
                        return Ok(());
                    }
                    let channels = buf.spec().channels().count();
                    let rate = buf.spec().rate();
                    buf.copy_to_vec_interleaved(&mut self.interleaved);
                    out.push(&self.interleaved, channels, rate)
                        .map_err(|e| e.to_string())
                }
                Err(err) => Err(err.to_string()),
            },
        }
    }
}

fn open_opus(format: &dyn FormatReader, track: &Track) -> Result<OpusTrackDecoder, AudioError> {
    let corrupt = |reason: String| AudioError::Corrupt {
        codec: "Opus".into(),
        packet: 0,
        reason,
    };
    let extra = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .and_then(|p| p.extra_data.as_deref())
        .ok_or_else(|| corrupt("no OpusHead header".into()))?;
    let big_endian = format.format_info().short_name == "isomp4";
    let head = OpusHead::parse(extra, big_endian).map_err(corrupt)?;
    if big_endian {
        // symphonia's MP4 reader ignores edit lists, so only the pre-skip from `dOps` trims the
        // start; the few padding samples at the end stay.
        debug!("MP4 Opus track: pre-skip {} samples", head.pre_skip);
    }
    OpusTrackDecoder::new(head)
        .map_err(|reason| AudioError::UnsupportedCodec(format!("Opus: {reason}")))
}

/// Collects decoded audio as mono, resampling on the fly when a target rate is set.
struct MonoSink {
    target_rate: Option<u32>,
    out: Vec<f32>,
    /// Rate of the audio pushed so far.
    rate: Option<u32>,
    /// Present while the source rate differs from the target.
    resampler: Option<StreamResampler>,
    /// Reused buffer for one packet's downmix.
    mono: Vec<f32>,
}

impl MonoSink {
    fn new(target_rate: Option<u32>) -> Self {
        MonoSink {
            target_rate,
            out: Vec::new(),
            rate: None,
            resampler: None,
            mono: Vec::new(),
        }
    }

    /// Reserves the output up front when the container states the length, so the buffer is
    /// allocated once instead of doubling (which briefly holds up to twice the samples). Capped,
    /// because the stated length comes from an untrusted header.
    fn reserve_for(&mut self, frames: u64, rate: u32) {
        const MAX_RESERVE: u64 = 30 * 60 * SAMPLE_RATE as u64;
        if rate == 0 {
            return;
        }
        let out_rate = u64::from(self.target_rate.unwrap_or(rate));
        let wanted = frames.saturating_mul(out_rate) / u64::from(rate);
        // A little slack for codecs whose container length excludes priming (AAC in MP4).
        let wanted = wanted.saturating_add(out_rate / 10).min(MAX_RESERVE);
        self.out.reserve_exact(usize::try_from(wanted).unwrap_or(0));
    }

    fn push(&mut self, interleaved: &[f32], channels: usize, rate: u32) -> Result<(), AudioError> {
        if interleaved.is_empty() {
            return Ok(());
        }
        if self.rate != Some(rate) {
            self.switch_rate(rate)?;
        }
        downmix_into(interleaved, channels, &mut self.mono);
        match &mut self.resampler {
            Some(r) => r.push(&self.mono, &mut self.out),
            None => {
                self.out.extend_from_slice(&self.mono);
                Ok(())
            }
        }
    }

    /// Starts a new segment at `rate`. A mid-stream change (chained streams, odd MP3s) flushes
    /// the current resampler and starts another, so the output stays at one rate.
    fn switch_rate(&mut self, rate: u32) -> Result<(), AudioError> {
        if rate == 0 {
            return Err(AudioError::Resample {
                from: 0,
                to: self.target_rate.unwrap_or(0),
                reason: "zero sample rate".into(),
            });
        }
        if let Some(r) = self.resampler.take() {
            r.finish(&mut self.out)?;
        }
        match (self.target_rate, self.rate) {
            (None, Some(from)) => return Err(AudioError::RateChange { from, to: rate }),
            (Some(target), _) if target != rate => {
                self.resampler = Some(StreamResampler::new(rate, target)?);
            }
            _ => {}
        }
        self.rate = Some(rate);
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<f32>, u32), AudioError> {
        if let Some(r) = self.resampler.take() {
            r.finish(&mut self.out)?;
        }
        let rate = self.target_rate.or(self.rate).unwrap_or(SAMPLE_RATE);
        self.out.shrink_to_fit();
        Ok((self.out, rate))
    }
}

/// Averages interleaved channels into `mono` (replacing its contents).
fn downmix_into(interleaved: &[f32], channels: usize, mono: &mut Vec<f32>) {
    mono.clear();
    if channels <= 1 {
        mono.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    mono.extend(
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * scale),
    );
}

/// Averages interleaved channels to mono.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    let mut mono = Vec::with_capacity(interleaved.len() / channels.max(1));
    downmix_into(interleaved, channels, &mut mono);
    mono
}

/// Resamples a whole mono clip from `from` Hz to `to` Hz with the same resampler the decoder uses.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let mut out = Vec::new();
    let mut r = StreamResampler::new(from, to)?;
    r.push(samples, &mut out)?;
    r.finish(&mut out)?;
    Ok(out)
}

/// A rubato FFT resampler fed in arbitrary-sized pieces, producing exactly
/// `ceil(input_len * to / from)` frames aligned with the input (the filter delay is cut off),
/// like `Resampler::process_all` but without holding the whole input.
struct StreamResampler {
    inner: Fft<f32>,
    from: u32,
    to: u32,
    /// Input waiting for a full chunk.
    pending: Vec<f32>,
    chunk_in: usize,
    scratch_out: Vec<f32>,
    /// Output frames still to drop: the resampler's filter delay.
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl StreamResampler {
    fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        let err = |reason: String| AudioError::Resample { from, to, reason };
        // FFT blocks of ~1024 output frames put the anti-alias cutoff at ~0.99 of the output
        // Nyquist (rubato's default 256 gives ~0.94, audibly duller speech); latency is irrelevant
        // for whole files.
        let sub_chunk_in = (u64::from(from) * 1024).div_ceil(u64::from(to)).max(1);
        let sub_chunk_in = usize::try_from(sub_chunk_in).map_err(|e| err(e.to_string()))?;
        const SUB_CHUNKS: usize = 4;
        let inner = Fft::<f32>::new_custom(
            from as usize,
            to as usize,
            sub_chunk_in * SUB_CHUNKS,
            SUB_CHUNKS,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| err(e.to_string()))?;
        let chunk_in = inner.input_frames_next();
        let scratch_out = vec![0.0; inner.output_frames_max()];
        Ok(StreamResampler {
            delay_left: inner.output_delay(),
            inner,
            from,
            to,
            pending: Vec::with_capacity(chunk_in),
            chunk_in,
            scratch_out,
            frames_in: 0,
            frames_out: 0,
        })
    }

    fn push(&mut self, mut input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        self.frames_in += input.len() as u64;
        while !input.is_empty() {
            let take = (self.chunk_in - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() == self.chunk_in {
                self.process(None, out)?;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Flushes the pending input and the filter tail, then cuts the output to the exact length.
    fn finish(mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let expected = (self.frames_in * u64::from(self.to)).div_ceil(u64::from(self.from));
        if !self.pending.is_empty() {
            self.process(Some(self.pending.len()), out)?;
            self.pending.clear();
        }
        while self.frames_out < expected {
            let before = self.frames_out;
            self.process(Some(0), out)?;
            if self.frames_out == before && self.delay_left == 0 {
                // Cannot happen with rubato's FFT resampler, but never spin forever.
                break;
            }
        }
        let excess = self.frames_out.saturating_sub(expected);
        let excess = usize::try_from(excess).unwrap_or(usize::MAX).min(out.len());
        out.truncate(out.len() - excess);
        Ok(())
    }

    fn process(
        &mut self,
        partial_len: Option<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), AudioError> {
        let (from, to) = (self.from, self.to);
        let err = |reason: String| AudioError::Resample { from, to, reason };
        let input = InterleavedSlice::new(&self.pending[..], 1, self.pending.len())
            .map_err(|e| err(e.to_string()))?;
        let out_len = self.scratch_out.len();
        let mut output = InterleavedSlice::new_mut(&mut self.scratch_out[..], 1, out_len)
            .map_err(|e| err(e.to_string()))?;
        let indexing = Indexing {
            partial_len,
            ..Indexing::default()
        };
        let (_, produced) = self
            .inner
            .process_into_buffer(&input, &mut output, Some(&indexing))
            .map_err(|e| err(e.to_string()))?;
        let produced = &self.scratch_out[..produced];
        let skip = self.delay_left.min(produced.len());
        self.delay_left -= skip;
        out.extend_from_slice(&produced[skip..]);
        self.frames_out += (produced.len() - skip) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;

    fn sine(freq: f32, rate: u32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| amp * (2.0 * PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Magnitude of the DFT of `x` at `freq` (Goertzel-style single bin), normalised so a sine of
    /// amplitude A reads ~A.
    fn tone_amplitude(x: &[f32], freq: f32, rate: u32) -> f32 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, &s) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * f64::from(freq) * i as f64 / f64::from(rate);
            re += f64::from(s) * ph.cos();
            im -= f64::from(s) * ph.sin();
        }
        (2.0 * (re * re + im * im).sqrt() / x.len() as f64) as f32
    }

    fn zero_crossings(x: &[f32]) -> usize {
        x.windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count()
    }

    #[test]
    fn downmix_averages_channels() {
        assert_eq!(downmix(&[1.0, 0.0, 0.5, -0.5], 2), vec![0.5, 0.0]);
        let three = downmix(&[0.3, 0.6, 0.9, 0.0, 0.0, 0.3], 3);
        assert_eq!(three.len(), 2);
        assert!((three[0] - 0.6).abs() < 1e-6 && (three[1] - 0.1).abs() < 1e-6);
        assert_eq!(downmix(&[0.25, -0.25], 1), vec![0.25, -0.25]);
    }

    #[test]
    fn stereo_44k1_sine_to_16k_mono_keeps_frequency() {
        let left = sine(1000.0, 44_100, 1.0, 0.5);
        // Both channels carry the tone; the right one also has a 12 kHz tone (above the 8 kHz
        // output Nyquist) that survives the downmix at amplitude 0.2 and must be filtered out.
        let hiss = sine(12_000.0, 44_100, 1.0, 0.2);
        let interleaved: Vec<f32> = left
            .iter()
            .zip(&hiss)
            .flat_map(|(&l, &h)| [l, l + 2.0 * h])
            .collect();
        let mono = downmix(&interleaved, 2);
        let out = resample(&mono, 44_100, SAMPLE_RATE).expect("resample");

        assert_eq!(out.len(), 16_000);
        // 1 kHz for 1 s: 2000 zero crossings (±2 for the ends).
        let zc = zero_crossings(&out[100..out.len() - 100]) as f32
            / ((out.len() - 200) as f32 / 16_000.0);
        assert!((zc - 2000.0).abs() < 10.0, "zero crossing rate {zc}");
        let a1k = tone_amplitude(&out, 1000.0, SAMPLE_RATE);
        assert!((a1k - 0.5).abs() < 0.01, "1 kHz amplitude {a1k}");
        // 12 kHz is above the 8 kHz output Nyquist: it must be filtered, not aliased to 4 kHz.
        let alias = tone_amplitude(&out, 4000.0, SAMPLE_RATE);
        assert!(
            alias < 0.002,
            "12 kHz aliased to 4 kHz with amplitude {alias}"
        );
    }

    #[test]
    fn resample_48k_to_16k_preserves_amplitude_and_alignment() {
        let input = sine(440.0, 48_000, 2.0, 0.8);
        let out = resample(&input, 48_000, SAMPLE_RATE).expect("resample");
        assert_eq!(out.len(), 32_000);
        let amp = tone_amplitude(&out[1000..31_000], 440.0, SAMPLE_RATE);
        assert!((amp - 0.8).abs() < 0.005, "amplitude {amp}");
        // The filter delay is cut off: the output matches the ideal 16 kHz sine sample by sample.
        let ideal = sine(440.0, 16_000, 2.0, 0.8);
        let max_err = out[1000..31_000]
            .iter()
            .zip(&ideal[1000..31_000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_err < 0.005, "max deviation from ideal {max_err}");
    }

    #[test]
    fn streaming_matches_one_shot_resample() {
        // Pushing in odd-sized pieces must give the same result as one push.
        let input: Vec<f32> = (0..50_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let whole = resample(&input, 22_050, SAMPLE_RATE).expect("resample");
        let mut pieces = Vec::new();
        let mut r = StreamResampler::new(22_050, SAMPLE_RATE).expect("resampler");
        for piece in input.chunks(997) {
            r.push(piece, &mut pieces).expect("push");
        }
        r.finish(&mut pieces).expect("finish");
        assert_eq!(whole.len(), (50_000u64 * 16_000).div_ceil(22_050) as usize);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn tiny_inputs_resample_to_exact_length() {
        for n in [1usize, 3, 47, 480, 4800] {
            let out = resample(&vec![0.1; n], 48_000, SAMPLE_RATE).expect("resample");
            assert_eq!(out.len(), n.div_ceil(3), "input {n}");
        }
    }

    #[test]
    fn sink_skips_resampling_at_16k_and_rejects_rate_change_in_native_mode() {
        let mut sink = MonoSink::new(Some(SAMPLE_RATE));
        let data = [0.1f32, 0.2, 0.3];
        sink.push(&data, 1, SAMPLE_RATE).expect("push");
        assert!(sink.resampler.is_none());
        assert_eq!(sink.finish().expect("finish").0, data);

        let mut native = MonoSink::new(None);
        native.push(&data, 1, 48_000).expect("push");
        assert!(matches!(
            native.push(&data, 1, 44_100),
            Err(AudioError::RateChange { .. })
        ));
    }
}
