"""synthesize: text + reference voice -> speech (voice-cloning TTS), with a quality gate (round-trip ASR CER and
speaker similarity) that marks the rows to keep."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpa import SynthesizeOptions
from gpa.chunking import clean_text
from gpa.errors import InvalidText
from jobs.io import schema as S
from jobs.tasks.base import EMBEDDING, TOKEN_LISTS, VoiceTask, mark_error, short_hash, uri_of
from jobs.tasks.quality import error_rates, round_trip, similarity


class SynthesizeTask(VoiceTask):
    name = "synthesize"
    summary = "text + reference voice -> speech (TTS)"
    example = ("gpa-batch synthesize --input s3://bucket/tts.jsonl --output s3://bucket/tts-out/ "
               "--model AutoArk-AI/GPA --reference s3://bucket/voices/narrator.wav")
    manifest_names = ("tts-a", "tts")
    manifest_fields = {"ref_audio": True, "text": True, "ref_id": False}
    quality_checks = "round-trip ASR and speaker similarity; every ok row is then kept"
    audio_fields = ()  # the reference is decoded by the actor's SpeakerCache
    options_class = SynthesizeOptions
    job_settings = (*VoiceTask.job_settings, "max_text_chars")
    work_fields = [
        pa.field("global_tokens", S.TOKENS), pa.field("semantic_tokens", S.TOKENS),
        pa.field("num_generated_tokens", pa.int32()), pa.field("truncated", pa.bool_()),
        pa.field("asr_text", pa.string()), pa.field("speaker_similarity", pa.float64()),
        pa.field("speaker_embedding", EMBEDDING), pa.field("piece_texts", pa.list_(pa.string())),
        pa.field("piece_generated", TOKEN_LISTS),
    ]
    output_fields = [
        pa.field("text", pa.string()),
        pa.field("ref_id", pa.string()),
        pa.field("ref_audio_uri", pa.string()),
        pa.field("audio", S.AUDIO),
        pa.field("sampling_rate", pa.int32()),
        pa.field("global_tokens", S.TOKENS),
        pa.field("semantic_tokens", S.TOKENS),
        pa.field("num_generated_tokens", pa.int32()),
        pa.field("truncated", pa.bool_()),
        pa.field("asr_text", pa.string()),
        pa.field("wer", pa.float64()),
        pa.field("cer", pa.float64()),
        pa.field("speaker_similarity", pa.float64()),
        pa.field("keep", pa.bool_()),
    ]
    audio_out_column = "duration_s"
    work_audio = "out"
    reference_field = "text"

    def validate(self, row, reference, max_text_chars):
        problem = super().validate(row, reference, max_text_chars)
        if problem:
            return problem
        text = row["text"]
        if len(text) > max_text_chars:
            return "invalid_text", f"text has {len(text)} characters; the limit is {max_text_chars} (--max-text-chars)"
        try:  # what the model would refuse: the one cleaning rule, gpa's
            clean_text(text, max_text_chars)
        except InvalidText as exc:
            return "invalid_text", str(exc)
        return None

    def id_from_row(self, row, audio, segment, ref):
        return "tts-" + short_hash(f"{row['text']}\0{ref}") if row.get("text") else None

    def job_params(self, config):
        return {**super().job_params(config), "keep_max_cer": config.keep_max_cer,
                "keep_min_similarity": config.keep_min_similarity}

    def add_arguments(self, group, default):
        super().add_arguments(group, default)
        group.add_argument("--max-text-chars", type=int,
                           help=f"longer text becomes an error row (default: {default('max_text_chars')})")
        group.add_argument("--keep-max-cer", type=float,
                           help=f"quality gate: the highest round-trip CER of a kept row "
                                f"(default: {default('keep_max_cer')})")
        group.add_argument("--keep-min-similarity", type=float,
                           help=f"quality gate: the lowest speaker similarity of a kept row "
                                f"(default: {default('keep_min_similarity')})")

    def lengths(self, rows):
        return pc.fill_null(pc.utf8_length(rows.column("text")), 0).to_numpy().astype(np.float64)

    # the staged pipeline
    tokenize_components = ("bicodec",)
    piece_column = "piece_texts"

    def detokenize_components(self, quality):
        return ("glm", "bicodec", "llm") if quality else ("bicodec",)  # the round-trip ASR needs all of GPA

    def tokenize(self, model, rows, waves, options, speakers, quality):
        self.tokenize_speakers(model, rows, speakers)
        for row in rows:
            if row["status"] == "ok":
                try:
                    row["piece_texts"] = model.synthesis_chunks(row["text"], options)
                except InvalidText as exc:
                    mark_error(row, exc)

    def generate_pieces(self, model, rows, batch, options):
        from gpa.model import piece_seed
        from gpa.results import Speaker

        return model.generate_synthesis(
            [rows[i]["piece_texts"][k] for i, k in batch],
            [Speaker(np.asarray(rows[i]["global_tokens"]), np.asarray(rows[i]["speaker_embedding"])) for i, _ in batch],
            options, seeds=[piece_seed(rows[i]["seed"], k) for i, k in batch])

    def measure(self, model, rows, outputs, ok, options):
        round_trip(model, [rows[i] for i in ok], [outputs[i] for i in ok], options.batch_size)
        similarity(model, [rows[i] for i in ok], [outputs[i] for i in ok], "speaker_similarity",
                   [rows[i]["speaker_embedding"] for i in ok])

    def output_row(self, row, audio, config, params, model_info):
        ok = row["status"] == "ok"
        wer = cer = None
        if ok and row.get("asr_text") is not None:
            wer, cer = error_rates(row.get("text") or "", row["asr_text"])
        similarity_ = row.get("speaker_similarity")
        return self.row_type(
            **{**self.common(row, params, model_info), "duration_s": row.get("out_duration_s")},
            text=row.get("text"), ref_id=row.get("ref_id"), ref_audio_uri=uri_of(row, "ref_audio"),
            audio=audio, sampling_rate=S.SAMPLE_RATE if ok else None,
            global_tokens=row.get("global_tokens"), semantic_tokens=row.get("semantic_tokens"),
            num_generated_tokens=row.get("num_generated_tokens"), truncated=row.get("truncated"),
            asr_text=row.get("asr_text"), wer=wer, cer=cer, speaker_similarity=similarity_,
            keep=ok and passes_gate(cer, similarity_, config),
        )


def passes_gate(cer: float | None, similarity_: float | None, config) -> bool:
    """The quality gate: intelligible (CER) and in the reference's voice (similarity); open with --no-quality."""
    if not config.quality:
        return True
    return (cer is not None and similarity_ is not None and cer <= config.keep_max_cer
            and similarity_ >= config.keep_min_similarity)


TASK = SynthesizeTask()
