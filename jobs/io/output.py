"""The output of a job: Parquet parts, a commit file that says which parts count, and resume.

Layout under the output URI::

    data/part-<run>-<n>.parquet    committed results (what readers read)
    _gpa_batch/commit.json         the commit file: the list of committed parts (the only source of truth)
    _SUCCESS                       present when the committed parts cover every row of the last run's input
    .staging/<run>/                parts of a run in progress, each with a record written after its file
    _gpa_batch/current-run         the lease of the run that owns the output now (its id, host, pid, heartbeat)
    _gpa_batch/output.json         written by the first run: this location is a gpa-batch output (and its id)
    audio/                         FLAC objects (only with --audio-storage objects)

A run writes its parts under ``.staging/`` (ignored by pyarrow and ``datasets``, as is everything starting with
``.`` or ``_``) and commits them at its end: move them into ``data/``, then write ``commit.json`` in one PUT (or an
atomic rename on a local disk). Object stores have no atomic rename of several objects, so the commit file, not
the listing of ``data/``, defines the output; files in ``data/`` that it does not list are leftovers of an
interrupted commit and are removed by the next run. A killed run therefore leaves the previous commit intact and
``_SUCCESS`` absent; its finished parts (those with a record) are adopted by the next run, so no work is lost.

Rows of a later run supersede rows with the same id from earlier runs (that is how ``--retry-errors`` replaces
error rows): parts holding superseded rows are rewritten without them in the same commit.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.io import schema as S
from jobs.io import storage

if TYPE_CHECKING:
    import pyarrow.dataset

FORMAT = "gpa-batch-output/1"
# A running job refreshes its lease every HEARTBEAT_S; a lease older than LEASE_S belongs to a dead run (a driver
# killed on another machine). Killed on this machine, a run is known dead at once (its process is gone).
HEARTBEAT_S = 20.0
LEASE_S = 120.0

log = logging.getLogger(__name__)
_HELD: set[str] = set()  # runs of this process inside OutputStore.holding()


class OutputRefused(RuntimeError):
    """A run may not write to this output."""


class OutputBusy(OutputRefused):
    """Another live run owns the output."""


class ForeignOutput(OutputRefused):
    """The output location holds files that gpa-batch did not write, which a run would delete."""


@dataclass
class Lease:
    run_id: str
    host: str = ""
    pid: int = 0
    heartbeat: float = 0.0  # epoch seconds of the owner's last refresh

    @classmethod
    def mine(cls, run_id: str) -> Lease:
        return cls(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), heartbeat=time.time())

    def alive(self, now: float | None = None) -> bool:
        if self.host == socket.gethostname() and self.pid == os.getpid():
            return self.run_id in _HELD  # an earlier run of this process (e.g. one that raised) is over
        if self.host == socket.gethostname() and self.pid:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # another user's process: it exists
                pass
        return (now or time.time()) - self.heartbeat < LEASE_S


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file, or only its ``columns``: then only the footer and those columns' chunks are fetched (what
    resume reads of a part is a few bytes per row; the part may hold megabytes of inline audio)."""
    if columns is None:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    if not storage.is_uri(uri):
        return _read_columns(pq.ParquetFile(uri), columns)
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb", block_size=2**18) as f:  # ranged reads, without fetching megabytes ahead
        return _read_columns(pq.ParquetFile(f), columns)


def _read_columns(part: pq.ParquetFile, columns: list[str]) -> pa.Table:
    """``columns`` of a part; a column that parts written by earlier versions lack (``input_version``) reads as
    nulls of its type."""
    names = part.schema_arrow.names
    table = part.read(columns=[c for c in columns if c in names])
    for name in columns:
        if name not in names:
            kind = next((f.type for f in S.output_fields() if f.name == name), pa.string())
            table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
    return table.select(columns)


@dataclass
class Commit:
    job: str = ""
    parts: list[dict] = field(default_factory=list)  # {"path": "data/...", "rows": n, "run_id": ...}
    runs: list[dict] = field(default_factory=list)
    complete: bool = False

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.parts)

    def to_json(self) -> bytes:
        body = {"format": FORMAT, "job": self.job, "rows": self.rows, "complete": self.complete,
                "parts": self.parts, "runs": self.runs, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return json.dumps(body, indent=1).encode()


class OutputStore:
    def __init__(self, uri: str):
        self.uri = storage.normalize(uri)
        self.data = storage.join(self.uri, "data")
        self.meta = storage.join(self.uri, "_gpa_batch")
        self.staging = storage.join(self.uri, ".staging")
        self.commit_uri = storage.join(self.meta, "commit.json")
        self.current_uri = storage.join(self.meta, "current-run")
        self.marker_uri = storage.join(self.meta, "output.json")
        self.success_uri = storage.join(self.uri, "_SUCCESS")
        self.output_id: str | None = None  # known once a run has started (start())
        self._lease_versions: dict[str, str] = {}  # run id -> version of the lease that run wrote last

    # --- reading ---------------------------------------------------------------------------------------------

    def load(self) -> Commit:
        try:
            body = json.loads(storage.read_bytes(self.commit_uri))
        except FileNotFoundError:
            return Commit()
        if body.get("format") != FORMAT:
            raise ValueError(f"{storage.redact_uri(self.commit_uri)} is not a gpa-batch commit file")
        return Commit(job=body["job"], parts=body["parts"], runs=body.get("runs", []), complete=body["complete"])

    def files(self, commit: Commit | None = None) -> list[str]:
        """Full URIs of the committed Parquet files (what a reader should read)."""
        commit = commit or self.load()
        return [storage.join(self.uri, p["path"]) for p in commit.parts]

    def dataset(self, commit: Commit | None = None) -> pyarrow.dataset.Dataset:
        """The committed parts as one :mod:`pyarrow.dataset` on the output's filesystem (local, or the object store
        with the endpoint and credentials of the AWS environment, as the jobs use): ``.to_table(columns=...)``,
        ``.to_batches()``, filters. Its schema unites the parts' schemas, so a column that parts written by an
        earlier version lack reads as nulls."""
        import pyarrow.dataset as ds
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        commit = commit or self.load()
        files = self.files(commit)
        filesystem = None
        if storage.is_uri(self.uri):  # pyarrow's own S3 client knows neither s3fs' settings nor AWS_ENDPOINT_URL
            fs, _ = storage.filesystem(self.uri)
            filesystem = PyFileSystem(FSSpecHandler(fs))
            files = [storage.filesystem(f)[1] for f in files]
        if not files:
            return ds.dataset([], schema=S.output_schema(commit.job) if commit.job else pa.schema([]),
                              format="parquet", filesystem=filesystem)
        found = ds.dataset(files, format="parquet", filesystem=filesystem)
        schema = pa.unify_schemas([f.physical_schema for f in found.get_fragments()], promote_options="permissive")
        return ds.dataset(files, schema=schema, format="parquet", filesystem=filesystem)

    def read(self, columns: list[str] | None = None, commit: Commit | None = None) -> pa.Table | None:
        files = self.files(commit)
        if not files:
            return None
        return pa.concat_tables([read_parquet(f, columns) for f in files], promote_options="permissive")

    def index(self) -> pa.Table:
        """``id, status, error_kind, input_version`` of every committed row (what resume decides on)."""
        table = self.read(["id", "status", "error_kind", "input_version"])
        if table is None:
            return pa.table({name: pa.array([], pa.string())
                             for name in ("id", "status", "error_kind", "input_version")})
        return table

    # --- staging ---------------------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> str:
        return storage.join(self.staging, run_id)

    def stage(self, run_id: str, name: str, table: pa.Table) -> dict:
        """Write one part of a running job; its record is written after it, so a record means a whole part."""
        storage.write_bytes(storage.join(self.run_dir(run_id), name), parquet_bytes(table))
        record = {"part": name, "rows": table.num_rows, "run_id": run_id}
        storage.write_bytes(storage.join(self.run_dir(run_id), "records", name + ".json"), json.dumps(record).encode())
        return record

    def staged_records(self) -> list[dict]:
        records = []
        for uri in storage.listdir(self.staging, recursive=True):
            if uri.endswith(".json") and "/records/" in uri.replace("\\", "/"):
                try:
                    records.append(json.loads(storage.read_bytes(uri)))
                except (ValueError, FileNotFoundError):
                    continue  # a torn record cannot happen with atomic writes; skip anything odd
        return records

    # --- committing ------------------------------------------------------------------------------------------

    def lease(self) -> Lease | None:
        """Who owns the output now, if anyone."""
        return self._read_lease()[0]

    def _read_lease(self) -> tuple[Lease | None, str | None]:
        """The lease and its version (for a conditional write over it)."""
        try:
            body, version = storage.read_versioned(self.current_uri)
        except FileNotFoundError:
            return None, None
        try:
            value = json.loads(body)
            return Lease(run_id=str(value["run_id"]), host=str(value.get("host", "")), pid=int(value.get("pid", 0)),
                         heartbeat=float(value.get("heartbeat", 0.0))), version
        except (ValueError, KeyError, TypeError):
            # an unreadable lease counts as expired
            return Lease(run_id=body.decode("utf-8", "replace").strip()), version

    def is_current(self, run_id: str) -> bool:
        """Whether ``run_id`` is the run that owns the output now. A killed driver's tasks can outlive it for a
        while; its writers check this before staging a part, so they cannot write into a later run's output."""
        lease = self.lease()
        return lease is not None and lease.run_id == run_id

    def check_free(self, run_id: str, takeover: bool = False) -> None:
        """Raise :class:`OutputBusy` when another run that is still alive owns the output (unless ``takeover``)."""
        self._refuse_if_busy(self.lease(), run_id, takeover)

    def _refuse_if_busy(self, lease: Lease | None, run_id: str, takeover: bool) -> None:
        if lease is None or lease.run_id == run_id or takeover or not lease.alive():
            return
        where = f" on {lease.host}, pid {lease.pid}" if lease.host else ""
        raise OutputBusy(f"run {lease.run_id}{where} is writing to {storage.redact_uri(self.uri)} (last heartbeat "
                         f"{time.time() - lease.heartbeat:.0f} s ago); wait for it to finish, or pass --takeover "
                         f"if it is dead (a lease expires {LEASE_S:.0f} s after its last heartbeat)")

    def _take(self, run_id: str, takeover: bool) -> None:
        """Own the output: the lease is written over the version this run decided on, in one conditional step, so
        two runs that start together cannot both take it (the one that writes second finds it changed, and decides
        again on what the first wrote)."""
        for _ in range(10):
            lease, version = self._read_lease()
            self._refuse_if_busy(lease, run_id, takeover)
            try:
                self._lease_versions[run_id] = storage.write_if(self.current_uri, _lease_body(run_id), version)
                return
            except storage.Conflict:
                continue
        raise OutputBusy(f"the lease of {storage.redact_uri(self.uri)} kept changing while this run tried to take "
                         f"it: other runs are starting on this output")

    def check_ours(self) -> None:
        """Raise :class:`ForeignOutput` when the location is not a gpa-batch output yet but holds files a run would
        delete (``data/``, ``.staging/``, ``_SUCCESS``): a dataset folder or the input archive given as ``--output``
        by mistake."""
        if storage.listdir(self.meta, recursive=True):  # the marker, or a commit or lease of an older version's run
            return
        found = (storage.listdir(self.data, recursive=True) + storage.listdir(self.staging, recursive=True))[:3]
        if storage.exists(self.success_uri):
            found.append(self.success_uri)
        if found:
            names = ", ".join(storage.redact_uri(u) for u in found)
            raise ForeignOutput(f"{storage.redact_uri(self.uri)} is not a gpa-batch output but holds files a run "
                                f"would replace ({names}); choose an empty or new --output")

    def _mark(self) -> str:
        """Mark the location as a gpa-batch output, once. Returns the output's id, which tells it from an earlier
        output deleted from the same URI (outputs marked before ids existed get one now)."""
        try:
            marker = json.loads(storage.read_bytes(self.marker_uri))
        except FileNotFoundError:
            marker = {"format": FORMAT}
        except ValueError:  # a torn marker: the location is ours all the same
            marker = {"format": FORMAT}
        if not isinstance(marker, dict) or not isinstance(marker.get("id"), str) or not marker["id"]:
            marker = {**(marker if isinstance(marker, dict) else {}), "format": FORMAT, "id": uuid.uuid4().hex}
            storage.write_bytes(self.marker_uri, json.dumps(marker).encode())
        return marker["id"]

    def renew(self, run_id: str) -> bool:
        """Refresh ``run_id``'s lease, only over the version this run wrote last. False when another run has
        taken the output since (this run must not write to it any more)."""
        try:
            self._lease_versions[run_id] = storage.write_if(self.current_uri, _lease_body(run_id),
                                                            self._lease_versions.get(run_id))
            return True
        except storage.Conflict:
            lease, version = self._read_lease()
            if lease is not None and lease.run_id == run_id:  # this run's own write, whose reply was lost
                self._lease_versions[run_id] = version
                return True
            return False

    @contextlib.contextmanager
    def holding(self, run_id: str, every_s: float = HEARTBEAT_S):
        """Keep ``run_id``'s lease fresh while the block runs, then give the output up (on any exit)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                try:
                    if not self.renew(run_id):
                        return  # taken over (--takeover): this run will fail its commit check
                except Exception as exc:  # a store hiccup: the next beat tries again
                    log.warning("could not renew the lease on the output: %s", storage.scrub(str(exc), 200))

        thread = threading.Thread(target=beat, name="gpa-batch-lease", daemon=True)
        thread.start()
        _HELD.add(run_id)
        try:
            yield
        finally:
            _HELD.discard(run_id)
            stop.set()
            thread.join()
            with contextlib.suppress(Exception):  # an expired lease is harmless; a failing store must not mask
                self.release(run_id)                # the error the block raised

    def release(self, run_id: str) -> None:
        """Remove ``run_id``'s lease, only while it is the version this run wrote (a run that took the output over
        meanwhile keeps its lease), so the next run need not wait for it to expire."""
        version = self._lease_versions.pop(run_id, None)
        for _ in range(2):
            if version is not None:
                try:
                    storage.remove_if(self.current_uri, version)
                    return
                except storage.Conflict:
                    pass
            lease, version = self._read_lease()  # this run's last renewal may have landed without its reply
            if lease is None or lease.run_id != run_id:
                return

    def start(self, run_id: str | None = None, takeover: bool = False) -> Commit:
        """Called when a run starts: take ownership (refused while another live run owns the output), then
        :meth:`_prepare` the output; if that fails, the lease is given up again."""
        self.check_ours()
        if run_id is None:
            return self._prepare()
        self._take(run_id, takeover)
        try:
            return self._prepare()
        except BaseException:
            with contextlib.suppress(Exception):  # the next run need not wait for the lease to expire; a failing
                self.release(run_id)                # store must not mask the error that stopped this one
            raise

    def _prepare(self) -> Commit:
        """Mark the output as gpa-batch's, adopt finished parts of killed runs, drop debris, un-mark completeness."""
        self.output_id = self._mark()
        storage.remove(self.success_uri)
        commit = self.load()
        committed = {p["path"] for p in commit.parts}
        adoptable = []
        for record in self.staged_records():
            final = _final_name(record)
            if f"data/{final}" in committed:
                continue
            staged = storage.join(self.run_dir(record["run_id"]), record["part"])
            moved = storage.join(self.data, final)
            if storage.exists(staged) or storage.exists(moved):
                adoptable.append(record)
        if adoptable:
            commit = self.commit(adoptable, run={"run_id": "recovered", "recovered_parts": len(adoptable)},
                                 complete=False, commit=commit)
        committed = {p["path"] for p in commit.parts}
        for uri in storage.listdir(self.data):
            if f"data/{storage.basename(uri)}" not in committed:
                storage.remove(uri)  # a part moved by a commit that never completed
        storage.remove(self.staging)
        if commit.complete:
            commit.complete = False
            storage.write_bytes(self.commit_uri, commit.to_json())
        return commit

    def commit(self, records: list[dict], *, run: dict, complete: bool, commit: Commit | None = None,
               supersede: bool = True) -> Commit:
        """Make staged parts part of the output; rows they hold supersede older rows with the same ids.

        ``supersede=False`` skips looking for older rows (the caller knows none of the new ids is committed).
        """
        commit = commit or self.load()
        new_parts = []
        new_ids: set[str] = set()
        for record in records:
            final = _final_name(record)
            staged = storage.join(self.run_dir(record["run_id"]), record["part"])
            target = storage.join(self.data, final)
            if storage.exists(staged):
                new_ids.update(read_parquet(staged, ["id"]).column("id").to_pylist())
                storage.move(staged, target)
            else:  # moved by an earlier, interrupted commit
                new_ids.update(read_parquet(target, ["id"]).column("id").to_pylist())
            new_parts.append({"path": f"data/{final}", "rows": record["rows"], "run_id": record["run_id"]})
        kept, replaced = [], []
        for part in commit.parts:
            if not supersede:
                kept.append(part)
                continue
            uri = storage.join(self.uri, part["path"])
            ids = read_parquet(uri, ["id"]).column("id")
            if new_ids.isdisjoint(ids.to_pylist()):
                kept.append(part)
                continue
            table = read_parquet(uri)
            mask = pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(new_ids))))
            remaining = table.filter(mask)
            replaced.append(uri)
            if remaining.num_rows:
                name = f"part-{part['run_id']}-r{uuid.uuid4().hex[:8]}.parquet"
                storage.write_bytes(storage.join(self.data, name), parquet_bytes(remaining))
                kept.append({"path": f"data/{name}", "rows": remaining.num_rows, "run_id": part["run_id"]})
        updated = Commit(job=commit.job or run.get("job", ""), parts=kept + new_parts,
                         runs=[*commit.runs, run], complete=complete)
        storage.write_bytes(self.commit_uri, updated.to_json())  # the commit point
        for uri in replaced:
            storage.remove(uri)
        if complete:
            marker = {"rows": updated.rows, "run_id": run.get("run_id")}
            storage.write_bytes(self.success_uri, json.dumps(marker).encode())
        return updated

    def finish_run(self, run_id: str) -> None:
        """Drop the run's staging (and anything a dead run's late writers left there after :meth:`start`)."""
        storage.remove(self.staging)


def _lease_body(run_id: str) -> bytes:
    return json.dumps(Lease.mine(run_id).__dict__).encode()


def _final_name(record: dict) -> str:
    return record["part"]  # part names already carry the run id and are unique


def resume_plan(index: pa.Table, retry_errors: bool, wanted: Counter | None = None,
                versions: dict[str, str] | None = None) -> tuple[set[str], set[str]]:
    """(ids already done, ids to redo) from the committed ``index``.

    Done: every id with a committed row. Redo: ids whose rows failed for a transient reason (the store was
    unreachable: :data:`jobs.io.storage.TRANSIENT_KINDS`), always; and with ``--retry-errors``, ids with an error row
    other than ``duplicate_id`` (a duplicate stays a duplicate however often it is retried). Never ids with an ok
    row, except: with ``wanted`` (how many input rows each id has), ids whose committed rows do not stand one for
    one for their input rows, with the first one's result among them. A run stopped after staging its validation
    errors commits a duplicate's ``duplicate_id`` row without the first row's result, and a manifest can gain or
    lose duplicates; all the rows of such an id are redone, and supersede the committed ones. With ``versions``
    (id -> the version a listing saw its file at), ids whose committed row was made from another version of the
    file (rewritten in place since) are redone too; a row without a version (an earlier release's) is kept.
    """
    ids = index.column("id").to_pylist()
    statuses = index.column("status").to_pylist()
    kinds = index.column("error_kind").to_pylist()
    done = set(ids)
    ok = {i for i, s in zip(ids, statuses, strict=True) if s == "ok"}
    retried = (lambda kind: kind != "duplicate_id") if retry_errors else (lambda kind: kind in storage.TRANSIENT_KINDS)
    failed = {i for i, s, k in zip(ids, statuses, kinds, strict=True) if s != "ok" and retried(k)}
    redo = failed - ok
    if wanted is not None:
        committed = Counter(ids)
        with_result = {i for i, k in zip(ids, kinds, strict=True) if k != "duplicate_id"}
        redo |= {i for i, n in committed.items() if i in wanted and (n != wanted[i] or i not in with_result)}
    if versions:
        made_from = index.column("input_version").to_pylist() if "input_version" in index.column_names \
            else [None] * len(ids)
        redo |= {i for i, v in zip(ids, made_from, strict=True) if v is not None and versions.get(i, v) != v}
    return done, redo


def count_ids(table: pa.Table) -> Counter:
    return Counter(table.column("id").to_pylist())
