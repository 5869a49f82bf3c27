"""``python -m jobs.convert --input ... --output ... --model ...`` (same flags as ``gpa-batch convert``)."""

from .cli import job_main

if __name__ == "__main__":
    job_main("convert")
