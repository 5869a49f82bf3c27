"""``gpa``: one-off use of the library from a shell.

gpa transcribe FILE... --model SRC
gpa synthesize --text "..." --reference REF.wav --out X.wav --model SRC
gpa convert SOURCE REFERENCE --out X.wav --model SRC
gpa make-checkpoint DIR [--seed N] [--arch qwen3|qwen2] [--size tiny|tiny-alt|real]
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_MODEL = "AutoArk-AI/GPA"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint: local dir, s3://bucket/prefix or HF repo id")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-new-tokens", type=int, default=None)
        p.add_argument("--constrained", action="store_true", help="only let the model emit tokens valid for the task")

    p = sub.add_parser("transcribe", help="speech to text")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="print one JSON object per file (text, segments, error)")
    model_args(p)

    p = sub.add_parser("synthesize", help="text to speech in the voice of a reference recording")
    p.add_argument("--text", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--out", required=True)
    model_args(p)

    p = sub.add_parser("convert", help="say SOURCE's words in REFERENCE's voice")
    p.add_argument("source")
    p.add_argument("reference")
    p.add_argument("--out", required=True)
    model_args(p)

    p = sub.add_parser("convert-weights", help="convert pickle weights (.bin/.pt) to safetensors, safely, once")
    p.add_argument("files", nargs="+")

    p = sub.add_parser("make-checkpoint", help="write a random checkpoint in the official layout (tests, demos)")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="qwen3", choices=["qwen3", "qwen2"])
    p.add_argument("--size", default="tiny", choices=["tiny", "tiny-alt", "real"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import GPAError

    try:
        return _run(args)
    except GPAError as exc:  # an unusable checkpoint or input: a message, not a traceback
        print(f"gpa {args.command}: {exc.kind}: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.command == "convert-weights":
        from .checkpoint import convert_to_safetensors

        for path in args.files:
            print(convert_to_safetensors(path))
        return 0
    if args.command == "make-checkpoint":
        from .checkpoint import parameter_counts
        from .testing import make_tiny_checkpoint

        directory = make_tiny_checkpoint(args.directory, args.seed, arch=args.arch, size=args.size)
        for name, count in parameter_counts(directory).items():  # stderr: scripts read the path from stdout
            print(f"{name}: {count:,} parameters", file=sys.stderr)
        print(directory)
        return 0

    import soundfile as sf
    import torch

    from .model import GPA
    from .options import ConvertOptions, SynthesizeOptions, TranscribeOptions

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = GPA.from_pretrained(args.model, device=device, dtype=dtype)
    overrides = {"seed": args.seed, "constrained": args.constrained}
    if args.max_new_tokens:
        overrides["max_new_tokens"] = args.max_new_tokens

    if args.command == "transcribe":
        failed = 0
        for path, result in zip(args.files, model.transcribe(args.files, TranscribeOptions(**overrides)), strict=True):
            failed += not result.ok
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": path,
                            "text": result.text,
                            "truncated": result.truncated,
                            "segments": [vars(s) for s in result.segments],
                            "error": None if result.ok else {"kind": result.error.kind, "message": str(result.error)},
                        },
                        ensure_ascii=False,
                    )
                )
            elif result.ok:
                print(f"{path}\t{result.text}")
            else:
                print(f"{path}\tERROR {result.error.kind}: {result.error}", file=sys.stderr)
        return 1 if failed else 0

    if args.command == "synthesize":
        result = model.synthesize([args.text], [args.reference], SynthesizeOptions(**overrides))[0]
    else:
        result = model.convert([args.source], [args.reference], ConvertOptions(**overrides))[0]
    if not result.ok:
        print(f"ERROR {result.error.kind}: {result.error}", file=sys.stderr)
        return 1
    sf.write(args.out, result.audio, result.sample_rate, subtype="PCM_16")
    note = " (stopped at max_new_tokens: output may be cut)" if result.truncated else ""
    print(f"wrote {args.out}: {len(result.audio) / result.sample_rate:.2f} s{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
