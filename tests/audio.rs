//! Integration tests for `audio`: Opus against the reference decoder (`opusdec`), bit-exact WAV,
//! every kind of bad input, and the other containers/codecs generated with ffmpeg at test time.

use std::path::{Path, PathBuf};
use std::process::Command;

use voice_transcriber::whisper::audio::{self, AudioError, SAMPLE_RATE};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared(rel: &str) -> Option<PathBuf> {
    let p = root().join("../shared/eval").join(rel);
    p.is_file().then_some(p)
}

/// The JFK clip as a Telegram-style voice note (48 kHz mono Opus, 32 kbit/s, 11.00 s). The
/// checked-in copy is the same file as the shared one, so the test runs without `../shared`.
fn jfk_ogg() -> PathBuf {
    shared("opus/en_jfk_ask_not.ogg")
        .unwrap_or_else(|| root().join("tests/data/audio_jfk_ask_not.ogg"))
}

/// Whether an external tool can be run. Tests that need one print why they skip.
fn have(tool: &str, version_flag: &str) -> bool {
    Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn snr_db(reference: &[f32], test: &[f32]) -> f64 {
    let n = reference.len().min(test.len());
    let signal: f64 = reference[..n].iter().map(|&x| f64::from(x).powi(2)).sum();
    let noise: f64 = reference[..n]
        .iter()
        .zip(&test[..n])
        .map(|(&r, &t)| (f64::from(r) - f64::from(t)).powi(2))
        .sum();
    10.0 * (signal / noise.max(1e-30)).log10()
}

/// `opusdec --float` writes raw native-endian f32 when the output name is not `.wav`.
fn opusdec_48k(input: &Path, dir: &Path) -> Vec<f32> {
    let raw = dir.join("ref.f32");
    run(Command::new("opusdec")
        .args(["--quiet", "--rate", "48000", "--float"])
        .arg(input)
        .arg(&raw));
    let bytes = std::fs::read(&raw).expect("opusdec output");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn opus_matches_opusdec() {
    if !have("opusdec", "--version") {
        println!("SKIPPED: opusdec not installed (apt-get install opus-tools)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = jfk_ogg();
    let reference = opusdec_48k(&clip, dir.path());

    // At 48 kHz, before any resampling: same length (pre-skip and end trim as opusdec), same
    // waveform.
    let (ours, rate) = audio::decode_file_native(&clip).expect("decode");
    assert_eq!(rate, 48_000);
    assert_eq!(
        reference.len(),
        528_000,
        "opusdec length of the 11.00 s clip"
    );
    assert!(
        ours.len().abs_diff(reference.len()) <= 2,
        "length {} vs opusdec {}",
        ours.len(),
        reference.len()
    );
    let snr = snr_db(&reference, &ours);
    println!("SNR vs opusdec at 48 kHz: {snr:.1} dB");
    assert!(snr > 40.0, "SNR vs opusdec {snr:.1} dB");

    // Through the Whisper path: both resampled the same way still agree.
    let ours16 = audio::decode_file(&clip).expect("decode");
    let ref16 = audio::resample(&reference, 48_000, SAMPLE_RATE).expect("resample");
    assert_eq!(ours16.len(), 176_000);
    assert_eq!(ours16.len(), ref16.len());
    let snr16 = snr_db(&ref16, &ours16);
    println!("SNR vs opusdec at 16 kHz: {snr16:.1} dB");
    assert!(
        snr16 > 40.0,
        "SNR vs opusdec after resampling {snr16:.1} dB"
    );
    assert!(ours16
        .iter()
        .all(|s| s.is_finite() && s.abs() <= 1.0 + 1e-3));
}

#[test]
fn decode_bytes_equals_decode_file() {
    let clip = jfk_ogg();
    let from_file = audio::decode_file(&clip).expect("file");
    let bytes = std::fs::read(&clip).expect("read");
    assert_eq!(
        audio::decode_bytes(bytes.clone(), Some("ogg")).expect("bytes"),
        from_file
    );
    // The hint only speeds up probing.
    assert_eq!(audio::decode_bytes(bytes, None).expect("bytes"), from_file);
}

/// Minimal PCM WAV writer, so the WAV tests do not depend on external files.
fn wav_bytes(samples: &[i16], channels: u16, rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut v = Vec::with_capacity(44 + samples.len() * 2);
    v.extend(b"RIFF");
    v.extend((36 + data_len).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(1u16.to_le_bytes());
    v.extend(channels.to_le_bytes());
    v.extend(rate.to_le_bytes());
    v.extend((rate * u32::from(channels) * 2).to_le_bytes());
    v.extend((channels * 2).to_le_bytes());
    v.extend(16u16.to_le_bytes());
    v.extend(b"data");
    v.extend(data_len.to_le_bytes());
    samples.iter().for_each(|s| v.extend(s.to_le_bytes()));
    v
}

/// The 16-bit samples of a canonical PCM WAV (walks the chunks to find `data`).
fn wav_pcm16(bytes: &[u8]) -> Vec<i16> {
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        if id == b"data" {
            let data = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
            return data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
        }
        pos += 8 + len + (len & 1);
    }
    panic!("no data chunk");
}

#[test]
fn wav_16k_decodes_bit_exactly() {
    // Full-scale extremes included: -32768 must map to exactly -1.0.
    let pcm: Vec<i16> = (0..16_000i32)
        .map(|i| ((i * 7919) % 65_536 - 32_768) as i16)
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audio_synth.wav");
    std::fs::write(&path, wav_bytes(&pcm, 1, 16_000)).expect("write");
    let expected: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32_768.0).collect();
    assert_eq!(audio::decode_file(&path).expect("decode"), expected);

    let Some(shared_wav) = shared("wav/en_jfk_ask_not.wav") else {
        println!("../shared/eval/wav missing: checked the synthetic WAV only");
        return;
    };
    let bytes = std::fs::read(&shared_wav).expect("read");
    let expected: Vec<f32> = wav_pcm16(&bytes)
        .iter()
        .map(|&s| f32::from(s) / 32_768.0)
        .collect();
    assert_eq!(expected.len(), 176_000);
    assert_eq!(audio::decode_file(&shared_wav).expect("decode"), expected);
}

#[test]
fn multichannel_wav_is_averaged_and_resampled() {
    // 3 channels at 22.05 kHz: a 500 Hz tone on channel 0 only, silence elsewhere → mono tone at
    // a third of the amplitude.
    let frames = 22_050;
    let pcm: Vec<i16> = (0..frames)
        .flat_map(|i| {
            let s = (0.9
                * (2.0 * std::f64::consts::PI * 500.0 * i as f64 / 22_050.0).sin()
                * 32_767.0) as i16;
            [s, 0, 0]
        })
        .collect();
    let out = audio::decode_bytes(wav_bytes(&pcm, 3, 22_050), Some("wav")).expect("decode");
    assert_eq!(out.len(), 16_000);
    let peak = out[1000..15_000].iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((peak - 0.3).abs() < 0.01, "peak {peak}");
}

fn expect_err(result: Result<Vec<f32>, AudioError>, what: &str, needle: &str) -> AudioError {
    match result {
        Ok(s) => panic!("{what}: decoded {} samples instead of failing", s.len()),
        Err(e) => {
            let msg = e.to_string();
            println!("{what}: {msg}");
            assert!(!msg.contains('\n'), "{what}: multi-line message {msg:?}");
            assert!(
                msg.contains(needle),
                "{what}: message {msg:?} lacks {needle:?}"
            );
            e
        }
    }
}

/// Deterministic pseudo-random bytes.
fn noise_bytes(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    let empty = d.join("empty.ogg");
    std::fs::write(&empty, b"").expect("write");
    expect_err(
        audio::decode_file(&empty),
        "zero-length .ogg",
        "empty audio",
    );
    expect_err(
        audio::decode_bytes(Vec::new(), Some("ogg")),
        "empty bytes",
        "empty audio",
    );

    let e = expect_err(audio::decode_file(d), "directory", "is a directory");
    assert!(matches!(e, AudioError::IsDirectory(_)));

    let missing = d.join("nope.ogg");
    let e = expect_err(audio::decode_file(&missing), "missing file", "nope.ogg");
    assert!(matches!(e, AudioError::Io { .. }));

    let text = d.join("notes.ogg");
    std::fs::write(
        &text,
        "Buy milk.\nThis is not a voice message.\n".repeat(50),
    )
    .expect("write");
    let e = expect_err(
        audio::decode_file(&text),
        "text named .ogg",
        "not an audio file",
    );
    assert!(matches!(e, AudioError::NotAudio(_)));

    for (i, hint) in [Some("ogg"), Some("mp3"), None].into_iter().enumerate() {
        let e = expect_err(
            audio::decode_bytes(
                noise_bytes(64 * 1024, 0x9E37_79B9_7F4A_7C15 + i as u64),
                hint,
            ),
            "random bytes",
            "",
        );
        assert!(
            matches!(
                e,
                AudioError::NotAudio(_)
                    | AudioError::Malformed(_)
                    | AudioError::Corrupt { .. }
                    | AudioError::Empty(_)
            ),
            "random bytes gave {e:?}"
        );
    }

    let clip = std::fs::read(jfk_ogg()).expect("read");
    let truncated = d.join("truncated.ogg");
    std::fs::write(&truncated, &clip[..clip.len() * 6 / 10]).expect("write");
    let e = expect_err(
        audio::decode_file(&truncated),
        "truncated .ogg",
        "corrupt/truncated Opus stream at packet",
    );
    let AudioError::Corrupt { packet, .. } = e else {
        panic!("expected Corrupt, got {e:?}")
    };
    assert!(
        packet > 100,
        "truncation is detected where the data ends, got packet {packet}"
    );

    // Cut inside the headers: no usable stream at all.
    expect_err(
        audio::decode_bytes(clip[..60].to_vec(), Some("ogg")),
        "header-only .ogg",
        "corrupt/truncated",
    );
    // A valid OGG/Opus header followed by noise.
    let mut garbage_tail = clip[..200].to_vec();
    garbage_tail.extend(noise_bytes(20_000, 42));
    expect_err(
        audio::decode_bytes(garbage_tail, Some("ogg")),
        "ogg header + noise",
        "corrupt/truncated",
    );
}

// --- OGG page surgery, to damage packets without tripping the page checksum ---------------------

fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Calls `f(page_index, packet)` on every packet that starts and ends in one page, then fixes
/// the page checksums.
fn edit_ogg_packets(ogg: &mut [u8], mut f: impl FnMut(usize, &mut [u8])) {
    let mut pos = 0;
    let mut page = 0;
    while pos + 27 <= ogg.len() {
        assert_eq!(&ogg[pos..pos + 4], b"OggS");
        let nseg = usize::from(ogg[pos + 26]);
        let lacing: Vec<usize> = ogg[pos + 27..pos + 27 + nseg]
            .iter()
            .map(|&l| usize::from(l))
            .collect();
        let header_len = 27 + nseg;
        let body_len: usize = lacing.iter().sum();
        let continued = ogg[pos + 5] & 1 != 0;
        let mut off = pos + header_len;
        let mut start = off;
        let mut first = true;
        for &l in &lacing {
            off += l;
            if l < 255 {
                if !(first && continued) {
                    f(page, &mut ogg[start..off]);
                }
                first = false;
                start = off;
            }
        }
        ogg[pos + 22..pos + 26].fill(0);
        let crc = ogg_crc(&ogg[pos..pos + header_len + body_len]);
        ogg[pos + 22..pos + 26].copy_from_slice(&crc.to_le_bytes());
        pos += header_len + body_len;
        page += 1;
    }
}

#[test]
fn damaged_opus_packets_are_skipped_and_concealed() {
    let clip = std::fs::read(jfk_ogg()).expect("read");
    let clean = audio::decode_bytes(clip.clone(), Some("ogg")).expect("clean");

    // Make every 10th audio packet invalid (ToC code 3 declaring zero frames, RFC 6716 §3.2.5):
    // they fail to decode, get concealed, and the clip keeps its length.
    let mut damaged = clip.clone();
    let mut n = 0;
    edit_ogg_packets(&mut damaged, |page, pkt| {
        if page >= 2 && pkt.len() >= 2 {
            n += 1;
            if n % 10 == 5 {
                pkt[0] |= 0x03;
                pkt[1] = 0x00;
            }
        }
    });
    let out = audio::decode_bytes(damaged, Some("ogg")).expect("mostly fine stream");
    assert_eq!(out.len(), clean.len());
    let snr = snr_db(&clean, &out);
    assert!(
        snr > 3.0 && snr < 60.0,
        "damage should show but stay partial, SNR {snr:.1} dB"
    );

    // Packets replaced by noise of the same length (checksums fixed, so only the decoder sees
    // it): decoded or concealed, never fatal. The noise ToC bytes claim random durations, so the
    // length is only roughly kept.
    let mut noisy = clip.clone();
    let mut seed = 7u64;
    edit_ogg_packets(&mut noisy, |page, pkt| {
        seed += 1;
        if page >= 2 && seed.is_multiple_of(3) {
            pkt.copy_from_slice(&noise_bytes(pkt.len(), seed));
        }
    });
    let out = audio::decode_bytes(noisy, Some("ogg")).expect("noisy packets");
    assert!(
        out.len() > clean.len() / 2 && out.len() < clean.len() * 2,
        "{} vs {}",
        out.len(),
        clean.len()
    );
    assert!(out.iter().all(|s| s.is_finite()));

    // Every packet invalid: nothing decodes, so it is an error naming the first packet.
    let mut ruined = clip;
    edit_ogg_packets(&mut ruined, |page, pkt| {
        if page >= 2 && pkt.len() >= 2 {
            pkt[0] |= 0x03;
            pkt[1] = 0x00;
        }
    });
    expect_err(
        audio::decode_bytes(ruined, Some("ogg")),
        "all packets bad",
        "corrupt/truncated Opus stream at packet 0",
    );
}

#[test]
fn mutated_and_truncated_files_never_panic() {
    let clip = std::fs::read(jfk_ogg()).expect("read");
    // Truncation at many points, including inside the headers and mid-page.
    for cut in (0..clip.len()).step_by(997) {
        let _ = audio::decode_bytes(clip[..cut].to_vec(), Some("ogg"));
    }
    // Random byte flips (page checksums then fail, so pages are dropped or the stream ends).
    for round in 0..60u64 {
        let mut bytes = clip.clone();
        let flips = noise_bytes(64, round + 1);
        for pair in flips.chunks_exact(4) {
            let at =
                (usize::from(pair[0]) << 16 | usize::from(pair[1]) << 8 | usize::from(pair[2]))
                    % bytes.len();
            bytes[at] ^= pair[3] | 1;
        }
        if let Ok(samples) = audio::decode_bytes(bytes, None) {
            assert!(samples.iter().all(|s| s.is_finite()));
        }
    }
}

// --- Other containers and codecs, generated with ffmpeg -------------------------------------------

fn ffmpeg(dir: &Path, name: &str, input_args: &[&str], output_args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(input_args)
        .args(output_args)
        .arg(&out));
    out
}

fn dominant_freq_by_zero_crossings(x: &[f32], rate: u32) -> f32 {
    let body = &x[x.len() / 10..x.len() * 9 / 10];
    let zc = body
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    zc as f32 / 2.0 / (body.len() as f32 / rate as f32)
}

#[test]
fn ffmpeg_generated_formats_decode_to_the_right_duration() {
    if !have("ffmpeg", "-version") {
        println!("SKIPPED: ffmpeg not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // 3 s of a 1 kHz tone at 44.1 kHz, stereo with different levels per channel (0.5 and 0.3),
    // so the mono average peaks at 0.4.
    let tone = [
        "-f",
        "lavfi",
        "-i",
        "aevalsrc=0.5*sin(2*PI*1000*t)|0.3*sin(2*PI*1000*t):s=44100:d=3",
    ];

    const MONO: &str = "pan=mono|c0=0.5*c0+0.5*c1";
    // (file, extra output args, allowed extra ms at the end, allowed missing ms)
    let cases: [(&str, &[&str], f32, f32); 5] = [
        ("audio_tone.flac", &["-ac", "2"], 1.0, 1.0),
        // LAME writes delay/padding into its tag and symphonia trims them (gapless).
        (
            "audio_tone.mp3",
            &["-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k"],
            5.0,
            5.0,
        ),
        // symphonia's MP4 reader ignores edit lists, so AAC keeps its 1024-sample priming and up
        // to one frame of padding (~23 ms each at 44.1 kHz).
        (
            "audio_tone.m4a",
            &["-ac", "2", "-c:a", "aac", "-b:a", "128k"],
            50.0,
            1.0,
        ),
        // A Telegram-style voice note and a video-note-style MP4 with Opus audio.
        // Mono is made with an explicit average, as ffmpeg's own downmix scales differently.
        (
            "audio_tone.ogg",
            &[
                "-af", MONO, "-ar", "48000", "-c:a", "libopus", "-b:a", "32k",
            ],
            1.0,
            1.0,
        ),
        (
            "audio_tone.mp4",
            &[
                "-af", MONO, "-ar", "48000", "-c:a", "libopus", "-b:a", "32k",
            ],
            25.0,
            1.0,
        ),
    ];
    let mut decoded = std::collections::HashMap::new();
    for (name, out_args, extra_ms, missing_ms) in cases {
        let path = ffmpeg(d, name, &tone, out_args);
        let samples = audio::decode_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ms = samples.len() as f32 * 1000.0 / SAMPLE_RATE as f32;
        println!("{name}: {} samples = {ms:.1} ms", samples.len());
        assert!(
            ms <= 3000.0 + extra_ms && ms >= 3000.0 - missing_ms,
            "{name}: {ms} ms"
        );
        let f = dominant_freq_by_zero_crossings(&samples, SAMPLE_RATE);
        assert!((f - 1000.0).abs() < 5.0, "{name}: tone at {f} Hz");
        let peak = samples[1600..samples.len() - 1600]
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        // Lossy codecs move the peak a little (ffmpeg's own decode of the MP3 peaks at 0.380).
        assert!((peak - 0.4).abs() < 0.03, "{name}: peak {peak}");
        decoded.insert(name, samples);
    }
    // The same Opus packets in MP4 and OGG decode alike; this also checks that the pre-skip is
    // read from MP4's big-endian `dOps` box (a misread would shift the audio).
    let snr = snr_db(
        &decoded["audio_tone.ogg"],
        &decoded["audio_tone.mp4"][..48_000],
    );
    assert!(snr > 60.0, "MP4/Opus vs OGG/Opus SNR {snr:.1} dB");

    // A 0.1 s voice message still decodes, to exactly 0.1 s.
    let short = ffmpeg(
        d,
        "audio_short.ogg",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=0.1",
        ],
        &["-c:a", "libopus", "-b:a", "32k"],
    );
    let samples = audio::decode_file(&short).expect("0.1 s clip");
    assert!(
        samples.len().abs_diff(1600) <= 2,
        "0.1 s clip gave {} samples",
        samples.len()
    );
}
