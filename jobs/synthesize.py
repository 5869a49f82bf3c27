"""``python -m jobs.synthesize --input ... --output ... --model ...`` (same flags as ``gpa-batch synthesize``)."""

from .cli import job_main

if __name__ == "__main__":
    job_main("synthesize")
