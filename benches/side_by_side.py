#!/usr/bin/env python3
"""Helper for benches/side-by-side.sh (see there). Three subcommands:

  clips  EVAL_DIR MODEL [--quick]          print the clip paths for MODEL, one a line
  fw     MODEL_DIR COMPUTE_TYPE THREADS LANG META FILES...
                                           faster-whisper over FILES in one process (run with the
                                           venv's python); prints one JSON line per file like
                                           `voice-transcriber transcribe -f json`, and writes
                                           {"import_s", "load_s"} to META
  report WORK_DIR EVAL_DIR                 markdown table from the runs recorded in WORK_DIR

Only `fw` needs faster-whisper; the rest is stdlib.
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


def clips(eval_dir, model, quick):
    rows = [r for r in manifest(eval_dir) if r["lang"] in langs_of(model)]
    if quick:
        rows = [r for r in rows if r["id"] in QUICK]
    for r in rows:
        print(os.path.join(eval_dir, "opus", r["id"] + ".ogg"))


def fw(model_dir, compute_type, threads, lang, meta, files):
    t0 = time.perf_counter()
    from faster_whisper import WhisperModel
    t1 = time.perf_counter()
    model = WhisperModel(model_dir, device="cpu", cpu_threads=int(threads), compute_type=compute_type)
    t2 = time.perf_counter()
    with open(meta, "w") as m:
        json.dump({"import_s": t1 - t0, "load_s": t2 - t1}, m)
    for path in files:
        start = time.perf_counter()
        # As ../shared/eval/run_faster_whisper.py made reference_faster_whisper_greedy.tsv, with
        # beam_size=1 (greedy, like ours); the language is detected unless LANG is given.
        segs, info = model.transcribe(path, beam_size=1, language=None if lang == "auto" else lang,
                                      condition_on_previous_text=True, vad_filter=False)
        text = " ".join(s.text.strip() for s in segs).strip()
        print(json.dumps({"file": path, "language": info.language, "duration_s": info.duration,
                          "elapsed_s": time.perf_counter() - start, "text": text},
                         ensure_ascii=False), flush=True)


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


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "clips":
        clips(args[0], args[1], "--quick" in args[2:])
    elif cmd == "fw":
        fw(*args[:5], args[5:])
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
