//! Long recordings and language detection on real speech.
//!
//! A five-minute "voice message" is assembled from consecutive English clips of the shared
//! set; it must be transcribed completely (every clip's words present, the last segment near
//! the end) with segment times that land where each clip really starts.

mod common;

use voice_transcriber::whisper::audio;
use voice_transcriber::whisper::decode::Options;
use voice_transcriber::whisper::engine::{Engine, ThreadConfig};

const GAP_S: f64 = 1.0;

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn five_minutes_transcribe_completely_with_correct_segment_times() {
    let eval = common::eval_dir();
    let mut clips: Vec<_> = common::read_tsv(&eval.join("manifest.tsv"))
        .into_iter()
        .filter(|r| r["lang"] == "en")
        .collect();
    clips.sort_by(|a, b| a["id"].cmp(&b["id"]));
    let mut samples = Vec::new();
    let mut parts = Vec::new(); // (offset s, reference words)
    for c in clips {
        if samples.len() as f64 / 16000.0 >= 300.0 {
            break;
        }
        let s = audio::decode_file(&eval.join("opus").join(format!("{}.ogg", c["id"]))).unwrap();
        parts.push((samples.len() as f64 / 16000.0, words(&c["reference"])));
        samples.extend_from_slice(&s);
        samples.extend(std::iter::repeat_n(0.0, (GAP_S * 16000.0) as usize));
    }
    let duration = samples.len() as f64 / 16000.0;
    assert!(duration >= 300.0, "{duration}");

    let mut engine = Engine::load(
        &common::model_dir("tiny.en"),
        "tiny.en",
        ThreadConfig::all_cores(),
    )
    .unwrap();
    let mut streamed = 0;
    let t = engine
        .transcribe(&samples, &Options::default(), |_| streamed += 1)
        .unwrap()
        .transcript;
    assert_eq!(
        streamed,
        t.segments.len(),
        "every segment is reported as it finishes"
    );
    for w in t.segments.windows(2) {
        assert!(
            w[0].start <= w[1].start && w[0].end <= w[1].start + 0.5,
            "{:?} then {:?}",
            w[0],
            w[1]
        );
    }
    let last = t.segments.last().unwrap();
    assert!(
        last.end <= duration + 0.5 && last.end >= duration - 15.0,
        "last segment ends at {} of {duration}",
        last.end
    );

    // Each clip: most of its reference words are found in the segments overlapping its span,
    // which proves both completeness and timing.
    for (i, (offset, reference)) in parts.iter().enumerate() {
        let end = parts.get(i + 1).map_or(duration, |p| p.0);
        let text: Vec<String> = t
            .segments
            .iter()
            .filter(|s| s.end > offset + 0.2 && s.start < end - 0.2)
            .flat_map(|s| words(&s.text))
            .collect();
        let found = reference.iter().filter(|w| text.contains(w)).count();
        assert!(
            found as f64 >= 0.7 * reference.len() as f64,
            "clip {i} at {offset:.1}s: {found}/{} reference words in its time span",
            reference.len()
        );
    }
}

#[test]
fn language_is_detected_from_the_whole_first_window() {
    let eval = common::eval_dir();
    let mut engine = Engine::load(
        &common::model_dir("base"),
        "base",
        ThreadConfig::all_cores(),
    )
    .unwrap();
    // Russian speech that only starts after 16 s of silence: a 15 s detection window would see
    // nothing but silence.
    let ru = audio::decode_file(&eval.join("opus/ru_festvox_0061.ogg")).unwrap();
    let mut late = vec![0f32; 16 * 16000];
    late.extend_from_slice(&ru);
    let t = engine
        .transcribe(&late, &Options::default(), |_| {})
        .unwrap()
        .transcript;
    assert_eq!(t.language, "ru");
    assert!(
        t.text()
            .chars()
            .any(|c| ('а'..='я').contains(&c.to_lowercase().next().unwrap())),
        "{}",
        t.text()
    );
    // Whisper's first timestamp is at most 1 s, so the leading silence is folded into the first
    // segment; the speech itself is timed after the silence.
    let last = t.segments.last().unwrap();
    assert!(
        last.end > 18.0 && last.end < 16.0 + ru.len() as f64 / 16000.0 + 1.0,
        "{last:?}"
    );

    let en = audio::decode_file(&common::root().join("tests/data/audio_jfk_ask_not.ogg")).unwrap();
    let t = engine
        .transcribe(&en, &Options::default(), |_| {})
        .unwrap()
        .transcript;
    assert_eq!(t.language, "en");
}
