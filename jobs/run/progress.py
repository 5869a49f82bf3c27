"""Progress for logs: a line every few seconds when stderr is not a terminal (a log file, a pipe, ``ray job
submit``), where Ray Data's bars would print nothing useful.

The encode stage reports each window it finished (rows, errors by kind, audio and model seconds) to a tally actor
that needs no CPU; the driver reads the tally every ``every_s`` seconds and prints::

    gpa-batch transcribe progress: 120/1000 rows (12.0%), 0.350 h audio, 4.10 rows/s, RTFx 85.2, ETA 3m35s,
    errors 2 (unreadable_audio: 2)

(one line in the log). RTFx is audio seconds per second of model time, as in the run's metrics.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_EVERY_S = 30.0
LINE = re.compile(r"^gpa-batch (?P<job>\w+) progress: (?P<done>\d+)/(?P<total>\d+) rows \((?P<percent>[\d.]+)%\), "
                  r"(?P<hours>[\d.]+) h audio, (?P<rows_per_s>[\d.]+) rows/s, RTFx (?P<rtfx>[\d.]+|-), "
                  r"ETA (?P<eta>\S+), errors (?P<errors>\d+)(?: \((?P<kinds>[^)]*)\))?$")



class _NoRayBarsHint(logging.Filter):
    """Ray Data's notice that its bars are off names its own API; here --progress and these lines stand for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


logging.getLogger("ray.data._internal.progress").addFilter(_NoRayBarsHint())


class Tally:
    """What the encode stage has finished so far (run as a Ray actor)."""

    def __init__(self):
        self.rows = 0
        self.audio_s = 0.0
        self.model_s = 0.0
        self.errors: Counter = Counter()

    def add(self, counts: dict) -> None:
        self.rows += counts["rows"]
        self.audio_s += counts["audio_s"]
        self.model_s += counts["model_s"]
        self.errors.update(counts["errors"])

    def snapshot(self) -> dict:
        return {"rows": self.rows, "audio_s": self.audio_s, "model_s": self.model_s, "errors": dict(self.errors)}


def window_counts(job: str, table: pa.Table) -> dict:
    """One finished window's contribution to the tally (``table``: output rows of ``job``)."""
    from jobs.tasks import get_task

    task = get_task(job)  # the audio its speed is measured on, as jobs.run.metrics.run_metrics counts it
    column = task.audio_in_column if task.work_audio == "in" else task.audio_out_column
    ok = pc.equal(table.column("status"), "ok")
    audio = (pc.sum(pc.if_else(ok, table.column(column), 0.0)).as_py() or 0.0) if column else 0.0
    model_s = pc.sum(pc.struct_field(table.column("timings"), "model_s")).as_py() or 0.0
    kinds = table.filter(pc.invert(ok)).column("error_kind").to_pylist()
    return {"rows": table.num_rows, "audio_s": float(audio), "model_s": float(model_s), "errors": Counter(kinds)}


def format_line(job: str, snapshot: dict, total: int, elapsed_s: float) -> str:
    done = snapshot["rows"]
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    rtfx = f"{snapshot['audio_s'] / snapshot['model_s']:.1f}" if snapshot["model_s"] > 0 else "-"
    eta = _duration((total - done) / rate) if rate > 0 else "-"
    errors = snapshot["errors"]
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
    return (f"gpa-batch {job} progress: {done}/{total} rows ({100 * done / max(total, 1):.1f}%), "
            f"{snapshot['audio_s'] / 3600:.3f} h audio, {rate:.2f} rows/s, RTFx {rtfx}, ETA {eta}, "
            f"errors {sum(errors.values())}" + (f" ({kinds})" if kinds else ""))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ProgressLines:
    """While the block runs, print the tally's line to ``stream`` every ``every_s`` seconds. ``tally``: the Ray
    actor handle the encode stage reports to."""

    def __init__(self, job: str, total: int, every_s: float, stream=None):
        import ray

        self.job, self.total, self.every_s = job, total, every_s
        self.stream = stream or sys.stderr
        self.tally = ray.remote(num_cpus=0)(Tally).remote()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpa-batch-progress", daemon=True)

    def __enter__(self) -> ProgressLines:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=10)
        ray.kill(self.tally)

    def _loop(self) -> None:
        import ray

        while not self._stop.wait(self.every_s):
            try:
                snapshot = ray.get(self.tally.snapshot.remote(), timeout=10)
            except Exception:  # a missed line is no reason to disturb the job
                continue
            print(format_line(self.job, snapshot, self.total, time.monotonic() - self.started), file=self.stream,
                  flush=True)
