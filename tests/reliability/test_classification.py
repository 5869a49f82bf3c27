"""The small decisions the fault scenarios rest on, checked directly: which storage errors are transient, what a
rerun redoes, what a message may carry, and that chunking a long recording needs no copy of it."""

from __future__ import annotations

import errno
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from gpa import audio, storage
from jobs.io.output import resume_plan


def client_error(status: int, code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def test_transient_storage_errors():
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ParamValidationError

    transient = [EndpointConnectionError(endpoint_url="http://x"), ConnectionClosedError(endpoint_url="http://x"),
                 ConnectionResetError(), TimeoutError(), OSError(errno.EBUSY, "SlowDown"),
                 client_error(503, "SlowDown"), client_error(500, "InternalError"), client_error(429, "TooMany")]
    permanent = [FileNotFoundError("k"), PermissionError("k"), IsADirectoryError("k"), OSError(errno.ENOSYS, "x"),
                 client_error(404, "NoSuchKey"), client_error(403, "AccessDenied"), ValueError("bad"),
                 ParamValidationError(report="Invalid bucket name")]
    assert all(storage.is_transient(e) for e in transient)
    assert not any(storage.is_transient(e) for e in permanent)
    wrapped = OSError(errno.EIO, "wrapped")
    wrapped.__cause__ = EndpointConnectionError(endpoint_url="http://x")
    assert storage.is_transient(wrapped)


def test_reading_audio_tells_an_outage_from_a_bad_file(tmp_path, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    from gpa.errors import StorageUnavailable, UnreadableAudio

    with pytest.raises(UnreadableAudio) as missing:
        audio.load_audio(str(tmp_path / "nope.wav"))
    assert missing.value.kind == "unreadable_audio" and "file not found" in str(missing.value)

    def down(uri, max_bytes=None):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k")

    monkeypatch.setattr(audio.load, "read_bytes", down)
    with pytest.raises(StorageUnavailable) as outage:
        audio.load_audio("s3://b/k.flac?X-Amz-Signature=SECRET")
    assert outage.value.kind == "storage_unavailable" and "SECRET" not in str(outage.value)


def test_an_http_server_that_cannot_be_reached_is_an_outage_not_a_missing_file():
    """fsspec's HTTP filesystem reports a refused connection as FileNotFoundError (the connection error is its
    cause): such a row must be redone by the next run, not recorded as unreadable for good."""
    import socket

    from gpa.errors import StorageUnavailable, UnreadableAudio

    with socket.socket() as s:  # a port nothing listens on (bound, never listening: connections are refused)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(StorageUnavailable) as outage:
            audio.load_audio(f"http://127.0.0.1:{port}/a.wav")
    assert outage.value.kind == "storage_unavailable"
    explicit = FileNotFoundError("k")
    explicit.__cause__ = ConnectionRefusedError()
    implicit = FileNotFoundError("k")  # raised while handling a connection error, not because of it
    implicit.__context__ = ConnectionRefusedError()
    assert storage.is_transient(explicit) and not storage.is_transient(implicit)
    # a server that answers 503 (overloaded) is an outage too; 404 is a missing file
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's name is http.server's)
            self.send_error(503 if "busy" in self.path else 404)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(StorageUnavailable):
            audio.load_audio(f"{url}/busy.wav")
        with pytest.raises(UnreadableAudio) as missing:
            audio.load_audio(f"{url}/missing.wav")
        assert not isinstance(missing.value, StorageUnavailable)
    finally:
        server.shutdown()
        server.server_close()
    looped = FileNotFoundError("k")
    looped.__cause__ = PermissionError("k")
    looped.__cause__.__cause__ = looped  # a chain that comes back to itself ends, as "not transient"
    assert not storage.is_transient(looped)


def test_rerun_redoes_transient_errors_always_and_other_errors_when_asked():
    index = pa.table({"id": ["ok", "down", "bad", "dup", "dup"],
                      "status": ["ok", "error", "error", "ok", "error"],
                      "error_kind": [None, "storage_unavailable", "unreadable_audio", None, "duplicate_id"]})
    done, redo = resume_plan(index, retry_errors=False)
    assert done == {"ok", "down", "bad", "dup"} and redo == {"down"}
    assert resume_plan(index, retry_errors=True)[1] == {"down", "bad"}


def test_messages_lose_user_info_wherever_it_appears():
    text = storage.scrub('cannot read (ParamValidationError: Invalid bucket name "AKIA:SECRET1@bucket": ...) '
                         "and https://u:SECRET2@host/p?X-Amz-Signature=SECRET3 at 12:30 for user@example.org")
    assert "SECRET" not in text and "12:30" in text and "user@example.org" in text


def test_chunking_a_long_recording_needs_no_copy_of_it():
    from gpa.chunking import _frame_energy, split_audio

    samples = (0.01 * np.random.default_rng(0).standard_normal(16000 * 600)).astype(np.float32)  # 10 min, 38 MB
    n = len(samples) // 320
    reference = (samples[: n * 320].astype(np.float64).reshape(n, 320) ** 2).mean(axis=1)
    assert np.array_equal(_frame_energy(samples, 320), reference)  # identical cut points as before
    tracemalloc.start()
    split_audio(samples, 16000, 30.0, align=320)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a constant (one block of 2**20 samples in float64, and its squares) instead of 4x the recording
    assert peak < 24 * 2**20 < samples.nbytes


def test_an_outage_writing_audio_objects_is_transient(tmp_path, monkeypatch):
    """A finished row whose audio object cannot be written because the store is down is redone by a plain rerun
    (``storage_unavailable``); a store that refuses the object for good makes an ``encode_error`` row."""
    import time

    from botocore.exceptions import EndpointConnectionError

    from jobs import stages
    from jobs.config import JobConfig
    from jobs.pipeline import task_params

    config = JobConfig(job="synthesize", input="m.jsonl", output=str(tmp_path / "out"), model="unused",
                       audio_storage="objects")
    rows = [{"id": i, "text": "hi", "status": "ok", "t_start": time.time()} for i in ("down", "denied", "fine")]
    work = stages.work_table(rows, {"out_wav": [np.zeros(1600, np.float32)] * 3})
    real = stages.storage.write_bytes

    def flaky(uri, data):
        if "down" in uri:
            raise OSError("upload failed") from EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        if "denied" in uri:
            raise PermissionError("Access Denied")
        return real(uri, data)

    monkeypatch.setattr(stages.storage, "write_bytes", flaky)
    out = {r["id"]: r for r in stages.encode_batch(work, config, "run", task_params(config)).to_pylist()}
    assert out["down"]["error_kind"] == "storage_unavailable" and "try again later" in out["down"]["error"]
    assert out["denied"]["error_kind"] == "encode_error" and "PermissionError" in out["denied"]["error"]
    assert out["fine"]["status"] == "ok" and out["fine"]["audio"]["path"].endswith(".flac")
    assert all(out[i]["audio"] is None for i in ("down", "denied"))
