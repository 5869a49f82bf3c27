"""``gpa``: one-off use of the library from a shell.

gpa transcribe FILE... --model SRC
gpa synthesize --text "..." --reference REF.wav --out X.wav --model SRC   (.wav .flac .ogg .mp3)
gpa convert SOURCE REFERENCE --out X.wav --model SRC
gpa make-checkpoint DIR [--seed N] [--arch qwen3|qwen2] [--size tiny|tiny-alt|real]
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_MODEL = "AutoArk-AI/GPA"
OUT_HELP = "audio file to write: .wav, .flac, .ogg or .mp3 (16 kHz mono); missing folders are created"


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
    p.add_argument("--out", required=True, help=OUT_HELP)
    model_args(p)

    p = sub.add_parser("convert", help="say SOURCE's words in REFERENCE's voice")
    p.add_argument("source")
    p.add_argument("reference")
    p.add_argument("--out", required=True, help=OUT_HELP)
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

    if getattr(args, "out", None) is not None:
        try:  # before the model loads and generates: a bad --out must not cost a generation
            args.out_format = prepare_out(args.out)
        except ValueError as exc:
            print(f"gpa {args.command}: --out {args.out}: {exc}", file=sys.stderr)
            return 2
    try:
        return _run(args)
    except GPAError as exc:  # an unusable checkpoint or input: a message, not a traceback
        print(f"gpa {args.command}: {exc.kind}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder that cannot be written, a file where a folder should be
        if exc.strerror is None:
            reason = str(exc).strip().split("\n")[0] or type(exc).__name__
        elif args.command == "make-checkpoint":  # its own file names are temporary: name the folder asked for
            reason = f"cannot write {args.directory}: {exc.strerror}"
        else:
            reason = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        print(f"gpa {args.command}: {reason}", file=sys.stderr)
        return 1


# --out extensions and their soundfile formats (16 kHz mono; WAV and FLAC as 16-bit PCM)
OUT_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}


def prepare_out(out: str) -> str:
    """The soundfile format of ``out`` (from its extension), with its folder created when missing; ValueError for
    an extension this libsndfile cannot write, or a path that cannot be written."""
    import os

    import soundfile as sf

    if os.path.isdir(out):
        raise ValueError("is a directory; name the audio file to write")
    extension = os.path.splitext(out)[1].lower()
    fmt = OUT_FORMATS.get(extension)
    if fmt is None or fmt not in sf.available_formats():  # MP3 needs libsndfile >= 1.1
        usable = ", ".join(e for e, f in OUT_FORMATS.items() if f in sf.available_formats())
        raise ValueError(f"cannot write {extension or 'a file without an extension'}; use one of {usable}")
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission
        raise ValueError(f"cannot create its folder ({exc.strerror or type(exc).__name__})") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write into {folder} (permission denied)")
    existed = os.path.exists(out)
    try:  # what access() cannot tell: a folder of a filesystem that makes no files (/proc), a full quota
        with open(out, "ab"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write it ({exc.strerror or type(exc).__name__})") from None
    if not existed:
        os.remove(out)
    return fmt


def _run(args) -> int:
    if args.command == "convert-weights":
        from .checkpoint import convert_to_safetensors

        for path in args.files:
            print(convert_to_safetensors(path))
        return 0
    if args.command == "make-checkpoint":
        import os

        from .checkpoint import parameter_counts
        from .storage import nearest_existing
        from .testing import make_tiny_checkpoint

        existing = nearest_existing(args.directory)
        if not os.path.isdir(existing):
            print(f"gpa make-checkpoint: cannot write {args.directory}: {existing} is a file", file=sys.stderr)
            return 1
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
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpa {args.command}: --device {device}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use "
              "--device cpu", file=sys.stderr)
        return 2
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
    try:
        sf.write(args.out, result.audio, result.sample_rate, format=args.out_format,
                 subtype="PCM_16" if args.out_format in ("WAV", "FLAC") else None)
    except (sf.LibsndfileError, OSError) as exc:  # a disk that filled up while the model ran
        print(f"gpa {args.command}: cannot write {args.out} ({exc})", file=sys.stderr)
        return 1
    note = " (stopped at max_new_tokens: output may be cut)" if result.truncated else ""
    print(f"wrote {args.out}: {len(result.audio) / result.sample_rate:.2f} s{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
