//! Correctness oracle: with the same CTranslate2 weights, our greedy decoder must produce the
//! same token ids as faster-whisper for the first window of every short clean clip. The ids
//! were recorded by `tests/data/record_fw_tokens.py` (faster-whisper 1.2.1, float32, beam 1).

mod common;

use voice_transcriber::whisper::audio;
use voice_transcriber::whisper::engine::{Engine, ThreadConfig};
use voice_transcriber::whisper::mel::{LogMel, N_FRAMES};

fn check_model(model: &str) {
    let rows: Vec<_> = common::read_tsv(&common::root().join("tests/data/fw_tokens.tsv"))
        .into_iter()
        .filter(|r| r["model"] == model)
        .collect();
    assert!(rows.len() >= 10, "too few recorded clips for {model}");
    let eval = common::eval_dir();
    let mut engine =
        Engine::load(&common::model_dir(model), model, ThreadConfig::all_cores()).unwrap();
    let mut mismatches = Vec::new();
    for r in &rows {
        let samples =
            audio::decode_file(&eval.join("wav").join(format!("{}.wav", r["id"]))).unwrap();
        let parse =
            |s: &str| -> Vec<u32> { s.split_whitespace().map(|t| t.parse().unwrap()).collect() };
        let prompt = parse(&r["prompt"]);
        let expected = parse(&r["tokens"]);
        let got = engine.with_transcriber(|t| {
            let mel = LogMel::new(&samples, t.model.dims.n_mels);
            let audio = t.encode(mel.window(0, N_FRAMES)).unwrap();
            t.model.decoder.set_audio(&audio).unwrap();
            let mut rng = rand::SeedableRng::seed_from_u64(0);
            t.decode_window(&prompt, 0.0, &mut rng).unwrap().tokens
        });
        if got != expected {
            let first = got
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(expected.len()));
            mismatches.push(format!(
                "{}: differs at token {first} of {} (ours {:?}, theirs {:?})",
                r["id"],
                expected.len(),
                got.get(first),
                expected.get(first)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{model}: {} of {} clips differ from faster-whisper:\n{}",
        mismatches.len(),
        rows.len(),
        mismatches.join("\n")
    );
}

#[test]
fn tiny_en_greedy_tokens_match_faster_whisper() {
    check_model("tiny.en");
}

#[test]
fn base_greedy_tokens_match_faster_whisper() {
    check_model("base");
}

/// Our log-mel front end against the features faster-whisper fed its encoder for the same clip
/// (`tests/data/fw_mel_jfk.json`, recorded by `record_fw_tokens.py`).
#[test]
fn log_mel_matches_faster_whisper_features() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("tests/data/fw_mel_jfk.json")).unwrap(),
    )
    .unwrap();
    let samples = audio::decode_file(&common::eval_dir().join("wav/en_jfk_ask_not.wav")).unwrap();
    assert_eq!(samples.len() as u64, reference["samples"].as_u64().unwrap());
    let mel = LogMel::new(&samples, 80);
    assert_eq!(mel.n_frames(), 1100);
    let w = mel.window(0, N_FRAMES);
    let at = |m: usize, t: usize| w[m * N_FRAMES + t] as f64;
    let close = |ours: f64, key: &str| {
        let theirs = reference[key].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 1e-4,
            "{key}: ours {ours}, faster-whisper {theirs}"
        );
    };
    close(at(0, 0), "v[0,0]");
    close(at(0, 1), "v[0,1]");
    close(at(10, 100), "v[10,100]");
    close(at(79, 2999), "v[79,2999]");
    close(
        w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64,
        "mean",
    );
    close(
        w.iter().copied().fold(f32::INFINITY, f32::min) as f64,
        "min",
    );
    close(
        w.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
        "max",
    );
}
