"""The command line: flags, YAML config merging, entry points."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jobs.cli import build_parser, config_from_args

ROOT = Path(__file__).resolve().parents[1]


def config(argv: list[str]):
    args = build_parser().parse_args(argv)
    return config_from_args(args.command, args)


def test_flags_fill_the_job_config():
    c = config(["synthesize", "--input", "s3://b/m.jsonl", "--output", "/tmp/o", "--model", "AutoArk-AI/GPA",
                "--actors", "1:4", "--batch-size", "16", "--gpus-per-actor", "1", "--cpus-per-actor", "0.5",
                "--retry-errors", "--mlflow-uri", "http://127.0.0.1:5000", "--experiment", "e", "--seed", "3",
                "--limit", "10", "--temperature", "0.7", "--greedy", "--option", "top_k=5",
                "--field-map", "id=utt,text=sentence", "--reference", "voice.wav", "--no-quality", "--glob", "*.wav",
                "--memory-per-actor-mb", "6000"])
    assert c.job == "synthesize" and c.actors == (1, 4) and c.batch_size == 16 and c.gpus_per_actor == 1.0
    assert c.memory_per_actor_mb == 6000 and c.encoder_batch_size is None
    assert config(["convert", "--input", "m", "--output", "o", "--model", "m", "--encoder-batch-size", "4"]
                  ).encoder_batch_size == 4
    assert c.retry_errors and c.limit == 10 and c.seed == 3 and c.quality is False and c.glob == "*.wav"
    assert c.options == {"temperature": 0.7, "do_sample": False, "top_k": 5}
    assert c.field_map == {"id": "utt", "text": "sentence"} and c.reference == "voice.wav"
    defaults = config(["transcribe", "--input", "m.jsonl", "--output", "o", "--model", "m"])
    assert defaults.actors is None and not defaults.retry_errors  # for_cluster fills it in
    assert not defaults.takeover and config(["convert", "--input", "m", "--output", "o", "--model", "m",
                                             "--takeover"]).takeover
    assert defaults.options == {} and defaults.quality is True


def test_batch_size_and_gpus_default_to_what_the_cluster_has():
    from jobs.config import CPU_BATCH_SIZE, GPU_BATCH_SIZE

    c = config(["transcribe", "--input", "m.jsonl", "--output", "o", "--model", "m"])
    assert c.batch_size is None and c.gpus_per_actor is None and c.cpus_per_actor is None
    with pytest.raises(ValueError, match="for_cluster"):
        c.window_rows  # noqa: B018
    on_cpus = c.for_cluster(cluster_gpus=0)
    assert (on_cpus.gpus_per_actor, on_cpus.batch_size, on_cpus.window_rows) == (0, CPU_BATCH_SIZE, 4 * CPU_BATCH_SIZE)
    assert on_cpus.cpus_per_actor <= 0.5  # or the CPU stages starve on a 2-CPU machine
    on_gpus = c.for_cluster(cluster_gpus=8)
    assert (on_gpus.gpus_per_actor, on_gpus.batch_size, on_gpus.cpus_per_actor) == (1, GPU_BATCH_SIZE, 1)
    # the pool grows to fill the cluster's GPUs; on CPUs one actor (each holds a whole model in memory)
    assert on_gpus.actors == (1, 8) and on_cpus.actors == (1, 1)
    half = config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--gpus-per-actor", "0.5"])
    assert half.for_cluster(cluster_gpus=3).actors == (1, 6) and half.for_cluster(cluster_gpus=0).actors == (1, 1)
    assert config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--actors", "2"]
                  ).for_cluster(cluster_gpus=8).actors == (2, 2)
    assert GPU_BATCH_SIZE > CPU_BATCH_SIZE
    # a GPU actor reserves a core for its decoding loop, except where that would starve the CPU stages
    assert c.for_cluster(cluster_gpus=1, cluster_cpus=16).cpus_per_actor == 1
    assert c.for_cluster(cluster_gpus=1, cluster_cpus=2).cpus_per_actor == 0.5
    assert config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--cpus-per-actor", "2"]
                  ).for_cluster(cluster_gpus=1, cluster_cpus=2).cpus_per_actor == 2
    # what is given stays: a GPU share, a device, a batch size
    assert config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--gpus-per-actor", "0.5"]
                  ).for_cluster(cluster_gpus=0).batch_size == GPU_BATCH_SIZE
    on_cpu = config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--device", "cpu"]
                    ).for_cluster(cluster_gpus=4)
    assert (on_cpu.gpus_per_actor, on_cpu.batch_size, on_cpu.cpus_per_actor) == (0, CPU_BATCH_SIZE, 0.5)
    assert config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--batch-size", "3"]
                  ).for_cluster(cluster_gpus=4).batch_size == 3


def test_yaml_config_is_overridden_by_flags(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "input: s3://bucket/archive/\nglob: '**/*.mp3'\noutput: s3://bucket/out\nmodel: /ckpt\nbatch_size: 4\n"
        "actors: '2:8'\noptions: {max_new_tokens: 64, window_s: 20}\nfield_map: {id: key}\n")
    c = config(["transcribe", "--config", str(tmp_path / "job.yaml"), "--batch-size", "32", "--window-s", "10"])
    assert c.input == "s3://bucket/archive/" and c.glob == "**/*.mp3" and c.actors == (2, 8)
    assert c.batch_size == 32 and c.options == {"max_new_tokens": 64, "window_s": 10.0}
    assert c.field_map == {"id": "key"}


def test_example_config_file():
    c = config(["transcribe", "--config", str(ROOT / "manifests" / "examples" / "transcribe-archive.yaml"),
                "--actors", "2:4"])
    assert c.glob == "**/*.mp3" and c.gpus_per_actor == 1 and c.actors == (2, 4)
    assert c.options == {"window_s": 30, "max_new_tokens": 512}


def test_bad_arguments_are_usage_errors(tmp_path):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["transcribe", "--actors", "x:y"])
    with pytest.raises(ValueError, match="--model"):
        config(["transcribe", "--input", "a", "--output", "b"])
    with pytest.raises(ValueError, match="MIN:MAX"):
        config(["transcribe", "--input", "a", "--output", "b", "--model", "m", "--actors", "3:1"])
    (tmp_path / "bad.yaml").write_text("input: a\nsurprise: 1\n")
    with pytest.raises(ValueError, match="surprise"):
        config(["transcribe", "--config", str(tmp_path / "bad.yaml"), "--output", "b", "--model", "m"])


def test_out_of_range_numbers_and_broken_config_files_are_usage_errors(tmp_path):
    base = ["transcribe", "--input", "a", "--output", "b", "--model", "m"]
    for flags, message in ((["--limit", "-1"], "--limit must be a whole number >= 0, got -1"),
                           (["--rows-per-part", "0"], "--rows-per-part must be a whole number >= 1"),
                           (["--gpus-per-actor", "nan"], "--gpus-per-actor must be a number >= 0, got nan"),
                           (["--config", str(tmp_path / "missing.yaml")], "missing.yaml: no such file")):
        with pytest.raises(ValueError, match=message):
            config(base + flags)
    (tmp_path / "broken.yaml").write_text(": : [\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        config(base + ["--config", str(tmp_path / "broken.yaml")])
    with pytest.raises(ValueError, match="cannot read"):
        config(base + ["--config", str(tmp_path)])  # a directory
    (tmp_path / "typed.yaml").write_text("limit: '5'\n")  # a string where a number belongs
    with pytest.raises(ValueError, match="--limit must be a whole number >= 0, got '5'"):
        config(base + ["--config", str(tmp_path / "typed.yaml")])
    # numbers as YAML 1.2 writes them, which PyYAML alone reads as text
    (tmp_path / "floats.yaml").write_text("options: {temperature: 1e-3, top_p: +9.5E-1, window_s: 3}\n"
                                          "run_name: '1e-3'\ncpus_per_task: .25e0\n")
    floats = config(base + ["--config", str(tmp_path / "floats.yaml")])
    assert floats.options == {"temperature": 0.001, "top_p": 0.95, "window_s": 3} and floats.run_name == "1e-3"
    assert floats.cpus_per_task == 0.25
    for text, message in (("run_name: 1234e56\n", "--run-name must be text, got 1.234e+59"),  # an unquoted sha
                          ("max_duration_s: .inf\n", "--max-duration-s must be a number above 0, got inf"),
                          ("cpus_per_task: 1e999\n", "--cpus-per-task must be a number >= 0, got inf"),
                          ("keep_max_cer: -1\n", "--keep-max-cer must be a number >= 0, got -1")):
        (tmp_path / "odd.yaml").write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            config(base + ["--config", str(tmp_path / "odd.yaml")])
    (tmp_path / "odd.yaml").write_text("options: {temperature: ._e3}\n")  # not a number: text, as PyYAML has it
    assert config(base + ["--config", str(tmp_path / "odd.yaml")]).options == {"temperature": "._e3"}


def test_bad_task_option_values_stop_the_command_before_ray_starts(tmp_path):
    """A wrong option value would fail every row (the run would still say "complete"): the CLI refuses it with one
    line, before it starts Ray or touches the output."""
    manifest = ROOT / "manifests" / "examples" / "transcribe.jsonl"
    for flags, message in ((["--option", "window_s=abc"], "option window_s must be float, got 'abc'"),
                           (["--temperature", "-1", "--do-sample"], "temperature must be positive when sampling"),
                           (["--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
                           # the job's own settings would silently win over these
                           (["--option", "batch_size=4"], "batch_size is a job setting: use --batch-size"),
                           (["--option", "seed=3"], "seed is a job setting: use --seed (or seed: at the top of")):
        out = subprocess.run([sys.executable, "-m", "jobs.cli", "transcribe", "--input", str(manifest), "--output",
                              str(tmp_path / "out"), "--model", "m", *flags], capture_output=True, text=True, cwd=ROOT,
                             timeout=60, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})  # never reached
        assert out.returncode == 1, out.stderr[-2000:]
        [line] = out.stderr.strip().splitlines()
        assert line.startswith("gpa-batch transcribe: invalid task options") and message in line
        assert not (tmp_path / "out").exists()


def test_task_options_check_types_and_ranges():
    import numpy as np

    from gpa.options import ConvertOptions, SynthesizeOptions, TranscribeOptions

    assert TranscribeOptions(seed=np.int64(3), temperature=np.float32(0.5)).seed == 3  # numpy numbers are numbers
    with pytest.raises(ValueError, match="window_s must be a finite number"):
        TranscribeOptions(window_s=np.float32("nan"))
    for cls, values, message in ((TranscribeOptions, {"window_s": "abc"}, "window_s must be float"),
                                 (TranscribeOptions, {"do_sample": 1}, "do_sample must be bool"),
                                 (TranscribeOptions, {"batch_size": True}, "batch_size must be int"),
                                 (TranscribeOptions, {"window_s": 0.0}, "window_s must be above 0"),
                                 (SynthesizeOptions, {"temperature": float("nan")}, "temperature must be a finite"),
                                 (SynthesizeOptions, {"top_p": 1.5}, "top_p must lie in"),
                                 (ConvertOptions, {"crossfade_s": -0.1}, "crossfade_s must be at least 0")):
        with pytest.raises(ValueError, match=message):
            cls(**values)


def test_module_entry_points_answer_help():
    for args, expected in ((["transcribe", "--help"], "--input"), (["--help"], "synthesize")):
        out = subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
        assert out.returncode == 0 and expected in out.stdout
    out = subprocess.run([sys.executable, "-m", "jobs", "convert", "--input", "x"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "--output" in out.stderr


def test_the_driver_never_loads_torch(tmp_path):
    """Parsing flags, validating task options and reading manifests (the driver's part of every job) import neither
    torch nor transformers: a job's driver (a cluster's head node, a schedule's pod) stays light and starts the
    pipeline seconds sooner; only the model actors load them."""
    examples = ROOT / "manifests" / "examples"
    code = f"""
import sys
import tempfile
from jobs.cli import build_parser, config_from_args
from jobs.io.manifest import load_inputs
from jobs.pipeline import task_params
import jobs.run.metrics, jobs.io.output, jobs.stages, jobs.run.summary, jobs.run.tracking
for job in ("transcribe", "synthesize", "convert"):
    args = build_parser().parse_args([job, "--input", "{examples}/" + job + ".jsonl", "--output", "{tmp_path}",
                                      "--model", "m"])
    config = config_from_args(job, args)
    params = task_params(config)
    rows = load_inputs(job, config.input)
    assert params["max_new_tokens"] > 0 and rows.total > 0
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_output_held_by_a_live_run_is_refused_before_any_work(tmp_path):
    """A second run (a schedule firing while the last run still goes) stops at once, with a clear message, instead
    of taking the output from the live run; nothing is read, written or logged to MLflow."""
    import json
    import time

    from jobs.io.output import OutputStore
    from jobs.pipeline import JobError, run_job

    out = tmp_path / "out"
    store = OutputStore(str(out))
    lease = {"run_id": "nightly-1", "host": "ray-head-7f9c", "pid": 4242, "heartbeat": time.time() - 30}
    (out / "_gpa_batch").mkdir(parents=True)
    (out / "_gpa_batch" / "current-run").write_text(json.dumps(lease))
    c = config(["transcribe", "--input", str(tmp_path / "not-read.jsonl"), "--output", str(out), "--model", "m"])
    with pytest.raises(JobError, match=r"run nightly-1 on ray-head-7f9c, pid 4242 is writing to .*heartbeat 3\d s "
                                       r"ago.*--takeover"):
        run_job(c)
    assert store.is_current("nightly-1") and sorted(os.listdir(out)) == ["_gpa_batch"]


def test_an_interrupted_run_is_reported_as_interrupted_whatever_it_interrupted():
    from jobs.run.errors import root_cause

    interrupt = KeyboardInterrupt()
    interrupt.__context__ = RuntimeError("botocore.exceptions.EndpointConnectionError: Could not connect")
    assert root_cause(interrupt).startswith("KeyboardInterrupt: interrupted (Ctrl-C or SIGINT)")


def test_a_failure_is_named_by_what_the_ray_worker_raised():
    from ray.exceptions import RayTaskError

    from gpa.errors import CheckpointError
    from jobs.run.errors import JobError, root_cause

    worker = CheckpointError("no config.json in s3://AKIAIOSFODNN7EXAMPLE:wJalr@bucket/model")
    wrapped = RayTaskError("MapBatches(GPAStage)", "Traceback (most recent call last):\n  ...\nnoise", worker)
    try:
        try:
            raise wrapped
        except RayTaskError as exc:
            raise JobError("the pipeline failed") from exc
    except JobError as job_error:
        reason = root_cause(job_error)
    assert reason.startswith("gpa.errors.CheckpointError: no config.json in s3://")
    assert "bucket/model" in reason and "AKIA" not in reason and "Traceback" not in reason
    assert root_cause(FileNotFoundError("nope")) == "FileNotFoundError: nope"


def test_a_map_function_failure_is_named_by_what_it_raised():
    """Ray Data wraps what a map function raises in a UserCodeException whose cause stays behind in the worker:
    the reason is still the error our code raised, not Ray's retry advice."""
    import ray

    from jobs.run.errors import root_cause

    def fails_in_a_map(batch):  # nested: pickled by value, as a job's own map functions travel
        from gpa.errors import CheckpointError

        raise CheckpointError("no config.json in s3://AKIAIOSFODNN7EXAMPLE:wJalr@bucket/model")

    temp = tempfile.mkdtemp(prefix="gpa-batch-test-ray-")  # short: Ray's socket paths are limited to 107 bytes
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        with pytest.raises(Exception) as failure:
            ray.data.range(2).map_batches(fails_in_a_map).materialize()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    reason = root_cause(failure.value)
    assert reason.startswith("gpa.errors.CheckpointError: no config.json in s3://"), reason
    assert "bucket/model" in reason and "AKIA" not in reason


def test_options_the_job_sets_itself_are_refused_as_options():
    from jobs.config import JobConfig
    from jobs.pipeline import JobError, task_params

    base = dict(input="m.jsonl", output="out", model="m")
    with pytest.raises(JobError, match=r"max_text_chars is a job setting: use --max-text-chars"):
        task_params(JobConfig(job="synthesize", options={"max_text_chars": 5}, **base))
    # a transcribe job has no such setting of its own: there it is no option at all
    with pytest.raises(JobError, match="max_text_chars"):
        task_params(JobConfig(job="transcribe", options={"max_text_chars": 5}, **base))
    assert task_params(JobConfig(job="synthesize", max_text_chars=5, **base))["max_text_chars"] == 5


def test_manifest_flags_fill_the_job_config():
    c = config(["transcribe", "--input", "m.jsonl", "--output", "/tmp/o", "--model", "m", "--convention", "nemo",
                "--skip-other-tasks", "--allow-empty", "--max-input-mb", "10"])
    assert (c.convention, c.skip_other_tasks, c.allow_empty, c.max_input_bytes) == ("nemo", True, True, 10 * 2**20)
    with pytest.raises(SystemExit):
        config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--convention", "kaldi"])
    with pytest.raises(ValueError, match="--max-input-mb must be a number above 0"):
        config(["transcribe", "--input", "m", "--output", "o", "--model", "m", "--max-input-mb", "0"])


def test_a_ray_that_cannot_start_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch, capsys, tiny_checkpoint):
    import tempfile

    from jobs.cli import main

    long_tmp = tmp_path / ("d" * 120)  # too long for the AF_UNIX socket paths Ray makes under it
    long_tmp.mkdir()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    (tmp_path / "m.jsonl").write_text('{"id": "a", "audio": "a.wav"}\n')
    code = main(["transcribe", "--input", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out"),
                 "--model", str(tiny_checkpoint)])  # a model that passes preflight
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("gpa-batch transcribe: could not start or connect to a local Ray (")
    assert "set TMPDIR to a short path" in err[0] and list(long_tmp.iterdir()) == []


def test_orphaned_ray_directories_of_dead_runs_are_removed(tmp_path, monkeypatch):
    import tempfile

    from jobs.run import ray_runtime

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, owner in (("gpa-batch-ray-dead", dead.pid), ("gpa-batch-ray-alive", os.getpid()),
                        ("gpa-batch-ray-new", None), ("other-dir", dead.pid)):
        (tmp_path / name / "session").mkdir(parents=True)
        if owner is not None:
            (tmp_path / name / "gpa-batch-owner.pid").write_text(str(owner))
    ray_runtime._remove_orphaned_ray_dirs()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpa-batch-ray-alive", "gpa-batch-ray-new", "other-dir"]


def test_sigterm_ends_a_cli_run_as_ctrl_c_does():
    import signal
    import time

    from jobs.cli import _interrupt_on_termination

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), _interrupt_on_termination():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this at once
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the CLI run's only


def _subcommand(parser, name):
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def _flags(sub) -> set[str]:
    return {s for a in sub._actions for s in a.option_strings if a.help is not argparse.SUPPRESS}


def test_each_subcommand_shows_only_its_own_flags():
    parser = build_parser()
    transcribe, synthesize, convert = (_flags(_subcommand(parser, n)) for n in ("transcribe", "synthesize", "convert"))
    voice_only = {"--reference", "--no-quality", "--audio-storage"}
    gate = {"--keep-max-cer", "--keep-min-similarity", "--max-text-chars"}
    assert not (voice_only | gate) & transcribe
    assert voice_only | gate <= synthesize and "--window-s" not in synthesize  # SynthesizeOptions has no window
    assert voice_only <= convert and not gate & convert and "--window-s" in convert
    with pytest.raises(SystemExit):  # a flag another task has is a usage error, not silently ignored
        parser.parse_args(["transcribe", "--input", "a", "--output", "b", "--model", "m", "--reference", "r.wav"])


def test_every_flag_says_what_it_does_and_its_default_and_each_subcommand_has_an_example():
    from jobs.tasks import TASKS

    parser = build_parser()
    for name, task in TASKS.items():
        sub = _subcommand(parser, name)
        for action in sub._actions:
            if action.help is argparse.SUPPRESS or not action.option_strings or action.dest == "help":
                continue
            assert "default: " in action.help or action.help.endswith("(required)"), (name, action.option_strings)
        text = sub.format_help()
        assert "required (as flags or in the --config file)" in text
        assert f"example:\n  gpa-batch {name} --input " in text
        # the defaults shown are the options class's own
        for option, flag in (("max_new_tokens", "--max-new-tokens"), ("temperature", "--temperature")):
            default = {f.name: f.default for f in dataclasses.fields(task.options_class)}[option]
            [action] = [a for a in sub._actions if flag in a.option_strings]
            assert action.help.endswith(f"(default: {default})")


def test_an_unknown_task_option_answers_with_the_valid_keys_and_types(tmp_path):
    manifest = ROOT / "manifests" / "examples" / "transcribe.jsonl"
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "transcribe", "--input", str(manifest), "--output",
                          str(tmp_path / "out"), "--model", "m", "--option", "bogus=1"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert out.returncode == 1, out.stderr[-2000:]
    [line] = out.stderr.strip().splitlines()
    assert "unknown option bogus for transcribe; valid keys: max_new_tokens (int)," in line
    assert "window_s (float)" in line and "top_k (int or None)" in line
    assert "batch_size" not in line and "seed (" not in line  # the job's own settings have flags of their own
    assert "__init__" not in line


def test_encoder_precision_is_a_job_setting_refused_without_gpu_actors(tmp_path):
    from jobs.pipeline import run_job
    from jobs.run.errors import JobError

    args = build_parser().parse_args(["transcribe", "--input", "m.jsonl", "--output", str(tmp_path / "o"),
                                      "--model", "m", "--encoder-precision", "bfloat16"])
    config = config_from_args("transcribe", args)
    assert config.encoder_precision == "bfloat16"
    with pytest.raises(JobError, match="--encoder-precision bfloat16 needs GPU actors"):
        run_job(dataclasses.replace(config, gpus_per_actor=0.0))
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transcribe", "--encoder-precision", "float16"])


def test_a_cuda_device_without_gpu_actors_is_refused_before_ray_starts(tmp_path):
    from jobs.pipeline import run_job
    from jobs.run.cluster import cluster_resources
    from jobs.run.errors import JobError

    args = build_parser().parse_args(["transcribe", "--input", "m.jsonl", "--output", str(tmp_path / "o"),
                                      "--model", "m", "--device", "cuda:0"])
    config = config_from_args("transcribe", args)
    with pytest.raises(JobError, match="--device cuda:0 needs GPU actors, but --gpus-per-actor is 0: pass"):
        run_job(dataclasses.replace(config, gpus_per_actor=0.0))
    if cluster_resources(config)[0] == 0:  # what a machine without a GPU (CI) says when nothing was asked
        with pytest.raises(JobError, match="needs GPU actors, but the Ray cluster has no GPU now"):
            run_job(config)
    assert not (tmp_path / "o").exists()
