//! Accuracy on real speech: word error rate on the shared evaluation set, decoded from the
//! OGG/Opus copies (what Telegram sends), must be within 1.0 point of faster-whisper's greedy
//! result on the same weights (`reference_faster_whisper_greedy.tsv`, float32).
//!
//! Scored by `../shared/eval/wer.py`, the project's judge: Unicode NFKC, lowercase, `ё`→`е`,
//! punctuation dropped (apostrophes inside words kept), digits kept as digits, whitespace
//! collapsed; WER = total edits / total reference words per language.

mod common;

use std::collections::HashMap;
use std::process::Command;

use voice_transcriber::whisper::audio;
use voice_transcriber::whisper::decode::Options;
use voice_transcriber::whisper::engine::{Engine, ThreadConfig};

/// Allowed WER excess over faster-whisper, in points.
const TOLERANCE: f64 = 1.0;

/// `WER <lang>: 7.57% (...)` lines of wer.py's summary.
fn score(manifest: &std::path::Path, hyp: &std::path::Path) -> HashMap<String, f64> {
    let out = Command::new("python3")
        .arg(common::eval_dir().join("wer.py"))
        .arg(manifest)
        .arg(hyp)
        .arg("--quiet")
        .output()
        .expect("python3 runs wer.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("WER ")?;
            let (lang, v) = rest.split_once(": ")?;
            Some((lang.to_string(), v.split('%').next()?.parse().ok()?))
        })
        .collect()
}

fn check(model: &str, langs: &[&str]) {
    let eval = common::eval_dir();
    let clips: Vec<_> = common::read_tsv(&eval.join("manifest.tsv"))
        .into_iter()
        .filter(|r| langs.contains(&r["lang"].as_str()))
        .collect();
    let mut engine =
        Engine::load(&common::model_dir(model), model, ThreadConfig::all_cores()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut hyp = String::from("id\ttext\n");
    let mut fw = String::from("id\ttext\n");
    let reference = common::read_tsv(&eval.join("reference_faster_whisper_greedy.tsv"));
    for c in &clips {
        let samples =
            audio::decode_file(&eval.join("opus").join(format!("{}.ogg", c["id"]))).unwrap();
        let opts = Options {
            language: Some(c["lang"].clone()),
            ..Options::default()
        };
        let t = engine
            .transcribe(&samples, &opts, |_| {})
            .unwrap()
            .transcript;
        hyp += &format!("{}\t{}\n", c["id"], t.text().replace(['\t', '\n'], " "));
        let theirs = reference
            .iter()
            .find(|r| r["id"] == c["id"] && r["model"] == model && r["compute_type"] == "float32")
            .unwrap_or_else(|| panic!("no faster-whisper result for {}", c["id"]));
        fw += &format!("{}\t{}\n", c["id"], theirs["text"]);
    }
    // A manifest restricted to the clips scored here.
    let manifest = std::fs::read_to_string(eval.join("manifest.tsv")).unwrap();
    let restricted: String = manifest
        .lines()
        .enumerate()
        .filter(|(i, l)| *i == 0 || langs.iter().any(|lang| l.split('\t').nth(1) == Some(*lang)))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let (m, h, f) = (
        tmp.path().join("m.tsv"),
        tmp.path().join("ours.tsv"),
        tmp.path().join("fw.tsv"),
    );
    std::fs::write(&m, restricted).unwrap();
    std::fs::write(&h, &hyp).unwrap();
    std::fs::write(&f, &fw).unwrap();
    let (ours, theirs) = (score(&m, &h), score(&m, &f));
    for lang in langs {
        let (o, t) = (ours[*lang], theirs[*lang]);
        eprintln!(
            "{model} {lang}: WER ours {o:.2}% vs faster-whisper greedy {t:.2}% over {} clips",
            clips.len()
        );
        assert!(
            o <= t + TOLERANCE,
            "{model} {lang}: WER {o:.2}% is more than {TOLERANCE} point above faster-whisper's {t:.2}%\n{hyp}"
        );
    }
}

#[test]
fn tiny_en_wer_on_english_opus_is_within_a_point_of_faster_whisper() {
    check("tiny.en", &["en"]);
}

#[test]
fn base_wer_on_english_and_russian_opus_is_within_a_point_of_faster_whisper() {
    check("base", &["en", "ru"]);
}
