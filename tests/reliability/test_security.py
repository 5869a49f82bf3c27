"""Security: ids never become paths outside the output (local and S3); weights load only from safetensors (a
pickle that would run code is refused and never opened); a checkpoint's custom code never runs unless asked;
credentials never reach logs, MLflow, error messages or Parquet."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from jobs_helpers import committed, write_jsonl

from gpa.errors import CheckpointError
from jobs.pipeline import JobError, run_job
from jobs.run.summary import format_summary, summary_dict

from . import report
from .faults import grep_tree
from .helpers import AUDIO, CANARY, small_config

HOSTILE_IDS = ["../../escape", "/etc/passwd", "..", ".", "a/../../../b", "..\\..\\windows\\x", "nul\x00id",
               "x" * 10_000, "s3://other-bucket/key", "%2e%2e%2fescape", "\u2215etc\u2215passwd",
               "~/.ssh/authorized_keys", "$(touch /tmp/gpa-pwned)", ".hidden", "line\nbreak"]


# --- hostile checkpoints -----------------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this writes a canary file: a stand-in for any code a pickle can run."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return Path.write_text, (self.canary, "a pickle ran code")


def evil_pickle(path: Path, canary: Path) -> Path:
    import torch

    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(canary)}, path)
    return path


REMOTE_CODE = '''"""Custom code shipped with a checkpoint: importing it writes a canary file."""
from pathlib import Path
Path({canary!r}).write_text("remote code ran")
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
class EvilConfig(PretrainedConfig):
    model_type = "evil"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''


def hostile_checkpoint(source: Path, directory: Path, canary: Path) -> Path:
    """A copy of a valid checkpoint that also ships custom code (``auto_map`` -> ``evil.py``) and a pickle
    ``.bin`` beside each safetensors file: loading it must use neither."""
    shutil.copytree(source, directory)
    (directory / "evil.py").write_text(REMOTE_CODE.format(canary=str(canary)))
    for name, auto_map in (("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}),
                           ("tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]})):
        config = json.loads((directory / name).read_text())
        config["auto_map"] = auto_map
        (directory / name).write_text(json.dumps(config, indent=1))
    for weights in directory.rglob("*.safetensors"):
        evil_pickle(weights.with_name("pytorch_model.bin"), canary)
    return directory


def test_pickle_weights_are_refused_and_never_opened(tiny_checkpoint, tmp_path):
    from gpa.cli import main as gpa_main
    from gpa.model import GPA

    canary = tmp_path / "canary"
    cases = {}
    llm = shutil.copytree(tiny_checkpoint, tmp_path / "llm-bin")
    (llm / "model.safetensors").unlink()
    evil_pickle(llm / "pytorch_model.bin", canary)
    cases["llm-bin"] = llm
    wav2vec2 = shutil.copytree(tiny_checkpoint, tmp_path / "wav2vec2-bin")
    w2v = wav2vec2 / "BiCodec" / "wav2vec2-large-xlsr-53"
    (w2v / "model.safetensors").unlink()
    evil_pickle(w2v / "pytorch_model.bin", canary)
    cases["wav2vec2-bin"] = wav2vec2
    disguised = shutil.copytree(tiny_checkpoint, tmp_path / "disguised")
    evil_pickle(disguised / "BiCodec" / "model.safetensors", canary)  # a pickle named .safetensors
    cases["disguised"] = disguised
    for name, directory in cases.items():
        with pytest.raises(CheckpointError) as error:
            GPA.from_pretrained(directory)
        message = str(error.value)
        if name == "disguised":
            assert "model.safetensors" in message
        else:
            assert "pickle" in message and "convert" in message, message
        assert not canary.exists(), f"{name}: the pickle ran"
    # the explicit conversion uses torch's weights-only unpickler: it refuses the payload instead of running it
    assert gpa_main(["convert-weights", str(llm / "pytorch_model.bin")]) == 1
    assert not canary.exists() and not (llm / "model.safetensors").exists()


def test_pickle_checkpoint_stops_the_job_with_a_clear_message(ray_runtime, tiny_checkpoint, mlflow_uri, tmp_path):
    canary = tmp_path / "canary"
    model = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (model / "model.safetensors").unlink()
    evil_pickle(model / "pytorch_model.bin", canary)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "audio": str(AUDIO / "espeak_short.flac")}])
    with pytest.raises(JobError, match="refusing to load pytorch_model.bin"):
        run_job(small_config("transcribe", manifest, tmp_path / "out", model, mlflow_uri))
    assert not canary.exists() and committed(tmp_path / "out") == []


def test_custom_code_runs_only_when_asked(tiny_checkpoint, tmp_path, monkeypatch):
    from gpa.llm import load_llm
    from gpa.model import GPA

    canary = tmp_path / "canary"
    model_dir = hostile_checkpoint(tiny_checkpoint, tmp_path / "ckpt", canary)
    model = GPA.from_pretrained(model_dir)  # trust_remote_code defaults to off: the shipped classes are used
    assert type(model.llm).__module__.startswith("transformers.models.qwen3")
    assert not canary.exists()
    # control: asked for explicitly, transformers imports evil.py, so the canary would have caught it
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.syspath_prepend(str(tmp_path / "hf-modules"))
    with pytest.raises(Exception):  # noqa: B017 - evil.py's classes are not a working model; only the import matters
        load_llm(model_dir, trust_remote_code=True)
    assert canary.read_text() == "remote code ran"


# --- hostile ids ------------------------------------------------------------------------------------------------


def hostile_ids_manifest(path: Path) -> Path:
    return write_jsonl(path, [{"id": i, "text": "Hello there.", "ref_audio": str(AUDIO / "espeak_short.flac"),
                               "seed": 11} for i in HOSTILE_IDS])


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_hostile_ids_never_leave_a_local_output(ray_runtime, tiny_checkpoint, mlflow_uri, tmp_path):
    canary = tmp_path / "canary"
    model = hostile_checkpoint(tiny_checkpoint, tmp_path / "ckpt", canary)  # and a checkpoint that shouts "run me"
    manifest = hostile_ids_manifest(tmp_path / "m.jsonl")
    before = files_under(tmp_path)
    out = tmp_path / "out"
    run_job(small_config("synthesize", manifest, out, model, mlflow_uri, audio_storage="objects",
                         samples=len(HOSTILE_IDS), options={"max_new_tokens": 16}))
    rows = committed(out)
    assert sorted(r["id"] for r in rows) == sorted(HOSTILE_IDS) and all(r["status"] == "ok" for r in rows)
    audio_root = (out / "audio").resolve()
    paths = [Path(r["audio"]["path"]).resolve() for r in rows]
    assert all(p.is_relative_to(audio_root) and p.is_file() for p in paths) and len(set(paths)) == len(rows)
    mlflow_root = Path(mlflow_uri.removeprefix("sqlite:///")).parent
    new = files_under(tmp_path) - before
    strays = [p for p in new if not (p.is_relative_to(out) or p.is_relative_to(mlflow_root))]
    assert not strays, strays
    assert [p for p in new if p.name == "samples.json" and p.is_relative_to(mlflow_root / "artifacts")]
    assert not Path("/etc/passwd.flac").exists() and not Path("/tmp/gpa-pwned").exists()
    assert not canary.exists()  # neither the checkpoint's custom code nor its pickles ran in the actors
    report.check({"security.hostile_ids_local": report.Figures.of(len(HOSTILE_IDS), rows)})


def all_objects(s3) -> dict[str, list[str]]:
    client = s3.client()
    return {b["Name"]: s3.keys(b["Name"]) for b in client.list_buckets()["Buckets"]}


def test_hostile_ids_never_leave_an_s3_output(ray_runtime, s3, tiny_checkpoint, mlflow_uri, tmp_path):
    bucket = s3.bucket("hostile-ids")
    s3.bucket("other-bucket")
    manifest = hostile_ids_manifest(tmp_path / "m.jsonl")
    before = all_objects(s3)
    out = f"s3://{bucket}/tenant-a/out"
    run_job(small_config("synthesize", manifest, out, tiny_checkpoint, mlflow_uri, audio_storage="objects",
                         options={"max_new_tokens": 16}))
    rows = committed(out)
    assert sorted(r["id"] for r in rows) == sorted(HOSTILE_IDS) and all(r["status"] == "ok" for r in rows)
    after = all_objects(s3)
    assert set(after) == set(before)  # no bucket was created
    for name, keys in after.items():
        new = sorted(set(keys) - set(before[name]))
        if name != bucket:
            assert not new, (name, new)
        else:
            assert new and all(k.startswith("tenant-a/out/") for k in new), [k for k in new if "tenant-a/out/" not in k]
    audio = [r["audio"]["path"] for r in rows]
    assert all(a.startswith(f"{out}/audio/") and a.split(f"{out}/audio/", 1)[1].count("/") == 1 for a in audio)
    assert len(set(audio)) == len(rows)
    report.check({"security.hostile_ids_s3": report.Figures.of(len(HOSTILE_IDS), rows)})


# --- credentials ------------------------------------------------------------------------------------------------


def strings(value) -> list[str]:
    """Every string inside a (nested) Parquet value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings(v)]
    return []


def leaks(root: Path, needle: str) -> list[str]:
    """Where ``needle`` appears under ``root``: raw file bytes, and every value of every Parquet file (whose pages
    are compressed, so a raw grep proves nothing)."""
    hits = grep_tree(root, needle.encode())
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path)
        for column in table.column_names:
            if any(needle in s for s in strings(table.column(column).to_pylist())):
                hits.append(f"{path}:{column}")
    return hits


def find_canary(places: dict[str, str], roots: list[Path], mlflow_uri: str, run_id: str | None) -> list[str]:
    from mlflow.tracking import MlflowClient

    found = [name for name, text in places.items() if CANARY in text]
    for root in roots:
        found += leaks(root, CANARY)
    if run_id:
        run = MlflowClient(tracking_uri=mlflow_uri).get_run(run_id)
        found += [f"mlflow {k}" for k, v in {**run.data.params, **run.data.tags}.items() if CANARY in f"{k}={v}"]
    return found


def credential_rows(s3, bucket: str) -> tuple[str, str]:
    s3.client().upload_file(str(AUDIO / "espeak_short.flac"), bucket, "in/a.flac")
    presigned = (f"{s3.endpoint.url}/{bucket}/in/a.flac?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                 f"&X-Amz-Credential=AKIA%2F{CANARY}cred&X-Amz-Security-Token={CANARY}token"
                 f"&X-Amz-Signature={CANARY}sig")
    return f"s3://{bucket}/in/a.flac", presigned


def test_credentials_never_reach_logs_mlflow_errors_or_parquet(ray_runtime, s3, tiny_checkpoint, mlflow_uri,
                                                                tmp_path, caplog, capsys):
    """The AWS environment of every job in this package carries canary credentials; here a presigned URL's query
    also does. None may appear anywhere the job writes or logs: the output (Parquet values, commit and metrics
    files), the MLflow store (params, tags, metrics, artifacts), the driver's log and the log of every Ray worker
    of this package's jobs so far."""
    import logging

    assert CANARY in os.environ["AWS_SECRET_ACCESS_KEY"] and CANARY in os.environ["AWS_SESSION_TOKEN"]
    caplog.set_level(logging.DEBUG)
    plain, presigned = credential_rows(s3, s3.bucket("credentials"))
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "env-credentials", "audio": plain},
        {"id": "presigned", "audio": presigned},
        {"id": "presigned-missing", "audio": presigned.replace("/in/a.flac", "/in/missing.flac")},
    ])
    out = tmp_path / "out"
    result = run_job(small_config("transcribe", manifest, out, tiny_checkpoint, mlflow_uri, samples=10))
    rows = {r["id"]: r for r in committed(out)}
    assert rows["env-credentials"]["status"] == "ok" and rows["presigned"]["status"] == "ok"
    assert rows["presigned-missing"]["error_kind"] == "unreadable_audio"
    assert rows["presigned"]["audio_uri"] == presigned.split("?")[0]  # the URI without its query
    places = {"driver log": caplog.text, "stdout/stderr": "".join(capsys.readouterr()),
              "summary": format_summary(result) + json.dumps(summary_dict(result), default=str),
              "tracking": str(result.tracking)}
    mlflow_root = Path(mlflow_uri.removeprefix("sqlite:///")).parent
    found = find_canary(places, [out, mlflow_root, ray_runtime.temp_dir], mlflow_uri, result.tracking.run_id)
    assert not found, found
    report.check({"security.credentials": report.Figures.of(3, list(rows.values()))})


def test_credentials_in_uris_never_leak(ray_runtime, s3, tiny_checkpoint, mlflow_uri, tmp_path, caplog, capsys):
    """URIs with user info are refused without being echoed; ids derived from a presigned URL drop its query."""
    import logging

    caplog.set_level(logging.DEBUG)
    bucket = s3.bucket("credentials-in-uris")
    plain, presigned = credential_rows(s3, bucket)
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "user-info", "audio": f"s3://AKIAGPA:{CANARY}pw@{bucket}/in/a.flac"},
        {"audio": presigned},  # no id: derived from the audio URI
        {"audio": f"s3://AKIAGPA:{CANARY}pw2@{bucket}/in/b.flac"},
    ])
    out = tmp_path / "out"
    result = run_job(small_config("transcribe", manifest, out, tiny_checkpoint, mlflow_uri, samples=10))
    rows = {r["id"]: r for r in committed(out)}
    assert rows["user-info"]["error_kind"] == "invalid_row" and "credentials" in rows["user-info"]["error"]
    assert rows[presigned.split("?")[0]]["status"] == "ok"
    assert rows[f"s3://{bucket}/in/b.flac"]["error_kind"] == "invalid_row"
    places = {"driver log": caplog.text, "stdout/stderr": "".join(capsys.readouterr()),
              "summary": format_summary(result) + json.dumps(summary_dict(result), default=str)}
    mlflow_root = Path(mlflow_uri.removeprefix("sqlite:///")).parent
    found = find_canary(places, [out, mlflow_root, ray_runtime.temp_dir], mlflow_uri, result.tracking.run_id)
    assert not found, found
    # and on the command line: --input, --output, --model with user info stop the job before anything runs
    for flag in ("input", "output", "model"):
        config = small_config("transcribe", manifest, tmp_path / "out2", tiny_checkpoint, mlflow_uri)
        setattr(config, flag, f"s3://AKIAGPA:{CANARY}pw@{bucket}/x")
        with pytest.raises(JobError, match="carries credentials") as error:
            run_job(config)
        assert CANARY not in str(error.value)
    assert not (tmp_path / "out2").exists()
    report.check({"security.credentials_in_uris": report.Figures.of(3, list(rows.values()))})
