import logging
import pickle
import socket

import boto3
import pytest
import torch
from safetensors.torch import save_file

from gpa.checkpoint import (
    convert_to_safetensors,
    find_safetensors,
    load_module,
    load_safetensors_strict,
    resolve_checkpoint,
)
from gpa.checkpoint_files import COMPLETE_MARKER, content_hash
from gpa.errors import CheckpointError


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.norm = torch.nn.LayerNorm(2)


def test_strict_loading_names_missing_unexpected_and_mismatched_keys(tmp_path):
    state = Tiny().state_dict()
    path = tmp_path / "model.safetensors"
    save_file({k: v for k, v in state.items() if k != "norm.bias"} | {"extra.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as info:
        load_safetensors_strict(Tiny(), path)
    assert "norm.bias" in str(info.value) and "extra.weight" in str(info.value)

    save_file(state | {"proj.weight": torch.zeros(5, 5)}, path)
    with pytest.raises(CheckpointError, match=r"proj\.weight.*\(5, 5\)"):
        load_safetensors_strict(Tiny(), path)

    save_file(state, path)
    model = Tiny()
    load_safetensors_strict(model, path)
    assert torch.equal(model.proj.weight, state["proj.weight"])


class WithWindow(Tiny):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 2)
        self.conv = torch.nn.Conv1d(2, 2, 3)
        self.register_buffer("window", torch.hann_window(8), persistent=False)  # computed, not in the file
        self.register_buffer("noise", torch.empty(64).normal_(), persistent=False)  # drawn, not in the file


def test_load_module_draws_no_random_weights_and_loads_every_one(tmp_path):
    state = WithWindow().state_dict()
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    torch.manual_seed(1)
    model = load_module(WithWindow, path)
    after_load = torch.get_rng_state()
    torch.manual_seed(1)
    noise = torch.empty(64).normal_()
    assert torch.equal(model.noise, noise)  # buffers are filled as usual
    assert torch.equal(after_load, torch.get_rng_state())  # and nothing else drew: no fill ran on a parameter
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.window, torch.hann_window(8))  # computed buffers are built as usual

    save_file({k: v for k, v in state.items() if k != "conv.bias"}, path)
    with pytest.raises(CheckpointError, match=r"conv\.bias"):
        load_module(WithWindow, path)  # an uninitialised parameter is never handed out


def test_stored_derived_buffers_are_checked_then_dropped(tmp_path):
    """A checkpoint may carry buffers that follow from the config (torchaudio's mel filterbank and window in the
    reference's BiCodec): equal to what we compute, they load; different, the load fails naming them; any other
    unexpected key is still an error."""
    state = Tiny().state_dict()
    window = torch.hann_window(8)
    derived = {"mel.window": window}
    path = tmp_path / "model.safetensors"

    for stored in (window, window.half(), window.bfloat16(), window + 5e-7):  # the dtype it was saved in is fine
        save_file(state | {"mel.window": stored.contiguous()}, path)
        model = Tiny()
        load_safetensors_strict(model, path, derived=derived)
        assert torch.equal(model.proj.weight, state["proj.weight"])
    save_file(state, path)
    load_safetensors_strict(Tiny(), path, derived=derived)  # absent: computed anyway, nothing is missing

    wrong = window.clone()
    wrong[3] += 1e-3
    for bad, reason in (
        (wrong, r"mel\.window differs from the value computed from the config \(max abs difference 0\.001"),
        (torch.full_like(window, float("nan")), r"mel\.window differs"),
        (torch.hann_window(10), r"mel\.window has shape \(10,\), but the config gives \(8,\)"),
        (torch.ones(8, dtype=torch.int64), r"mel\.window is stored as torch\.int64"),
    ):
        save_file(state | {"mel.window": bad}, path)
        with pytest.raises(CheckpointError, match=reason):
            load_safetensors_strict(Tiny(), path, derived=derived)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[mel\.window\]"):
        save_file(state | {"mel.window": window}, path)
        load_safetensors_strict(Tiny(), path)  # not declared derived: an unexpected key as before
    save_file(state | {"mel.window": window, "mel.fb": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[mel\.fb\]"):
        load_module(Tiny, path, derived=derived)


def test_load_module_leaves_other_threads_alone(tmp_path):
    import threading

    path = tmp_path / "model.safetensors"
    save_file(Tiny().state_dict(), path)
    drew = []

    def other_thread():
        before = torch.get_rng_state()
        torch.nn.Linear(8, 8)
        drew.append(not torch.equal(before, torch.get_rng_state()))

    def build():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        return Tiny()

    load_module(build, path)
    assert drew == [True]


class Boom:
    """Unpickling this runs code: the loader must never get that far."""

    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_weights_are_refused_without_being_opened(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="pickle"):
        find_safetensors(tmp_path)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_safetensors_strict(Tiny(), tmp_path / "pytorch_model.bin")
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="cannot read model.safetensors"):
        load_safetensors_strict(Tiny(), path)


def test_local_directory_and_missing_source(tmp_path):
    assert resolve_checkpoint(tmp_path) == tmp_path
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nope")


def test_hf_repo_id_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Hugging Face"):
        resolve_checkpoint("AutoArk-AI/GPA", tmp_path)


def count_downloads(monkeypatch) -> list[str]:
    import s3fs

    fetched: list[str] = []
    real = s3fs.S3FileSystem._get_file

    async def counting(self, rpath, lpath, **kwargs):
        fetched.append(rpath)
        return await real(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", counting)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance bound the real method when it was made
    return fetched


def test_s3_prefix_is_copied_once_atomically(s3_server, s3_bucket, tmp_path, monkeypatch, caplog):
    fetched = count_downloads(monkeypatch)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    files = {"config.json": b"{}", "BiCodec/config.yaml": b"a: 1\n", "BiCodec/model.safetensors": b"x" * 1000}
    for key, body in files.items():
        s3.put_object(Bucket=s3_bucket, Key=f"gpa/v1/{key}", Body=body)
    s3.put_object(Bucket=s3_bucket, Key="gpa/v1-other/config.json", Body=b"not ours")

    local = resolve_checkpoint(f"s3://{s3_bucket}/gpa/v1", tmp_path)
    assert {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()} == {*files, COMPLETE_MARKER}
    assert (local / "BiCodec/model.safetensors").read_bytes() == files["BiCodec/model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]

    assert len(fetched) == len(files)
    # cached: a second resolve lists the prefix but downloads nothing
    assert resolve_checkpoint(f"s3://{s3_bucket}/gpa/v1/", tmp_path) == local and len(fetched) == len(files)

    # the store cannot be reached: the copy fetched before loads (never a download a process left half done)
    name = local.name.split("-")[0]
    stale = tmp_path / f"{name}-{'0' * 12}.x1y2.partial"
    stale.mkdir()
    (stale / COMPLETE_MARKER).write_text("{}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with caplog.at_level(logging.WARNING, logger="gpa.checkpoint"):
        assert resolve_checkpoint(f"s3://{s3_bucket}/gpa/v1/", tmp_path) == local
    assert "cannot list" in caplog.text and "using the copy fetched before" in caplog.text
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)

    # the checkpoint removed from the store: an error, not the stale copy
    for key in files:
        s3.delete_object(Bucket=s3_bucket, Key=f"gpa/v1/{key}")
    with pytest.raises(CheckpointError, match="no files under"):
        resolve_checkpoint(f"s3://{s3_bucket}/gpa/v1/", tmp_path)
    s3.put_object(Bucket=s3_bucket, Key="gpa/v2/config.json", Body=b"{}")
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(CheckpointError, match="cannot write to the checkpoint cache"):
        resolve_checkpoint(f"s3://{s3_bucket}/gpa/v2", tmp_path / "not-a-dir")


def test_a_checkpoint_replaced_at_its_prefix_is_fetched_again_by_one_process(s3_server, s3_bucket, tmp_path):
    """A new version uploaded to the same prefix is not served from the stale copy; while one process fetches a
    version, the others of the machine wait for it instead of downloading it too."""
    import fcntl
    import threading

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="gpa/config.json", Body=b'{"v": 1}')
    s3.put_object(Bucket=s3_bucket, Key="gpa/model.safetensors", Body=b"1" * 100)
    first = resolve_checkpoint(f"s3://{s3_bucket}/gpa", tmp_path)
    assert (first / "config.json").read_bytes() == b'{"v": 1}'

    s3.put_object(Bucket=s3_bucket, Key="gpa/model.safetensors", Body=b"2" * 100)  # same size, new content
    [lock] = tmp_path.glob("*.lock")
    found: list = []
    with open(lock, "a+b") as held:  # another process of this machine is fetching
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: found.append(resolve_checkpoint(f"s3://{s3_bucket}/gpa", tmp_path)))
        waiter.start()
        waiter.join(1.5)
        assert waiter.is_alive() and not list(tmp_path.glob("*.partial"))  # waiting, not downloading
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(30)
    [second] = found
    assert second != first and (second / "model.safetensors").read_bytes() == b"2" * 100
    assert (first / "model.safetensors").read_bytes() == b"1" * 100  # a running actor's copy is left alone
    assert resolve_checkpoint(f"s3://{s3_bucket}/gpa", tmp_path) == second

    s3.put_object(Bucket=s3_bucket, Key="gpa/model.safetensors", Body=b"3" * 100)  # a third version
    third = resolve_checkpoint(f"s3://{s3_bucket}/gpa", tmp_path)
    assert sorted(d for d in tmp_path.iterdir() if d.is_dir()) == sorted([second, third])  # the oldest removed


def test_s3_pickle_weights_are_never_copied(s3_server, s3_bucket, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="bad/w2v/pytorch_model.bin", Body=pickle.dumps(Boom()))
    s3.put_object(Bucket=s3_bucket, Key="bad/w2v/config.json", Body=b"{}")
    local = resolve_checkpoint(f"s3://{s3_bucket}/bad", tmp_path)
    assert (local / "w2v/config.json").exists() and not (local / "w2v/pytorch_model.bin").exists()
    with pytest.raises(CheckpointError, match="convert-weights"):
        find_safetensors(local / "w2v")


def test_convert_weights_is_explicit_and_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = Tiny().state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    target = convert_to_safetensors(tmp_path / "pytorch_model.bin")
    assert target.name == "model.safetensors"
    model = Tiny()
    load_safetensors_strict(model, target)
    assert torch.equal(model.proj.weight, state["proj.weight"])

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint"):
        convert_to_safetensors(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_content_hash_tracks_contents(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    first = content_hash(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert content_hash(tmp_path) != first
