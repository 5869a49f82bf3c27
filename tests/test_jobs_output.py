"""The output protocol without Ray: staging, commit, recovery of killed runs, supersede on retry, hostile ids."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.io import schema as S
from jobs.io import storage
from jobs.io.output import LEASE_S, OutputBusy, OutputStore, resume_plan

ROOT = Path(__file__).resolve().parents[1]


def part(rows: list[tuple[str, str, str | None]]):
    return S.rows_to_table([{"id": i, "status": s, "error_kind": k} for i, s, k in rows], S.output_schema("transcribe"))


def ids(store: OutputStore) -> list[str]:
    table = store.read(["id"])
    return sorted(table.column("id").to_pylist()) if table is not None else []


def test_commit_makes_parts_visible_and_marks_complete(tmp_path):
    store = OutputStore(str(tmp_path))
    store.start()
    record = store.stage("r1", "part-r1-00000.parquet", part([("a", "ok", None), ("b", "error", "empty_audio")]))
    assert store.files() == [] and not os.path.exists(tmp_path / "_SUCCESS")  # staged is not committed
    assert not list((tmp_path / "data").glob("*")) if (tmp_path / "data").exists() else True
    commit = store.commit([record], run={"run_id": "r1", "job": "transcribe"}, complete=True)
    store.finish_run("r1")
    assert commit.rows == 2 and ids(store) == ["a", "b"]
    assert (tmp_path / "_SUCCESS").exists()
    assert [os.path.basename(f) for f in store.files()] == ["part-r1-00000.parquet"]
    assert pq.read_table(store.files()[0]).schema.metadata[b"huggingface"]
    done, redo = resume_plan(store.index(), retry_errors=False)
    assert done == {"a", "b"} and redo == set()
    assert resume_plan(store.index(), retry_errors=True)[1] == {"b"}


def test_killed_run_leaves_previous_commit_and_its_parts_are_adopted(tmp_path):
    store = OutputStore(str(tmp_path))
    store.start()
    store.commit([store.stage("r1", "part-r1-00000.parquet", part([("a", "ok", None)]))],
                 run={"run_id": "r1"}, complete=True)
    store.finish_run("r1")
    # run 2 starts, writes one finished part and one torn part (no record), then dies
    store.start()
    assert not (tmp_path / "_SUCCESS").exists()  # a run in progress: the output is not complete
    store.stage("r2", "part-r2-00000.parquet", part([("b", "ok", None), ("c", "ok", None)]))
    storage.write_bytes(storage.join(store.run_dir("r2"), "part-r2-00001.parquet"), b"PAR1 torn")
    assert ids(store) == ["a"]  # readers of the commit see the last commit only
    # run 3: takes ownership (late writers of run 2 are fenced off), adopts the finished part, drops the torn one
    commit = store.start("r3")
    assert store.is_current("r3") and not store.is_current("r2")
    assert ids(store) == ["a", "b", "c"] and not commit.complete
    assert not (tmp_path / ".staging").exists()


def test_interrupted_commit_is_recovered_exactly(tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path))
    store.start()
    store.commit([store.stage("r1", "part-r1-00000.parquet", part([("a", "error", "unreadable_audio")]))],
                 run={"run_id": "r1"}, complete=True)
    store.finish_run("r1")
    store.start()
    record = store.stage("r2", "part-r2-00000.parquet", part([("a", "ok", None), ("b", "ok", None)]))
    real_write = storage.write_bytes

    def dies_at_commit_point(uri, data):
        if uri.endswith("commit.json"):
            raise KeyboardInterrupt("killed")
        real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", dies_at_commit_point)
    with pytest.raises(KeyboardInterrupt):
        store.commit([record], run={"run_id": "r2"}, complete=True)
    monkeypatch.setattr(storage, "write_bytes", real_write)
    # run 2's part was moved into data/, but the commit file still says: only run 1
    assert ids(store) == ["a"] and len(os.listdir(tmp_path / "data")) == 2
    store.start()
    table = store.read(["id", "status"])
    assert sorted(zip(table.column("id").to_pylist(), table.column("status").to_pylist(), strict=True)) == [
        ("a", "ok"), ("b", "ok")]  # run 2's rows supersede run 1's row for "a"; nothing doubled
    assert sorted(os.listdir(tmp_path / "data")) == sorted(os.path.basename(f) for f in store.files())


def test_retry_supersedes_error_rows_but_keeps_duplicates_of_one_run(tmp_path):
    store = OutputStore(str(tmp_path))
    store.start()
    first = part([("a", "ok", None), ("b", "error", "unreadable_audio"), ("b", "error", "duplicate_id")])
    store.commit([store.stage("r1", "part-r1-00000.parquet", first)], run={"run_id": "r1"}, complete=True)
    done, redo = resume_plan(store.index(), retry_errors=True)
    assert redo == {"b"}
    retried = part([("b", "ok", None), ("b", "error", "duplicate_id")])
    store.commit([store.stage("r2", "part-r2-00000.parquet", retried)], run={"run_id": "r2"}, complete=True)
    table = store.read(["id", "status", "error_kind"])
    assert sorted(map(tuple, (r.values() for r in table.to_pylist())), key=str) == sorted(
        [("a", "ok", None), ("b", "ok", None), ("b", "error", "duplicate_id")], key=str)
    assert resume_plan(store.index(), retry_errors=True)[1] == set()


@pytest.mark.parametrize("row_id", ["../../etc/passwd", "/abs/path", "a/b\\c", "nul\x00byte", "x" * 10_000,
                                    "..", ".", "", "名前 with spaces", "a\nb"])
def test_paths_from_hostile_ids_stay_inside(tmp_path, row_id):
    name = storage.safe_name(row_id, ".flac")
    assert "/" not in name and "\\" not in name and "\x00" not in name and len(name) < 100
    assert not name.startswith(".")
    target = storage.join(str(tmp_path), "audio", name[:2], name)
    assert os.path.realpath(target).startswith(str(tmp_path.resolve()) + os.sep)
    storage.write_bytes(target, b"flac")
    assert os.path.exists(target)
    assert storage.safe_name(row_id + "!") != name  # distinct ids, distinct names


def test_uri_helpers():
    assert storage.redact_uri("s3://KEY:SECRET@bucket/x.parquet?X-Amz-Signature=abc") == "s3://bucket/x.parquet"
    message = storage.scrub("cannot read https://user:pw@host/a.wav?sig=1 (aws_secret_access_key=abc123)")
    assert "pw" not in message and "sig=1" not in message and "abc123" not in message
    assert storage.resolve_relative("../a/b.wav", "s3://bucket/sets/x") == "s3://bucket/sets/a/b.wav"
    assert storage.resolve_relative("s3://other/c.wav", "/local") == "s3://other/c.wav"
    assert storage.resolve_relative("c.wav", "/local/dir") == "/local/dir/c.wav"


def test_commit_on_s3(s3_bucket):
    uri = f"s3://{s3_bucket}/out"
    store = OutputStore(uri)
    store.start()
    record = store.stage("r1", "part-r1-00000.parquet", part([("a", "ok", None)]))
    store.commit([record], run={"run_id": "r1"}, complete=True)
    store.finish_run("r1")
    assert ids(OutputStore(uri)) == ["a"] and storage.exists(f"{uri}/_SUCCESS")
    assert storage.listdir(f"{uri}/.staging", recursive=True) == []


def test_resume_reads_only_the_columns_it_needs_from_object_storage(s3_bucket, monkeypatch):
    """A TTS corpus part holds megabytes of inline audio; what resume decides on is a few bytes per row."""
    import numpy as np
    import pyarrow as pa
    import s3fs

    from jobs.io.output import parquet_bytes, read_parquet

    rng = np.random.default_rng(0)
    table = pa.table({"id": [f"r{i}" for i in range(40)], "status": ["ok"] * 40, "error_kind": [None] * 40,
                      "audio": [rng.bytes(100_000) for _ in range(40)]})  # 4 MB that does not compress
    uri = f"s3://{s3_bucket}/out/data/part-r1-00000.parquet"
    storage.write_bytes(uri, parquet_bytes(table))
    fetched = []
    real = s3fs.core.S3File._fetch_range
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range",
                        lambda self, start, end: fetched.append(end - start) or real(self, start, end))
    index = read_parquet(uri, ["id", "status", "error_kind"])
    assert index.column_names == ["id", "status", "error_kind"] and index.num_rows == 40
    assert 0 < sum(fetched) < 2**20  # not the part's 4 MB
    assert read_parquet(uri).equals(table)  # and the whole part when asked for it


def write_lease(store: OutputStore, run_id: str, host: str, pid: int, age_s: float = 0.0) -> None:
    lease = {"run_id": run_id, "host": host, "pid": pid, "heartbeat": time.time() - age_s}
    storage.write_bytes(store.current_uri, json.dumps(lease).encode())


def test_a_live_run_keeps_the_output_and_a_dead_one_does_not(tmp_path):
    store = OutputStore(str(tmp_path))
    store.start("r1")
    assert (store.lease().run_id, store.lease().pid, store.lease().host) == ("r1", os.getpid(), socket.gethostname())
    with store.holding("r1"), pytest.raises(OutputBusy, match=r"run r1 .*--takeover"):  # r1 is still going
        store.start("r2")
    write_lease(store, "r1", socket.gethostname(), os.getpid())  # r1 of this process has ended (it raised, say)
    store.start("r2")
    assert store.is_current("r2")
    # a driver killed on this machine: its process is gone, so the output is free at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lease(store, "r2", socket.gethostname(), dead.pid)
    store.start("r3")
    assert store.is_current("r3")
    # a driver on another machine: alive while its heartbeat is fresh, dead once its lease has expired
    write_lease(store, "r3", "elsewhere", 1)
    with pytest.raises(OutputBusy, match="on elsewhere"):
        store.start("r4")
    store.start("r4", takeover=True)
    assert store.is_current("r4")
    write_lease(store, "r4", "elsewhere", 1, age_s=LEASE_S + 1)
    store.start("r5")
    assert store.is_current("r5")
    storage.write_bytes(store.current_uri, b"r5")  # an unreadable (or old, plain-text) lease counts as expired
    store.start("r6")
    assert store.is_current("r6")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_conditional_writes(where, tmp_path, request):
    """write_if: created only while absent, replaced only over the version read; a lost race is a Conflict. The
    same for remove_if."""
    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    uri = storage.join(base, "out", "_gpa_batch", "current-run")
    first = storage.write_if(uri, b"a", None)
    with pytest.raises(storage.Conflict):
        storage.write_if(uri, b"b", None)  # someone created it meanwhile
    data, version = storage.read_versioned(uri)
    assert data == b"a" and version == first
    second = storage.write_if(uri, b"c", version)
    with pytest.raises(storage.Conflict):
        storage.write_if(uri, b"d", version)  # changed since it was read
    assert storage.read_versioned(uri) == (b"c", second)
    # remove_if: deleted only while still at the version read
    with pytest.raises(storage.Conflict):
        storage.remove_if(uri, version)  # changed since (a run that took the output over owns it now)
    assert storage.read_versioned(uri) == (b"c", second)
    storage.remove_if(uri, second)
    assert not storage.exists(uri)
    storage.remove_if(uri, second)  # already gone: nothing to do


@pytest.mark.parametrize("where", ["local", "s3"])
def test_runs_that_start_together_do_not_both_own_the_output(where, tmp_path, request):
    """Runs started at the same moment on one output (a schedule firing beside a manual rerun): exactly one takes
    the lease, the others are refused. Without a conditional write, all of them could read "no lease", then write
    theirs and go on, each deleting the others' staged parts."""
    output = str(tmp_path / "out") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/out"
    at = time.time() + 6  # the processes wait for the same moment (their imports take a second or two)
    code = ("import sys, time; sys.path.insert(0, sys.argv[3]); from jobs.io.output import OutputBusy, OutputStore\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    OutputStore(sys.argv[1]).start(sys.argv[4]); print('won', flush=True)\n"
            "except OutputBusy:\n    print('refused', flush=True)\n"
            "time.sleep(4)\n")  # alive while the others decide (a lease of a gone process is free)
    runs = [subprocess.Popen([sys.executable, "-c", code, output, str(at), str(ROOT), f"r{i}"], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    results = [run.communicate(timeout=120) for run in runs]
    outcomes = sorted(out.strip() for out, _ in results)
    assert outcomes == ["refused", "refused", "refused", "won"], [err[-2000:] for _, err in results]
    winner = next(f"r{i}" for i, (out, _) in enumerate(results) if out.strip() == "won")
    assert OutputStore(output).lease().run_id == winner


def test_a_start_that_fails_after_taking_the_lease_gives_it_up(tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path / "out"))
    monkeypatch.setattr(OutputStore, "_mark", lambda self: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        store.start("run-a")
    assert store.lease() is None  # a rerun need not wait LEASE_S for it to expire
    monkeypatch.undo()
    OutputStore(str(tmp_path / "out")).start("run-b")  # and can start at once
    assert store.lease().run_id == "run-b"


def test_the_lease_is_renewed_while_held_and_given_up_after(tmp_path):
    store = OutputStore(str(tmp_path))
    store.start("r1")
    first = store.lease().heartbeat
    with store.holding("r1", every_s=0.05):
        deadline = time.time() + 10
        while store.lease().heartbeat == first:
            assert time.time() < deadline, "the lease was not renewed"
            time.sleep(0.02)
    assert store.lease() is None  # given up: the next run starts without waiting
    store.start("r2")
    with pytest.raises(RuntimeError, match="boom"), store.holding("r2", every_s=0.05):
        raise RuntimeError("boom")
    assert store.lease() is None  # also when the run fails
    # taken over while held: the old run neither renews nor removes the new owner's lease
    store.start("r3")
    with store.holding("r3", every_s=0.05):
        store.start("r4", takeover=True)
        time.sleep(0.3)
        assert store.is_current("r4")
    assert store.is_current("r4")
    # a renewal that landed without its reply leaves this run a stale version: the lease is still its own to remove
    store.start("r5", takeover=True)
    with store.holding("r5", every_s=60):
        store._lease_versions["r5"] = "a version lost with a reply"
    assert store.lease() is None


def test_a_duplicated_id_keeps_one_row_per_input_row_across_interrupted_runs(tmp_path):
    """A run stopped after staging its validation errors commits (by adoption) a duplicate's ``duplicate_id`` row
    without its first row's result: the id must not count as done. Nor may a manifest that gains a duplicate."""
    from jobs.config import JobConfig
    from jobs.io.manifest import load_inputs
    from jobs.pipeline import _error_rows, task_params
    from jobs.run.plan import plan_run

    manifest = tmp_path / "in.jsonl"
    config = JobConfig(job="transcribe", input=str(manifest), output=str(tmp_path / "out"), model="unused")
    params = task_params(config)
    store = OutputStore(config.output)

    def plan(run_id: str, row_ids: list[str], limit: int | None = None):
        manifest.write_text("".join(json.dumps({"id": i, "audio": "a.flac"}) + "\n" for i in row_ids))
        store.start(run_id, takeover=True)  # (the earlier "killed" run is this live process)
        cfg = JobConfig.from_dict(config.to_dict() | {"limit": limit})
        return plan_run(cfg, load_inputs("transcribe", str(manifest)), store)

    def run(run_id: str, row_ids: list[str], limit: int | None = None, killed: bool = False):
        p = plan(run_id, row_ids, limit)
        records = [store.stage(run_id, f"part-{run_id}-invalid.parquet", _error_rows(config, p.invalid, run_id,
                                                                                        params))] if p.invalid else []
        if killed:
            return p
        todo = [(i, "ok", None) for i in p.todo.column("id").to_pylist()]
        if todo:
            records.append(store.stage(run_id, f"part-{run_id}-00000.parquet", part(todo)))
        store.commit(records, run={"run_id": run_id, "job": "transcribe"}, complete=p.complete, supersede=p.supersede)
        store.finish_run(run_id)
        return p

    def committed() -> list[tuple[str, str | None]]:
        index = store.index()
        return sorted(zip(index.column("id").to_pylist(), index.column("error_kind").to_pylist(), strict=True),
                      key=lambda r: (r[0], r[1] or ""))

    run("r1", ["a", "x", "x"], killed=True)  # stopped after staging "x: duplicate_id"
    p = run("r2", ["a", "x", "x"])
    assert sorted(p.todo.column("id").to_pylist()) == ["a", "x"] and [e["id"] for e in p.invalid] == ["x"]
    assert committed() == [("a", None), ("x", None), ("x", "duplicate_id")] and p.complete

    p = run("r3", ["a", "x", "x"])  # nothing left to do
    assert p.todo.num_rows == 0 and p.invalid == [] and committed() == [("a", None), ("x", None),
                                                                        ("x", "duplicate_id")]
    p = run("r4", ["a", "x", "x", "x"])  # the manifest gained a duplicate: x's rows are redone together
    assert p.todo.column("id").to_pylist() == ["x"] and len(p.invalid) == 2
    assert committed() == [("a", None), ("x", None), ("x", "duplicate_id"), ("x", "duplicate_id")]

    # --limit keeps an id's rows together: the duplicate waits for the run that does the first row
    p = run("r5", ["a", "x", "x", "x", "b", "y", "y"], limit=0)
    assert p.todo.num_rows == 0 and p.invalid == [] and p.cut == 2 + 1 and not p.complete
    p = run("r6", ["a", "x", "x", "x", "b", "y", "y"])
    assert sorted(p.todo.column("id").to_pylist()) == ["b", "y"] and [e["id"] for e in p.invalid] == ["y"]
    assert len(committed()) == 7


def test_a_location_with_files_gpa_batch_did_not_write_is_refused_untouched(tmp_path):
    from jobs.config import JobConfig
    from jobs.io.output import ForeignOutput
    from jobs.pipeline import JobError, run_job

    corpus = tmp_path / "corpus"  # a Hugging Face dataset folder given as --output by mistake
    (corpus / "data").mkdir(parents=True)
    (corpus / "data" / "train-00000.parquet").write_bytes(b"PAR1")
    (corpus / "_SUCCESS").write_text("")
    before = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    with pytest.raises(ForeignOutput, match=r"not a gpa-batch output.*train-00000\.parquet"):
        OutputStore(str(corpus)).start("r1")
    manifest = tmp_path / "in.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.flac"}) + "\n")
    with pytest.raises(JobError, match="choose an empty or new --output"):
        run_job(JobConfig(job="transcribe", input=str(manifest), output=str(corpus), model="unused"))
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == before

    # a new location, or one with other files only, becomes an output; later runs know it as one
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "notes.txt").write_text("mine")
    store = OutputStore(str(fresh))
    store.start("r1")
    store.commit([store.stage("r1", "part-r1-00000.parquet", part([("a", "ok", None)]))],
                 run={"run_id": "r1", "job": "transcribe"}, complete=True)
    store.finish_run("r1")
    first_id = store.output_id
    store.start("r2")
    assert ids(store) == ["a"] and (fresh / "notes.txt").read_text() == "mine"
    assert store.output_id == first_id and len(first_id) == 32  # the same output, run after run
    (fresh / "_gpa_batch" / "output.json").write_text(json.dumps({"format": "gpa-batch-output/1"}))  # before ids
    store.start("r3")
    assert ids(store) == ["a"] and store.output_id not in (None, first_id)
    assert json.loads((fresh / "_gpa_batch" / "output.json").read_text())["id"] == store.output_id
    (fresh / "_gpa_batch" / "output.json").unlink()  # an output written before the marker existed
    store.start("r4")
    assert ids(store) == ["a"]
    again = tmp_path / "again"  # another output at a URI that held one (deleted): a new id
    deleted = OutputStore(str(again))
    deleted.start("r1")
    storage.remove(str(again))
    remade = OutputStore(str(again))
    remade.start("r2")
    assert remade.output_id not in (None, deleted.output_id)

    # an older version's first run, killed after moving its parts but before its commit file: its lease remains
    old = tmp_path / "old"
    (old / "data").mkdir(parents=True)
    (old / "data" / "part-r0-00000.parquet").write_bytes(b"PAR1")
    write_lease(OutputStore(str(old)), "r0", "elsewhere", 1, age_s=LEASE_S + 1)
    OutputStore(str(old)).start("r1")  # not refused (its unlisted part is debris of that run, removed)
    staged = tmp_path / "staged"  # a .staging folder that is not ours is never deleted either
    (staged / ".staging").mkdir(parents=True)
    (staged / ".staging" / "keep").write_text("x")
    with pytest.raises(ForeignOutput, match="keep"):
        OutputStore(str(staged)).start("r1")
    assert (staged / ".staging" / "keep").exists()
