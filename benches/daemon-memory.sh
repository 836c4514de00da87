#!/usr/bin/env bash
# Memory of the running daemon: resident set size when idle (model loaded, no job), and the
# peak while it transcribes one voice message. Runs the release binary against a local
# directory standing in for Telegram (`run --local-chat`), so no account is needed.
#
#   benches/daemon-memory.sh [MODEL] [CLIP]
#   (defaults: tiny.en, tests/data/audio_jfk_ask_not.ogg; models from $VOICE_TRANSCRIBER_MODELS,
#   else models/cache/)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-tiny.en}
clip=${2:-tests/data/audio_jfk_ask_not.ogg}
bin=${VOICE_TRANSCRIBER_BIN:-target/release/voice-transcriber}
[ -x "$bin" ] || cargo build --release
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/chat/inbox" "$work/chat/media"
cat > "$work/config.toml" <<TOML
model = "$model"
threads = 2
models_dir = "${VOICE_TRANSCRIBER_MODELS:-$PWD/models/cache}"
state_dir = "$work/state"
TOML
"$bin" run --config "$work/config.toml" --local-chat "$work/chat" 2> "$work/log" &
pid=$!
rss() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$pid/status"; }
until grep -q "jobs waiting in the spool" "$work/log"; do sleep 0.2; done
sleep 2
weights=$(sed -n 's/.*: \([0-9.]*\) MB of weights in memory.*/\1/p' "$work/log")
idle=$(rss VmRSS)
# The owner tracks user 111, who then sends the clip as a voice message.
printf '{"chat":5,"id":1,"sender":1,"outgoing":true,"text":"/track 111"}' > "$work/chat/inbox/1.json"
cp "$clip" "$work/chat/media/5_2"
printf '{"chat":5,"id":2,"sender":111,"sender_name":"A","media":{"kind":"voice","duration_s":1}}' \
  > "$work/chat/inbox/2.json"
until grep -q '"to":2' "$work/chat/outbox.jsonl" 2>/dev/null; do sleep 0.2; done
peak=$(rss VmHWM)
after=$(rss VmRSS)
echo "model $model: weights ${weights} MB"
echo "idle RSS:        $((idle / 1024)) MB ($(awk -v r="$idle" -v w="$weights" 'BEGIN{printf "%.1f", r/1024 - w}') MB beyond the weights)"
echo "peak RSS:        $((peak / 1024)) MB (while transcribing $clip)"
echo "RSS after job:   $((after / 1024)) MB"
kill -TERM "$pid"; wait "$pid"
