#!/usr/bin/env bash
# Memory of the running daemon: resident set size when idle (model loaded, connected, no job),
# and the peak while it transcribes one voice message. Runs the release binary, with its real
# Telegram client, against the fake Telegram data center (`cargo run --example fake-telegram`,
# tests/fake_telegram/), so no account is needed: a tracked contact sends the clip as a voice
# message a few seconds after the daemon has connected.
#
#   benches/daemon-memory.sh [MODEL] [CLIP]
#   (defaults: tiny.en, tests/data/audio_jfk_ask_not.ogg; models from $VOICE_TRANSCRIBER_MODELS,
#   else models/cache/)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-tiny.en}
clip=$(realpath "${2:-tests/data/audio_jfk_ask_not.ogg}")
bin=${VOICE_TRANSCRIBER_BIN:-target/release/voice-transcriber}
[ -x "$bin" ] || cargo build --release
cargo build --release --example fake-telegram
work=$(mktemp -d)
state="$work/state"
pid=
dc=
trap 'kill "$pid" "$dc" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/scenario.toml" <<TOML
[owner]
id = 1000
first_name = "Olga"

[[users]]
key = "ann"
id = 111
access_hash = 5555
first_name = "Ann"
contact = true
tracked = true

# Sent 8 s after the daemon first asks for its update state: idle is measured before.
[[messages]]
chat = "ann"
after_s = 8
[messages.voice]
file = "$clip"
duration_s = 11
TOML
target/release/examples/fake-telegram --scenario "$work/scenario.toml" --state-dir "$state" \
  --config-extra "model = \"$model\"
threads = 2
models_dir = \"${VOICE_TRANSCRIBER_MODELS:-$PWD/models/cache}\"" > "$work/dc.out" &
dc=$!
until grep -q "^run:" "$work/dc.out" 2>/dev/null; do sleep 0.2; done
RUST_LOG=info "$bin" --state-dir "$state" --config "$state/config.toml" run 2> "$work/log" &
pid=$!
rss() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$pid/status"; }  # kB
mb() { awk -v kb="$1" 'BEGIN {printf "%.1f", kb * 1024 / 1e6}'; }      # kB -> MB (10^6 bytes)
until grep -q "connected to Telegram" "$work/log"; do sleep 0.2; done
sleep 2
weights=$(sed -n 's/.*: \([0-9.]*\) MB of weights in memory.*/\1/p' "$work/log")
idle=$(rss VmRSS) idle_anon=$(rss RssAnon) idle_file=$(rss RssFile)
until grep -q '"done":{"chat":111,' "$state/spool/journal.jsonl" 2>/dev/null; do sleep 0.2; done
peak=$(rss VmHWM)
sleep 1
after=$(rss VmRSS) after_anon=$(rss RssAnon) after_file=$(rss RssFile)
grep -q '"method":"messages.sendMessage"' "$state/fake-telegram.jsonl"
echo "model $model: weights ${weights} MB (all sizes in MB of 10^6 bytes)"
echo "idle RSS:        $(mb "$idle") MB ($(awk -v r="$(mb "$idle")" -v w="$weights" 'BEGIN{printf "%.1f", r - w}') MB beyond the weights; anonymous $(mb "$idle_anon"), file-backed $(mb "$idle_file"))"
echo "peak RSS:        $(mb "$peak") MB (while transcribing $clip)"
echo "RSS after job:   $(mb "$after") MB ($(awk -v r="$(mb "$after")" -v w="$weights" 'BEGIN{printf "%.1f", r - w}') MB beyond the weights; anonymous $(mb "$after_anon"), file-backed $(mb "$after_file"))"
[ -z "${MEMORY_MAPS:-}" ] || awk '/^[0-9a-f]+-/ {map=$1; name=($6 == "" ? "[anonymous]" : $6)} /^Rss:/ {print $2, "kB", map, name}' "/proc/$pid/smaps" | sort -n -r | head -12
kill -TERM "$pid"; wait "$pid"
kill -TERM "$dc"; wait "$dc" || true
