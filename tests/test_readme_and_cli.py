"""The README's library example runs as written, and the ``gpa`` CLI works end to end."""

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from gpa.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs_as_written(capsys):
    text = README.read_text()
    section = text[text.index("## Using the library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("True (") and out[2].startswith("True (")


def test_cli_transcribe_synthesize_convert(tiny_checkpoint, tmp_path, capsys):
    t = np.arange(24000) / 16000
    wav = tmp_path / "in.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 180 * t) * np.clip(np.sin(6 * t), 0, None)).astype(np.float32), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")

    assert main(["transcribe", str(wav), str(bad), "--model", str(tiny_checkpoint), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(wav), str(bad)]
    assert lines[0]["error"] is None and lines[0]["segments"][0]["end"] == 1.5
    assert lines[1]["error"]["kind"] == "unreadable_audio"

    out = tmp_path / "tts.wav"
    code = main(["synthesize", "--text", "Hello.", "--reference", str(wav), "--out", str(out), "--model",
                 str(tiny_checkpoint), "--max-new-tokens", "80", "--seed", "3"])
    assert code == 0 and sf.info(out).samplerate == 16000 and sf.info(out).frames > 0

    out = tmp_path / "vc.wav"
    assert main(["convert", str(wav), str(wav), "--out", str(out), "--model", str(tiny_checkpoint),
                 "--max-new-tokens", "80"]) == 0
    assert sf.info(out).frames > 0


def test_synthesize_out_into_a_missing_folder_and_as_mp3(tiny_checkpoint, tmp_path, capsys):
    t = np.arange(24000) / 16000
    wav = tmp_path / "ref.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    for out, fmt in ((tmp_path / "new" / "deeper" / "tts.mp3", "MP3"), (tmp_path / "tts.ogg", "OGG")):
        code = main(["synthesize", "--text", "Hello.", "--reference", str(wav), "--out", str(out), "--model",
                     str(tiny_checkpoint), "--max-new-tokens", "40"])
        assert code == 0 and sf.info(out).format == fmt and sf.info(out).frames > 0


def test_bad_out_is_refused_in_one_line_before_the_model_loads(tmp_path, capsys):
    wav = tmp_path / "ref.wav"
    sf.write(wav, np.zeros(8000, np.float32), 16000)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    # the model does not exist: reaching it would be a different error (unreadable checkpoint)
    cases = {"x.aac": "cannot write .aac; use one of .wav, .flac, .ogg", "noext": "without an extension",
             str(a_file / "x.wav"): "cannot create its folder", str(tmp_path): "is a directory"}
    for out, reason in cases.items():
        target = out if "/" in out else str(tmp_path / out)
        assert main(["synthesize", "--text", "Hi.", "--reference", str(wav), "--out", target,
                     "--model", str(tmp_path / "no-model")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and "Traceback" not in err, err
        assert err.startswith(f"gpa synthesize: --out {target}: ")
    assert main(["convert", str(wav), str(wav), "--out", str(tmp_path / "vc.m4a"), "--model", "x"]) == 2
    assert "cannot write .m4a" in capsys.readouterr().err
    # a folder access() calls writable but that makes no files (procfs): refused by a probe that leaves nothing
    assert main(["synthesize", "--text", "Hi.", "--reference", str(wav), "--out", "/proc/gpa-out.wav",
                 "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpa synthesize: --out /proc/gpa-out.wav: cannot write") and err.count("\n") == 1, err
    assert main(["synthesize", "--text", "Hi.", "--reference", str(wav), "--out", str(tmp_path / "probe.wav"),
                 "--model", str(tmp_path / "no-model")]) == 1  # past the --out check: the missing model
    assert not (tmp_path / "probe.wav").exists()  # the probe's file is removed again
    if not torch.cuda.is_available():
        assert main(["convert", str(wav), str(wav), "--out", str(tmp_path / "vc.wav"), "--model", "x",
                     "--device", "cuda"]) == 2
        assert capsys.readouterr().err.endswith("sees no CUDA GPU; use --device cpu\n")


def test_make_checkpoint_and_convert_weights_failures_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    (tmp_path / "code.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")  # a pickle that runs a command
    (tmp_path / "junk.bin").write_text("x")
    (tmp_path / "blocked" / "model.safetensors").mkdir(parents=True)  # a folder where the converted file goes
    torch.save({"w": torch.zeros(2)}, tmp_path / "blocked" / "model.bin")
    cases = {
        ("make-checkpoint", str(a_file)): f"cannot write {a_file}: {a_file} is a file",
        ("make-checkpoint", str(a_file / "deeper")): f"cannot write {a_file / 'deeper'}: {a_file} is a file",
        ("make-checkpoint", str(tmp_path / "other")): "holds other files (not a random checkpoint made with seed 0, "
                                                      "arch qwen3, size tiny); name a new or empty folder",
        ("convert-weights", str(tmp_path / "code.pt")): "code.pt is not a plain tensor checkpoint: the safe "
                                                        "unpickler refused it (Trying to load unsupported GLOBAL "
                                                        "os.system whose module os is blocked)",
        ("convert-weights", str(tmp_path / "junk.bin")): "junk.bin is not a plain tensor checkpoint: not a "
                                                         "PyTorch checkpoint, or a damaged one",
        ("convert-weights", str(tmp_path / "blocked" / "model.bin")): "cannot write "
                                                                       f"{tmp_path / 'blocked' / 'model.safetensors'}",
        ("convert-weights", str(tmp_path / "gone.bin")): f"cannot read {tmp_path / 'gone.bin'}: No such file",
    }
    for argv, reason in cases.items():
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and "Traceback" not in err, err
        assert err.startswith(f"gpa {argv[0]}: ") and "weights_only" not in err
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob("*.safetensors"))


def test_readme_says_where_the_tools_are_and_what_a_second_demo_does():
    """The quick start's claims: the tools live in the Makefile's venv (named as the project's scripts), and a
    second ``make demo`` prints the note the demo prints for an output that is already complete."""
    from jobs.demo import EXAMPLES, already_done_note

    text = README.read_text()
    quick = text[text.index("## Quick start"): text.index("## Using the library")]
    makefile = (README.parent / "Makefile").read_text()
    venv = re.search(r"^VENV := (\S+)$", makefile, re.M).group(1)
    project = (README.parent / "pyproject.toml").read_text()
    scripts = re.findall(r"^([\w-]+) = ", project[project.index("[project.scripts]"):].split("\n\n")[0], re.M)
    assert {"gpa", "gpa-batch"} <= set(scripts) and re.search(r"^demo: .*\n\t\$\(BIN\)/gpa-batch demo$", makefile,
                                                             re.M)
    for tool in ("gpa", "gpa-batch"):
        assert f"`{venv}/bin/{tool}`" in quick
    assert f"source {venv}/bin/activate" in quick

    rows = len((EXAMPLES / "transcribe.jsonl").read_text().splitlines())
    note = already_done_note("transcribe", rows, Path("/x/gpa-demo/transcribe"))
    claimed = re.search(r"\(`(transcribe: already done, \d+ rows in) \.\.\./gpa-demo/transcribe \.\.\.`\)",
                        quick).group(1)
    assert note.startswith(f"{claimed} /x/gpa-demo/transcribe") and "rm -rf /x/gpa-demo" in note
    assert "rm -rf gpa-demo" in quick and re.search(r"`make test` takes about \d+ minutes on 2 CPU cores", quick)
