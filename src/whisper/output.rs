//! Writing transcripts: plain text, SubRip, WebVTT and JSON.
//!
//! The JSON shape is a contract: benches and other tools read it, so fields are only ever
//! added, never renamed. One object per input file (JSON Lines when several files are given).

use serde::Serialize;

use crate::whisper::decode::{Segment, Transcript};

/// Output format chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The text only.
    Txt,
    /// SubRip subtitles.
    Srt,
    /// WebVTT subtitles.
    Vtt,
    /// One JSON object per file.
    Json,
}

/// The stable JSON record of one transcribed file.
#[derive(Debug, Serialize)]
pub struct JsonRecord<'a> {
    /// Input path as given.
    pub file: &'a str,
    /// Model name.
    pub model: &'a str,
    /// Language code used.
    pub language: &'a str,
    /// Audio length in seconds.
    pub duration_s: f64,
    /// Wall-clock seconds spent transcribing (decode of the file included).
    pub elapsed_s: f64,
    /// All segment texts joined.
    pub text: String,
    /// Timed segments.
    pub segments: Vec<JsonSegment<'a>>,
}

/// One segment in [`JsonRecord`].
#[derive(Debug, Serialize)]
pub struct JsonSegment<'a> {
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Text, trimmed.
    pub text: &'a str,
    /// Mean token log-probability of the window.
    pub avg_logprob: f32,
    /// Probability the window held no speech.
    pub no_speech_prob: f32,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl<'a> JsonRecord<'a> {
    /// Builds the record for `transcript`.
    pub fn new(
        file: &'a str,
        model: &'a str,
        transcript: &'a Transcript,
        duration_s: f64,
        elapsed_s: f64,
    ) -> Self {
        Self {
            file,
            model,
            language: &transcript.language,
            duration_s: round3(duration_s),
            elapsed_s: round3(elapsed_s),
            text: transcript.text(),
            segments: transcript
                .segments
                .iter()
                .map(|s| JsonSegment {
                    start: round3(s.start),
                    end: round3(s.end),
                    text: s.text.trim(),
                    avg_logprob: s.avg_logprob,
                    no_speech_prob: s.no_speech_prob,
                })
                .collect(),
        }
    }
}

/// `HH:MM:SS{sep}mmm`.
fn timestamp(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// SubRip text of `segments`.
pub fn srt(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        out += &format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            timestamp(s.start, ','),
            timestamp(s.end, ','),
            s.text.trim()
        );
    }
    out
}

/// WebVTT text of `segments`.
pub fn vtt(segments: &[Segment]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for s in segments {
        out += &format!(
            "{} --> {}\n{}\n\n",
            timestamp(s.start, '.'),
            timestamp(s.end, '.'),
            s.text.trim()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, end: f64, text: &str) -> Segment {
        Segment {
            start,
            end,
            text: text.into(),
            avg_logprob: -0.25,
            no_speech_prob: 0.01,
            temperature: 0.0,
            tokens: vec![],
        }
    }

    #[test]
    fn subtitle_formats_use_their_own_time_syntax() {
        let segs = [seg(0.0, 2.5, " Hello."), seg(3661.02, 3662.0, " World")];
        assert_eq!(
            srt(&segs),
            "1\n00:00:00,000 --> 00:00:02,500\nHello.\n\n2\n01:01:01,020 --> 01:01:02,000\nWorld\n\n"
        );
        assert!(vtt(&segs).starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello.\n"));
    }

    #[test]
    fn json_record_has_the_documented_fields() {
        let t = Transcript {
            language: "ru".into(),
            segments: vec![seg(0.0, 1.0, " Привет"), seg(1.0, 2.0, " мир")],
        };
        let v = serde_json::to_value(JsonRecord::new("a.ogg", "base", &t, 2.0004, 0.5)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in [
            "file",
            "model",
            "language",
            "duration_s",
            "elapsed_s",
            "text",
            "segments",
        ] {
            assert!(keys.contains(&k), "{k} missing");
        }
        assert_eq!(v["text"], "Привет мир");
        assert_eq!(v["duration_s"], 2.0);
        let s0 = &v["segments"][0];
        for k in ["start", "end", "text", "avg_logprob", "no_speech_prob"] {
            assert!(s0.get(k).is_some(), "segment {k} missing");
        }
    }
}
