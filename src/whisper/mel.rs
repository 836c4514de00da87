//! Whisper's log-mel front end, computed window by window.
//!
//! Identical to openai/whisper `audio.py::log_mel_spectrogram` and faster-whisper's
//! `FeatureExtractor`: 400-point STFT of a periodic Hann window, hop 160, centred frames with
//! reflect padding, power spectrum, Slaney-style mel filterbank (librosa `filters.mel`,
//! `htk=False, norm="slaney"`), `log10(max(x, 1e-10))`, clamp to `max - 8`, then
//! `(x + 4) / 4`. Like faster-whisper, 160 zero samples are appended before the STFT and the
//! last STFT frame is dropped.
//!
//! The clamp uses the maximum over the *whole* recording, which is why a naive streaming version
//! would differ from the reference. [`LogMel::new`] therefore makes one pass that only tracks the
//! maximum, and [`LogMel::window`] computes the frames of one 30 s window on demand — an hour of
//! audio never has an hour of spectrogram in memory.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

/// Audio sample rate Whisper expects.
pub const SAMPLE_RATE: usize = 16_000;
/// STFT size (25 ms).
pub const N_FFT: usize = 400;
/// STFT hop (10 ms): one mel frame.
pub const HOP_LENGTH: usize = 160;
/// Frames in one 30 s encoder window.
pub const N_FRAMES: usize = 3000;
/// Zero samples faster-whisper appends before the STFT.
const TAIL_PADDING: usize = HOP_LENGTH;
/// Floor of the power spectrum before `log10`.
const LOG_FLOOR: f32 = 1e-10;

/// Mel filterbank: `n_mels` rows of `N_FFT / 2 + 1` weights (librosa's Slaney mel scale and
/// area normalisation, as in Whisper's `mel_filters.npz`).
pub fn mel_filters(n_mels: usize) -> Vec<Vec<f32>> {
    let sr = SAMPLE_RATE as f64;
    let n_bins = N_FFT / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * sr / N_FFT as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|i| {
            let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - mel_f[i]) / (mel_f[i + 1] - mel_f[i]);
                    let upper = (mel_f[i + 2] - f) / (mel_f[i + 2] - mel_f[i + 1]);
                    (lower.min(upper).max(0.0) * enorm) as f32
                })
                .collect()
        })
        .collect()
}

/// Slaney mel scale: linear below 1 kHz, logarithmic above (librosa `hz_to_mel`, htk=False).
fn hz_to_mel(f: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= MIN_LOG_HZ {
        min_log_mel + (f / MIN_LOG_HZ).ln() / logstep
    } else {
        f / F_SP
    }
}

fn mel_to_hz(m: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp()
    } else {
        F_SP * m
    }
}

/// Log-mel features of one recording, produced a window at a time.
pub struct LogMel<'a> {
    samples: &'a [f32],
    n_mels: usize,
    filters: Vec<Vec<f32>>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
    /// Largest `log10` value over the whole recording (for the `max - 8` clamp).
    max_log: f32,
}

impl<'a> LogMel<'a> {
    /// Prepares features for `samples` (16 kHz mono) and finds the global maximum.
    pub fn new(samples: &'a [f32], n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|i| {
                let x = std::f64::consts::PI * 2.0 * i as f64 / N_FFT as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        let mut mel = Self {
            samples,
            n_mels,
            filters: mel_filters(n_mels),
            window,
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
            max_log: f32::NEG_INFINITY,
        };
        // One pass for the maximum, in bounded chunks so memory stays flat. faster-whisper's
        // maximum also covers the frame after the last content frame (it drops two STFT frames
        // in all, but only one before taking the maximum).
        let total = mel.n_frames() + 1;
        let mut max_log = f32::NEG_INFINITY;
        let mut start = 0;
        while start < total {
            let n = N_FRAMES.min(total - start);
            let block = mel.log_frames(start, n);
            max_log = block.iter().copied().fold(max_log, f32::max);
            start += n;
        }
        mel.max_log = max_log;
        mel
    }

    /// Mel bins per frame.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Frames that carry audio (`len / 160`), the `content_frames` of the reference.
    pub fn n_frames(&self) -> usize {
        self.samples.len() / HOP_LENGTH
    }

    /// Sample `i` of the padded signal: the recording, `TAIL_PADDING` zeros, and reflections
    /// at both ends for the centred STFT.
    fn padded_sample(&self, i: isize) -> f32 {
        let n = (self.samples.len() + TAIL_PADDING) as isize;
        let mut i = i;
        if n == 1 {
            return self.samples.first().copied().unwrap_or(0.0);
        }
        // Reflect (numpy "reflect": the edge sample is not repeated).
        loop {
            if i < 0 {
                i = -i;
            } else if i >= n {
                i = 2 * (n - 1) - i;
            } else {
                break;
            }
        }
        self.samples.get(i as usize).copied().unwrap_or(0.0)
    }

    /// `log10` mel energies of frames `start..start + n`, mel-major (`n_mels × n`).
    fn log_frames(&self, start: usize, n: usize) -> Vec<f32> {
        let n_bins = N_FFT / 2 + 1;
        let frames: Vec<Vec<f32>> = (start..start + n)
            .into_par_iter()
            .map_init(
                || {
                    (
                        self.fft.make_input_vec(),
                        self.fft.make_output_vec(),
                        self.fft.make_scratch_vec(),
                        vec![0f32; n_bins],
                    )
                },
                |(input, output, scratch, power), f| {
                    let centre = (f * HOP_LENGTH) as isize;
                    for (k, x) in input.iter_mut().enumerate() {
                        *x = self.padded_sample(centre - (N_FFT / 2) as isize + k as isize)
                            * self.window[k];
                    }
                    // Input and output lengths are fixed by the plan, so this cannot fail.
                    let _ = self.fft.process_with_scratch(input, output, scratch);
                    for (p, c) in power.iter_mut().zip(output.iter()) {
                        *p = c.norm_sqr();
                    }
                    self.filters
                        .iter()
                        .map(|row| {
                            let e: f32 = row.iter().zip(power.iter()).map(|(w, p)| w * p).sum();
                            e.max(LOG_FLOOR).log10()
                        })
                        .collect()
                },
            )
            .collect();
        let mut out = vec![0f32; self.n_mels * n];
        for (t, frame) in frames.iter().enumerate() {
            for (m, v) in frame.iter().enumerate() {
                out[m * n + t] = *v;
            }
        }
        out
    }

    /// The encoder input for frames `seek..seek + len` (`len ≤ N_FRAMES`): `n_mels × N_FRAMES`,
    /// mel-major, normalised, and zero-padded past `len` exactly as the reference pads a short
    /// last window.
    pub fn window(&self, seek: usize, len: usize) -> Vec<f32> {
        self.window_of_width(seek, len, N_FRAMES)
    }

    /// [`window`](Self::window) cut to `width` frames (`n_mels × width`): the same values for the
    /// first `width` frames, zero padding only up to `width`.
    pub fn window_of_width(&self, seek: usize, len: usize, width: usize) -> Vec<f32> {
        let width = width.min(N_FRAMES);
        let len = len.min(width).min(self.n_frames().saturating_sub(seek));
        let raw = self.log_frames(seek, len);
        let floor = self.max_log - 8.0;
        let mut out = vec![0f32; self.n_mels * width];
        for m in 0..self.n_mels {
            for t in 0..len {
                out[m * width + t] = (raw[m * len + t].max(floor) + 4.0) / 4.0;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_bends_at_1khz() {
        for f in [0.0, 440.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-6, "{f}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(500.0) - 7.5).abs() < 1e-12);
    }

    #[test]
    fn filterbank_matches_whisper_reference_values() {
        // Values from Whisper's `mel_filters.npz` (librosa 0.8 slaney filters, 80 mels).
        let f = mel_filters(80);
        assert_eq!(f.len(), 80);
        assert_eq!(f[0].len(), 201);
        // The first filter peaks on bin 1 (40 Hz) with weight 2/(f2-f0)·1.
        assert!((f[0][1] - 0.024_862_593).abs() < 1e-6, "{}", f[0][1]);
        assert_eq!(f[0][0], 0.0);
        // Each filter is a triangle: non-zero on a contiguous run of bins.
        for row in &f {
            let nz: Vec<usize> = (0..201).filter(|&i| row[i] > 0.0).collect();
            assert!(!nz.is_empty());
            assert_eq!(nz.last().unwrap() - nz[0] + 1, nz.len());
        }
        let f128 = mel_filters(128);
        assert_eq!(f128.len(), 128);
    }

    #[test]
    fn silence_is_flat_at_the_floor() {
        let s = vec![0f32; 16000];
        let mel = LogMel::new(&s, 80);
        assert_eq!(mel.n_frames(), 100);
        let w = mel.window(0, N_FRAMES);
        // log10(1e-10) = -10 everywhere, clamp is a no-op, (−10 + 4) / 4 = −1.5.
        assert!(w[..100].iter().all(|&v| (v + 1.5).abs() < 1e-6));
        // Past the content the window is zero-padded like the reference.
        assert!(w[100..N_FRAMES].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn tone_lands_in_the_right_mel_bin_and_clamp_is_global() {
        // 1 kHz tone: energy must peak in the filter whose centre is nearest 1 kHz.
        let s: Vec<f32> = (0..48000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin() * 0.5)
            .collect();
        let mel = LogMel::new(&s, 80);
        let w = mel.window(100, 1);
        let peak = (0..80)
            .max_by(|&a, &b| w[a * N_FRAMES].total_cmp(&w[b * N_FRAMES]))
            .unwrap();
        let filters = mel_filters(80);
        let bin_1k = 1000 * N_FFT / SAMPLE_RATE; // FFT bin 25
        let best = (0..80)
            .max_by(|&a, &b| filters[a][bin_1k].total_cmp(&filters[b][bin_1k]))
            .unwrap();
        assert_eq!(peak, best);
        // Clamp floor: nothing below (max − 8 + 4) / 4.
        let floor = (mel.max_log - 8.0 + 4.0) / 4.0;
        let full = mel.window(0, N_FRAMES);
        let content = mel.n_frames();
        for m in 0..80 {
            for t in 0..content {
                assert!(full[m * N_FRAMES + t] >= floor - 1e-6);
            }
        }
    }

    #[test]
    fn a_narrower_window_holds_the_same_frames_with_less_padding() {
        let s: Vec<f32> = (0..16000u64 * 3)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mel = LogMel::new(&s, 80);
        let full = mel.window(0, N_FRAMES);
        let width = 500;
        let narrow = mel.window_of_width(0, N_FRAMES, width);
        assert_eq!(narrow.len(), 80 * width);
        for m in 0..80 {
            assert_eq!(
                narrow[m * width..(m + 1) * width],
                full[m * N_FRAMES..m * N_FRAMES + width]
            );
        }
        // 300 frames of audio, zero from there to the narrow window's end.
        assert!(narrow[300..width].iter().all(|&v| v == 0.0));
        assert!(narrow[..300].iter().all(|&v| v != 0.0));
    }

    #[test]
    fn windows_tile_the_recording_consistently() {
        // A frame computed as part of the second window equals the same frame computed from a
        // window starting earlier: windows see one global normalisation.
        let s: Vec<f32> = (0..16000u64 * 40)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mel = LogMel::new(&s, 80);
        let a = mel.window(2000, 3000);
        let b = mel.window(3000, 3000);
        for m in 0..80 {
            for t in 0..1000 {
                assert_eq!(a[m * N_FRAMES + 1000 + t], b[m * N_FRAMES + t]);
            }
        }
    }
}
