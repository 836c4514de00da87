#!/usr/bin/env bash
# Side by side with faster-whisper: the same CTranslate2 weights (models/cache/<model>, see
# models/fetch-offline.sh), the same OGG/Opus clips from ../shared/eval, the same thread count,
# greedy decoding. Per round and model, each engine is one process over all clips (model load
# counted); the engines take turns A B C D A B C D ... (the order rotates each round). Reports the
# median wall time, ours ÷ theirs at the same precision (our f32 vs its float32, our q8_0 vs its
# int8), peak RSS (/usr/bin/time -v) and WER by the shared wer.py, as a
# markdown table.
#
#   benches/side-by-side.sh                          # tiny.en and base, all clips, 2 threads, 3 rounds
#   benches/side-by-side.sh --quick --rounds 1       # 6 short clips (4 for tiny.en): a smoke test
#   benches/side-by-side.sh --models base --threads 4
#
# Options (or environment): --models "tiny.en base" (MODELS), --rounds N (ROUNDS, 3),
# --threads N (THREADS, 2), --quick (QUICK=1), --eval DIR (EVAL_DIR, ../shared/eval),
# --keep DIR (keep raw outputs there; default a temporary directory, removed).
# faster-whisper runs from a virtualenv in models/cache/fw-venv (git-ignored), created on first
# use with the pinned versions below. The binary is $VOICE_TRANSCRIBER_BIN, else
# target/release/voice-transcriber after `cargo build --release`.
#
# Settings on both sides: beam size 1, condition on previous text, temperature fallback left at
# each engine's default, no VAD; language en for *.en models, detected for multilingual ones
# (as the daemon does). faster-whisper runs with compute_type float32 (the weights ours uses)
# and int8 (its fastest CPU setting), with its default threading (CTranslate2's libgomp OpenMP
# pool; OMP_WAIT_POLICY / GOMP_SPINCOUNT in the environment are passed through). Its float32
# times swing widely when other processes share the cores: compare on an idle machine.
# Columns: wall = whole process (interpreter, imports, model load, decode of the Opus files);
# CPU s = user + system time; startup = wall minus the per-file times (for faster-whisper the
# model load measured inside the process is shown in brackets); WER from the first round.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

FW_PINS=(faster-whisper==1.2.1 ctranslate2==4.8.5)

models=${MODELS:-tiny.en base}
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
quick=${QUICK:-}
eval_dir=${EVAL_DIR:-../shared/eval}
keep=
while [ $# -gt 0 ]; do
  case "$1" in
    --models) models=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --eval) eval_dir=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
eval_dir=$(cd "$eval_dir" && pwd)
helper=$root/benches/side_by_side.py

# /usr/bin/time for peak RSS
if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time for peak RSS" >&2
  apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi

# faster-whisper in its own virtualenv
venv=$root/models/cache/fw-venv
if ! "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qx "${FW_PINS[0]}"; then
  echo "creating $venv with ${FW_PINS[*]}" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${FW_PINS[@]}" >&2
fi
fw_version=$("$venv/bin/python" -c 'import faster_whisper, ctranslate2; print(f"faster-whisper {faster_whisper.__version__} (CTranslate2 {ctranslate2.__version__})")')

# our binary, fresh
if [ -n "${VOICE_TRANSCRIBER_BIN:-}" ]; then
  bin=$VOICE_TRANSCRIBER_BIN
else
  cargo build --release --quiet
  bin=$root/target/release/voice-transcriber
fi

if [ -n "$keep" ]; then
  mkdir -p "$keep" && work=$(cd "$keep" && pwd)
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

for m in $models; do
  [ -f "models/cache/$m/model.bin" ] || { echo "error: models/cache/$m missing (models/fetch-offline.sh $m)" >&2; exit 1; }
  python3 "$helper" clips "$eval_dir" "$m" ${quick:+--quick} > "$work/clips.$m"
  # our q8_0 counterpart of its int8, made with our own quantizer once
  [ -d "models/cache/$m-q8_0" ] || "$bin" --models-dir models/cache models quantize "$m" --to q8_0 >&2
done
python3 - "$work/config.json" "$models" "$rounds" "$threads" "${quick:-}" "$fw_version" <<'PY'
import json, platform, os, sys
out, models, rounds, threads, quick, fw = sys.argv[1:]
host = f"{platform.machine()}, {os.cpu_count()} cores"
json.dump(dict(models=models.split(), rounds=int(rounds), threads=int(threads), quick=bool(quick),
               fw=fw, host=host), open(out, "w"))
PY

run() { # model tool round
  local m=$1 tool=$2 r=$3 lang=auto out="$work/$1.$2.$3"
  local -a files
  mapfile -t files < "$work/clips.$m"
  case "$m" in *.en) lang=en ;; esac
  cut -d' ' -f1-3 /proc/loadavg > "$out.loadavg"
  echo "round $r: $m $tool (${#files[@]} clips, load $(cut -d' ' -f1 /proc/loadavg))" >&2
  case "$tool" in
    ours | ours-q8)
      local model=$m
      [ "$tool" = ours ] || model=$m-q8_0
      /usr/bin/time -v -o "$out.time" "$bin" --models-dir models/cache transcribe --model "$model" \
        --language "$lang" --threads "$threads" -f json "${files[@]}" > "$out.out" 2> "$out.err" ;;
    fw-*)
      /usr/bin/time -v -o "$out.time" "$venv/bin/python" "$helper" fw "models/cache/$m" "${tool#fw-}" \
        "$threads" "$lang" "$out.meta" "${files[@]}" > "$out.out" 2> "$out.err" ;;
  esac || { echo "error: $m $tool failed:" >&2; tail -5 "$out.err" >&2; exit 1; }
}

tools=(ours fw-float32 ours-q8 fw-int8)
for r in $(seq 1 "$rounds"); do
  for m in $models; do
    for i in 0 1 2 3; do
      run "$m" "${tools[$(( (i + r - 1) % 4 ))]}" "$r"
    done
  done
done

python3 "$helper" report "$work" "$eval_dir"
