"""Peak memory and time of decoding one long file to 16 kHz mono: `gpa.audio.load_audio` against decoding it at once;
and of cutting consecutive segments out of it (GPA's ``begin_time``/``end_time``, NeMo's ``offset``).

    python benchmarks/audio_decode.py                  # 30 minutes of 44.1 kHz stereo, each format
    python benchmarks/audio_decode.py --minutes 60 --formats mp3,m4a

A decode task of a transcription job holds the file it decodes; an archive of hour-long recordings makes that the
largest thing in the task. "at once" is what decoding does without blocks: the whole file as (frames, channels)
float32 at its own rate (PyAV's frames concatenated; soundfile's ``sf.read`` for WAV and FLAC), the mean of its
channels, one ``soxr.resample`` call. ``load_audio`` mixes and resamples block by block into one buffer; its
samples are checked to be the same. Each measurement is a fresh process; the table gives its peak RSS while
decoding over its RSS just before (the encoded bytes already read; Linux only). The files are generated first
(tones and noise, in blocks).

Segments: every 10 s of the file as one segment, in time order, as a decode worker gets them. "whole file" is how
`gpa.audio.EncodedAudio` cut them before: the whole file decoded once as mono at its own rate and held, each
segment cut from it and resampled; ``EncodedAudio.segment`` decodes them forward, as far as the segment ends,
holding one segment. (WAV and FLAC are sought, then and now.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = 44100


def make_file(path: Path, minutes: float) -> None:
    import av
    import numpy as np
    import soundfile as sf

    frames = int(minutes * 60 * RATE)
    rng = np.random.default_rng(0)

    def blocks():
        for start in range(0, frames, RATE):
            t = np.arange(start, min(start + RATE, frames)) / RATE
            left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))
            right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(len(t))
            yield np.stack([left, right], axis=1).astype(np.float32)

    if path.suffix == ".m4a":
        with av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream("aac", rate=RATE, layout="stereo")
            for block in blocks():
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.T), format="fltp", layout="stereo")
                frame.rate = RATE
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        return
    fmt = {".mp3": "MP3", ".ogg": "OGG", ".flac": "FLAC", ".wav": "WAV"}[path.suffix]
    with sf.SoundFile(str(path), "w", RATE, 2, format=fmt) as f:  # in blocks: libsndfile's Vorbis crashes on one
        for block in blocks():
            f.write(block)


def child(path: str, mode: str) -> dict:
    """One fresh process: decode ``path`` one way, report peak RSS (MB), seconds and a digest of the samples."""
    import hashlib
    import io
    import time

    import numpy as np
    import soundfile as sf
    import soxr

    sys.path.insert(0, str(ROOT))
    from gpa.audio import EncodedAudio, decode, load_audio
    from gpa.errors import EmptyAudio

    data = Path(path).read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS (Linux)
    base = _status_mb("VmHWM")
    start = time.perf_counter()
    if mode == "blocks":
        out = load_audio(data)
    elif mode.startswith("segments"):  # each segment handed on (its digest taken) and let go, as a worker does
        digest, samples = hashlib.sha1(), 0
        if mode == "segments-whole":
            whole, rate = decode(data)
            cuts = (soxr.resample(whole[s * rate:(s + 10) * rate], rate, 16000, quality="VHQ")
                    for s in range(0, -(-len(whole) // rate), 10))
        else:
            audio = EncodedAudio(data)
            cuts = (load_audio(audio.segment(s, s + 10.0)) for s in range(0, 10**6, 10))
        try:
            for cut in cuts:
                digest.update(cut.tobytes())
                samples += len(cut)
        except EmptyAudio:  # past the end
            pass
        return {"peak_mb": _status_mb("VmHWM"), "base_mb": base, "s": time.perf_counter() - start,
                "out_mb": samples * 4 / 2**20, "digest": digest.hexdigest()}
    else:
        if not path.endswith((".flac", ".wav")):  # compressed formats: FFmpeg, as gpa.audio decodes them
            import av

            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.audio[0]
                whole = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1).T
                rate = stream.rate
        else:
            whole, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        mono = whole.mean(axis=1, dtype=np.float64).astype(np.float32)
        del whole
        out = soxr.resample(mono, rate, 16000, quality="VHQ")
    seconds = time.perf_counter() - start
    return {"peak_mb": _status_mb("VmHWM"), "base_mb": base,
            "s": seconds, "out_mb": out.nbytes / 2**20, "digest": hashlib.sha1(out.tobytes()).hexdigest()}


def _status_mb(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def measure(path: Path, mode: str) -> dict:
    code = f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import audio_decode as b; " \
           f"print(json.dumps(b.child({str(path)!r}, {mode!r})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--formats", default="mp3,m4a,ogg,flac,wav")
    parser.add_argument("--dir", help="where the generated files go (default: a temporary folder)")
    args = parser.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="gpa-audio-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"{args.minutes:g} min of 44.1 kHz stereo per file; 16 kHz mono result "
          f"{args.minutes * 60 * 16000 * 4 / 2**20:.0f} MB; files in {directory}")
    print("| format | file MB | at once: peak MB | s | load_audio: peak MB | s | peak ratio | same samples |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    paths = []
    for fmt in args.formats.split(","):
        path = directory / f"long-{args.minutes:g}min.{fmt}"
        paths.append(path)
        if not path.exists():
            make_file(path, args.minutes)
        once, blocks = measure(path, "once"), measure(path, "blocks")
        added = (once["peak_mb"] - once["base_mb"], blocks["peak_mb"] - blocks["base_mb"])
        print(f"| {fmt} | {path.stat().st_size / 2**20:.0f} | {added[0]:.0f} | {once['s']:.1f} | {added[1]:.0f} | "
              f"{blocks['s']:.1f} | {added[1] / added[0]:.2f} | {once['digest'] == blocks['digest']} |", flush=True)
    print(f"\nSegments of 10 s, in order ({args.minutes * 6:.0f} of them, each let go once cut)")
    print("| format | whole file: peak MB | s | `EncodedAudio.segment`: peak MB | s | peak ratio | output MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        if path.suffix in (".flac", ".wav"):
            continue  # sought before too
        whole, forward = measure(path, "segments-whole"), measure(path, "segments")
        added = [m["peak_mb"] - m["base_mb"] for m in (whole, forward)]
        print(f"| {path.suffix[1:]} | {added[0]:.0f} | {whole['s']:.1f} | {added[1]:.0f} | {forward['s']:.1f} | "
              f"{added[1] / added[0]:.2f} | {forward['out_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
