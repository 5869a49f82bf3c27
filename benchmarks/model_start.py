"""Where the start of a model goes: imports, device init, each component's load, the first calls, the content hash.

    python benchmarks/model_start.py                          # tiny random checkpoint, CPU, 3 fresh processes
    python benchmarks/model_start.py --model DIR --device cuda --runs 5

Every job actor (and every user's script) pays this before its first batch; it is most of the pipeline's fixed cost
(docs/jobs.md, Performance). Each run is a fresh process, timed step by step, as an actor's constructor would do it
(one torch thread unless --threads): the components load one after the other, as ``GPA.from_pretrained`` loads them,
and the content hash is timed on its own (``from_pretrained`` overlaps it with the loads). "1st call" and "2nd call"
transcribe the same second of noise: the difference is what the first call of a process adds (kernel selection,
allocator growth). The table ends with the median of each column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("import torch", "import gpa", "device init", "glm", "bicodec", "llm", "load", "1st call", "2nd call", "hash")


def child(model: str, device: str, threads: int, max_new_tokens: int) -> dict[str, float]:
    """One fresh process's timings (seconds), step by step."""
    times: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        if device.startswith("cuda") and torch.cuda.is_initialized():  # not before "device init" starts CUDA
            torch.cuda.synchronize()
        now = time.perf_counter()
        times[name] = now - start
        start = now

    import torch

    lap("import torch")
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from gpa import GPA, TranscribeOptions
    from gpa.bicodec import BiCodec
    from gpa.checkpoint_files import content_hash
    from gpa.glm_tokenizer import GLMSpeechTokenizer
    from gpa.llm import load_llm

    lap("import gpa")
    torch.set_num_threads(threads)
    torch.zeros(1, device=device)
    lap("device init")
    directory = Path(model)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    glm = GLMSpeechTokenizer.from_pretrained(directory / "glm-4-voice-tokenizer", device=device, dtype=dtype)
    lap("glm")
    bicodec = BiCodec.from_pretrained(directory / "BiCodec", device=device, dtype=torch.float32)
    lap("bicodec")
    llm, tokenizer = load_llm(directory, device=device, dtype=dtype)
    lap("llm")
    times["load"] = times["glm"] + times["bicodec"] + times["llm"]
    gpa = GPA.from_parts(llm, tokenizer, glm, bicodec, source=model)
    noise = (np.random.default_rng(0).normal(size=16000).astype(np.float32) * 0.1, 16000)
    options = TranscribeOptions(max_new_tokens=max_new_tokens)
    for name in ("1st call", "2nd call"):
        start = time.perf_counter()
        result = gpa.transcribe([noise], options)[0]
        if not result.ok:
            raise RuntimeError(result.error)
        lap(name)
    content_hash(directory)
    lap("hash")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a generated tiny random one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a job actor sets them")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.device, args.threads, args.max_new_tokens)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT))
            from gpa.testing import make_tiny_checkpoint

            model = str(make_tiny_checkpoint(Path(tmp) / "tiny", seed=0))
        command = [sys.executable, __file__, "--child", "--model", model, "--device", args.device,
                   "--threads", str(args.threads), "--max-new-tokens", str(args.max_new_tokens)]
        runs = []
        for _ in range(args.runs):
            started = time.perf_counter()
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]) | {"process": time.perf_counter() - started})
    columns = (*COLUMNS, "process")
    print(f"model {model}, {args.device}, {args.threads} torch thread(s); seconds per step of a fresh process")
    print(" | ".join(["run", *columns]))
    for i, run in enumerate(runs, 1):
        print(" | ".join([str(i), *(f"{run[c]:.2f}" for c in columns)]))
    print(" | ".join(["median", *(f"{statistics.median(r[c] for r in runs):.2f}" for c in columns)]))
    print("load = glm + bicodec + llm (one after the other, as GPA.from_pretrained does); hash: the content hash "
          "alone (from_pretrained runs it in a thread during the load); process: the whole child, its start and exit "
          "included")


if __name__ == "__main__":
    main()
