#!/usr/bin/env python3
"""Helper for benches/side-by-side.sh and benches/per-message.sh (see there). Subcommands:

  clips  EVAL_DIR MODEL [--quick] [--max-s S] [--by-lang]
                                           print the clip paths for MODEL, one a line; --max-s
                                           keeps clips of at most S seconds (manifest duration_s);
                                           --by-lang prints LANG:PATH, grouped by language
  fw     MODEL_DIR COMPUTE_TYPE THREADS LANG META FILES...
                                           faster-whisper over FILES in one process (run with the
                                           venv's python); prints one JSON line per file like
                                           `voice-transcriber transcribe -f json`, and writes
                                           {"import_s", "load_s"} to META. LANG `auto` detects,
                                           `per-clip` takes each FILE as LANG:PATH
  wcpp   GGML_FILE THREADS LANG META FILES...
                                           the same with whisper.cpp (pywhispercpp, run with its
                                           venv's python); META also gets its system_info
  wcpp-info                                whisper.cpp's version line, then its system_info
  check  EVAL_DIR OUT                      exit non-zero unless every text in the JSON lines of
                                           OUT equals its reference (wer.py's normaliser)
  report WORK_DIR EVAL_DIR                 markdown table from the runs recorded in WORK_DIR

`fw` needs faster-whisper, `wcpp` pywhispercpp and PyAV; the rest is stdlib.
"""
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time

csv.field_size_limit(10**9)

# --quick: short clips (4-15 s), four English and two Russian.
QUICK = ["en_jfk_ask_not", "en_librispeech_61-70968-0000", "en_cmu_arctic_a0008_a0009",
         "en_mfa_surround", "ru_festvox_0508", "ru_brodsky_pisma"]


def manifest(eval_dir):
    with open(os.path.join(eval_dir, "manifest.tsv"), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def langs_of(model):
    return ["en"] if model.endswith(".en") else ["en", "ru"]


def clips(eval_dir, model, quick, max_s=None, by_lang=False):
    rows = [r for r in manifest(eval_dir) if r["lang"] in langs_of(model)]
    if quick:
        rows = [r for r in rows if r["id"] in QUICK]
    if max_s is not None:
        rows = [r for r in rows if float(r["duration_s"]) <= max_s]
    if by_lang:  # stable: the manifest's order within each language
        rows.sort(key=lambda r: langs_of(model).index(r["lang"]))
    for r in rows:
        path = os.path.join(eval_dir, "opus", r["id"] + ".ogg")
        print(f"{r['lang']}:{path}" if by_lang else path)


def with_langs(lang, files):
    """[(language or None, path)]: LANG for every file, or each file's own for `per-clip`."""
    if lang == "per-clip":
        return [tuple(f.split(":", 1)) for f in files]
    return [(None if lang == "auto" else lang, f) for f in files]


def fw(model_dir, compute_type, threads, lang, meta, files):
    t0 = time.perf_counter()
    from faster_whisper import WhisperModel
    t1 = time.perf_counter()
    model = WhisperModel(model_dir, device="cpu", cpu_threads=int(threads), compute_type=compute_type)
    t2 = time.perf_counter()
    with open(meta, "w") as m:
        json.dump({"import_s": t1 - t0, "load_s": t2 - t1}, m)
    for clip_lang, path in with_langs(lang, files):
        start = time.perf_counter()
        # As ../shared/eval/run_faster_whisper.py made reference_faster_whisper_greedy.tsv, with
        # beam_size=1 (greedy, like ours); the language is detected unless LANG is given.
        segs, info = model.transcribe(path, beam_size=1, language=clip_lang,
                                      condition_on_previous_text=True, vad_filter=False)
        text = " ".join(s.text.strip() for s in segs).strip()
        print(json.dumps({"file": path, "language": info.language, "duration_s": info.duration,
                          "elapsed_s": time.perf_counter() - start, "text": text},
                         ensure_ascii=False), flush=True)


def decode_opus(path):
    """16 kHz mono float32 samples, decoded and resampled in-process by PyAV (the `av` package,
    the version faster-whisper installs), as faster-whisper's decode_audio does, minus its
    gc.collect()."""
    import av
    import numpy as np
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=16000)
    chunks = []
    with av.open(path, metadata_errors="ignore") as container:
        for frame in container.decode(audio=0):
            frame.pts = None
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def wcpp(ggml_file, threads, lang, meta, files):
    """whisper.cpp with the model loaded once, then FILES one by one; the time of each covers
    decoding the Opus file and transcribing it, as ours and faster-whisper's do."""
    t0 = time.perf_counter()
    import _pywhispercpp as pw
    from pywhispercpp.model import Model
    t1 = time.perf_counter()
    # Greedy (best_of 1: its default 5 only matters at the fallback temperatures, where it
    # samples five candidates),
    # non-speech tokens suppressed (faster-whisper and ours suppress them; its default does
    # not), timestamps left on (no_timestamps would switch the decoder to another mode), the
    # language forced per clip (auto would cost an extra encoder pass), the context default
    # (flash attention on). Everything else, the temperature fallback included, at its defaults.
    model = Model(ggml_file, n_threads=int(threads), greedy={"best_of": 1}, suppress_nst=True,
                  no_timestamps=False, print_progress=False, print_realtime=False,
                  redirect_whispercpp_logs_to=None)
    t2 = time.perf_counter()
    ctx = pw.whisper_context_default_params()
    with open(meta, "w") as m:
        json.dump({"import_s": t1 - t0, "load_s": t2 - t1, "system_info": Model.system_info().strip(),
                   "flash_attn": ctx.flash_attn}, m)
    for clip_lang, path in with_langs(lang, files):
        start = time.perf_counter()
        samples = decode_opus(path)
        segs = model.transcribe(samples, language=clip_lang or "auto")
        text = " ".join(s.text.strip() for s in segs).strip()
        elapsed = time.perf_counter() - start
        print(json.dumps({"file": path, "language": clip_lang, "duration_s": len(samples) / 16000,
                          "elapsed_s": elapsed, "text": text}, ensure_ascii=False), flush=True)


def wcpp_info():
    import ctypes
    import importlib.metadata
    import _pywhispercpp as pw
    lib = ctypes.CDLL(os.path.join(os.path.dirname(pw.__file__), "libwhisper.so.1"))
    lib.whisper_version.restype = ctypes.c_char_p
    print(f"whisper.cpp {lib.whisper_version().decode()} "
          f"(pywhispercpp {importlib.metadata.version('pywhispercpp')})")
    print(pw.whisper_print_system_info().strip())


def check(eval_dir, out):
    """Each transcript in OUT against its reference, with wer.py's normaliser."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("wer", os.path.join(eval_dir, "wer.py"))
    wer_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wer_py)
    refs = {r["id"]: r["reference"] for r in manifest(eval_dir)}
    bad = 0
    for k, j in read_jsonl(out).items():
        ok = wer_py.normalize(j["text"]) == wer_py.normalize(refs[k])
        print(f"{'ok' if ok else 'WRONG'} {k}: {j['text']}", file=sys.stderr)
        bad += not ok
    sys.exit(1 if bad else 0)


def time_v(path):
    """Wall seconds, CPU seconds (user + system) and peak RSS (kB) from `/usr/bin/time -v`."""
    wall = rss = None
    cpu = 0.0
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.strip()
        if line.startswith("Elapsed (wall clock) time"):
            parts = [float(p) for p in line.rsplit(" ", 1)[1].split(":")]
            wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        elif line.startswith(("User time", "System time")):
            cpu += float(line.rsplit(" ", 1)[1])
        elif line.startswith("Maximum resident set size"):
            rss = int(line.rsplit(" ", 1)[1])
        elif line.startswith("Exit status") and not line.endswith(" 0"):
            sys.exit(f"error: {path}: {line}")
    return wall, cpu, rss


def read_jsonl(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.startswith("{"):
            j = json.loads(line)
            out[os.path.basename(j["file"]).rsplit(".", 1)[0]] = j
    return out


def wer(eval_dir, work, model, tag, hyps):
    """wer.py's summary lines {lang: (rate, "edits/ref")} for hyps {id: text}."""
    man = os.path.join(work, f"manifest.{model}.tsv")
    if not os.path.exists(man):  # the manifest restricted to this model's clips
        ids = {os.path.basename(p).rsplit(".", 1)[0]
               for p in open(os.path.join(work, f"clips.{model}"), encoding="utf-8").read().split()}
        with open(os.path.join(eval_dir, "manifest.tsv"), encoding="utf-8") as src, \
                open(man, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i == 0 or line.split("\t", 1)[0] in ids:
                    dst.write(line)
    hyp = os.path.join(work, f"hyp.{model}.{tag}.tsv")
    with open(hyp, "w", encoding="utf-8") as f:
        for k, t in hyps.items():
            f.write(k + "\t" + t.replace("\t", " ").replace("\n", " ") + "\n")
    res = subprocess.run([sys.executable, os.path.join(eval_dir, "wer.py"), man, hyp, "--quiet"],
                         capture_output=True, text=True, check=True).stdout
    return {m[1]: (float(m[2]), m[3]) for m in re.finditer(r"WER (\S+): ([\d.]+)% \((\d+/\d+)", res)}


TOOLS = [("ours", "ours (candle, float)"), ("fw-float32", "faster-whisper float32"),
         ("ours-q8", "ours (candle, q8_0)"), ("fw-int8", "faster-whisper int8")]
# Each faster-whisper row is compared with our run of the same precision.
PAIR = {"fw-float32": "ours", "fw-int8": "ours-q8"}


def report(work, eval_dir):
    cfg = json.load(open(os.path.join(work, "config.json")))
    if cfg.get("mode") == "per-message":
        return report_per_message(cfg, work, eval_dir)
    rounds = cfg["rounds"]
    med = statistics.median
    rows, raw, notes = [], [], []
    for model in cfg["models"]:
        ids = [os.path.basename(p).rsplit(".", 1)[0]
               for p in open(os.path.join(work, f"clips.{model}"), encoding="utf-8").read().split()]
        audio = sum(float(r["duration_s"]) for r in manifest(eval_dir) if r["id"] in ids)
        langs = langs_of(model)
        stats = {}
        for tag, _ in TOOLS:
            walls, cpus, rsss, starts, loads, texts, loadavg = [], [], [], [], [], [], []
            for r in range(1, rounds + 1):
                base = os.path.join(work, f"{model}.{tag}.{r}")
                wall, cpu, rss = time_v(base + ".time")
                out = read_jsonl(base + ".out")
                missing = [i for i in ids if i not in out]
                if missing:
                    notes.append(f"{model} {tag} round {r}: no output for {' '.join(missing)}")
                walls.append(wall)
                cpus.append(cpu)
                rsss.append(rss)
                starts.append(wall - sum(j["elapsed_s"] for j in out.values()))
                if os.path.exists(base + ".meta"):
                    loads.append(json.load(open(base + ".meta"))["load_s"])
                texts.append({k: j["text"] for k, j in out.items()})
                loadavg.append(float(open(base + ".loadavg").read().split()[0]))
            varied = [i for i in ids if len({t.get(i) for t in texts}) > 1]
            if varied:
                notes.append(f"{model} {tag}: text differed between rounds on {len(varied)} clip(s): "
                             + " ".join(varied))
            detected = [k for k, j in read_jsonl(os.path.join(work, f"{model}.{tag}.1.out")).items()
                        if j.get("language") and k.split("_", 1)[0] != j["language"]]
            if detected:
                notes.append(f"{model} {tag}: language detected wrongly on " + " ".join(detected))
            stats[tag] = dict(wall=med(walls), cpu=med(cpus), rss=med(rsss) / 1024, start=med(starts),
                              load=med(loads) if loads else None,
                              wer=wer(eval_dir, work, model, tag, texts[0]))
            raw.append(f"{model} {tag}: wall " + " ".join(f"{w:.1f}" for w in walls)
                       + " s; load average at start " + " ".join(f"{a:.1f}" for a in loadavg))
        for tag, label in TOOLS:
            s = stats[tag]
            ratio = f"{stats[PAIR[tag]]['wall'] / s['wall']:.2f}" if tag in PAIR else ""
            start = f"{s['start']:.1f}" + (f" (model {s['load']:.1f})" if s["load"] is not None else "")
            w = " | ".join(f"{s['wer'][l][0]:.2f}% ({s['wer'][l][1]})" if l in s["wer"] else ""
                           for l in ("en", "ru"))
            rows.append(f"| {model} ({len(ids)} clips, {audio:.0f} s) | {label} | {s['wall']:.1f} | "
                        f"{audio / s['wall']:.1f}× | {ratio} | {s['cpu']:.0f} | {start} | {s['rss']:.0f} MB | {w} |")
    print(f"{rounds} round(s), --threads {cfg['threads']} / cpu_threads={cfg['threads']}, "
          f"{'quick clip set' if cfg['quick'] else 'all clips'}, {cfg['fw']}, {cfg['host']}\n")
    print("| model (clips, audio) | engine | wall s (median) | speed (audio/wall) | ours ÷ this (same precision) "
          "| CPU s | startup s | peak RSS | WER en | WER ru |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    for line in raw + notes:
        print("- " + line)


PM_TOOLS = [("ours", "ours (candle, float)"), ("fw-float32", "faster-whisper float32"),
            ("wcpp-f16", "whisper.cpp f16"), ("ours-q8", "ours (candle, q8_0)"),
            ("fw-int8", "faster-whisper int8"), ("wcpp-q8_0", "whisper.cpp q8_0")]
PM_PAIR = {"fw-float32": "ours", "wcpp-f16": "ours", "fw-int8": "ours-q8", "wcpp-q8_0": "ours-q8"}


def report_per_message(cfg, work, eval_dir):
    """Per engine: the per-clip times (model loaded, warm-up clips dropped) summed per round;
    the median of those sums over the rounds, their min–max, ours ÷ the peer of the same
    precision, and WER of the first round's text."""
    rounds = cfg["rounds"]
    med = statistics.median
    rows, raw, notes = [], [], []
    for model in cfg["models"]:
        ids = [os.path.basename(p).rsplit(".", 1)[0]
               for p in open(os.path.join(work, f"clips.{model}"), encoding="utf-8").read().split()]
        audio = sum(float(r["duration_s"]) for r in manifest(eval_dir) if r["id"] in ids)
        stats = {}
        for tag, _ in PM_TOOLS:
            sums, texts, loadavg, slowest = [], [], [], []
            for r in range(1, rounds + 1):
                base = os.path.join(work, f"{model}.{tag}.{r}")
                out = read_jsonl(base + ".out")
                missing = [i for i in ids if i not in out]
                if missing:
                    notes.append(f"{model} {tag} round {r}: no output for {' '.join(missing)}")
                sums.append(sum(j["elapsed_s"] for j in out.values()))
                slowest.append(max((j["elapsed_s"], k) for k, j in out.items()))
                texts.append({k: j["text"] for k, j in out.items()})
                loadavg.append(float(open(base + ".loadavg").read().split()[0]))
            varied = [i for i in ids if len({t.get(i) for t in texts}) > 1]
            if varied:
                notes.append(f"{model} {tag}: text differed between rounds on {len(varied)} clip(s): "
                             + " ".join(varied))
            stats[tag] = dict(sum=med(sums), lo=min(sums), hi=max(sums),
                              wer=wer(eval_dir, work, model, tag, texts[0]))
            raw.append(f"{model} {tag}: per-clip sum " + " ".join(f"{x:.2f}" for x in sums)
                       + " s; slowest clip " + ", ".join(f"{k} {t:.2f} s" for t, k in slowest)
                       + "; load average at start " + " ".join(f"{a:.1f}" for a in loadavg))
        for tag, label in PM_TOOLS:
            s = stats[tag]
            ratio = f"**{stats[PM_PAIR[tag]]['sum'] / s['sum']:.2f}**" if tag in PM_PAIR else ""
            w = " | ".join(f"{s['wer'][l][0]:.2f}% ({s['wer'][l][1]})" if l in s["wer"] else ""
                           for l in ("en", "ru"))
            rows.append(f"| {model} ({len(ids)} clips, {audio:.0f} s) | {label} | {s['sum']:.2f} | "
                        f"{s['lo']:.2f}–{s['hi']:.2f} | {s['sum'] / len(ids):.3f} | {audio / s['sum']:.1f}× | "
                        f"{ratio} | {w} |")
    print(f"per message: clips ≤ {cfg['max_s']:g} s, model loaded, {cfg['warmup']} warm-up clip(s) per "
          f"process not counted; {rounds} round(s), {cfg['threads']} threads, greedy, language forced "
          f"per clip; {'quick clip set' if cfg['quick'] else 'all clips'}; {cfg['fw']}; {cfg['wcpp']}; "
          f"{cfg['host']}\n")
    print(f"whisper.cpp system_info: `{cfg['system_info']}`\n")
    print("| model (clips, audio) | engine | per-clip sum s (median) | min–max over rounds "
          "| mean per message s | speed (audio/time) | ours ÷ this (same precision) | WER en | WER ru |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    for line in raw + notes:
        print("- " + line)


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "clips":
        opts = args[2:]
        max_s = float(opts[opts.index("--max-s") + 1]) if "--max-s" in opts else None
        clips(args[0], args[1], "--quick" in opts, max_s, "--by-lang" in opts)
    elif cmd == "fw":
        fw(*args[:5], args[5:])
    elif cmd == "wcpp":
        wcpp(*args[:4], args[4:])
    elif cmd == "wcpp-info":
        wcpp_info()
    elif cmd == "check":
        check(*args)
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
