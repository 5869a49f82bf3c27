"""``python -m jobs.transcribe --input ... --output ... --model ...`` (same flags as ``gpa-batch transcribe``)."""

from .cli import job_main

if __name__ == "__main__":
    job_main("transcribe")
