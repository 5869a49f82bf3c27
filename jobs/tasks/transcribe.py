"""transcribe: speech -> text (ASR), with segment times and, given a reference text, WER/CER."""

from __future__ import annotations

import pyarrow as pa

from gpa import TranscribeOptions

from .. import schema as S
from ..quality import error_rates
from .base import Task, mark_error, uri_of


class TranscribeTask(Task):
    name = "transcribe"
    summary = "speech -> text (ASR)"
    example = ("gpa-batch transcribe --input s3://bucket/archive/ --glob '**/*.mp3' --output s3://bucket/asr/ "
               "--model AutoArk-AI/GPA")
    manifest_names = ("stt", "asr", "")  # a GPA row without a task is an ASR row
    manifest_fields = {"audio": True, "text": False, "begin_time": False, "end_time": False}
    audio_fields = ("audio",)
    options_class = TranscribeOptions
    work_fields = [
        pa.field("out_text", pa.string()), pa.field("segments", pa.list_(S.SEGMENT)),
        pa.field("num_glm_tokens", pa.int32()), pa.field("num_semantic_tokens", pa.int32()),
        pa.field("num_generated_tokens", pa.int32()), pa.field("truncated", pa.bool_()),
        pa.field("glm_tokens", S.TOKENS), pa.field("semantic_tokens", S.TOKENS),
    ]
    output_fields = [
        pa.field("audio_uri", pa.string()),
        pa.field("begin_time", pa.float64()),
        pa.field("end_time", pa.float64()),
        pa.field("text", pa.string()),
        pa.field("segments", pa.list_(S.SEGMENT)),
        pa.field("num_glm_tokens", pa.int32()),
        pa.field("num_semantic_tokens", pa.int32()),
        pa.field("num_generated_tokens", pa.int32()),
        pa.field("truncated", pa.bool_()),
        pa.field("reference", pa.string()),  # the manifest's text: what WER/CER are measured against
        pa.field("wer", pa.float64()),
        pa.field("cer", pa.float64()),
        # --keep-tokens: the prompt's GLM and BiCodec semantic token ids (null without it, and in earlier outputs)
        pa.field("glm_tokens", S.TOKENS),
        pa.field("semantic_tokens", S.TOKENS),
    ]
    audio_in_column = "duration_s"
    work_audio = "in"
    reference_field = "reference"

    def run(self, model, rows, waves, options, speakers, quality):
        results = model.transcribe([(w, S.SAMPLE_RATE) for w in waves["wav"]], options)
        for row, result in zip(rows, results, strict=True):
            if not result.ok:
                mark_error(row, result.error)
                continue
            offset = row.get("begin_time") or 0.0  # segment times are in the source file's timeline
            row.update(
                out_text=result.text,
                segments=[{"start": s.start + offset, "end": s.end + offset, "text": s.text} for s in result.segments],
                num_glm_tokens=len(result.glm_tokens), num_semantic_tokens=len(result.semantic_tokens),
                num_generated_tokens=len(result.generated_ids), truncated=bool(result.truncated),
                # a few bytes per second of audio beside its samples; output_row keeps them with --keep-tokens
                glm_tokens=list(map(int, result.glm_tokens)), semantic_tokens=list(map(int, result.semantic_tokens)),
            )
        return [None] * len(rows)

    def output_row(self, row, audio, config, params, model_info):
        reference = row.get("text")
        wer = cer = None
        if row["status"] == "ok" and reference:
            wer, cer = error_rates(reference, row.get("out_text") or "")
        return self.row_type(
            **self.common(row, params, model_info),
            audio_uri=uri_of(row, "audio"), begin_time=row.get("begin_time"), end_time=row.get("end_time"),
            text=row.get("out_text"), segments=row.get("segments"),
            num_glm_tokens=row.get("num_glm_tokens"), num_semantic_tokens=row.get("num_semantic_tokens"),
            num_generated_tokens=row.get("num_generated_tokens"), truncated=row.get("truncated"),
            reference=reference, wer=wer, cer=cer,
            glm_tokens=row.get("glm_tokens") if config.keep_tokens else None,
            semantic_tokens=row.get("semantic_tokens") if config.keep_tokens else None,
        )

    def job_params(self, config):
        return {"keep_tokens": config.keep_tokens}

    def add_arguments(self, group, default):
        group.add_argument("--keep-tokens", action="store_true",
                           help="keep each row's GLM and semantic token ids (columns glm_tokens, semantic_tokens; "
                                "default: token counts only)")


TASK = TranscribeTask()
