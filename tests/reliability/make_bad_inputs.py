"""Generate the bad-input corpus of the reliability tests: broken and unusual audio files, hostile ids and texts,
and manifests that hold them, each with its documented outcome.

Nothing here is committed as a binary: the tests build the corpus into a temporary directory as they run.

    python tests/reliability/make_bad_inputs.py OUTDIR [--s3-bucket NAME]

writes the files, one manifest per job run (``<name>.jsonl``) and ``expected.json`` (kind -> the outcome of
each of its rows: ``null`` for an ok row, else the ``error_kind``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script
from audio_files import scrambled_m4a  # noqa: E402

RATE = 16000


@dataclass
class Case:
    """One kind of bad input: the manifest lines it contributes and what each of its rows must become."""

    kind: str
    description: str
    lines: list[bytes]
    outcomes: list[str | None]  # per line, in order: None = ok row, else its error_kind
    ids: list[str | None] = field(default_factory=list)  # per line: the id, None = "line:<n>" (no usable id)
    durations: dict[str, float] = field(default_factory=dict)  # ok rows: expected duration_s
    texts: dict[str, str] = field(default_factory=dict)  # ok rows: the text the output must carry unchanged


@dataclass
class Manifest:
    name: str
    job: str
    path: Path
    cases: list[Case]
    config: dict = field(default_factory=dict)  # job settings the run uses
    header: bytes = b""  # a CSV manifest's header line (not a record)

    @property
    def rows(self) -> int:
        return sum(len(c.lines) for c in self.cases)

    def expected(self) -> dict[str, list[tuple[str, str | None]]]:
        """kind -> [(output id, outcome), ...] with ``line:<n>`` ids resolved to the manifest's line numbers."""
        out, line = {}, 0
        for case in self.cases:
            rows = []
            for row_id, outcome in zip(case.ids, case.outcomes, strict=True):
                line += 1
                rows.append((row_id if row_id is not None else f"line:{line}", outcome))
            out[case.kind] = rows
        return out


# --- audio files -------------------------------------------------------------------------------------------------


def tone(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A voiced-sounding test signal (harmonics, a syllable-like envelope and a little noise)."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = sum(0.2 / k * np.sin(2 * np.pi * 140 * k * t) for k in range(1, 6))
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def encoded(samples: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write_long_flac(path: Path, hours: float = 2.0, rate: int = 8000) -> Path:
    """A ``hours``-long mono FLAC at ``rate`` Hz: quiet noise in 5 s stretches separated by 2 s pauses.

    Written block by block from one repeated 7 s pattern, so it costs a few seconds and little memory.
    """
    if path.exists():
        return path
    rng = np.random.default_rng(7)
    period = 7 * rate
    pattern = (0.02 * rng.standard_normal(period)).astype(np.float32)
    pattern[5 * rate:] = 0.0  # the pause
    total = int(hours * 3600 * rate)
    partial = path.with_name(path.name + ".partial")
    with sf.SoundFile(partial, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        block = np.tile(pattern, 60)  # 7 minutes
        written = 0
        while written < total:
            chunk = block[: total - written]
            f.write(chunk)
            written += len(chunk)
    os.replace(partial, path)
    return path


# --- the corpus --------------------------------------------------------------------------------------------------


def line(row: dict | str | bytes, raw_unicode: bool = False) -> bytes:
    """A manifest line. By default non-ASCII travels as JSON escapes (NUL, surrogates, control characters);
    ``raw_unicode`` writes it as UTF-8, as ``json.dumps(..., ensure_ascii=False)`` does."""
    if isinstance(row, bytes):
        return row
    if isinstance(row, str):
        return row.encode()
    return json.dumps(row, ensure_ascii=not raw_unicode).encode()


def audio_cases(d: Path, long_file: Path, s3_bucket: str) -> list[Case]:
    clip = tone(1.5)
    wav = encoded(clip)
    flac = encoded(clip, fmt="FLAC")
    files = {
        "wav_truncated_header.wav": wav[:20],
        "flac_truncated_header.flac": flac[:30],
        "wav_truncated_body.wav": wav[: 44 + (len(wav) - 44) // 2],  # the header still announces 1.5 s
        "zero_length.wav": b"",
        "flac_named.wav": flac,
        "text_named.wav": b"this is a text file, not audio\n" * 10,
        "random_bytes.mp3": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "scrambled_aac.m4a": scrambled_m4a(),
        "nan.wav": encoded(np.where(np.arange(len(clip)) == 800, np.nan, clip).astype(np.float32), subtype="FLOAT"),
        "inf.wav": encoded(np.where(np.arange(len(clip)) == 800, np.inf, clip).astype(np.float32), subtype="FLOAT"),
        "all_zero.wav": encoded(np.zeros(2 * RATE, np.float32)),
        "one_sample.wav": encoded(np.array([0.1], np.float32)),
        "rate_8k.wav": encoded(tone(1.5, 8000), 8000),
        "rate_96k.wav": encoded(tone(1.5, 96000), 96000),
        "six_channels.wav": encoded(tone(1.5, channels=6)),
        "pcm_24.wav": encoded(clip, subtype="PCM_24"),
        "float64.wav": encoded(clip.astype(np.float64), subtype="DOUBLE"),
        "loud_float.wav": encoded(clip * 1000.0, subtype="FLOAT"),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "a_directory.wav").mkdir(exist_ok=True)

    def one(kind, description, audio, outcome, duration=None, **extra) -> Case:
        row_id = f"audio-{kind}"
        if isinstance(audio, str) and "/" not in audio:
            audio = f"audio/{audio}"  # relative to the manifest, as users write them
        return Case(kind, description, [line({"id": row_id, "audio": audio, **extra})], [outcome], [row_id],
                    durations={row_id: duration} if duration is not None else {})

    return [
        one("wav_truncated_header", "WAV cut inside its header (20 bytes)", "wav_truncated_header.wav",
            "unreadable_audio"),
        one("flac_truncated_header", "FLAC cut inside its header (30 bytes)", "flac_truncated_header.flac",
            "unreadable_audio"),
        one("wav_truncated_body", "WAV cut mid-data, header announcing more", "wav_truncated_body.wav", None, 0.75),
        one("zero_length", "zero-length file", "zero_length.wav", "empty_audio"),
        one("wrong_extension", "FLAC content named .wav", "flac_named.wav", None, 1.5),
        one("text_named_wav", "a text file named .wav", "text_named.wav", "unreadable_audio"),
        one("random_bytes", "4 kB of random bytes named .mp3", "random_bytes.mp3", "unreadable_audio"),
        one("scrambled_aac", "an M4A whose audio data is random bytes (it crashed the decoding process)",
            "scrambled_aac.m4a", "unreadable_audio"),
        one("nan_samples", "float WAV with a NaN sample", "nan.wav", "non_finite_audio"),
        one("inf_samples", "float WAV with an infinite sample", "inf.wav", "non_finite_audio"),
        one("all_zero", "2 s of digital silence", "all_zero.wav", None, 2.0),
        one("one_sample", "a 1-sample file", "one_sample.wav", "too_short_audio"),
        one("rate_8k", "8 kHz", "rate_8k.wav", None, 1.5),
        one("rate_96k", "96 kHz", "rate_96k.wav", None, 1.5),
        one("six_channels", "6 channels", "six_channels.wav", None, 1.5),
        one("pcm_24", "24-bit PCM WAV", "pcm_24.wav", None, 1.5),
        one("float64", "float64 WAV", "float64.wav", None, 1.5),
        one("loud_float", "float WAV at 1000x full scale", "loud_float.wav", None, 1.5),
        one("two_hours", "a 2-hour FLAC (default --max-duration-s 3600)", str(long_file), "too_long_audio"),
        one("missing_file", "a file that does not exist", "not_there.wav", "unreadable_audio"),
        one("directory", "a directory named .wav", "a_directory.wav", "unreadable_audio"),
        one("s3_missing_key", "an S3 key that does not exist", f"s3://{s3_bucket}/corpus/missing.flac",
            "unreadable_audio"),
        one("s3_missing_bucket", "an S3 bucket that does not exist", "s3://gpa-no-such-bucket-x/a.flac",
            "unreadable_audio"),
        one("segment_past_end", "a segment after the end of the file", "flac_named.wav", "empty_audio",
            begin_time=100.0, end_time=101.0),
        one("segment_reversed", "end_time before begin_time", "flac_named.wav", "invalid_row",
            begin_time=1.0, end_time=0.5),
    ]


def manifest_cases(ok_audio: str) -> list[Case]:
    def ok_row(row_id):
        return line({"id": row_id, "audio": ok_audio})

    ten_kb = "k" * 10_240
    return [
        Case("id_dotdot", "id `../../escape`", [ok_row("../../escape")], [None], ["../../escape"]),
        Case("id_absolute", "id `/etc/passwd`", [ok_row("/etc/passwd")], [None], ["/etc/passwd"]),
        Case("id_nul", "id with a NUL byte", [ok_row("nul\x00id")], [None], ["nul\x00id"]),
        Case("id_control_chars", "id with newline, tab and an ANSI escape", [ok_row("a\nb\tc\x1b[31m")], [None],
             ["a\nb\tc\x1b[31m"]),
        Case("id_10kb", "a 10 kB id", [ok_row(ten_kb)], [None], [ten_kb]),
        Case("id_wrong_type", "id that is a list", [line({"id": [1, 2], "audio": ok_audio})], ["invalid_row"],
             [None]),
        Case("id_empty", "empty id", [line({"id": "", "audio": ok_audio})], ["invalid_row"], [None]),
        Case("duplicate_ids", "two rows with the same id", [ok_row("dup"), ok_row("dup")], [None, "duplicate_id"],
             ["dup", "dup"]),
        Case("missing_required_field", "a row without audio", [line({"id": "no-audio", "text": "hi"})],
             ["missing_field"], ["no-audio"]),
        Case("extra_fields", "unknown extra fields", [line({"id": "extra", "audio": ok_audio, "speaker": "x",
                                                            "nested": {"a": [1]}})], [None], ["extra"]),
        Case("broken_line", "a line that is not JSON", [b'{"id": "broken", "audio": '], ["invalid_manifest_row"],
             [None]),
        Case("not_an_object", "a line that is JSON but not an object", [b"[1, 2, 3]"], ["invalid_manifest_row"],
             [None]),
    ]


def malformed_cases(ok_audio: str) -> list[Case]:
    """Lines a JSON parser accepts whose values are not valid: wrong types, undecodable bytes, lone surrogates."""
    return [
        Case("segment_not_a_number", "begin_time that is not a number",
             [line({"id": "time-not-number", "audio": ok_audio, "begin_time": "soon"})], ["invalid_row"],
             ["time-not-number"]),
        Case("audio_not_a_string", "audio field of the wrong type", [line({"id": "audio-number", "audio": 12345})],
             ["invalid_row"], ["audio-number"]),
        Case("text_not_a_string", "a (reference) text that is a number",
             [line({"id": "text-number", "audio": ok_audio, "text": 42})], ["invalid_row"], ["text-number"]),
        Case("non_utf8_line", "a line with non-UTF-8 bytes", [b'{"id": "latin1-\xe9\xff", "audio": "a.wav"}'],
             ["invalid_manifest_row"], [None]),
        Case("surrogate_id", "an id with a lone surrogate escape", [b'{"id": "bad-\\ud800", "audio": "a.wav"}'],
             ["invalid_row"], [None]),
        Case("surrogate_text", "a reference text with a lone surrogate escape",
             [line({"id": "surrogate-text", "audio": ok_audio}).replace(b"}", b', "text": "x\\udcff"}')],
             ["invalid_row"], ["surrogate-text"]),
    ]


def text_cases(d: Path, reference: str) -> list[Case]:
    (d / "ref_text.wav").write_bytes(b"not audio at all\n")
    (d / "ref_one_sample.wav").write_bytes(encoded(np.array([0.1], np.float32)))

    def one(kind, description, text, outcome, ref=reference, keep_text=False, raw_unicode=False) -> Case:
        row_id = f"text-{kind}"
        row = {"id": row_id, "text": text}
        if ref is not None:
            row["ref_audio"] = ref
        return Case(kind, description, [line(row, raw_unicode)], [outcome], [row_id],
                    texts={row_id: text} if keep_text else {})

    return [
        one("text_empty", "empty text", "", "invalid_text"),
        one("text_whitespace", "whitespace-only text", " \t\n ", "invalid_text"),
        one("text_100k", "100,000-character text (limit 20,000)", "word " * 20_000, "invalid_text"),
        one("text_control_chars", "text with NUL, BEL and an ANSI escape", "Hello\x00 there\x07 \x1b[31mfriend.",
            None, keep_text=True),
        one("text_only_control_chars", "text of control characters only", "\x00\x07\x1b", "invalid_text"),
        one("text_only_format_chars", "NUL BEL ESC DEL and the invisible ZWSP and LRM (category Cf)",
            "\x00\x07\x1b\x7f\u200b\u200e", "invalid_text"),
        one("text_emoji", "emoji", "Good morning 👋🏽 🎉 — see you soon!", None, keep_text=True),
        one("text_rtl", "right-to-left scripts (Arabic, Hebrew)", "مرحبا بالعالم. שלום עולם.", None,
            keep_text=True),
        one("text_cjk", "Chinese, Japanese and Korean", "你好，世界。こんにちは。안녕하세요.", None, keep_text=True),
        one("text_line_separators", "raw U+2028, U+2029 and U+0085 inside the JSON string (UTF-8, unescaped)",
            "First line\u2028second line\u2029third\x85 fourth.", None, keep_text=True, raw_unicode=True),
        one("ref_missing", "no reference voice", "Hello.", "missing_field", ref=None),
        one("ref_unreadable", "a reference that is not audio", "Hello.", "unreadable_audio",
            ref=str(d / "ref_text.wav")),
        one("ref_too_short", "a 1-sample reference", "Hello.", "too_short_audio", ref=str(d / "ref_one_sample.wav")),
    ]


def hostile_cases(d: Path, ok_audio: str) -> list[Case]:
    """Records that used to stop a whole job, be dropped, hang it or change their identity; this manifest's first
    line must stay the JSON array."""
    fifo = d / "fifo.wav"
    if not fifo.exists():
        os.mkfifo(fifo)  # nobody ever writes to it: opening it for reading would block

    def ok(row_id, **extra):
        return line({"id": row_id, "audio": ok_audio, **extra})

    return [
        Case("array_first_line", "a first line that is a JSON array (`[1, 2, 3]`), JSON lines after it",
             [b"[1, 2, 3]"], ["invalid_manifest_row"], [None]),
        Case("nested_200k", "a line nested 200,000 levels deep", [b'{"id": "deep", "x": ' + b"[" * 200_000
                                                                   + b"]" * 200_000 + b"}"],
             ["invalid_manifest_row"], [None]),
        Case("integer_5000_digits", "a seed of 5,000 digits", [ok("digits").replace(b"}", b', "seed": '
                                                                  + b"9" * 5000 + b"}")],
             ["invalid_manifest_row"], [None]),
        Case("line_over_8mib", "a 9 MiB line (the limit of one record is 8 MiB)",
             [ok("huge", text="x" * (9 * 2**20))], ["invalid_manifest_row"], [None]),
        Case("id_bool", 'an id `true`', [line({"id": True, "audio": ok_audio})], ["invalid_row"], [None]),
        Case("field_named_like_a_marker", "a user field named `__parse_error__`",
             [ok("marker", __parse_error__="mine")], [None], ["marker"]),
        Case("one_row_with_task", "one row of many with a GPA `task` key", [ok("with-task", task="tts")], [None],
             ["with-task"]),
        Case("one_row_with_audio_filepath", "one row of many with NeMo's `audio_filepath`",
             [ok("with-nemo-key", audio_filepath="elsewhere.wav")], [None], ["with-nemo-key"]),
        Case("audio_fifo", "audio that is a FIFO nobody writes to", [line({"id": "fifo", "audio": "audio/fifo.wav"})],
             ["unreadable_audio"], ["fifo"]),
        Case("audio_dev_zero", "audio `/dev/zero` (endless)", [line({"id": "zero", "audio": "/dev/zero"})],
             ["unreadable_audio"], ["zero"]),
        Case("plain_rows", "ordinary rows, so that no convention can win by numbers", [ok(f"plain-{i}")
                                                                                        for i in range(4)],
             [None] * 4, [f"plain-{i}" for i in range(4)]),
    ]


def hostile_csv_cases(reference: str) -> list[Case]:
    """CSV records of a synthesize run (header ``id,text,ref_audio``)."""
    def row(*cells: str) -> bytes:
        return ",".join(cells).encode()

    return [
        Case("csv_cell_1mb", "a 1 MB text cell (csv's default field limit is 131,072)",
             [row("big", '"' + "word " * 200_000 + '"', reference)], ["invalid_text"], ["big"]),
        Case("csv_ragged_row", "a row with 2 cells more than the header",
             [row("ragged", "Hello there.", reference, "extra", "cells")], ["invalid_manifest_row"], [None]),
        Case("csv_format_chars_text", "a text of ZWSP and LRM only", [row("invisible", "\u200b\u200e", reference)],
             ["invalid_text"], ["invisible"]),
        Case("csv_ok_row", "an ordinary row", [row("fine", "Hello there.", reference)], [None], ["fine"]),
    ]


def build_corpus(directory: Path, *, s3_bucket: str = "gpa-corpus", long_file: Path | None = None) -> list[Manifest]:
    """Write the corpus under ``directory``; returns its manifests (one job run each)."""
    directory.mkdir(parents=True, exist_ok=True)
    audio_dir = directory / "audio"
    audio_dir.mkdir(exist_ok=True)
    long_file = long_file or write_long_flac(audio_dir / "two_hours.flac")
    ok_audio = "audio/flac_named.wav"
    manifests = [
        Manifest("transcribe", "transcribe", directory / "transcribe.jsonl",
                 audio_cases(audio_dir, long_file, s3_bucket) + manifest_cases(ok_audio)),
        Manifest("malformed", "transcribe", directory / "malformed.jsonl", malformed_cases(ok_audio)),
        Manifest("synthesize", "synthesize", directory / "synthesize.jsonl",
                 text_cases(audio_dir, str(audio_dir / "flac_named.wav"))),
        Manifest("hostile", "transcribe", directory / "hostile.jsonl", hostile_cases(audio_dir, ok_audio)),
        Manifest("hostile_csv", "synthesize", directory / "hostile_csv.csv",
                 hostile_csv_cases(str(audio_dir / "flac_named.wav")), header=b"id,text,ref_audio\n"),
    ]
    for m in manifests:
        m.path.write_bytes(m.header + b"".join(ln + b"\n" for case in m.cases for ln in case.lines))
    expected = {f"{m.name}.{kind}": rows for m in manifests for kind, rows in m.expected().items()}
    (directory / "expected.json").write_text(json.dumps(expected, indent=1))
    return manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--s3-bucket", default="gpa-corpus")
    args = parser.parse_args(argv)
    manifests = build_corpus(args.outdir, s3_bucket=args.s3_bucket)
    kinds = sum(len(m.cases) for m in manifests)
    print(f"{kinds} kinds in {len(manifests)} manifests under {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
