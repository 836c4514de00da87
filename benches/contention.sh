#!/usr/bin/env bash
# Per-message latency on a busy machine: the same voice messages transcribed with the model
# loaded, once on an otherwise idle machine and once while BUSY processes (default: one per
# core, so our threads get their fair share, about half of the CPU) spin on every core. A Pi
# that also runs other services sees the second figure; the ratio says how much of the lost
# time is ours beyond the fair share (2.0 would be exactly the fair share on 2 cores).
#
#   benches/contention.sh                          # tiny.en, English clips ≤ 30 s, 3 rounds
#   benches/contention.sh --model base --rounds 5
#   benches/contention.sh --peers                  # also whisper.cpp f16 (benches/per-message.sh's venv)
#
# Options (or environment): --model M (MODEL, tiny.en), --rounds N (ROUNDS, 3), --threads N
# (THREADS, 2), --busy N (BUSY, the number of cores), --max-s S (MAX_S, 30), --quick (QUICK=1:
# four short clips), --peers (PEERS=1), --eval DIR (EVAL_DIR, ../shared/eval). Each engine is one
# process per run that loads its model once, transcribes its first clip once uncounted, then
# the clips one by one; a clip's time covers that clip only (our `elapsed_s`). Idle and busy
# runs alternate; the table has the medians over rounds of the summed per-clip times, their
# min–max, and busy ÷ idle. Runs at the caller's priority: the daemon's own default (`nice =
# 10`) yields to other services on purpose and is not what is measured here.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

model=${MODEL:-tiny.en}
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
busy=${BUSY:-$(nproc)}
max_s=${MAX_S:-30}
quick=${QUICK:-}
peers=${PEERS:-}
eval_dir=${EVAL_DIR:-../shared/eval}
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --busy) busy=$2; shift 2 ;;
    --max-s) max_s=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --peers) peers=1; shift ;;
    --eval) eval_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
eval_dir=$(cd "$eval_dir" && pwd)
helper=$root/benches/side_by_side.py
[ -f "models/cache/$model/model.bin" ] || { echo "error: models/cache/$model missing (models/fetch-offline.sh $model)" >&2; exit 1; }

if [ -n "${VOICE_TRANSCRIBER_BIN:-}" ]; then
  bin=$VOICE_TRANSCRIBER_BIN
else
  cargo build --release --quiet
  bin=$root/target/release/voice-transcriber
fi
wvenv=$root/models/cache/wcpp-venv
ggml=$root/models/cache/ggml/ggml-$model.bin
engines=(ours)
if [ -n "$peers" ]; then
  [ -x "$wvenv/bin/python" ] && [ -f "$ggml" ] \
    || { echo "error: --peers needs whisper.cpp and $ggml: run benches/per-message.sh --models $model once" >&2; exit 1; }
  engines+=(wcpp-f16)
fi

work=$(mktemp -d)
spinners=()
stop_spinners() {
  [ ${#spinners[@]} -eq 0 ] || kill "${spinners[@]}" 2>/dev/null || true
  wait "${spinners[@]}" 2>/dev/null || true
  spinners=()
}
trap 'stop_spinners; rm -rf "$work"' EXIT

lang=en  # English clips: every model has the language
python3 "$helper" clips "$eval_dir" "$model" ${quick:+--quick} --max-s "$max_s" --by-lang \
  | grep '^en:' | cut -d: -f2- > "$work/clips"
mapfile -t clips < "$work/clips"
[ ${#clips[@]} -gt 0 ] || { echo "error: no English clips of at most $max_s s" >&2; exit 1; }

engine() { # engine out
  local -a files=("${clips[0]}" "${clips[@]}")
  case "$1" in
    ours) "$bin" --models-dir models/cache transcribe --model "$model" --language "$lang" \
            --threads "$threads" -f json "${files[@]}" ;;
    wcpp-f16) "$wvenv/bin/python" "$helper" wcpp "$ggml" "$threads" "$lang" "$work/meta" "${files[@]}" ;;
  esac 2>> "$work/err" | tail -n +2 > "$2" || { echo "error: $1 failed:" >&2; tail -5 "$work/err" >&2; exit 1; }
}

echo "model $model, ${#clips[@]} clips, $threads threads, $busy busy processes, $rounds rounds" >&2
for r in $(seq 1 "$rounds"); do
  for e in "${engines[@]}"; do
    for state in idle busy; do
      if [ "$state" = busy ]; then
        for _ in $(seq 1 "$busy"); do
          sh -c 'while :; do :; done' &
          spinners+=($!)
        done
        sleep 1
      fi
      engine "$e" "$work/$e.$state.$r"
      stop_spinners
      echo "round $r: $e $state $(python3 -c 'import json,sys; print(round(sum(json.loads(l)["elapsed_s"] for l in open(sys.argv[1])), 2))' "$work/$e.$state.$r") s" >&2
    done
  done
done

python3 - "$work" "$rounds" "${engines[@]}" <<'PY'
import json, statistics, sys
work, rounds, engines = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def total(e, state, r):
    return sum(json.loads(l)["elapsed_s"] for l in open(f"{work}/{e}.{state}.{r}"))
print("| engine | idle s (median, min–max) | busy s (median, min–max) | busy ÷ idle |")
print("|---|---|---|---|")
for e in engines:
    idle = [total(e, "idle", r) for r in range(1, rounds + 1)]
    busy = [total(e, "busy", r) for r in range(1, rounds + 1)]
    mi, mb = statistics.median(idle), statistics.median(busy)
    print(f"| {e} | {mi:.2f} ({min(idle):.2f}–{max(idle):.2f}) | {mb:.2f} ({min(busy):.2f}–{max(busy):.2f}) | **{mb / mi:.2f}** |")
PY
