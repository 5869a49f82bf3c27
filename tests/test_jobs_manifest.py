"""Reading job inputs: formats, conventions, relative paths, ids, validation into error rows."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobs_helpers import write_jsonl

from jobs.io.manifest import InputError, load_inputs

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples"


def test_examples_read_with_relative_paths_resolved():
    got = load_inputs("transcribe", str(EXAMPLES / "transcribe.jsonl"))
    assert got.convention == "canonical"
    assert [r["id"] for r in got.rows] == ["jfk", "weather", "numbers", "library", "hello", "missing-file"]
    assert got.rows[0]["audio"] == str(EXAMPLES / "audio" / "jfk.flac")
    assert got.rows[0]["text"].startswith("And so my fellow Americans")
    assert got.errors == []  # the missing file is found out when it is fetched, not here


def test_gpa_training_jsonl_segments_and_task_filter():
    got = load_inputs("transcribe", str(EXAMPLES / "transcribe_gpa.jsonl"), skip_other_tasks=True)
    assert got.convention == "gpa"
    assert got.skipped_other_task == 1  # the tts-a row belongs to the synthesize job
    first, second, whole = got.rows
    assert (first["begin_time"], first["end_time"]) == (0.0, 4.0)
    assert (second["begin_time"], second["end_time"]) == (4.0, None)  # -1: to the end of the file
    assert (whole["begin_time"], whole["end_time"]) == (None, None)  # -1/-1: the whole file
    assert first["id"] == "audio/jfk.flac@0.000-4.000" and whole["id"] == "audio/espeak_weather.flac"
    tts = load_inputs("synthesize", str(EXAMPLES / "transcribe_gpa.jsonl"), skip_other_tasks=True)
    assert [r["ref_audio"] for r in tts.rows] == [str(EXAMPLES / "audio" / "espeak_library.flac")]
    assert tts.skipped_other_task == 3


def test_rows_of_another_task_are_error_rows_unless_filtering_is_asked_for():
    got = load_inputs("transcribe", str(EXAMPLES / "transcribe_gpa.jsonl"))
    assert got.skipped_other_task == 0 and got.total == 4 and len(got.rows) == 3
    (error,) = got.errors
    assert error["error_kind"] == "other_task" and "--skip-other-tasks" in error["error"]


def test_nemo_manifest_duration_and_offset():
    got = load_inputs("transcribe", str(EXAMPLES / "transcribe_nemo.json"))
    assert got.convention == "nemo"
    numbers, library, jfk = got.rows
    assert numbers["duration_hint"] == pytest.approx(4.52) and numbers["begin_time"] is None
    assert (jfk["begin_time"], jfk["end_time"]) == (0.5, 3.5)
    assert numbers["text"].startswith("please call")


def test_csv_with_field_map_and_parquet(tmp_path):
    fmap = {"id": "utt_id", "audio": "path", "text": "transcript"}
    got = load_inputs("transcribe", str(EXAMPLES / "transcribe.csv"), field_map=fmap)
    assert [r["id"] for r in got.rows] == ["weather", "hello"]
    assert got.rows[1]["audio"] == str(EXAMPLES / "audio" / "espeak_short.flac")
    # the same rows as Parquet, somewhere else: relative paths follow the manifest
    shutil.copytree(EXAMPLES / "audio", tmp_path / "audio")
    paths = ["audio/espeak_weather.flac", "audio/espeak_short.flac"]
    table = pa.table({"utt_id": ["weather", "hello"], "path": paths, "transcript": ["a", "b"], "seed": [7, None]})
    pq.write_table(table, tmp_path / "m.parquet")
    got = load_inputs("transcribe", str(tmp_path / "m.parquet"), field_map={**fmap, "seed": "seed"})
    assert [r["audio"] for r in got.rows] == [str(tmp_path / "audio/espeak_weather.flac"),
                                              str(tmp_path / "audio/espeak_short.flac")]
    assert [r["seed"] for r in got.rows] == [7, None]


def test_listing_with_glob_gives_stable_relative_ids(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for size, name in enumerate(("a/one.flac", "a/b/two.flac", "a/skip.txt", "three.flac"), start=1):
        (tmp_path / name).write_bytes(b"x" * size)
    got = load_inputs("transcribe", str(tmp_path), glob="**/*.flac")
    assert got.convention == "listing"
    assert sorted(r["id"] for r in got.rows) == ["a/b/two.flac", "a/one.flac", "three.flac"]
    # the listing's sizes come along (the planner orders an archive without durations by them)
    assert {r["id"]: r["size_bytes"] for r in got.rows} == {"a/one.flac": 1, "a/b/two.flac": 2, "three.flac": 4}
    again = load_inputs("transcribe", str(tmp_path) + "/", glob="**/*.flac")
    assert [r["id"] for r in again.rows] == [r["id"] for r in got.rows]
    with pytest.raises(InputError):
        load_inputs("transcribe", str(tmp_path / "nope"), glob="*.flac")
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "a.wav").write_bytes(b"")
    with pytest.raises(InputError, match=r"no files under .*archive match --glob '\*\*/\*\.mp3'"):
        load_inputs("transcribe", str(tmp_path / "archive"), glob="**/*.mp3")


def test_invalid_rows_become_error_rows(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "ok", "audio": "a.wav"},
        "{not json",
        "[1, 2]",
        {"id": "no-audio", "text": "x"},
        {"id": "bad-times", "audio": "a.wav", "begin_time": 5, "end_time": 2},
        {"id": "bad-number", "audio": "a.wav", "begin_time": "soon"},
        {"id": "negative-end", "audio": "a.wav", "begin_time": 1.0, "end_time": -2.5},
        {"id": "negative-begin", "audio": "a.wav", "begin_time": -0.5},
        {"id": {"nested": 1}, "audio": "a.wav"},
        {"id": 42, "audio": "b.wav"},
        {"id": "ok", "audio": "c.wav"},
        {"audio": "a.wav"},
        {"audio": "a.wav"},
    ])
    got = load_inputs("transcribe", str(manifest))
    kinds = {(e["id"], e["error_kind"]) for e in got.errors}
    assert ("line:2", "invalid_manifest_row") in kinds and ("line:3", "invalid_manifest_row") in kinds
    assert ("no-audio", "missing_field") in kinds
    assert ("bad-times", "invalid_row") in kinds and ("bad-number", "invalid_row") in kinds
    # only -1 means "the start / end of the file": other negative times are broken rows, not "to the end"
    assert ("negative-end", "invalid_row") in kinds and ("negative-begin", "invalid_row") in kinds
    assert "end_time -2.5 is negative" in next(e["error"] for e in got.errors if e["id"] == "negative-end")
    assert ("ok", "duplicate_id") in kinds  # the second "ok" row, never silently merged
    assert ("a.wav", "duplicate_id") in kinds  # derived ids collide for identical requests too
    assert [r["id"] for r in got.rows] == ["ok", "42", "a.wav"]
    assert got.total == 13  # every input row is accounted for


def test_a_broken_line_never_takes_the_id_of_an_earlier_row(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "line:2", "audio": "a.wav"}, "{not json",
                                                  {"id": "line:2#2", "audio": "b.wav"}, "[]"])
    got = load_inputs("transcribe", str(manifest))
    assert [r["id"] for r in got.rows] == ["line:2"] and got.total == 4
    # the broken line takes the next free name; a later row with that name is then a reported duplicate
    assert sorted((e["id"], e["error_kind"]) for e in got.errors) == [
        ("line:2#2", "duplicate_id"), ("line:2#2", "invalid_manifest_row"), ("line:4", "invalid_manifest_row")]


def test_seeds_are_64_bit_integers_or_error_rows(tmp_path):
    seeds = {"huge": 2**64, "bool": True, "fraction": 1.7, "word": "x", "text": "7", "float": 3.0,
             "lowest": -(2**63), "highest": 2**63 - 1, "none": None}
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": k, "audio": "a.wav", "seed": v} for k, v in seeds.items()])
    got = load_inputs("transcribe", str(manifest))  # one bad seed never stops the job
    assert sorted((e["id"], e["error_kind"]) for e in got.errors) == [
        ("bool", "invalid_row"), ("fraction", "invalid_row"), ("huge", "invalid_row"), ("word", "invalid_row")]
    assert {r["id"]: r["seed"] for r in got.rows} == {"text": 7, "float": 3, "lowest": -(2**63),
                                                      "highest": 2**63 - 1, "none": None}


def test_audio_fields_name_files_objects_or_urls_only(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "metadata", "audio": "http://169.254.169.254/latest/meta-data/iam/"},
        {"id": "metadata-v6", "audio": "http://[fe80::a9fe:a9fe]/latest/"},
        {"id": "gcp-metadata", "audio": "http://metadata.google.internal/computeMetadata/v1/"},
        {"id": "decimal", "audio": "http://2852039166/latest/"},
        {"id": "hex", "audio": "http://0xa9fea9fe/latest/"},
        {"id": "octal", "audio": "https://0251.0376.0251.0376/latest/"},
        {"id": "mapped", "audio": "http://[::ffff:169.254.169.254]/latest/"},
        {"id": "aws-v6", "audio": "http://[fd00:ec2::254]/latest/"},
        {"id": "gcs", "audio": "gs://bucket/a.flac"},
        {"id": "memory", "audio": "memory://a.flac"},
        {"id": "S3", "audio": "S3://bucket/a.flac"},  # schemes are named as the storage layer knows them
        {"id": "s3", "audio": "s3://bucket/a.flac"},
        {"id": "s3a", "audio": "s3a://bucket/a.flac"},
        {"id": "presigned", "audio": "https://bucket.s3.amazonaws.com/a.flac?X-Amz-Signature=x"},
        {"id": "lan", "audio": "http://10.0.0.5:9000/bucket/a.flac"},
        {"id": "file", "audio": f"file://{tmp_path}/a.flac"},
        {"id": "relative", "audio": "a.flac"},
    ])
    got = load_inputs("transcribe", str(manifest))
    errors = {e["id"]: e["error"] for e in got.errors}
    metadata = ["aws-v6", "decimal", "gcp-metadata", "hex", "mapped", "metadata", "metadata-v6", "octal"]
    assert sorted(errors) == sorted(["S3", "gcs", "memory", *metadata])
    assert all("unsupported URI scheme" in errors[i] for i in ("S3", "gcs", "memory"))
    assert all("instance metadata" in errors[i] for i in metadata)
    assert sorted(r["id"] for r in got.rows) == ["file", "lan", "presigned", "relative", "s3", "s3a"]
    refs = write_jsonl(tmp_path / "s.jsonl", [{"id": "x", "text": "hi", "ref_audio": "ftp://example.com/r.wav"}])
    assert load_inputs("synthesize", str(refs)).errors[0]["error"].startswith("ref_audio: unsupported URI scheme")


def test_synthesize_and_convert_validation(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "t1", "text": "hello", "ref_audio": "voice.wav"},
        {"id": "t2", "text": "   ", "ref_audio": "voice.wav"},
        {"id": "t3", "text": "x" * 50, "ref_audio": "voice.wav"},
        {"id": "t4", "text": "no reference"},
        {"text": "derived id", "ref_audio": "voice.wav"},
    ])
    got = load_inputs("synthesize", str(manifest), max_text_chars=20)
    assert {e["id"]: e["error_kind"] for e in got.errors} == {"t2": "invalid_text", "t3": "invalid_text",
                                                             "t4": "missing_field"}
    assert got.rows[0]["ref_id"] == "voice.wav" and got.rows[1]["id"].startswith("tts-")
    with_default = load_inputs("synthesize", str(manifest), reference=str(tmp_path / "default.wav"))
    t4 = next(r for r in with_default.rows if r["id"] == "t4")
    assert t4["ref_audio"] == str(tmp_path / "default.wav") and t4["ref_id"] == "default.wav"
    vc = load_inputs("convert", str(EXAMPLES / "convert.jsonl"))
    assert [r["source_id"] for r in vc.rows] == ["weather", "jfk", "numbers"]
    assert vc.rows[1]["begin_time"] == 0.0 and vc.rows[1]["end_time"] == 4.0


def test_whole_input_problems_stop_the_job(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_inputs("transcribe", str(tmp_path / "missing.jsonl"))
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(InputError, match="--format"):
        load_inputs("transcribe", str(tmp_path / "m.xyz"))
    with pytest.raises(InputError, match="--glob"):
        load_inputs("transcribe", str(tmp_path))
    with pytest.raises(InputError, match="field map"):
        load_inputs("transcribe", str(EXAMPLES / "transcribe.csv"), field_map={"wat": "path"})


def test_an_http_manifest_that_cannot_be_reached_is_not_called_missing(tmp_path):
    """A manifest served over HTTP: a 404 is "not found", a server that refuses the connection is an outage."""
    import http.server
    import socket
    import threading

    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "audio": "a.flac"}) + "\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert [r["id"] for r in load_inputs("transcribe", f"{base}/m.jsonl").rows] == ["a"]
        with pytest.raises(InputError, match="input not found: .*/missing.jsonl"):
            load_inputs("transcribe", f"{base}/missing.jsonl")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(InputError, match="m.jsonl: storage unavailable, try again later"):
        load_inputs("transcribe", f"http://127.0.0.1:{closed}/m.jsonl")


def test_s3_manifest_and_listing(s3_bucket):
    import boto3

    s3 = boto3.client("s3")
    body = json.dumps({"id": "x", "audio": "clips/x.flac"}) + "\n" + json.dumps({"id": "y", "audio": "../y.flac"})
    s3.put_object(Bucket=s3_bucket, Key="sets/m.jsonl", Body=body.encode())
    for size, key in enumerate(("sets/clips/x.flac", "sets/clips/deep/z.flac", "sets/clips/readme.txt"), start=1):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * size)
    got = load_inputs("transcribe", f"s3://{s3_bucket}/sets/m.jsonl")
    assert [r["audio"] for r in got.rows] == [f"s3://{s3_bucket}/sets/clips/x.flac", f"s3://{s3_bucket}/y.flac"]
    # the other formats stream from the store too
    s3.put_object(Bucket=s3_bucket, Key="sets/m.csv", Body=b"\xef\xbb\xbfid,audio\nx,clips/x.flac\ny,../y.flac\n")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ["x", "y"], "audio": ["clips/x.flac", "../y.flac"]}), buffer)
    s3.put_object(Bucket=s3_bucket, Key="sets/m.parquet", Body=buffer.getvalue())
    for name in ("m.csv", "m.parquet"):
        got = load_inputs("transcribe", f"s3://{s3_bucket}/sets/{name}")
        assert [(r["id"], r["audio"]) for r in got.rows] == [("x", f"s3://{s3_bucket}/sets/clips/x.flac"),
                                                              ("y", f"s3://{s3_bucket}/y.flac")]
    listed = load_inputs("transcribe", f"s3://{s3_bucket}/sets/clips/", glob="**/*.flac")
    assert sorted((r["id"], r["size_bytes"]) for r in listed.rows) == [("deep/z.flac", 2), ("x.flac", 1)]
    assert all(r["audio"].startswith(f"s3://{s3_bucket}/sets/clips/") for r in listed.rows)


def test_example_manifests_follow_the_json_schemas():
    import jsonschema

    schemas = {job: json.loads((EXAMPLES.parent / "schemas" / f"{job}.schema.json").read_text())
               for job in ("transcribe", "synthesize", "convert")}
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    checked = 0
    for name, job in [("transcribe.jsonl", "transcribe"), ("transcribe_gpa.jsonl", "transcribe"),
                      ("transcribe_nemo.json", "transcribe"), ("synthesize.jsonl", "synthesize"),
                      ("convert.jsonl", "convert")]:
        for line in (EXAMPLES / name).read_text().splitlines():
            row = json.loads(line)
            errors = list(jsonschema.Draft202012Validator(schemas[job]).iter_errors(row))
            assert bool(errors) == (row.get("id") == "tts-empty"), (name, row, errors)  # broken on purpose
            checked += 1
    assert checked == 20
    assert list(jsonschema.Draft202012Validator(schemas["transcribe"]).iter_errors({"text": "no audio"}))


@pytest.mark.parametrize("fmt", ["jsonl.gz", "csv", "parquet"])
def test_manifests_stream_into_columns(tmp_path, monkeypatch, fmt):
    """Rows are read as a stream and kept as Arrow columns a chunk at a time: every row, in order, whatever the
    format, with bad rows in between."""
    import gzip

    from jobs.io import manifest as M
    from jobs.io import schema as S

    monkeypatch.setattr(M, "_CHUNK_ROWS", 4)
    rows = [{"id": f"r{i:02d}", "audio": f"clips/{i}.flac", "begin_time": None if i % 3 else 1.5,
             "end_time": None if i % 3 else 2.5} for i in range(11)]
    rows[6]["audio"] = None  # a row without audio: an error row, the rest go on
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    elif fmt == "csv":
        path.write_text("id,audio,begin_time,end_time\n" + "".join(
            f"{r['id']},{r['audio'] or ''},{r['begin_time'] or ''},{r['end_time'] or ''}\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    got = load_inputs("transcribe", str(path))
    assert got.table.schema == S.INPUT and got.total == 11
    assert [e["id"] for e in got.errors] == ["r06"]
    assert got.table.column("id").to_pylist() == [r["id"] for r in rows if r["audio"]]
    assert got.rows[3]["audio"] == str(tmp_path / "clips" / "3.flac")
    assert got.rows[3]["begin_time"] == 1.5 and got.rows[3]["end_time"] == 2.5 and got.rows[1]["begin_time"] is None


def test_a_manifest_that_breaks_off_is_an_input_error(tmp_path):
    import gzip

    data = gzip.compress("".join(json.dumps({"id": f"r{i}", "audio": "a.flac"}) + "\n" for i in range(2000)).encode())
    (tmp_path / "m.jsonl.gz").write_bytes(data[: len(data) // 2])  # truncated upload
    with pytest.raises(InputError, match=r"m\.jsonl\.gz: cannot read it \(EOFError"):
        load_inputs("transcribe", str(tmp_path / "m.jsonl.gz"))


# --- hostile manifests: each record is judged on its own --------------------------------------------------------


def _kinds(got) -> list[tuple[str, str]]:
    return sorted((e["id"], e["error_kind"]) for e in got.errors)


@pytest.mark.parametrize("first", [b"[1, 2, 3]", b'[{"id": "cut", "audio": "a.wav"', b"[]"])
def test_a_first_line_like_a_json_array_is_one_bad_record(tmp_path, first):
    rows = b"".join(json.dumps({"id": f"r{i}", "audio": "a.wav"}).encode() + b"\n" for i in range(3))
    (tmp_path / "m.jsonl").write_bytes(first + b"\n" + rows)
    got = load_inputs("transcribe", str(tmp_path / "m.jsonl"))
    assert [r["id"] for r in got.rows] == ["r0", "r1", "r2"]
    assert _kinds(got) == [("line:1", "invalid_manifest_row")] and got.errors[0]["error"].startswith("line 1: ")


def test_a_whole_file_json_array_is_still_read_as_one(tmp_path):
    items = [{"id": "a", "audio": "a.wav"}, 7, {"id": "b", "audio": "b.wav"}]
    (tmp_path / "m.json").write_text(json.dumps(items, indent=2))
    got = load_inputs("transcribe", str(tmp_path / "m.json"))
    assert [r["id"] for r in got.rows] == ["a", "b"]
    assert _kinds(got) == [("line:2", "invalid_manifest_row")] and "not a JSON object" in got.errors[0]["error"]


def test_deep_nesting_huge_integers_and_long_lines_are_bad_records(tmp_path, monkeypatch):
    import jobs.io.manifest as M

    monkeypatch.setattr(M, "MAX_RECORD_BYTES", 100_000)
    lines = [
        b'{"id": "deep", "audio": "a.wav", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # over the line limit
        b'{"id": "deep2", "audio": "a.wav", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",  # RecursionError
        b'{"id": "deep3", "audio": "a.wav", "x": ' + b"[" * 40 + b"]" * 40 + b"}",  # past MAX_NESTING
        b'{"id": "digits", "audio": "a.wav", "seed": ' + b"9" * 5_000 + b"}",
        b'{"id": "long", "audio": "a.wav", "text": "' + b"x" * 300_000,  # no newline until the end of the file?
        json.dumps({"id": "after", "audio": "a.wav"}).encode(),
    ]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    got = load_inputs("transcribe", str(tmp_path / "m.jsonl"))
    assert [r["id"] for r in got.rows] == ["after"]
    assert _kinds(got) == [(f"line:{n}", "invalid_manifest_row") for n in (1, 2, 3, 4, 5)]
    reasons = [e["error"] for e in got.errors]
    assert "longer than 100000 bytes" in reasons[0] and "longer than 100000 bytes" in reasons[4]
    assert "nested deeper than 32 levels" in reasons[1] and "nested deeper than 32 levels" in reasons[2]
    assert "more than 100 digits" in reasons[3]


def test_csv_cells_and_ragged_rows_are_judged_row_by_row(tmp_path, monkeypatch):
    import jobs.io.manifest as M

    big = "word " * 200_000  # a 1 MB cell: over csv's default field limit (131072), within a record's
    ref = str(EXAMPLES / "audio" / "jfk.flac")
    body = f'id,text,ref_audio\nbig,"{big}",{ref}\nok,hello there,{ref}\nragged,hi,{ref},extra,cells\nshort,hi\n'
    (tmp_path / "m.csv").write_text(body)
    got = load_inputs("synthesize", str(tmp_path / "m.csv"))
    assert [r["id"] for r in got.rows] == ["ok"]
    assert _kinds(got) == [("big", "invalid_text"), ("line:3", "invalid_manifest_row"), ("short", "missing_field")]
    assert "line 4: 5 cells, the header has 3" in next(e["error"] for e in got.errors if e["id"] == "line:3")
    monkeypatch.setattr(M, "MAX_RECORD_BYTES", 500_000)  # now the cell is past the record's limit
    got = load_inputs("synthesize", str(tmp_path / "m.csv"))
    assert [r["id"] for r in got.rows] == ["ok"] and ("line:1", "invalid_manifest_row") in _kinds(got)
    assert got.total == 4


def test_conventions_follow_the_rows_and_one_row_cannot_flip_them(tmp_path):
    ref = str(EXAMPLES / "audio" / "jfk.flac")
    rows = [{"id": f"t{i}", "text": "hello", "ref_audio": ref} for i in range(3)]
    with_task = write_jsonl(tmp_path / "task.jsonl", [{**rows[0], "task": "stt"}, *rows[1:]])
    got = load_inputs("synthesize", str(with_task))
    assert got.convention == "canonical" and [r["id"] for r in got.rows] == ["t0", "t1", "t2"]
    audio_rows = [{"id": f"a{i}", "audio": "a.wav"} for i in range(3)]
    one_nemo = write_jsonl(tmp_path / "nemo.jsonl", [{**audio_rows[0], "audio_filepath": "b.wav"}, *audio_rows[1:]])
    got = load_inputs("transcribe", str(one_nemo))
    assert got.convention == "canonical" and got.errors == [] and len(got.rows) == 3
    forced = load_inputs("transcribe", str(one_nemo), convention="nemo")  # explicit: rows without it fail
    assert forced.convention == "nemo" and _kinds(forced) == [("a1", "missing_field"), ("a2", "missing_field")]
    with pytest.raises(InputError, match="convention"):
        load_inputs("transcribe", str(one_nemo), convention="kaldi")


def test_ids_are_strings_or_integers_and_markers_are_not_fields(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": True, "audio": "a.wav"}, {"id": 1.5, "audio": "b.wav"}, {"id": 3, "audio": "c.wav"},
        {"id": "marker", "audio": "d.wav", "__parse_error__": "not mine", "__task__": "tts"},
        {"id": "ref-bool", "audio": "e.wav", "ref_id": False},
    ])
    got = load_inputs("transcribe", str(manifest))
    assert [r["id"] for r in got.rows] == ["3", "marker"]
    assert _kinds(got) == [("line:1", "invalid_row"), ("line:2", "invalid_row"), ("ref-bool", "invalid_row")]


def test_undecodable_parquet_ids_are_invalid_rows_not_merged(tmp_path):
    table = pa.table({"id": pa.array([b"\xff-a", b"\xfe-a", b"ok"], pa.binary()), "audio": ["a.wav"] * 3})
    pq.write_table(table, tmp_path / "m.parquet")
    got = load_inputs("transcribe", str(tmp_path / "m.parquet"))
    assert [r["id"] for r in got.rows] == ["ok"]
    assert _kinds(got) == [("line:1", "invalid_row"), ("line:2", "invalid_row")]
    assert all("id is not valid Unicode" in e["error"] for e in got.errors)


def test_texts_with_nothing_speakable_are_invalid_text(tmp_path):
    ref = str(EXAMPLES / "audio" / "jfk.flac")
    texts = {"controls": "\x00\x07\x1b\x7f", "format": "\u200b\u200e\u2060\ufeff", "mixed": "\x00 \u200b\x1b\t",
             "private": "\ue000\uf8ff", "speakable": "Hi\u200b there\x07", "zwnj": "می\u200cخواهم"}
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": k, "text": v, "ref_audio": ref} for k, v in texts.items()])
    got = load_inputs("synthesize", str(manifest))
    assert [r["id"] for r in got.rows] == ["speakable", "zwnj"]
    assert _kinds(got) == [(k, "invalid_text") for k in ("controls", "format", "mixed", "private")]


def test_clean_text_keeps_joiners_inside_words_only():
    from gpa.errors import InvalidText
    from gpa.model import clean_text

    assert clean_text("می\u200cخواهم", 100) == "می\u200cخواهم"  # ZWNJ inside a Persian word stays
    assert clean_text("\u200dword\u200d", 100) == "word"  # at a word's edge it goes
    assert clean_text("in\u00advisible\u200b  text\x00x", 100) == "invisible text x"
    with pytest.raises(InvalidText, match="nothing to speak"):
        clean_text("\u200b?!\u200e", 100)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "id,audio\n", "parquet"])
def test_empty_inputs_are_refused_unless_allowed(tmp_path, content):
    if content == "parquet":
        path = tmp_path / "m.parquet"
        pq.write_table(pa.table({"id": pa.array([], pa.string()), "audio": pa.array([], pa.string())}), path)
    else:
        path = tmp_path / ("m.csv" if content.startswith("id") else "m.jsonl")
        path.write_text(content)
    with pytest.raises(InputError, match="holds no rows .*--allow-empty"):
        load_inputs("transcribe", str(path))
    assert load_inputs("transcribe", str(path), allow_empty=True).total == 0


def test_only_regular_files_are_read_as_manifests(tmp_path):
    import os

    os.mkfifo(tmp_path / "m.jsonl")  # nobody writes to it: opening it for reading would block
    with pytest.raises(InputError, match="not a regular file \\(a FIFO\\)"):
        load_inputs("transcribe", str(tmp_path / "m.jsonl"))
    with pytest.raises(InputError, match="not a regular file \\(a device\\)"):
        load_inputs("transcribe", "/dev/zero", input_format="jsonl")
