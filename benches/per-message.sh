#!/usr/bin/env bash
# Per-message latency with the model already loaded, as the daemon sees it: ours, faster-whisper
# and whisper.cpp on the same weights (the CTranslate2 models in models/cache/<model>; whisper.cpp
# reads them converted to ggml by benches/ct2_to_ggml.py), the same OGG/Opus clips of at most
# 30 s from ../shared/eval (a voice message's length; manifest duration_s), the same threads.
# Per round and model, each engine is one process that loads its model once and then transcribes
# the clips one by one; a clip's time is taken around that clip only (decoding the Opus file and
# transcribing it: `elapsed_s` of `transcribe -f json`, and the same span in the helpers). Each
# process first transcribes its first clip once more, not counted (--warmup), so no engine's
# first message pays one-time setup. Engines take turns, in an order that rotates each round.
# Reports per engine the median over rounds of the summed per-clip times, their min–max, ours ÷
# each peer of the same precision (our float vs faster-whisper float32 and whisper.cpp f16, our
# q8_0 vs faster-whisper int8 and whisper.cpp q8_0) and WER by the shared wer.py (first round),
# as a markdown table, with whisper.cpp's system_info line.
#
#   benches/per-message.sh                       # tiny.en and base, clips ≤ 30 s, 2 threads, 3 rounds
#   benches/per-message.sh --quick --rounds 1    # the quick clips (4 for tiny.en, 6 for base)
#   benches/per-message.sh --quick --max-s 12 --rounds 1   # 3 and 4 of them: a smoke test
#   benches/per-message.sh --models base --rounds 5
#
# Options (or environment): --models "tiny.en base" (MODELS), --rounds N (ROUNDS, 3),
# --threads N (THREADS, 2), --max-s S (MAX_S, 30), --warmup N (WARMUP, 1), --quick (QUICK=1),
# --eval DIR (EVAL_DIR, ../shared/eval), --keep DIR (keep raw outputs there; default a temporary
# directory, removed). The whole-process comparison (model load counted, all clips) is
# benches/side-by-side.sh; both share benches/side_by_side.py.
#
# Language: forced for every engine alike, en for *.en models, and for multilingual ones each
# clip's own from the manifest's `lang` (side-by-side.sh lets base detect it, as the daemon
# does; here detection would add a different extra cost to each engine). Our binary takes one
# --language per process, so for base it runs one process per language (English clips, then
# Russian; every engine gets the clips in that order), each with its warm-up clip.
# Settings: greedy (beam 1; whisper.cpp best_of 1), temperature fallback at each engine's
# default, no VAD, non-speech tokens suppressed (whisper.cpp's suppress_nst, off by default),
# timestamps on (whisper.cpp's no_timestamps changes its decoding), flash attention at
# whisper.cpp's default (on), faster-whisper with conditioning on previous text as
# side-by-side.sh. Engines:
#   ours        $VOICE_TRANSCRIBER_BIN (else target/release/voice-transcriber after `cargo build
#               --release`), models <model> and <model>-q8_0 (made once with `models quantize`)
#   faster-whisper  FW_PINS below, in models/cache/fw-venv, compute_type float32 and int8
#   whisper.cpp pywhispercpp (WCPP_PINS), built from source in models/cache/wcpp-venv with
#               GGML_NATIVE=ON (cmake, -j2), so its system_info must show AVX2, FMA and F16C;
#               models/cache/ggml/ggml-<model>.bin (f16) and ggml-<model>-q8_0.bin, converted on
#               first use and checked on the JFK clip; its helper decodes the Opus file in
#               process with PyAV (WCPP_PINS), as faster-whisper does. Its OpenMP threads
#               busy-wait: compare on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

FW_PINS=(faster-whisper==1.2.1 ctranslate2==4.8.5)
WCPP_PINS=(pywhispercpp==1.5.1 av==18.1.0 numpy==2.4.6)

models=${MODELS:-tiny.en base}
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
max_s=${MAX_S:-30}
warmup=${WARMUP:-1}
quick=${QUICK:-}
eval_dir=${EVAL_DIR:-../shared/eval}
keep=
while [ $# -gt 0 ]; do
  case "$1" in
    --models) models=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --max-s) max_s=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --eval) eval_dir=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
eval_dir=$(cd "$eval_dir" && pwd)
helper=$root/benches/side_by_side.py

# faster-whisper in its own virtualenv (as side-by-side.sh makes it)
venv=$root/models/cache/fw-venv
if ! "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qx "${FW_PINS[0]}"; then
  echo "creating $venv with ${FW_PINS[*]}" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${FW_PINS[@]}" >&2
fi
fw_version=$("$venv/bin/python" -c 'import faster_whisper, ctranslate2; print(f"faster-whisper {faster_whisper.__version__} (CTranslate2 {ctranslate2.__version__})")')

# whisper.cpp through pywhispercpp, compiled here for this CPU (its source distribution vendors
# whisper.cpp; pip fetches cmake as a build dependency). $ORIGIN: the extension finds the
# libraries installed beside it.
wvenv=$root/models/cache/wcpp-venv
if ! "$wvenv/bin/python" -m pip freeze 2>/dev/null | grep -qx "${WCPP_PINS[0]}"; then
  echo "creating $wvenv with ${WCPP_PINS[*]}, building whisper.cpp from source (a few minutes)" >&2
  # A CPU may list AMX (Sapphire Rapids and later) where the hypervisor does not let a guest
  # use it: ggml's AMX q8_0 kernels then die of SIGILL. -mno-amx-* wins over -march=native; the
  # AVX-512 and VNNI paths stay.
  # (CMake takes CFLAGS and CXXFLAGS from the environment.)
  no_amx=
  if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
  python3 -m venv "$wvenv"
  CMAKE_BUILD_PARALLEL_LEVEL=2 CFLAGS="$no_amx" CXXFLAGS="$no_amx" \
  CMAKE_ARGS='-DGGML_NATIVE=ON -DWHISPER_BUILD_EXAMPLES=OFF -DWHISPER_BUILD_TESTS=OFF -DCMAKE_INSTALL_RPATH=$ORIGIN -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON' \
    "$wvenv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    --no-binary pywhispercpp "${WCPP_PINS[@]}" >&2
fi
{ read -r wcpp_version; read -r system_info; } < <("$wvenv/bin/python" "$helper" wcpp-info)
echo "whisper.cpp system_info: $system_info" >&2
if [ "$(uname -m)" = x86_64 ]; then
  for flag in "AVX2 = 1" "FMA = 1" "F16C = 1"; do
    case "$system_info" in *"$flag"*) ;; *)
      echo "error: whisper.cpp is built without ${flag% = 1} (remove $wvenv to rebuild it)" >&2; exit 1 ;;
    esac
  done
fi

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

jfk=$eval_dir/opus/en_jfk_ask_not.ogg
for m in $models; do
  [ -f "models/cache/$m/model.bin" ] || { echo "error: models/cache/$m missing (models/fetch-offline.sh $m)" >&2; exit 1; }
  python3 "$helper" clips "$eval_dir" "$m" ${quick:+--quick} --max-s "$max_s" --by-lang > "$work/clips.$m.lang"
  cut -d: -f2- "$work/clips.$m.lang" > "$work/clips.$m"
  # our q8_0 counterpart, made with our own quantizer once
  [ -d "models/cache/$m-q8_0" ] || "$bin" --models-dir models/cache models quantize "$m" --to q8_0 >&2
  # whisper.cpp's files, converted from the same weights once and checked on the JFK clip
  if [ ! -f "models/cache/ggml/ggml-$m.bin" ] || [ ! -f "models/cache/ggml/ggml-$m-q8_0.bin" ]; then
    "$wvenv/bin/python" benches/ct2_to_ggml.py "models/cache/$m" models/cache/ggml
    for g in "ggml-$m" "ggml-$m-q8_0"; do
      "$wvenv/bin/python" "$helper" wcpp "models/cache/ggml/$g.bin" "$threads" en "$work/check.meta" "$jfk" > "$work/check.out"
      python3 "$helper" check "$eval_dir" "$work/check.out" \
        || { echo "error: models/cache/ggml/$g.bin gives a wrong JFK text; removing it" >&2; rm -f "models/cache/ggml/$g.bin"; exit 1; }
    done
  fi
done
python3 - "$work/config.json" "$models" "$rounds" "$threads" "${quick:-}" "$fw_version" "$wcpp_version" \
  "$system_info" "$max_s" "$warmup" <<'PY'
import json, platform, os, sys
out, models, rounds, threads, quick, fw, wcpp, system_info, max_s, warmup = sys.argv[1:]
host = f"{platform.machine()}, {os.cpu_count()} cores"
json.dump(dict(mode="per-message", models=models.split(), rounds=int(rounds), threads=int(threads),
               quick=bool(quick), fw=fw, wcpp=wcpp, system_info=system_info, max_s=float(max_s),
               warmup=int(warmup), host=host), open(out, "w"))
PY

# One engine process over FILES (LANG:PATH lines): the first $warmup clips once more in front,
# their output lines dropped.
engine() { # tool model lang-mode out files...
  local tool=$1 m=$2 lang=$3 out=$4 model=$2
  shift 4
  local -a files=("${@:1:$warmup}" "$@")
  { case "$tool" in
    ours | ours-q8)
      [ "$tool" = ours ] || model=$m-q8_0
      "$bin" --models-dir models/cache transcribe --model "$model" --language "$lang" \
        --threads "$threads" -f json "${files[@]}" 2>> "$out.err" ;;
    fw-*)
      "$venv/bin/python" "$helper" fw "models/cache/$m" "${tool#fw-}" "$threads" "$lang" "$out.meta" \
        "${files[@]}" 2>> "$out.err" ;;
    wcpp-*)
      local g=ggml-$m
      [ "$tool" = wcpp-f16 ] || g=$g-q8_0
      "$wvenv/bin/python" "$helper" wcpp "models/cache/ggml/$g.bin" "$threads" "$lang" "$out.meta" \
        "${files[@]}" 2>> "$out.err" ;;
  esac; } | tail -n +"$((warmup + 1))" >> "$out.out" \
    || { echo "error: $m $tool failed:" >&2; tail -5 "$out.err" >&2; exit 1; }
}

run() { # model tool round
  local m=$1 tool=$2 r=$3 out="$work/$1.$2.$3" lang
  local -a clips
  mapfile -t clips < "$work/clips.$m.lang"
  : > "$out.out"
  cut -d' ' -f1-3 /proc/loadavg > "$out.loadavg"
  echo "round $r: $m $tool (${#clips[@]} clips, load $(cut -d' ' -f1 /proc/loadavg))" >&2
  case "$tool" in
    ours*)  # one process per language: --language is per process
      for lang in $(printf '%s\n' "${clips[@]}" | cut -d: -f1 | uniq); do
        local -a group=()
        mapfile -t group < <(printf '%s\n' "${clips[@]}" | grep "^$lang:" | cut -d: -f2-)
        engine "$tool" "$m" "$lang" "$out" "${group[@]}"
      done ;;
    *) engine "$tool" "$m" per-clip "$out" "${clips[@]}" ;;
  esac
}

tools=(ours fw-float32 wcpp-f16 ours-q8 fw-int8 wcpp-q8_0)
for r in $(seq 1 "$rounds"); do
  for m in $models; do
    for i in "${!tools[@]}"; do
      run "$m" "${tools[$(( (i + r - 1) % ${#tools[@]} ))]}" "$r"
    done
  done
done

python3 "$helper" report "$work" "$eval_dir"
