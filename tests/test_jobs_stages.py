"""The stages in-process on the tiny checkpoint (no Ray): a crashing model call still yields a row per input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from jobs import schema as S
from jobs.config import JobConfig
from jobs.pipeline import task_params
from jobs.stages import GPAStage, decode_batch, encode_batch
from jobs.tasks import TASKS, SpeakerCache

AUDIO = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "audio"


@pytest.fixture(scope="module")
def stage(tiny_checkpoint):
    config = JobConfig(job="transcribe", input="m.jsonl", output="out", model=str(tiny_checkpoint), batch_size=2,
                       options={"max_new_tokens": 8})
    return GPAStage(config.to_dict())


def decoded(rows: list[dict]):
    inputs = [{"id": r[0], "audio": str(r[1]), "seed": 1} for r in rows]
    return decode_batch(S.rows_to_table(inputs, S.INPUT), "transcribe", 3600.0)


def test_a_crashing_batch_is_retried_row_by_row(stage, monkeypatch):
    batch = decoded([("a", AUDIO / "espeak_short.flac"), ("b", AUDIO / "espeak_weather.flac"),
                     ("c", AUDIO / "missing.flac")])
    real = stage.model.transcribe

    def crashes_on_batches(audios, options=None):
        if len(audios) > 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(audios, options)

    monkeypatch.setattr(stage.model, "transcribe", crashes_on_batches)
    rows = {r["id"]: r for r in stage(batch).drop(["wav", "out_wav"]).to_pylist()}
    assert rows["a"]["status"] == rows["b"]["status"] == "ok" and rows["a"]["num_glm_tokens"] > 0
    assert rows["c"]["error_kind"] == "unreadable_audio"  # decode error, passed through untouched

    def always_crashes(audios, options=None):
        raise RuntimeError("segfault-ish failure with s3://key:secret@bucket/x?sig=1")

    monkeypatch.setattr(stage.model, "transcribe", always_crashes)
    out = stage(batch)
    rows = {r["id"]: r for r in out.drop(["wav", "out_wav"]).to_pylist()}
    assert out.num_rows == 3 and rows["a"]["error_kind"] == rows["b"]["error_kind"] == "model_error"
    assert "secret" not in rows["a"]["error"] and "sig=1" not in rows["a"]["error"]
    final = encode_batch(out, stage.config.to_dict(), "run", task_params(stage.config))
    assert final.schema == TASKS["transcribe"].schema() and final.num_rows == 3


def test_speaker_cache_encodes_each_reference_once(stage, monkeypatch):
    calls = []
    real = stage.model.speaker
    monkeypatch.setattr(stage.model, "speaker", lambda audio: calls.append(1) or real(audio))
    cache = SpeakerCache()
    rows = [{"status": "ok", "ref_audio": str(AUDIO / "espeak_short.flac")} for _ in range(3)]
    rows.append({"status": "ok", "ref_audio": str(AUDIO / "nope.flac")})
    speakers = cache.resolve(stage.model, rows)
    assert len(calls) == 1 and speakers[0] is speakers[2] and speakers[3] is None
    assert rows[3]["error_kind"] == "unreadable_audio" and rows[3]["error"].startswith("reference audio")
    cache.resolve(stage.model, rows[:1])
    assert len(calls) == 1

    # a reference is decoded whole: over --max-duration-s it is refused (by its header) like any input audio
    strict = SpeakerCache(max_duration_s=0.5)
    row = {"status": "ok", "ref_audio": str(AUDIO / "espeak_weather.flac")}
    assert strict.resolve(stage.model, [row]) == [None] and len(calls) == 1
    assert row["error_kind"] == "too_long_audio" and row["error"].startswith("reference audio")


def test_over_long_audio_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    import gpa.audio

    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.zeros(16000 * 6, np.float32), 16000)  # 6 s, the limit below is 3 s
    decoded_sizes = []
    real = gpa.audio.decode
    monkeypatch.setattr(gpa.audio, "decode", lambda data, name="", **kw: decoded_sizes.append(len(data)) or real(data,
                                                                                                             **kw))
    inputs = [{"id": "long", "audio": str(long_wav)}, {"id": "short", "audio": str(AUDIO / "espeak_short.flac")},
              {"id": "segment", "audio": str(long_wav), "begin_time": 0.5, "end_time": 5.0}]
    out = decode_batch(S.rows_to_table(inputs, S.INPUT), "transcribe", 3.0).drop(["wav", "out_wav"]).to_pylist()
    rows = {r["id"]: r for r in out}
    assert rows["long"]["error_kind"] == "too_long_audio" and "by its header" in rows["long"]["error"]
    assert rows["long"]["duration_s"] == 6.0
    assert rows["segment"]["error_kind"] == "too_long_audio" and "segment is 4.5 s" in rows["segment"]["error"]
    assert rows["short"]["status"] == "ok"
    assert decoded_sizes == [(AUDIO / "espeak_short.flac").stat().st_size]  # only the short file was decoded


def test_rows_go_longest_first_by_duration_else_file_size(tmp_path):
    """Windows are cut from this order, so rows of similar length share a model call: by the manifest's durations
    when it has them, else by the files' sizes (from a listing, or a stat of local files)."""
    from jobs.manifest import load_inputs
    from jobs.pipeline import pipeline_order

    sizes = {"small": 1_000, "large": 90_000, "medium": 30_000}
    for name, size in sizes.items():
        (tmp_path / f"{name}.wav").write_bytes(b"\0" * size)
    rows = [{"id": n, "audio": f"{n}.wav"} for n in sizes] + [{"id": "gone", "audio": "gone.wav"},
                                                               {"id": "hinted", "audio": "small.wav",
                                                                "duration_hint": 60.0}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TASKS["transcribe"]
    table = load_inputs("transcribe", str(tmp_path / "m.jsonl")).table
    ordered = [table.column("id")[int(i)].as_py() for i in pipeline_order(task, table)]
    # 60 s hinted > 90 kB (~2.8 s of 16-bit PCM) > 30 kB > 1 kB > a file that cannot be found (last, no size)
    assert ordered == ["hinted", "large", "medium", "small", "gone"]
    listed = load_inputs("transcribe", str(tmp_path), glob="*.wav").table
    assert [listed.column("id")[int(i)].as_py() for i in pipeline_order(task, listed)] == [
        "large.wav", "medium.wav", "small.wav"]
    # synthesize orders by text length, whatever the reference audio
    texts = pa.Table.from_pylist([{"id": "a", "text": "short"}, {"id": "b", "text": "a much longer text"}], S.INPUT)
    assert list(pipeline_order(TASKS["synthesize"], texts)) == [1, 0]
