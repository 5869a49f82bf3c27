#!/usr/bin/env bash
# Regenerate the espeak-ng example clips (16 kHz mono 16-bit FLAC). Needs espeak-ng (apt-get install espeak-ng)
# and a Python with soundfile and soxr (the project's .venv).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
say() {  # voice, output file, text
  tmp=$(mktemp --suffix .wav)
  espeak-ng -v "$1" -s 160 -w "$tmp" "$3"
  "$PYTHON" -c 'import sys, soundfile as sf, soxr
x, sr = sf.read(sys.argv[1], dtype="float32")
sf.write(sys.argv[2], soxr.resample(x, sr, 16000), 16000, format="FLAC", subtype="PCM_16")' "$tmp" "$2"
  rm -f "$tmp"
}
say en-us espeak_weather.flac "The weather today is sunny with a light breeze from the west."
say en-us espeak_numbers.flac "Please call me back at five, seven, three, two, one."
say en+f3 espeak_library.flac "The library opens at nine in the morning on weekdays."
say en+f3 espeak_short.flac "Hello there."
