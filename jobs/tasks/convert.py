"""convert: speech + reference voice -> the same speech in that voice (voice conversion), with speaker similarity
to the reference and to the source."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gpa import ConvertOptions
from jobs.io import schema as S
from jobs.tasks.base import (
    EMBEDDING,
    PIECE_RANGE,
    TOKEN_LISTS,
    VoiceTask,
    mark_error,
    run_pieces,
    short_hash,
    uri_of,
)
from jobs.tasks.quality import similarity


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
        pa.field("speaker_embedding", EMBEDDING), pa.field("source_embedding", EMBEDDING),
        pa.field("piece_ranges", pa.list_(PIECE_RANGE)), pa.field("piece_source_tokens", TOKEN_LISTS),
        pa.field("piece_generated", TOKEN_LISTS),
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
        return f"{audio}{segment}>{short_hash(ref)}" if ref else f"{audio}{segment}"

    # the staged pipeline
    tokenize_components = ("bicodec",)
    piece_column = "piece_source_tokens"

    def tokenize(self, model, rows, waves, options, speakers, quality):
        from gpa.errors import GPAError

        self.tokenize_speakers(model, rows, speakers)
        pieces, audio, sources = [], [], {}
        for i, row in enumerate(rows):
            if row["status"] != "ok":
                continue
            try:
                sources[i] = model.load((waves["wav"][i], S.SAMPLE_RATE))
            except GPAError as exc:
                mark_error(row, exc)
                continue
            windows = model.conversion_windows(sources[i], options)
            row.update(piece_ranges=[{"start": a, "end": b} for a, b in windows], piece_source_tokens=[])
            pieces += [(i, k) for k in range(len(windows))]
            audio += [sources[i][a:b] for a, b in windows]
        where = {piece: n for n, piece in enumerate(pieces)}
        tokens = run_pieces(lambda batch: model.tokenize_source([audio[where[p]] for p in batch]), pieces, rows,
                            options.batch_size, size=lambda p: len(audio[where[p]]))
        for (i, _), semantic in zip(pieces, tokens, strict=True):
            if semantic is not None and rows[i]["status"] == "ok":
                rows[i]["piece_source_tokens"].append([int(x) for x in semantic])
        live = [i for i in sources if rows[i]["status"] == "ok"]
        if quality and live:  # the source's voice, for the source similarity (the audio does not travel on)
            try:
                embeddings = model.speaker_embeddings([(sources[i], S.SAMPLE_RATE) for i in live])
            except GPAError:
                return  # quality is best effort
            for i, embedding in zip(live, embeddings, strict=True):
                rows[i]["source_embedding"] = [float(x) for x in np.asarray(embedding).reshape(-1)]

    def generate_pieces(self, model, rows, batch, options):
        from gpa.model import piece_seed
        from gpa.results import Speaker

        def seconds(i, k) -> float:
            window = rows[i]["piece_ranges"][k]
            return (window["end"] - window["start"]) / S.SAMPLE_RATE

        return model.generate_conversion(
            [np.asarray(rows[i]["piece_source_tokens"][k]) for i, k in batch],
            [Speaker(np.asarray(rows[i]["global_tokens"]), np.asarray(rows[i]["speaker_embedding"])) for i, _ in batch],
            options, seeds=[piece_seed(rows[i]["seed"], k) for i, k in batch],
            seconds=[seconds(i, k) for i, k in batch])

    def detokenize(self, model, rows, options, quality):
        outputs = super().detokenize(model, rows, options, quality)
        for row, out in zip(rows, outputs, strict=True):
            if out is not None:
                row["source_semantic_tokens"] = [t for tokens in row["piece_source_tokens"] for t in tokens]
        return outputs

    def measure(self, model, rows, outputs, ok, options):
        similarity(model, [rows[i] for i in ok], [outputs[i] for i in ok], "speaker_similarity",
                   [rows[i]["speaker_embedding"] for i in ok])
        with_source = [i for i in ok if rows[i].get("source_embedding")]
        similarity(model, [rows[i] for i in with_source], [outputs[i] for i in with_source], "source_similarity",
                   [rows[i]["source_embedding"] for i in with_source])

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
