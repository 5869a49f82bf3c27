"""gpa.storage: object-store access that survives what Ray does to the worker processes it runs in."""

import subprocess
import sys
import textwrap


def test_s3_filesystem_recovers_from_an_interrupted_s3fs_import(s3_bucket):
    """Ray cancels a task with KeyboardInterrupt; one that cuts a worker's first ``import s3fs`` short leaves
    aiohttp's submodules behind and every later import fails. The state is made here the way such an interrupt
    leaves it (half of the packages forgotten), in a fresh interpreter, then the bucket is read."""
    code = textwrap.dedent("""
        import sys
        import s3fs
        for name in list(sys.modules):
            if name in ("aiohttp", "s3fs") or name.partition(".")[0] in ("s3fs", "aiobotocore"):
                del sys.modules[name]
        try:
            import s3fs
        except AttributeError as exc:
            print("poisoned:", exc)
        from gpa import storage
        fs, path = storage.filesystem("s3://%s/")
        print("listed:", fs.ls(path))
    """) % s3_bucket
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "poisoned: module aiohttp has no attribute http_exceptions" in out.stdout  # the state a cut import leaves
    assert "listed: []" in out.stdout
