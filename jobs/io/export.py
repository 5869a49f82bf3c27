"""``gpa-batch export``: a job's committed rows as the files people use.

Transcribe outputs become one transcript per input row (``txt``, ``srt``, ``vtt``, ``json``: segments with start and
end times, as Whisper and WhisperX write them) or one ``transcripts.jsonl`` for all; synthesize and convert outputs
become one audio file per row (``wav`` or ``flac``) plus ``manifest.jsonl`` listing what was written. Only the rows
of the commit file count (a killed run's parts do not); error rows are skipped and counted. File names come from the
row ids through :func:`jobs.io.storage.safe_name` (ids are untrusted: no name can leave the destination).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

from jobs.io import storage
from jobs.io.output import OutputStore

TEXT_FORMATS = ("txt", "srt", "vtt", "json", "jsonl")
AUDIO_FORMATS = ("wav", "flac")
FORMATS = TEXT_FORMATS + AUDIO_FORMATS
TRANSCRIPTS = "transcripts.jsonl"  # --format jsonl: every transcript in one file
MANIFEST = "manifest.jsonl"  # audio exports: one line per file written, a canonical manifest (relative paths)
BATCH_ROWS = 64  # rows read at a time: inline audio makes rows large
# output folders a destination must not write into: the jobs and readers own them
RESERVED = ("data", "_gpa_batch", ".staging", "audio", "_mlflow")
# audio objects are written as <output>/audio/<2 chars>/<safe_name>; any other name in a row is not ours
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.flac$")

EXAMPLES = """examples:
  gpa-batch export ./out --format srt --dest ./subtitles
  gpa-batch export s3://bucket/tts --format wav --dest ./corpus --only-kept
"""

_TRANSCRIPT_COLUMNS = ("id", "status", "audio_uri", "begin_time", "end_time", "duration_s", "text", "segments",
                       "truncated", "model_hash")
# an exported audio manifest line: id, the file's name, text and duration_hint, then these as they are
_AUDIO_MANIFEST_COLUMNS = ("ref_id", "source_id", "sampling_rate", "wer", "cer", "speaker_similarity",
                           "source_similarity", "keep")
_AUDIO_COLUMNS = ("id", "status", "audio", "text", "duration_s", *_AUDIO_MANIFEST_COLUMNS)


class ExportError(ValueError):
    """The export cannot start (not an output, a format the job has no use for, a bad destination)."""


@dataclass
class ExportOptions:
    format: str  # one of FORMATS: text formats for transcribe, audio formats for synthesize and convert
    only_kept: bool = False  # synthesize: only rows that passed the quality gate (keep)


@dataclass
class ExportResult:
    job: str
    dest: str
    complete: bool  # the output's _SUCCESS was present: its rows cover the whole input
    rows: int = 0  # committed rows read
    exported: int = 0  # rows written (one file each, or one line of transcripts.jsonl)
    skipped: Counter = field(default_factory=Counter)  # reason -> rows: "error", "not_kept"
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason): ok rows whose audio is unreadable

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted(self.skipped.items()))
        line = f"exported {self.exported} of {self.rows} {self.job} rows to {storage.redact_uri(self.dest)}"
        if skipped:
            line += f" (skipped: {skipped})"
        if self.failed:
            row_id, reason = self.failed[0]
            line += f"; {len(self.failed)} could not be exported, e.g. {row_id[:60]!r}: {reason}"
        if not self.complete:
            line += "; the output is not complete (no _SUCCESS): rerun its job to finish it"
        return line


def export(output: str, dest: str, options: ExportOptions) -> ExportResult:
    """Write the committed rows of the job output ``output`` into ``dest`` (a folder or an ``s3://`` prefix)."""
    if options.format not in FORMATS:
        raise ExportError(f"unknown format {options.format!r}; choose one of {', '.join(FORMATS)}")
    store = OutputStore(output)
    if not storage.exists(store.commit_uri):
        raise ExportError(f"{storage.redact_uri(store.uri)} is not a gpa-batch output (no _gpa_batch/commit.json); "
                          "give the --output of a job that has run")
    try:
        commit = store.load()
    except ValueError as exc:  # a commit file of something else
        raise ExportError(str(exc)) from None
    dataset = store.dataset(commit)
    job = commit.job or _job_from_columns(dataset.schema.names)
    names = dataset.schema.names
    transcripts = "segments" in names  # what a row holds decides the files, whichever task wrote it
    _check(job, names, transcripts, options)
    dest = storage.normalize(dest)
    _check_dest(store.uri, dest)
    storage.makedirs(dest)
    result = ExportResult(job=job, dest=dest, complete=storage.exists(store.success_uri))
    wanted = _TRANSCRIPT_COLUMNS if transcripts else _AUDIO_COLUMNS
    columns = [c for c in wanted if c in dataset.schema.names]
    lines: list[str] = []  # transcripts.jsonl or manifest.jsonl, written once at the end (one PUT on S3)
    for batch in dataset.to_batches(columns=columns, batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            result.rows += 1
            if row["status"] != "ok":
                result.skipped["error"] += 1
            elif options.only_kept and not row.get("keep"):
                result.skipped["not_kept"] += 1
            elif transcripts:
                _export_transcript(row, dest, options.format, lines)
                result.exported += 1
            else:
                try:
                    lines.append(_export_audio(row, store, dest, options.format))
                except (OSError, RuntimeError, ValueError) as exc:  # soundfile raises RuntimeError subclasses
                    result.failed.append((row["id"], storage.scrub(f"{type(exc).__name__}: {exc}")[:200]))
                    continue
                result.exported += 1
    if options.format == "jsonl":
        storage.write_bytes(storage.join(dest, TRANSCRIPTS), "".join(lines).encode())
    elif not transcripts:
        storage.write_bytes(storage.join(dest, MANIFEST), "".join(lines).encode())
    return result


def _job_from_columns(names: list[str]) -> str:
    """The job of an output whose commit file does not name it (written by an early version)."""
    if "segments" in names:
        return "transcribe"
    return "convert" if "source_semantic_tokens" in names else "synthesize"


def _check(job: str, names: list[str], transcripts: bool, options: ExportOptions) -> None:
    if not transcripts and "audio" not in names:
        raise ExportError(f"a {job} output has neither transcripts (segments) nor audio to export")
    usable = TEXT_FORMATS if transcripts else AUDIO_FORMATS
    if options.format not in usable:
        raise ExportError(f"a {job} output exports as {', '.join(usable)}, not {options.format}")
    if options.only_kept and "keep" not in names:
        raise ExportError(f"--only-kept applies the synthesize quality gate (keep); a {job} output has none")


def _check_dest(output: str, dest: str) -> None:
    for name in RESERVED:
        folder = storage.join(output, name)
        if dest == folder or dest.startswith(folder.rstrip("/") + "/"):
            raise ExportError(f"--dest {storage.redact_uri(dest)} is inside the output's {name}/, which the jobs "
                              "own; choose another folder")
    if not storage.is_uri(dest) and os.path.exists(dest) and not os.path.isdir(dest):
        raise ExportError(f"--dest {dest} is a file; give a folder (created if missing)")


# --- transcripts ------------------------------------------------------------------------------------------------


def _export_transcript(row: dict, dest: str, fmt: str, lines: list[str]) -> None:
    if fmt == "jsonl":
        lines.append(json.dumps(transcript_json(row), ensure_ascii=False) + "\n")
        return
    if fmt == "txt":
        body = (row.get("text") or "") + "\n"
    elif fmt == "json":
        body = json.dumps(transcript_json(row), ensure_ascii=False, indent=1) + "\n"
    else:
        body = subtitles(cues(row), fmt)
    storage.write_bytes(storage.join(dest, storage.safe_name(row["id"], "." + fmt)), body.encode("utf-8"))


def transcript_json(row: dict) -> dict:
    """A transcript as Whisper's and WhisperX's JSON has it (``text``, ``segments`` of ``start``, ``end``,
    ``text``), with the row's id and source."""
    return {"id": row["id"], "audio": row.get("audio_uri"), "begin_time": row.get("begin_time"),
            "end_time": row.get("end_time"), "duration_s": row.get("duration_s"), "text": row.get("text") or "",
            "segments": cues(row), "truncated": row.get("truncated"), "model_hash": row.get("model_hash")}


def cues(row: dict) -> list[dict]:
    """The row's timed segments (times in seconds in the source file); a row without segments is one segment
    spanning what was transcribed. Segments without text are left out (a subtitle cue needs text)."""
    segments = [s for s in (row.get("segments") or []) if (s.get("text") or "").strip()]
    if segments:
        return [{"start": s["start"], "end": s["end"], "text": s["text"].strip()} for s in segments]
    text = (row.get("text") or "").strip()
    if not text:
        return []
    start = row.get("begin_time") or 0.0
    return [{"start": start, "end": start + (row.get("duration_s") or 0.0), "text": text}]


def timestamp(seconds: float, fmt: str) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT), rounded to the millisecond."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{',' if fmt == 'srt' else '.'}{ms:03d}"


def subtitles(segments: list[dict], fmt: str) -> str:
    """SRT (numbered cues) or WebVTT (a ``WEBVTT`` header) of ``segments``."""
    blocks = []
    for number, s in enumerate(segments, 1):
        # a blank line ends a cue in both formats: keep the text's lines, drop empty ones; an arrow in the text
        # would read as a timing line
        text = "\n".join(line for line in s["text"].replace("-->", "->").splitlines() if line.strip())
        times = f"{timestamp(s['start'], fmt)} --> {timestamp(s['end'], fmt)}"
        blocks.append(f"{number}\n{times}\n{text}\n" if fmt == "srt" else f"{times}\n{text}\n")
    body = "\n".join(blocks)
    return f"WEBVTT\n\n{body}" if fmt == "vtt" else body


# --- audio ------------------------------------------------------------------------------------------------------


def _export_audio(row: dict, store: OutputStore, dest: str, fmt: str) -> str:
    """Write the row's audio as ``fmt``; returns its manifest line."""
    flac = _flac_bytes(row.get("audio") or {}, store)
    name = storage.safe_name(row["id"], "." + fmt)
    storage.write_bytes(storage.join(dest, name), flac if fmt == "flac" else _wav(flac))
    entry = {"id": row["id"], "audio": name, "text": row.get("text"), "duration_hint": row.get("duration_s")}
    entry.update({k: row[k] for k in _AUDIO_MANIFEST_COLUMNS if k in row})
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _flac_bytes(audio: dict, store: OutputStore) -> bytes:
    """The FLAC of an output row: inline bytes, or the object under ``<output>/audio/`` (found by its name, so an
    output copied elsewhere still exports; a name gpa-batch could not have written is refused)."""
    if audio.get("bytes") is not None:
        return audio["bytes"]
    name = storage.basename(audio.get("path") or "")
    if not _OBJECT_NAME.match(name):
        raise ValueError("its audio is neither inline nor an audio object of this output")
    return storage.read_bytes(storage.join(store.uri, "audio", name[:2], name))


def _wav(flac: bytes) -> bytes:
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(flac), dtype="int16")  # 16-bit in, 16-bit out: no rounding
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --- command line -----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("output", help="a job's --output (local folder or s3://bucket/prefix)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="transcribe: txt, srt, vtt, json (a file per row) or jsonl (transcripts.jsonl); "
                             "synthesize, convert: wav or flac (a file per row, and manifest.jsonl)")
    parser.add_argument("--dest", required=True, help="folder or s3:// prefix to write into (created if missing)")
    parser.add_argument("--only-kept", action="store_true",
                        help="synthesize: only rows that passed the quality gate (keep)")


def run_command(args) -> int:
    """``gpa-batch export``: one line of result, or one line of error (exit 1)."""
    try:
        result = export(args.output, args.dest, ExportOptions(format=args.format, only_kept=args.only_kept))
    except Exception as exc:  # noqa: BLE001 - a fatal error is one line (an unreachable store, a full disk, ...)
        message = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, OSError) and exc.strerror and str(exc.filename or "").startswith(str(args.dest)):
            message = f"cannot write {exc.filename} ({exc.strerror}); choose another --dest"
        print(f"gpa-batch export: {storage.scrub(message.splitlines()[0] if message else message)}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpa-batch export: interrupted; the files written so far are kept, rerunning writes them again",
              file=sys.stderr)
        return 130
    print(result.summary())
    return 1 if result.failed else 0
