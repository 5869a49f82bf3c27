"""Reading job inputs: manifests (JSONL, CSV, Parquet; local or ``s3://``) or a listing of audio files.

Every input row becomes a row of our canonical fields (:data:`jobs.io.schema.INPUT`: ``id, audio, text, ref_audio,
ref_id, source_id, begin_time, end_time, seed, duration_hint``) whatever convention the manifest follows:

- ours: the canonical names themselves;
- GPA's training JSONL: ``task, audio, text, ref_audio, vc_audio, begin_time, end_time`` (seconds; -1 = whole file);
  rows whose ``task`` belongs to another job are left out and counted;
- NeMo: ``audio_filepath, duration, text`` (and ``offset``, which makes the row a segment);
- anything else through a field map (``id=utt_id,audio=path``).

Relative audio paths are resolved against the manifest's own location. A row that cannot be parsed or lacks what
its job needs becomes an error row (never a dropped row).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import ipaddress
import itertools
import json
import math
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from gpa.storage import NotARegularFile, filesystem, is_transient, open_local
from jobs.io import schema as S
from jobs.io import storage
from jobs.tasks import get_task, task_of_manifest_name

CANONICAL = tuple(n for n in S.INPUT.names if n not in S.LISTING_ONLY)

# manifest conventions (--convention); auto: decided per file by detect_convention
CONVENTIONS = ("auto", "canonical", "gpa", "nemo")

# valid rows are kept as Python dicts only this many at a time, then as Arrow columns: an archive of millions of
# files fits in a driver's memory (a row as a dict costs ~1.5 kB, as Arrow ~0.15 kB)
_CHUNK_ROWS = 50_000

# what a manifest's audio fields may name: workers fetch it, and fsspec knows many other protocols
AUDIO_SCHEMES = frozenset({"file", "s3", "s3a", "http", "https"})  # http(s): presigned URLs
_URI_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"})


@dataclass
class InputRows:
    table: pa.Table = field(default_factory=S.INPUT.empty_table)  # valid rows, canonical fields (schema.INPUT)
    errors: list[dict[str, Any]] = field(default_factory=list)  # {id, error_kind, error, + echo fields}
    skipped_other_task: int = 0
    convention: str = "canonical"
    source: str = ""  # the input URI, redacted

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The valid rows as dicts (for small inputs and tests; jobs work on :attr:`table`)."""
        return self.table.to_pylist()

    @property
    def total(self) -> int:
        return self.table.num_rows + len(self.errors)


class InputError(ValueError):
    """The input as a whole cannot be read (missing manifest, unknown format): the job stops before any work."""


def load_inputs(
    job: str,
    uri: str,
    *,
    glob: str | None = None,
    input_format: str = "auto",
    field_map: dict[str, str] | None = None,
    reference: str | None = None,
    max_text_chars: int = 20_000,
    convention: str = "auto",
    skip_other_tasks: bool = False,
    allow_empty: bool = False,
) -> InputRows:
    """Read, normalise and validate the input rows of ``job`` (see module docstring), streaming the manifest."""
    task_spec = get_task(job)
    uri = storage.normalize(uri)
    if convention not in CONVENTIONS:
        raise InputError(f"unknown manifest convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if glob:
        raw, convention, base = iter(list_audio_files(uri, glob)), "listing", uri
    else:
        records = read_records(uri, input_format)
        head = list(itertools.islice(records, 100))
        if field_map:
            convention = "field_map"
        elif convention == "auto":
            convention = detect_convention(head)
        raw = (_canonical(r, convention, field_map or {}) for r in itertools.chain(head, records))
        base = storage.parent(uri)
    out = InputRows(convention=convention, source=storage.redact_uri(uri))
    seen: set[str] = set()
    chunk: list[dict[str, Any]] = []
    tables: list[pa.Table] = []
    for line, row in enumerate(raw, start=1):
        if isinstance(row, BadRecord):
            out.errors.append({"id": _unique_line_id(line, seen), "error_kind": "invalid_manifest_row",
                               "error": row.reason})
            continue
        task = row.pop("__task__", None)
        for key in ("audio", "ref_audio"):  # ids derive from paths as written, before they are resolved
            row[f"__{key}_as_written__"] = row.get(key) if isinstance(row.get(key), str) else None
        problem = _validate(task_spec, row, reference, max_text_chars)
        row_id = _derive_id(task_spec, row, line)
        if task is not None and task_of_manifest_name(task) is not task_spec:
            if task_of_manifest_name(task) is not None:
                if skip_other_tasks:  # asked for: another job's row in a mixed training manifest, counted
                    out.skipped_other_task += 1
                    continue
                problem = ("other_task", f"task {str(task).strip()!r} belongs to another job; pass "
                                         "--skip-other-tasks to leave such rows out")
            else:
                problem = ("invalid_row", f"unknown task {str(task)[:40]!r}")
        if row_id in seen:
            problem = ("duplicate_id", "another input row has the same id; only the first one is processed")
        seen.add(row_id)
        if problem:
            kind, message = problem
            out.errors.append({"id": row_id, "error_kind": kind, "error": message, **_echo(row)})
            continue
        row["id"] = row_id
        for key in ("audio", "ref_audio"):
            if row.get(key):
                row[key] = storage.resolve_relative(row[key], base)
        if "ref_audio" in task_spec.manifest_fields:
            if not row.get("ref_audio") and reference:
                row["ref_audio"] = storage.normalize(reference)
                row["ref_id"] = row.get("ref_id") or storage.basename(storage.redact_uri(reference))
            row["ref_id"] = row.get("ref_id") or _written(row, "__ref_audio_as_written__")
        if "source_id" in task_spec.manifest_fields:
            row["source_id"] = row.get("source_id") or _written(row, "__audio_as_written__")
        chunk.append(row)
        if len(chunk) == _CHUNK_ROWS:
            tables.append(S.rows_to_table(chunk, S.INPUT))
            chunk = []
    tables.append(S.rows_to_table(chunk, S.INPUT))
    out.table = pa.concat_tables(tables).combine_chunks()
    if not out.total and not out.skipped_other_task and not allow_empty:
        # a job of no rows would end "complete": an empty upload must not pass for a finished one
        raise InputError(f"{out.source} holds no rows (an empty manifest, or a header only); pass --allow-empty "
                         "to accept an empty input")
    return out


def _unique_line_id(line: int, seen: set[str]) -> str:
    """``line:N`` for a record that could not be parsed (N counts records: blank lines and a CSV header are not
    records); ``line:N#2``, ... when an earlier row took that id (a user's id may be ``line:N`` too)."""
    row_id, copy = f"line:{line}", 1
    while row_id in seen:
        copy += 1
        row_id = f"line:{line}#{copy}"
    seen.add(row_id)
    return row_id


# --- reading ---------------------------------------------------------------------------------------------------

# Limits of one manifest record (docs/jobs.md, "Manifest limits"). A record past one of them becomes its own
# invalid_manifest_row; the records around it are read as usual.
MAX_RECORD_BYTES = 8 * 2**20  # a JSONL line or a CSV line (longer ones are skipped as they stream, never held)
MAX_NESTING = 32  # JSON arrays/objects within a record (a row is flat; deeper is never a real manifest)
MAX_INT_DIGITS = 100  # digits of a JSON integer (a seed has at most 19)
MAX_ARRAY_BYTES = 64 * 2**20  # a whole-document JSON array is parsed at once, so only up to this size


@dataclass(frozen=True)
class BadRecord:
    """A manifest record that could not be read as a row, and why (``line N: ...``). A type of its own, not a
    marker key: no field of a user's record can pass for it."""

    reason: str


class RecordTooLong(Exception):
    """A line longer than :data:`MAX_RECORD_BYTES` (raised once per such line by :class:`_Lines`)."""


def read_records(uri: str, input_format: str = "auto") -> Iterator[dict[str, Any] | BadRecord]:
    """The manifest's records in file order, read as a stream: a dict per row, a :class:`BadRecord` for each one
    that cannot be parsed (each record is judged on its own); a manifest that cannot be read at all raises
    :class:`InputError`."""
    fmt = input_format if input_format != "auto" else _format_from_name(uri)
    with _open_input(uri) as f:
        if fmt not in ("parquet", "csv", "jsonl"):
            raise InputError(f"cannot tell the format of {storage.redact_uri(uri)}; pass --format "
                             "jsonl|csv|parquet")
        if fmt == "parquet":
            import pyarrow.parquet as pq

            source = io.BytesIO(f.read()) if isinstance(f, gzip.GzipFile) else f  # Parquet needs cheap seeks
            for batch in pq.ParquetFile(source).iter_batches(batch_size=_CHUNK_ROWS):
                yield from (_parquet_row(r) for r in batch.to_pylist())
        elif fmt == "csv":
            yield from _csv_records(f, "\t" if uri.removesuffix(".gz").endswith(".tsv") else ",")
        else:
            yield from _jsonl_records(f)


class _Lines:
    """The ``\\n``-separated lines of a binary stream, each at most ``limit`` bytes. A longer line raises
    :class:`RecordTooLong` once (its bytes are skipped as they stream) and the iteration goes on after it, which a
    generator could not do. ``number`` is the 1-based number of the line last returned or skipped. With
    ``decode``, lines come as text (UTF-8, a leading BOM dropped, undecodable bytes kept as surrogate escapes so
    that only the rows holding them fail)."""

    _CHUNK = 2**20

    def __init__(self, f, limit: int, *, head: bytes = b"", number: int = 0, decode: bool = False):
        self.f, self.limit, self.decode = f, limit, decode
        self.buffer = bytearray(head)
        self.number = number
        self.scanned = 0  # bytes of the buffer known to hold no newline
        self.eof = False

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            end = self.buffer.find(b"\n", self.scanned)
            if end >= 0 or (self.eof and self.buffer):
                end = len(self.buffer) - 1 if end < 0 else end
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                self.scanned = 0
                self.number += 1
                if len(line) > self.limit:
                    raise RecordTooLong(self.number)
                return self._text(line) if self.decode else line
            if self.eof:
                raise StopIteration
            self.scanned = len(self.buffer)
            if len(self.buffer) > self.limit:  # drop what is read of this line, then the rest up to its end
                self._skip_line()
                raise RecordTooLong(self.number)
            chunk = self.f.read(self._CHUNK)
            if chunk:
                self.buffer += chunk
            else:
                self.eof = True

    def _skip_line(self) -> None:
        self.buffer.clear()
        self.number += 1
        while True:
            chunk = self.f.read(self._CHUNK)
            if not chunk:
                self.eof = True
                break
            end = chunk.find(b"\n")
            if end >= 0:
                self.buffer += chunk[end + 1:]
                break
        self.scanned = 0

    def _text(self, line: bytes) -> str:
        if self.number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        return line.decode("utf-8", "surrogateescape")


def _too_long(line: int) -> BadRecord:
    return BadRecord(f"line {line}: longer than {MAX_RECORD_BYTES} bytes (the limit of one manifest record)")


def _jsonl_records(f) -> Iterator[dict[str, Any] | BadRecord]:
    """JSON lines; or one JSON array of objects, when the whole file parses as one (a first line starting with
    ``[`` alone does not make it one: that line may be a bad record of a JSONL file)."""
    lines = _Lines(f, MAX_RECORD_BYTES)
    first = True
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except RecordTooLong as exc:
            first = False
            yield _too_long(exc.args[0])
            continue
        if first and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        if not line.strip():
            continue
        if first and line.lstrip().startswith(b"["):
            number = lines.number - 1
            data = line + bytes(lines.buffer)
            data += f.read(max(0, MAX_ARRAY_BYTES + 1 - len(data)))  # up to the limit and one byte past it
            items = _json_array(data) if len(data) <= MAX_ARRAY_BYTES else None
            if items is not None:
                yield from items
                return
            # not one array: the same bytes again, as JSON lines (the first of them a bad record)
            lines = _Lines(f, MAX_RECORD_BYTES, head=data, number=number)
            first = False
            continue
        first = False
        yield _parse_line(line, lines.number)


def _json_array(data: bytes) -> list[dict[str, Any] | BadRecord] | None:
    """The records of a JSON array document, or None when ``data`` is not one."""
    try:
        items = _loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(items, list):
        return None
    records: list[dict[str, Any] | BadRecord] = []
    for n, item in enumerate(items, start=1):
        problem = None if isinstance(item, dict) else "not a JSON object"
        problem = problem or _nesting_problem(item)
        records.append(BadRecord(f"array item {n}: {problem}") if problem else item)
    return records


def _parse_line(line: bytes, number: int) -> dict[str, Any] | BadRecord:
    """One JSONL record. Lines are split on ``\\n`` only: JSON strings may hold other line separators (U+2028,
    U+0085, ...) that ``str.splitlines`` would cut at. Whatever is wrong with a line makes it one bad record."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(f"line {number}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})")
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        return BadRecord(f"line {number}: not valid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return BadRecord(f"line {number}: nested deeper than {MAX_NESTING} levels")
    except ValueError as exc:  # from _bounded_int
        return BadRecord(f"line {number}: {exc}")
    if not isinstance(value, dict):
        return BadRecord(f"line {number}: a manifest line must be a JSON object")
    problem = _nesting_problem(value)
    return BadRecord(f"line {number}: {problem}") if problem else value


def _loads(text: str) -> Any:
    return json.loads(text, parse_int=_bounded_int)


def _bounded_int(digits: str) -> int:
    if len(digits) - digits.startswith("-") > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(digits)


def _nesting_problem(value: Any) -> str | None:
    """Why ``value`` is nested too deep to be a row (None when it is not), found without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"nested deeper than {MAX_NESTING} levels"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return None


def _csv_records(f, delimiter: str) -> Iterator[dict[str, Any] | BadRecord]:
    """CSV/TSV rows under the header line. A row with more cells than the header is a bad record (its extra
    cells would otherwise vanish); a short row's missing cells are empty."""
    lines = _Lines(f, MAX_RECORD_BYTES, decode=True)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    while True:
        limit = csv.field_size_limit(MAX_RECORD_BYTES)  # one cell may fill a whole record
        try:
            cells = next(reader)
        except StopIteration:
            return
        except RecordTooLong as exc:
            if header is None:
                raise InputError(f"the CSV header line is longer than {MAX_RECORD_BYTES} bytes") from None
            yield _too_long(exc.args[0])
            continue
        except csv.Error as exc:
            if header is None:
                raise InputError(f"the CSV header line cannot be read ({exc})") from None
            yield BadRecord(f"line {lines.number}: not valid CSV ({exc})")
            continue
        finally:
            csv.field_size_limit(limit)
        if not cells:  # a blank line
            continue
        if header is None:
            header = cells
            continue
        if len(cells) > len(header):
            yield BadRecord(f"line {lines.number}: {len(cells)} cells, the header has {len(header)}")
            continue
        row = dict(zip(header, cells, strict=False))
        yield {k: (row.get(k) or None) for k in header}


def _parquet_row(row: dict) -> dict:
    # bytes that are not UTF-8 are kept as surrogate escapes: validation makes such a row invalid_row, as in CSV
    return {k: (v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v) for k, v in row.items()}


@contextlib.contextmanager
def _open_input(uri: str):
    """The manifest as a binary stream (decompressed when it ends in .gz). Any failure to read it is an
    :class:`InputError` that says why, without credentials."""
    name = storage.redact_uri(uri)
    try:
        if storage.is_uri(uri):
            fs, path = filesystem(uri)
            raw = fs.open(path, "rb")
        else:  # a FIFO or a device would hang or never end the read
            raw = open_local(uri)
    except NotARegularFile as exc:
        raise InputError(f"{name}: {exc.strerror}; a manifest must be a file") from None
    except FileNotFoundError as exc:
        if is_transient(exc):  # fsspec's HTTP filesystem says "not found" for a server it cannot reach
            raise InputError(_read_failure(name, exc)) from None
        raise InputError(f"input not found: {name}") from None
    except IsADirectoryError:
        raise InputError(f"{name} is a directory: pass --glob to list its audio files") from None
    except Exception as exc:
        raise InputError(_read_failure(name, exc)) from None
    try:
        with raw:
            yield gzip.GzipFile(fileobj=raw) if uri.endswith(".gz") else raw
    except (InputError, GeneratorExit):
        raise
    except Exception as exc:  # the store went away mid-read, a truncated .gz, ...
        raise InputError(_read_failure(name, exc)) from None


def _read_failure(name: str, exc: Exception) -> str:
    reason = "storage unavailable, try again later" if is_transient(exc) else "cannot read it"
    return f"{name}: {reason} ({type(exc).__name__}: {storage.scrub(str(exc), 200)})"


def _format_from_name(uri: str) -> str:
    name = uri.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "unknown"


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".wma", ".aiff")


def list_audio_files(prefix: str, pattern: str) -> list[dict[str, Any]]:
    """One row per file under ``prefix`` matching ``pattern``; the id is the path relative to ``prefix`` (stable
    across runs and machines, as long as the archive's layout does not change). The listing's file sizes come
    along: without durations, they are what the planner sorts the archive by."""
    fs, base = filesystem(prefix)
    base = base.rstrip("/")
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    found = fs.glob(f"{base}/{pattern.lstrip('/')}", detail=True)
    matches = sorted((p, info) for p, info in found.items() if info.get("type") != "directory")
    if not matches and not fs.exists(base):
        raise InputError(f"input prefix not found: {storage.redact_uri(prefix)}")
    if not matches:  # a job of no rows would end "complete": a wrong pattern must not pass for an empty archive
        raise InputError(f"no files under {storage.redact_uri(prefix)} match --glob {pattern!r}")
    scheme = prefix.split("://", 1)[0] + "://" if storage.is_uri(prefix) else ""
    rows = []
    for path, info in matches:
        relative = path[len(base):].lstrip("/")
        rows.append({"id": relative, "audio": f"{scheme}{path}", "size_bytes": info.get("size"),
                     "input_version": file_version(info)})
    return rows


def file_version(info: dict[str, Any]) -> str:
    """What a listing knows of a file's content without reading it: its size and ETag (object stores) or
    modification time (file systems). A file rewritten in place gets another version, so a rerun redoes it."""
    tag = info.get("ETag") or info.get("etag")
    stamp = f"etag={str(tag).strip(chr(34))}" if tag else f"mtime={info.get('mtime') or info.get('LastModified')}"
    return f"size={info.get('size')} {stamp}"


# --- conventions -----------------------------------------------------------------------------------------------


def detect_convention(records: list[dict[str, Any] | BadRecord]) -> str:
    """The convention most of ``records`` (a manifest's first rows) follow, by the keys each row has: NeMo's rows
    have ``audio_filepath``, GPA's training rows ``task``. A convention needs more than half the rows, so one odd
    row cannot flip a file; anything else reads as ours (canonical). ``--convention`` overrides it."""
    rows = [r for r in records if isinstance(r, dict)]
    for convention, key in (("nemo", "audio_filepath"), ("gpa", "task")):
        if rows and sum(key in r for r in rows) * 2 > len(rows):
            return convention
    return "canonical"


def _canonical(record: dict[str, Any] | BadRecord, convention: str,
               field_map: dict[str, str]) -> dict[str, Any] | BadRecord:
    if isinstance(record, BadRecord):
        return record
    if convention == "nemo":
        row = {"id": record.get("id"), "audio": record.get("audio_filepath"), "text": record.get("text"),
               "duration_hint": record.get("duration"), "seed": record.get("seed")}
        if record.get("offset") is not None:
            offset, duration = _number(record.get("offset")), _number(record.get("duration"))
            row["begin_time"] = offset
            row["end_time"] = offset + duration if offset is not None and duration is not None else None
        return row
    row = {key: record.get(key) for key in CANONICAL}
    if convention == "gpa":
        row["__task__"] = record.get("task") or ""
    if convention == "field_map":
        for ours, theirs in field_map.items():
            if ours not in CANONICAL and ours != "task":
                raise InputError(f"field map: unknown field {ours!r}; known: {', '.join(CANONICAL)}, task")
            if ours == "task":
                row["__task__"] = record.get(theirs) or ""
            else:
                row[ours] = record.get(theirs)
    return row


# --- validation and ids ----------------------------------------------------------------------------------------


def _validate(task, row: dict[str, Any], reference: str | None, max_text_chars: int) -> tuple[str, str] | None:
    """Type and location checks of the canonical fields (normalising them in place), then the task's own."""
    for key in ("id", "audio", "text", "ref_audio", "ref_id", "source_id"):
        value = row.get(key)
        if isinstance(value, str) and not _is_unicode(value):  # a lone surrogate escape, or bytes that were no UTF-8
            return "invalid_row", f"{key} is not valid Unicode"
    for key in ("audio", "ref_audio"):
        value = row.get(key)
        if isinstance(value, str) and _has_user_info(value):  # never echoed: the message must not carry it
            return "invalid_row", f"{key} carries credentials (user:password@); use the AWS environment instead"
        problem = _unsupported_location(value) if isinstance(value, str) else None
        if problem:
            return "invalid_row", f"{key}: {problem}"
    raw_id = row.get("id")
    if raw_id is not None and not _is_id(raw_id):
        return "invalid_row", f"id must be a string or an integer, got {type(raw_id).__name__}"
    if isinstance(raw_id, str) and not raw_id.strip():
        return "invalid_row", "id is empty"
    for key in ("audio", "ref_audio", "text", "ref_id", "source_id"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            if key in ("ref_id", "source_id") and _is_id(value):
                row[key] = str(value)
                continue
            return "invalid_row", f"{key} must be a string, got {type(value).__name__}"
        if isinstance(value, str) and not value.strip():
            row[key] = None
    for key in ("begin_time", "end_time", "duration_hint"):
        value = row.get(key)
        if value in (None, ""):
            row[key] = None
            continue
        number = _number(value)
        if number is None or not math.isfinite(number):
            return "invalid_row", f"{key} must be a number, got {str(value)[:40]!r}"
        if number < 0 and key != "duration_hint":
            if number != -1:  # a time before the start is a broken row, not "to the end" (GPA's -1)
                return "invalid_row", f"{key} {number:g} is negative (-1 means the start / end of the file)"
            number = None
        row[key] = number
    if row.get("begin_time") is not None and row.get("end_time") is not None and row["end_time"] <= row["begin_time"]:
        return "invalid_row", f"end_time {row['end_time']} is not after begin_time {row['begin_time']}"
    if row.get("seed") not in (None, ""):
        seed = _integer(row["seed"])
        if seed is None or not -(2**63) <= seed < 2**63:  # stored as int64
            return "invalid_row", f"seed must be a 64-bit integer, got {str(row['seed'])[:40]!r}"
        row["seed"] = seed
    else:
        row["seed"] = None
    return task.validate(row, reference, max_text_chars)


def _is_id(value: Any) -> bool:
    """Ids are strings or integers; a bool is not one (``True`` would become the id ``"True"``)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _has_user_info(uri: str) -> bool:
    return storage.is_uri(uri) and "@" in urlsplit(uri).netloc


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _unsupported_location(value: str) -> str | None:
    """Why the workers must not fetch ``value`` (None when they may): a scheme outside :data:`AUDIO_SCHEMES`, or
    an http(s) URL of the cloud's instance metadata service (which hands out the node's credentials)."""
    match = _URI_SCHEME.match(value)
    if not match:
        return None  # a local path
    if match.group(1) not in AUDIO_SCHEMES:
        return f"unsupported URI scheme {match.group(1)[:20]!r} (local paths, file://, s3:// and http(s):// only)"
    if match.group(1) in ("http", "https"):
        try:
            host = urlsplit(value).hostname or ""
        except ValueError:
            return "not a valid URL"
        if _is_metadata_host(host):
            return "the instance metadata service (a link-local address) is never fetched"
    return None


def _is_metadata_host(host: str) -> bool:
    """Link-local addresses (169.254.169.254 in any notation, IPv4-mapped too), AWS's IPv6 endpoint, known names.
    Not a sandbox: a name that resolves there, or a redirect, is not caught (see manifests/README.md)."""
    host = host.lower().rstrip(".")
    if host in _METADATA_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the other notations a resolver accepts: 2852039166, 0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False  # a name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_link_local or address == ipaddress.IPv6Address("fd00:ec2::254")


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is one (3, "3", 3.0), else None (True, 1.7, "x")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _derive_id(task, row: dict[str, Any], line: int) -> str:
    """The row's id: its own when it has one, else derived from what it asks for (stable when the manifest is
    reordered or grows; identical requests get identical ids and are then reported as duplicates). An id that
    cannot be written (not valid Unicode) names the row by its line instead."""
    row_id = _id_from_row(task, row, line)
    return row_id if _is_unicode(row_id) else f"line:{line}"


def _id_from_row(task, row: dict[str, Any], line: int) -> str:
    raw_id = row.get("id")
    if _is_id(raw_id) and str(raw_id).strip():
        return str(raw_id)
    if raw_id is not None:  # an id of the wrong type or empty: name the row by its line
        return f"line:{line}"
    # derived from URIs without user info or query string: a presigned URL's signature never becomes an id
    # (and re-signing the same object keeps its id)
    audio = _written(row, "__audio_as_written__")
    segment = ""
    if row.get("begin_time") is not None or row.get("end_time") is not None:
        begin = row.get("begin_time") or 0.0
        end = row.get("end_time")
        segment = f"@{begin:.3f}-{'end' if end is None else f'{end:.3f}'}"
    ref = _written(row, "__ref_audio_as_written__") or row.get("ref_id") or ""
    return task.id_from_row(row, audio, segment, ref) or f"line:{line}"


def _written(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    return storage.redact_uri(value) if value else value


def _echo(row: dict[str, Any]) -> dict[str, Any]:
    """Input fields worth keeping on an error row (what the user needs to find the row again): only values of the
    output column's type (a wrong-typed or undecodable value is what the error is about, and would not fit)."""
    echo: dict[str, Any] = {}
    for key in ("audio", "text", "ref_audio", "ref_id", "source_id"):
        value = row.get(key)
        if isinstance(value, str) and _is_unicode(value):
            echo[key] = storage.redact_uri(value) if key in ("audio", "ref_audio") else value
    for key in ("begin_time", "end_time"):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            echo[key] = float(value)
    return echo


# --- preflight: can the manifest's columns serve the job? -------------------------------------------------------

def check_columns(job: str, uri: str, *, input_format: str = "auto", field_map: dict[str, str] | None = None,
                  reference: str | None = None, convention: str = "auto", rows: int = 100) -> None:
    """Raise :class:`InputError` when none of the manifest's first ``rows`` rows has a field ``job`` needs (a CSV
    without an ``audio`` column, ``--field-map audio=nosuch``), naming the columns it has and the ``--field-map``
    to use. Such a job would end with every row a ``missing_field`` error; one row without the field is that row's
    error, as always."""
    task = get_task(job)
    uri = storage.normalize(uri)
    records = [r for r in itertools.islice(read_records(uri, input_format), rows) if isinstance(r, dict)]
    if field_map:
        convention = "field_map"
    elif convention == "auto":
        convention = detect_convention(records)
    canonical = [_canonical(r, convention, field_map or {}) for r in records]
    if convention == "gpa":  # other jobs' rows of a mixed training manifest say nothing about this job's fields
        canonical = [r for r in canonical if str(r.get("__task__", "")).strip().lower() in task.manifest_names]
    if not canonical:
        return
    columns = sorted({str(k) for r in records for k in r})
    # the fields the task cannot do without (synthesize and convert take --reference instead of ref_audio)
    for name in (name for name, required in task.manifest_fields.items() if required):
        if name == "ref_audio" and reference:
            continue
        if any(isinstance(r.get(name), str) and r[name].strip() for r in canonical):
            continue
        shown = ", ".join(columns[:20]) + (f", ... ({len(columns) - 20} more)" if len(columns) > 20 else "")
        mapped = (field_map or {}).get(name)
        problem = (f"--field-map {name}={mapped} names no column with values" if mapped
                   else f"no {name!r} column")
        hint = "; or pass --reference FILE for every row" if name == "ref_audio" else ""
        raise InputError(f"{storage.redact_uri(uri)}: {problem} in its first {len(records)} rows ({job} needs "
                         f"it); its columns are {shown or 'none'}: pass --field-map {name}=COLUMN{hint}")
