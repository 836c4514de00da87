//! The same weights give the same network whatever the file format: the real tiny.en is read
//! from its CTranslate2 `model.bin`, written out in Hugging Face's safetensors layout (with a
//! Hugging Face style `config.json`), loaded back, and both must produce identical logits and
//! the same transcript.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use voice_transcriber::whisper::audio;
use voice_transcriber::whisper::decode::Options;
use voice_transcriber::whisper::engine::load_transcriber;
use voice_transcriber::whisper::mel::{LogMel, N_FRAMES};
use voice_transcriber::whisper::weights::{Format, ModelConfig, Weights};

#[test]
fn ct2_and_safetensors_layouts_give_identical_logits() {
    let ct2_dir = common::model_dir("tiny.en");
    let tmp = tempfile::tempdir().unwrap();
    let hf_dir = tmp.path();
    Weights::load(&ct2_dir, Format::Ct2)
        .unwrap()
        .save_safetensors(&hf_dir.join("model.safetensors"))
        .unwrap();
    std::fs::copy(
        ct2_dir.join("tokenizer.json"),
        hf_dir.join("tokenizer.json"),
    )
    .unwrap();
    // Hugging Face names for the suppression lists.
    let ct2_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct2_dir.join("config.json")).unwrap())
            .unwrap();
    let hf_cfg = serde_json::json!({
        "model_type": "whisper",
        "suppress_tokens": ct2_cfg["suppress_ids"],
        "begin_suppress_tokens": ct2_cfg["suppress_ids_begin"],
    });
    std::fs::write(hf_dir.join("config.json"), hf_cfg.to_string()).unwrap();
    assert_eq!(Format::detect(hf_dir).unwrap(), Format::Safetensors);
    assert_eq!(
        ModelConfig::load(hf_dir).unwrap(),
        ModelConfig::load(&ct2_dir).unwrap()
    );

    let mut a = load_transcriber(&ct2_dir, "tiny.en").unwrap();
    let mut b = load_transcriber(hf_dir, "tiny.en-hf").unwrap();
    assert_eq!(a.model.dims, b.model.dims);

    let samples =
        audio::decode_file(&common::root().join("tests/data/audio_jfk_ask_not.ogg")).unwrap();
    let mel = LogMel::new(&samples, a.model.dims.n_mels);
    let prompt = Tensor::new(
        &[[
            a.tokenizer.specials.sot,
            a.tokenizer.specials.timestamp_begin,
        ]],
        &Device::Cpu,
    )
    .unwrap();
    let mut logits = Vec::new();
    for t in [&mut a, &mut b] {
        let audio = t.encode(mel.window(0, N_FRAMES)).unwrap();
        t.model.decoder.set_audio(&audio).unwrap();
        let l: Vec<f32> = t
            .model
            .decoder
            .forward(&prompt, &[1])
            .unwrap()
            .i((0, 0))
            .unwrap()
            .to_vec1()
            .unwrap();
        logits.push(l);
    }
    assert_eq!(logits[0].len(), 51864);
    assert_eq!(logits[0], logits[1], "logits must be identical");

    let opts = Options::default();
    let ta = a.transcribe(&samples, &opts, |_| {}).unwrap().text();
    let tb = b.transcribe(&samples, &opts, |_| {}).unwrap().text();
    assert_eq!(ta, tb);
    assert!(
        ta.to_lowercase().contains("ask not what your country"),
        "{ta}"
    );
}
