//! The command line as a user meets it: bad inputs get one clear line naming the file and the
//! cause, a non-zero exit, no panic — and in a multi-file run the good files still transcribe.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models_dir() -> tempfile::TempDir {
    // A models directory holding the real tiny.en (hard-linked, no copy).
    let dir = tempfile::tempdir().unwrap();
    let src = common::model_dir("tiny.en");
    let dst = dir.path().join("tiny.en");
    std::fs::create_dir(&dst).unwrap();
    for f in ["model.bin", "config.json", "tokenizer.json"] {
        if std::fs::hard_link(src.join(f), dst.join(f)).is_err() {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    dir
}

fn run(models: &Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .arg("--models-dir")
        .arg(models)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_panic(o: &Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "panic: {e}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg is installed (.ci/run installs it)")
        .success();
    assert!(ok, "ffmpeg {args:?}");
}

/// Transcribes `file` to JSON, asserting a clean exit.
fn transcribe_json(models: &Path, file: &Path) -> serde_json::Value {
    let o = run(
        models,
        &["transcribe", "--format", "json", file.to_str().unwrap()],
    );
    no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn every_bad_input_is_reported_and_the_good_file_still_transcribes() {
    let models = models_dir();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let jfk = common::root().join("tests/data/audio_jfk_ask_not.ogg");
    let good_bytes = std::fs::read(&jfk).unwrap();
    let empty = write(t, "empty.ogg", b"");
    let truncated = write(t, "truncated.ogg", &good_bytes[..good_bytes.len().min(300)]);
    let mut corrupt = good_bytes.clone();
    for (i, b) in corrupt.iter_mut().enumerate().skip(200) {
        *b = (i * 31 % 251) as u8;
    }
    let corrupt = write(t, "corrupt.ogg", &corrupt);
    let text = write(
        t,
        "notes.ogg",
        b"this is not audio at all, just a text file\n",
    );
    let dir = t.join("adir.ogg");
    std::fs::create_dir(&dir).unwrap();
    let bad: [(&Path, &str); 5] = [
        (&empty, "empty"),
        (&truncated, ""),
        (&corrupt, ""),
        (&text, ""),
        (&dir, "directory"),
    ];
    let mut args: Vec<String> = vec!["transcribe".into()];
    for (p, _) in &bad {
        args.push(p.display().to_string());
    }
    args.push(jfk.display().to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(models.path(), &argv);
    no_panic(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "some files failed: {}",
        stderr(&o)
    );
    let err = stderr(&o);
    for (p, cause) in &bad {
        let line = err
            .lines()
            .find(|l| l.starts_with("error: ") && l.contains(&*p.display().to_string()))
            .unwrap_or_else(|| panic!("no error line for {}:\n{err}", p.display()));
        assert!(line.contains(cause), "{line}");
    }
    let out = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(
        out.contains("ask not what your country"),
        "good file: {out}"
    );
}

#[test]
fn zero_length_ogg_and_short_clip_and_long_silence() {
    let models = models_dir();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // An OGG container with no audio packets.
    let zero = t.join("zero.ogg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=48000:cl=mono",
        "-t",
        "0",
        "-c:a",
        "libopus",
        zero.to_str().unwrap(),
    ]);
    let o = run(models.path(), &["transcribe", zero.to_str().unwrap()]);
    no_panic(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("zero.ogg"), "{}", stderr(&o));

    // 0.1 s of a tone: transcribes (to little or nothing) without error.
    let short = t.join("short.ogg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=f=440:r=48000:d=0.1",
        "-ac",
        "1",
        "-c:a",
        "libopus",
        short.to_str().unwrap(),
    ]);
    let v = transcribe_json(models.path(), &short);
    assert!(v["duration_s"].as_f64().unwrap() < 0.2);

    // Ten minutes of silence: empty text, never a hallucination.
    let silence = t.join("silence.ogg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=48000:cl=mono",
        "-t",
        "600",
        "-c:a",
        "libopus",
        silence.to_str().unwrap(),
    ]);
    let v = transcribe_json(models.path(), &silence);
    assert_eq!(v["text"], "", "silence transcribed as {:?}", v["text"]);
    assert!((v["duration_s"].as_f64().unwrap() - 600.0).abs() < 0.1);
}

#[test]
fn unknown_and_missing_models_name_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let jfk = common::root().join("tests/data/audio_jfk_ask_not.ogg");
    let o = run(
        empty.path(),
        &["transcribe", "--model", "huge-v9", jfk.to_str().unwrap()],
    );
    no_panic(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown model \"huge-v9\""),
        "{}",
        stderr(&o)
    );
    let o = run(
        empty.path(),
        &["transcribe", "--model", "base", jfk.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("voice-transcriber models fetch base"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn corrupt_model_files_are_named() {
    let jfk = common::root().join("tests/data/audio_jfk_ask_not.ogg");
    let real = std::fs::read(common::model_dir("tiny.en").join("model.bin")).unwrap();
    for (case, bytes) in [
        ("truncated", real[..real.len() / 2].to_vec()),
        ("wrong magic", {
            let mut b = real[..4096].to_vec();
            b[..4].copy_from_slice(b"GGUF");
            b
        }),
    ] {
        let models = models_dir();
        let bin = models.path().join("tiny.en/model.bin");
        std::fs::remove_file(&bin).unwrap();
        std::fs::write(&bin, &bytes).unwrap();
        let o = run(models.path(), &["transcribe", jfk.to_str().unwrap()]);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{case}");
        let err = stderr(&o);
        assert!(
            err.contains("model.bin") && err.contains("not a CTranslate2 model"),
            "{case}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{case}: one line: {err}");
    }
}

#[test]
fn english_only_model_refuses_other_languages_clearly() {
    let models = models_dir();
    let jfk = common::root().join("tests/data/audio_jfk_ask_not.ogg");
    let o = run(
        models.path(),
        &["transcribe", "--language", "ru", jfk.to_str().unwrap()],
    );
    no_panic(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("English-only"), "{}", stderr(&o));
}

#[test]
fn output_formats() {
    let models = models_dir();
    let jfk = common::root().join("tests/data/audio_jfk_ask_not.ogg");
    let o = run(
        models.path(),
        &["transcribe", "-f", "srt", jfk.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let srt = String::from_utf8_lossy(&o.stdout);
    assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:"), "{srt}");
    let o = run(
        models.path(),
        &["transcribe", "-f", "vtt", jfk.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("WEBVTT\n\n00:00:"));
    let o = run(
        models.path(),
        &[
            "transcribe",
            "-f",
            "json",
            jfk.to_str().unwrap(),
            jfk.to_str().unwrap(),
        ],
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one JSON object per file");
    let v = &lines[0];
    assert_eq!(v["model"], "tiny.en");
    assert_eq!(v["language"], "en");
    assert!((v["duration_s"].as_f64().unwrap() - 11.0).abs() < 0.1);
    let segs = v["segments"].as_array().unwrap();
    assert!(!segs.is_empty());
    let last_end = segs.last().unwrap()["end"].as_f64().unwrap();
    assert!(
        last_end > 9.0 && last_end <= 11.5,
        "segment times cover the speech: {last_end}"
    );
}

#[test]
fn models_import_path_list_quantize_and_offline_fetch() {
    let models = tempfile::tempdir().unwrap();
    let m = models.path();
    let o = run(
        m,
        &[
            "models",
            "import",
            common::model_dir("tiny.en").to_str().unwrap(),
            "--name",
            "tiny.en",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(m, &["models", "path", "tiny.en"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        m.join("tiny.en").to_str().unwrap()
    );
    let o = run(m, &["models", "list"]);
    let list = String::from_utf8_lossy(&o.stdout);
    let line = list.lines().find(|l| l.starts_with("tiny.en ")).unwrap();
    assert!(line.ends_with("installed"), "{line}");
    assert!(list.lines().any(|l| l.starts_with("large-v3 ")));

    // A quantized variant is named after what to run when it is missing.
    let jfk = common::root().join("tests/data/audio_jfk_ask_not.ogg");
    let o = run(
        m,
        &[
            "transcribe",
            "--model",
            "tiny.en-q8_0",
            jfk.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&o).contains("models quantize tiny.en --to q8_0"),
        "{}",
        stderr(&o)
    );
    let o = run(m, &["models", "quantize", "tiny.en", "--to", "q8_0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(m.join("tiny.en-q8_0/model.gguf").is_file());
    let o = run(
        m,
        &[
            "transcribe",
            "--model",
            "tiny.en-q8_0",
            jfk.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .to_lowercase()
        .contains("ask not what your country"));

    // The Hub is not reachable here: a fetch fails with a clear message, installs nothing.
    let o = Command::new(common::bin())
        .args([
            "--models-dir",
            m.to_str().unwrap(),
            "models",
            "fetch",
            "base",
        ])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("download of") && stderr(&o).contains("failed"),
        "{}",
        stderr(&o)
    );
    assert!(!m.join("base").exists());
}

#[test]
fn a_trimmed_encoder_window_still_transcribes_and_encodes_fewer_frames() {
    let models = models_dir();
    let jfk = common::root().join("tests/data/audio_jfk_ask_not.ogg");
    let encoded = |extra: &[&str]| {
        let mut args = vec!["transcribe", "-f", "txt"];
        args.extend_from_slice(extra);
        args.push(jfk.to_str().unwrap());
        let o = Command::new(common::bin())
            .arg("--models-dir")
            .arg(models.path())
            .args(&args)
            .env("RUST_LOG", "voice_transcriber::whisper::decode=debug")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let frames: Vec<usize> = stderr(&o)
            .lines()
            .filter_map(|l| l.split("encoding ").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        (String::from_utf8_lossy(&o.stdout).to_lowercase(), frames)
    };
    let (full_text, full) = encoded(&[]);
    assert_eq!(full, vec![3000], "the full window by default");
    let (text, trimmed) = encoded(&["--encoder-margin", "10"]);
    // 11 s of speech and 10 s of margin: 2100 frames or so, not 3000.
    assert!(
        trimmed.len() == 1 && (2000..=2200).contains(&trimmed[0]),
        "{trimmed:?}"
    );
    for t in [&full_text, &text] {
        assert!(
            t.contains("ask not what your country can do for you"),
            "{t}"
        );
    }
}
