"""The stages in-process on the tiny checkpoint (no Ray): a crashing model call still yields a row per input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.config import JobConfig
from jobs.io import schema as S
from jobs.pipeline import task_params
from jobs.stages import GPAStage, decode_batch, encode_batch
from jobs.tasks import TASKS
from jobs.tasks.speakers import SpeakerCache

AUDIO = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "audio"


@pytest.fixture(scope="module")
def stage(tiny_checkpoint):
    config = JobConfig(job="transcribe", input="m.jsonl", output="out", model=str(tiny_checkpoint), batch_size=2,
                       encoder_batch_size=3, options={"max_new_tokens": 8})
    return GPAStage(config)


def test_the_batch_sizes_come_from_the_job(stage):
    """--batch-size is the LLM's batch (the task options'), --encoder-batch-size the speech encoders' (both)."""
    assert stage.options.batch_size == stage.config.batch_size == 2
    assert stage.model.glm.batch_size == stage.model.bicodec.batch_size == 3
    assert stage.config.window_rows == 2 * stage.config.bucket_batches


def decoded(rows: list[dict]):
    inputs = [{"id": r[0], "audio": str(r[1]), "seed": 1} for r in rows]
    return decode_batch(S.rows_to_table(inputs, S.INPUT), "transcribe", 3600.0)


def test_a_crashing_batch_is_retried_row_by_row(stage, monkeypatch):
    batch = decoded([("a", AUDIO / "espeak_short.flac"), ("b", AUDIO / "espeak_weather.flac"),
                     ("c", AUDIO / "missing.flac")])
    real = stage.model.generate_transcription

    def crashes_on_batches(tokens, options, **kwargs):
        if len(tokens) > 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(tokens, options, **kwargs)

    monkeypatch.setattr(stage.model, "generate_transcription", crashes_on_batches)
    rows = {r["id"]: r for r in stage(batch).drop(["wav", "out_wav"]).to_pylist()}
    assert rows["a"]["status"] == rows["b"]["status"] == "ok" and rows["a"]["num_glm_tokens"] > 0
    assert rows["c"]["error_kind"] == "unreadable_audio"  # decode error, passed through untouched

    def always_crashes(tokens, options, **kwargs):
        raise RuntimeError("segfault-ish failure with s3://key:secret@bucket/x?sig=1")

    monkeypatch.setattr(stage.model, "generate_transcription", always_crashes)
    out = stage(batch)
    rows = {r["id"]: r for r in out.drop(["wav", "out_wav"]).to_pylist()}
    assert out.num_rows == 3 and rows["a"]["error_kind"] == rows["b"]["error_kind"] == "model_error"
    assert "secret" not in rows["a"]["error"] and "sig=1" not in rows["a"]["error"]
    final = encode_batch(out, stage.config, "run", task_params(stage.config))
    assert final.schema == TASKS["transcribe"].output_schema and final.num_rows == 3


def test_speaker_cache_encodes_each_reference_once(stage, monkeypatch):
    calls = []
    real = stage.model.speakers
    monkeypatch.setattr(stage.model, "speakers", lambda audios: calls.append(len(audios)) or real(audios))
    cache = SpeakerCache()
    rows = [{"status": "ok", "ref_audio": str(AUDIO / "espeak_short.flac")} for _ in range(3)]
    rows.append({"status": "ok", "ref_audio": str(AUDIO / "nope.flac")})
    speakers = cache.resolve(stage.model, rows)
    assert calls == [1] and speakers[0] is speakers[2] and speakers[3] is None
    assert rows[3]["error_kind"] == "unreadable_audio" and rows[3]["error"].startswith("reference audio")
    cache.resolve(stage.model, rows[:1])
    assert calls == [1]

    # a reference is decoded whole: over --max-duration-s it is refused (by its header) like any input audio
    strict = SpeakerCache(max_duration_s=0.5)
    row = {"status": "ok", "ref_audio": str(AUDIO / "espeak_weather.flac")}
    assert strict.resolve(stage.model, [row]) == [None] and calls == [1]
    assert row["error_kind"] == "too_long_audio" and row["error"].startswith("reference audio")


def test_speaker_cache_encodes_a_calls_new_references_together(stage, monkeypatch):
    """A voice per row (as in many VC manifests): the new references of a call are encoded in batches, not one at a
    time; one the model fails on errs alone."""
    import numpy as np

    names = ["espeak_short", "espeak_weather", "espeak_numbers", "espeak_library", "jfk"]
    refs = [str(AUDIO / f"{n}.flac") for n in names]
    failing = len(stage.model.load(refs[4]))
    calls = []
    real = stage.model.speakers

    def speakers(audios):
        calls.append(len(audios))
        if any(len(samples) == failing for samples, _ in audios):
            raise RuntimeError("speaker encoder failed")
        return real(audios)

    monkeypatch.setattr(stage.model, "speakers", speakers)
    rows = [{"status": "ok", "ref_audio": r} for r in refs + refs[:2]]
    found = SpeakerCache(batch_size=3).resolve(stage.model, rows)
    assert calls == [3, 2, 1, 1]  # two batched calls; the failing batch's references again one by one
    assert all(s is not None for s in found[:4]) and found[4] is None
    assert found[5] is found[0] and found[6] is found[1]
    assert rows[4]["status"] == "error" and rows[4]["error"].startswith("reference audio: ")
    assert "speaker encoder failed" in rows[4]["error"] and all(r["status"] == "ok" for r in rows[:4])
    alone = real([(stage.model.load(refs[1]), 16000)])[0]
    np.testing.assert_array_equal(found[1].global_tokens, alone.global_tokens)


def test_over_long_audio_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    import gpa.audio.load

    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.zeros(16000 * 6, np.float32), 16000)  # 6 s, the limit below is 3 s
    decoded_sizes = []
    real = gpa.audio.load.decode  # load_audio's
    monkeypatch.setattr(gpa.audio.load, "decode",
                        lambda data, name="", **kw: decoded_sizes.append(len(data)) or real(data, **kw))
    inputs = [{"id": "long", "audio": str(long_wav)}, {"id": "short", "audio": str(AUDIO / "espeak_short.flac")},
              {"id": "segment", "audio": str(long_wav), "begin_time": 0.5, "end_time": 5.0}]
    out = decode_batch(S.rows_to_table(inputs, S.INPUT), "transcribe", 3.0).drop(["wav", "out_wav"]).to_pylist()
    rows = {r["id"]: r for r in out}
    assert rows["long"]["error_kind"] == "too_long_audio" and "by its header" in rows["long"]["error"]
    assert rows["long"]["duration_s"] == 6.0
    assert rows["segment"]["error_kind"] == "too_long_audio" and "segment is 4.5 s" in rows["segment"]["error"]
    assert rows["short"]["status"] == "ok"
    assert decoded_sizes == [(AUDIO / "espeak_short.flac").stat().st_size]  # only the short file was decoded


def test_segments_of_a_compressed_recording_are_cut_from_one_forward_decode(tmp_path):
    """GPA's begin_time/end_time over an MP3, in a job's order: each row gets exactly its part of the file as
    decoded to 16 kHz; an open-ended segment over the limit is an error row with its length, and does not stop the
    rows after it."""
    import numpy as np
    import soundfile as sf

    from gpa.audio import decode
    from jobs.stages import split_table

    mp3 = tmp_path / "long.mp3"
    sf.write(mp3, np.random.default_rng(0).standard_normal(22050 * 20).astype(np.float32) * 0.1, 22050, format="MP3")
    whole, _ = decode(mp3.read_bytes(), sample_rate=16000)
    inputs = [{"id": f"s{i}", "audio": str(mp3), "begin_time": 2.0 * i, "end_time": 2.0 * i + 3} for i in range(5)]
    inputs += [{"id": "rest", "audio": str(mp3), "begin_time": 12.0, "end_time": -1},
               {"id": "last", "audio": str(mp3), "begin_time": 15.0, "end_time": 16.0}]
    rows, waves = split_table(decode_batch(S.rows_to_table(inputs, S.INPUT), "transcribe", 5.0))
    for i in range(5):
        assert rows[i]["status"] == "ok" and rows[i]["duration_s"] == 3.0
        assert np.array_equal(waves["wav"][i], whole[32000 * i:32000 * i + 48000])
    assert rows[5]["error_kind"] == "too_long_audio" and rows[5]["duration_s"] == pytest.approx(8.05, abs=0.1)
    assert rows[6]["status"] == "ok" and np.array_equal(waves["wav"][6], whole[15 * 16000:16 * 16000])


def test_rows_go_longest_first_by_duration_else_file_size(tmp_path):
    """Windows are cut from this order, so rows of similar length share a model call: by the manifest's durations
    when it has them, else by the files' sizes (from a listing, or a stat of local files)."""
    from jobs.io.manifest import load_inputs
    from jobs.run.plan import pipeline_order

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
