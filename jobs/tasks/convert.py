"""convert: speech + reference voice -> the same speech in that voice (voice conversion), with speaker similarity
to the reference and to the source."""

from __future__ import annotations

import pyarrow as pa

from gpa import ConvertOptions

from .. import schema as S
from ..quality import similarity
from .base import VoiceTask, _short_hash, uri_of


class ConvertTask(VoiceTask):
    name = "convert"
    summary = "speech + reference voice -> the same speech in that voice (VC)"
    example = ("gpa-batch convert --input convert.parquet --output out/ --model AutoArk-AI/GPA "
               "--reference voices/target.wav")
    manifest_names = ("vc",)
    manifest_fields = {"audio": True, "ref_audio": True, "ref_id": False, "source_id": False,
                       "begin_time": False, "end_time": False}
    quality_checks = "speaker similarity to the reference and to the source"
    audio_fields = ("audio",)
    options_class = ConvertOptions
    work_fields = [
        pa.field("global_tokens", S.TOKENS), pa.field("source_semantic_tokens", S.TOKENS),
        pa.field("semantic_tokens", S.TOKENS), pa.field("num_generated_tokens", pa.int32()),
        pa.field("truncated", pa.bool_()), pa.field("speaker_similarity", pa.float64()),
        pa.field("source_similarity", pa.float64()),
    ]
    output_fields = [
        pa.field("source_id", pa.string()),
        pa.field("source_audio_uri", pa.string()),
        pa.field("begin_time", pa.float64()),
        pa.field("end_time", pa.float64()),
        pa.field("ref_id", pa.string()),
        pa.field("ref_audio_uri", pa.string()),
        pa.field("audio", S.AUDIO),
        pa.field("sampling_rate", pa.int32()),
        pa.field("source_duration_s", pa.float64()),
        pa.field("global_tokens", S.TOKENS),
        pa.field("source_semantic_tokens", S.TOKENS),
        pa.field("semantic_tokens", S.TOKENS),
        pa.field("num_generated_tokens", pa.int32()),
        pa.field("truncated", pa.bool_()),
        pa.field("speaker_similarity", pa.float64()),
        pa.field("source_similarity", pa.float64()),
    ]
    audio_in_column = "source_duration_s"
    audio_out_column = "duration_s"
    work_audio = "in"

    def id_from_row(self, row, audio, segment, ref):
        if not audio:
            return None
        return f"{audio}{segment}>{_short_hash(ref)}" if ref else f"{audio}{segment}"

    def run(self, model, rows, waves, options, speakers, quality):
        outputs, refs, ok = self.voice_cloning(model, rows, speakers, lambda todo, refs: model.convert(
            [(waves["wav"][i], S.SAMPLE_RATE) for i in todo], refs, options, seeds=[rows[i]["seed"] for i in todo]))
        if quality:
            similarity(model, [rows[i] for i in ok], [outputs[i] for i in ok], "speaker_similarity",
                       [refs[i].embedding for i in ok])
            similarity(model, [rows[i] for i in ok], [outputs[i] for i in ok], "source_similarity",
                       None, sources=[waves["wav"][i] for i in ok])
        return outputs

    def output_row(self, row, audio, config, params, model_info):
        ok = row["status"] == "ok"
        return self.row_type(
            **{**self.common(row, params, model_info), "duration_s": row.get("out_duration_s")},
            source_id=row.get("source_id"), source_audio_uri=uri_of(row, "audio"),
            begin_time=row.get("begin_time"), end_time=row.get("end_time"),
            ref_id=row.get("ref_id"), ref_audio_uri=uri_of(row, "ref_audio"),
            audio=audio, sampling_rate=S.SAMPLE_RATE if ok else None, source_duration_s=row.get("duration_s"),
            global_tokens=row.get("global_tokens"), source_semantic_tokens=row.get("source_semantic_tokens"),
            semantic_tokens=row.get("semantic_tokens"), num_generated_tokens=row.get("num_generated_tokens"),
            truncated=row.get("truncated"), speaker_similarity=row.get("speaker_similarity"),
            source_similarity=row.get("source_similarity"),
        )


TASK = ConvertTask()
