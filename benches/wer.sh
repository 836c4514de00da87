#!/usr/bin/env bash
# Word error rate of our binary per model on the shared evaluation set: every OGG/Opus clip of
# ../shared/eval (English clips only for *.en models), greedy, language detected on multilingual
# models as the daemon does, scored by the shared wer.py. Made for comparing a model with its
# quantized variants, which faster-whisper cannot load (see side-by-side.sh for that comparison).
#
#   benches/wer.sh tiny.en tiny.en-q8_0 tiny.en-q4_0 tiny.en-q4_k
#
# Models are names installed in $MODELS_DIR (models/cache) or model directories. Quantized
# variants are made with:
#   ./target/release/voice-transcriber --models-dir models/cache models quantize tiny.en --to q4_0
# Environment: THREADS (2), EVAL_DIR (../shared/eval), MODELS_DIR (models/cache),
# VOICE_TRANSCRIBER_BIN (target/release/voice-transcriber), KEEP (directory for the raw output),
# ARGS (more `transcribe` options, e.g. ARGS="--encoder-margin 4"), MAX_S (only clips of at most
# this many seconds, e.g. MAX_S=30 for voice-message-sized ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VOICE_TRANSCRIBER_BIN:-target/release/voice-transcriber}
eval_dir=${EVAL_DIR:-../shared/eval}
models_dir=${MODELS_DIR:-models/cache}
threads=${THREADS:-2}
[ $# -gt 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
[ -x "$bin" ] || { echo "error: $bin missing: run cargo build --release" >&2; exit 2; }
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

for model in "$@"; do
  # English-only models get the English clips; the manifest's lang column decides.
  case "${model##*/}" in
    *.en | *.en-*) want=en ;;
    *) want= ;;
  esac
  awk -F'\t' -v want="$want" -v max="${MAX_S:-0}" \
    'NR == 1 || ((want == "" || $2 == want) && (max == 0 || $3 <= max))' \
    "$eval_dir/manifest.tsv" > "$work/$model.manifest.tsv"
  clips=$(awk -F'\t' -v dir="$eval_dir/opus" 'NR > 1 { print dir "/" $1 ".ogg" }' \
    "$work/$model.manifest.tsv")
  start=$(date +%s.%N)
  # shellcheck disable=SC2086 # one argument per clip, and ARGS split into options
  "$bin" transcribe --models-dir "$models_dir" --model "$model" --threads "$threads" -f json \
    ${ARGS:-} $clips > "$work/$model.jsonl" 2> "$work/$model.log" ||
    { echo "error: $model failed, see $work/$model.log" >&2; tail -3 "$work/$model.log" >&2; continue; }
  end=$(date +%s.%N)
  python3 - "$work/$model.jsonl" > "$work/$model.hyp.tsv" <<'EOF'
import json, os, sys
print("id\ttext")
for line in open(sys.argv[1]):
    j = json.loads(line)
    clip = os.path.splitext(os.path.basename(j["file"]))[0]
    print(f"{clip}\t{' '.join(j['text'].split())}")
EOF
  printf '%s (%s s):\n' "$model" "$(echo "$end - $start" | bc | xargs printf '%.1f')"
  python3 "$eval_dir/wer.py" "$work/$model.manifest.tsv" "$work/$model.hyp.tsv" --quiet |
    sed 's/^/  /'
done
