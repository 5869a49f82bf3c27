"""Ray Data batch jobs on GPA: transcribe archives, synthesize TTS corpora, convert voices.

One job skeleton (:mod:`jobs.pipeline`) with the three tasks as plug-ins (:mod:`jobs.tasks`); the command line is
:mod:`jobs.cli` (``gpa-batch``). Importing this package does not import Ray.
"""
