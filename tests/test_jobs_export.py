"""``gpa-batch export`` driven as a user runs it: transcripts as txt/srt/vtt/json/jsonl, synthesized audio as
wav/flac with a manifest, local and S3 (moto server), committed rows only, hostile ids, one-line errors."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from jobs_helpers import free_port, output_part, uncommitted_leftovers, write_output

from gpa.audio import encode_flac
from jobs.cli import main
from jobs.demo import reading_hint
from jobs.io import storage
from jobs.io.export import subtitles, timestamp
from jobs.io.manifest import load_inputs

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "../../etc/passwd\x00"


def transcripts(uri: str):
    rows = [
        {"id": "talk", "status": "ok", "audio_uri": "s3://b/talk.wav", "begin_time": 60.0, "end_time": None,
         "duration_s": 3665.5, "text": "Hello there. Second line", "truncated": False,
         "segments": [{"start": 60.0, "end": 61.5, "text": " Hello there."},
                      {"start": 61.5, "end": 62.0, "text": "  "},  # a window with no words: no cue
                      {"start": 3725.0016, "end": 3725.5, "text": "Second\n\nline"}]},
        {"id": HOSTILE, "status": "ok", "audio_uri": "/x.wav", "duration_s": 2.25, "text": "short one",
         "segments": []},
        {"id": "bad", "status": "error", "error_kind": "unreadable_audio", "error": "not audio"},
    ]
    store = write_output(uri, "transcribe", [output_part("transcribe", rows)])
    uncommitted_leftovers(store, "transcribe", "killed-row")
    return store


def export(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_subtitle_timing_formats_are_exact():
    assert timestamp(3725.0016, "srt") == "01:02:05,002" and timestamp(3725.0016, "vtt") == "01:02:05.002"
    assert timestamp(0.0, "srt") == "00:00:00,000" and timestamp(59.9999, "vtt") == "00:01:00.000"
    segments = [{"start": 0.5, "end": 1.25, "text": "a"}, {"start": 1.25, "end": 2.0, "text": "b\n\nc"}]
    assert subtitles(segments, "srt") == ("1\n00:00:00,500 --> 00:00:01,250\na\n\n"
                                          "2\n00:00:01,250 --> 00:00:02,000\nb\nc\n")
    assert subtitles(segments, "vtt") == ("WEBVTT\n\n00:00:00.500 --> 00:00:01.250\na\n\n"
                                          "00:00:01.250 --> 00:00:02.000\nb\nc\n")
    for fmt in ("srt", "vtt"):  # text that looks like a timing line stays text
        cue = subtitles([{"start": 0.0, "end": 1.0, "text": "a --> b\n-->"}], fmt)
        assert cue.count("-->") == 1 and "a -> b\n->\n" in cue


def test_transcripts_export_in_every_format(tmp_path, capsys):
    store = transcripts(str(tmp_path / "out"))
    talk, hostile = storage.safe_name("talk"), storage.safe_name(HOSTILE)
    for fmt in ("txt", "srt", "vtt", "json", "jsonl"):
        dest = tmp_path / fmt
        code, out, err = export(capsys, store.uri, "--format", fmt, "--dest", dest)
        assert code == 0 and err == ""
        assert out == f"exported 2 of 3 transcribe rows to {dest} (skipped: 1 error)\n"
        files = sorted(p.name for p in dest.iterdir())
        expected = ["transcripts.jsonl"] if fmt == "jsonl" else sorted([f"{hostile}.{fmt}", f"{talk}.{fmt}"])
        assert files == expected
    assert (tmp_path / "txt" / f"{talk}.txt").read_text() == "Hello there. Second line\n"
    assert (tmp_path / "srt" / f"{talk}.srt").read_text() == (
        "1\n00:01:00,000 --> 00:01:01,500\nHello there.\n\n2\n01:02:05,002 --> 01:02:05,500\nSecond\nline\n")
    # a row without segments is one cue over what was transcribed
    assert (tmp_path / "vtt" / f"{hostile}.vtt").read_text() == "WEBVTT\n\n00:00:00.000 --> 00:00:02.250\nshort one\n"
    whisper = json.loads((tmp_path / "json" / f"{talk}.json").read_text())
    assert whisper["text"] == "Hello there. Second line" and whisper["audio"] == "s3://b/talk.wav"
    assert [(s["start"], s["end"]) for s in whisper["segments"]] == [(60.0, 61.5), (3725.0016, 3725.5)]
    lines = [json.loads(line) for line in (tmp_path / "jsonl" / "transcripts.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(["talk", HOSTILE])  # no error row, no killed run's row
    # the hostile id wrote nothing outside its destination
    assert sorted(p.name for p in tmp_path.iterdir()) == ["json", "jsonl", "out", "srt", "txt", "vtt"]


def voices() -> list[np.ndarray]:
    t = np.arange(4000) / 16000
    return [(0.2 * (k + 1) * np.sin(2 * np.pi * 200 * (k + 1) * t)).astype(np.float32) for k in range(3)]


def synthesized(uri: str, objects: bool):
    """A synthesize output: a kept row, a row that failed the quality gate, an error row, and (objects) a row whose
    audio path points outside the output."""
    rows = []
    for k, (row_id, keep) in enumerate((("kept", True), ("dropped", False), (HOSTILE, True))):
        flac = encode_flac(voices()[k])
        name = storage.safe_name(row_id, ".flac")
        if objects:
            path = storage.join(uri, "audio", name[:2], name)
            storage.write_bytes(path, flac)
            audio = {"bytes": None, "path": path}
        else:
            audio = {"bytes": flac, "path": name}
        rows.append({"id": row_id, "status": "ok", "text": f"text {k}", "ref_id": "spk", "audio": audio,
                     "sampling_rate": 16000, "duration_s": 0.25, "cer": 0.1, "speaker_similarity": 0.9,
                     "keep": keep})
    rows.append({"id": "err", "status": "error", "error_kind": "empty_generation", "error": "no tokens"})
    if objects:
        rows.append({"id": "escape", "status": "ok", "text": "x", "keep": True,
                     "audio": {"bytes": None, "path": f"{uri}/audio/../../../etc/.."}})
    store = write_output(uri, "synthesize", [output_part("synthesize", rows[:2]), output_part("synthesize", rows[2:])])
    uncommitted_leftovers(store, "synthesize", "killed-row")
    return store


@pytest.mark.parametrize("where", ["local", "s3"])
def test_synthesized_audio_exports_as_wav_and_flac_with_a_manifest(where, tmp_path, capsys, request):
    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    store = synthesized(storage.join(base, "out"), objects=where == "s3")
    expected = dict(zip(["kept", "dropped", HOSTILE], voices(), strict=True))
    for fmt, only_kept in (("wav", False), ("flac", True)):
        dest = storage.join(base, f"export-{fmt}")
        code, out, err = export(capsys, store.uri, "--format", fmt, "--dest", dest, *["--only-kept"] * only_kept)
        skipped = "1 error, 1 not kept" if only_kept else "1 error"
        exported = 2 if only_kept else 3
        rows = 5 if where == "s3" else 4
        line = f"exported {exported} of {rows} synthesize rows to {dest} (skipped: {skipped})"
        if where == "s3":  # the row whose audio path leaves the output is refused, the others are exported
            line += "; 1 could not be exported, e.g. 'escape': ValueError: its audio is neither inline nor an " \
                    "audio object of this output"
        assert out == line + "\n" and code == (1 if where == "s3" else 0) and err == ""
        manifest = [json.loads(x) for x in storage.read_bytes(storage.join(dest, "manifest.jsonl")).splitlines()]
        assert sorted(m["id"] for m in manifest) == sorted(k for k in expected if not (only_kept and k == "dropped"))
        for entry in manifest:
            assert entry["audio"] == storage.safe_name(entry["id"], "." + fmt) and entry["duration_hint"] == 0.25
            assert entry["keep"] is (entry["id"] != "dropped") and entry["ref_id"] == "spk"
            data = storage.read_bytes(storage.join(dest, entry["audio"]))
            samples, rate = sf.read(io.BytesIO(data), dtype="float32")
            assert rate == 16000 and sf.info(io.BytesIO(data)).format == fmt.upper()
            np.testing.assert_allclose(samples, expected[entry["id"]], atol=1 / 32767)
        assert len(storage.listdir(dest)) == len(manifest) + 1  # nothing else, nothing elsewhere
    if where == "local":  # the manifest is a job input as it is: relative paths, canonical fields
        inputs = load_inputs("transcribe", str(tmp_path / "export-wav" / "manifest.jsonl"))
        assert not inputs.errors and sorted(r["audio"] for r in inputs.rows) == sorted(
            str(tmp_path / "export-wav" / storage.safe_name(k, ".wav")) for k in expected)


def test_bad_exports_are_refused_in_one_line(tmp_path, capsys):
    store = transcripts(str(tmp_path / "out"))
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        ((tmp_path / "empty", "--format", "srt", "--dest", tmp_path / "d"), "is not a gpa-batch output"),
        ((store.uri, "--format", "wav", "--dest", tmp_path / "d"), "a transcribe output exports as txt, srt"),
        ((store.uri, "--format", "srt", "--only-kept", "--dest", tmp_path / "d"), "a transcribe output has none"),
        ((store.uri, "--format", "srt", "--dest", tmp_path / "out" / "data" / "srt"), "inside the output's data/"),
        ((store.uri, "--format", "srt", "--dest", tmp_path / "a-file"), "is a file"),
        ((store.uri, "--format", "srt", "--dest", tmp_path / "a-file" / "d"),
         f"cannot write {tmp_path / 'a-file' / 'd'} (Not a directory); choose another --dest"),
    ]
    for args, reason in cases:
        code, out, err = export(capsys, *args)
        assert code == 1 and out == "" and err.count("\n") == 1 and reason in err, err
        assert err.startswith("gpa-batch export: ") and "Traceback" not in err
    assert not (tmp_path / "d").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == sorted(
        storage.basename(f) for f in [*store.files(), "part-killed-00001.parquet"])


def test_the_demo_closing_hint_runs_as_printed(tmp_path):
    store = transcripts(str(tmp_path / "transcribe"))
    pyarrow_line, export_line = reading_hint(tmp_path, "transcribe").splitlines()[1:3]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = shlex.split(pyarrow_line.strip())
    assert command[0] == "python"  # the venv's
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "Hello there. Second line" in done.stdout, done.stderr[-2000:]
    command = shlex.split(export_line.strip())
    assert command[0] == "gpa-batch"
    done = subprocess.run([sys.executable, "-m", "jobs", *command[1:]], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "subtitles").glob("*.srt"))) == 2 and store.files()


@pytest.mark.parametrize("job", ["transcribe", "synthesize", "convert"])
def test_the_demo_hint_reads_each_jobs_output_in_any_folder(job, tmp_path):
    root = tmp_path / "it's my demo"  # a shell's space and quote
    write_output(str(root / job), job, [output_part(job, [{"id": "row-1", "status": "error", "error_kind": "x"}])])
    pyarrow_line, export_line = reading_hint(root, job).splitlines()[1:3]
    command = shlex.split(pyarrow_line.strip())
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0 and "row-1" in done.stdout, done.stderr[-2000:]
    assert shlex.split(export_line)[1:3] == ["export", str(root / job)]


def test_an_unreachable_store_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    done = subprocess.run([sys.executable, "-m", "jobs", "export", "s3://bucket/out", "--format", "srt", "--dest",
                           str(tmp_path / "d")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("gpa-batch export: EndpointConnectionError: Could not connect")
    assert not (tmp_path / "d").exists()
