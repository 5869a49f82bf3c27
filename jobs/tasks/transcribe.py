"""transcribe: speech -> text (ASR), with segment times and, given a reference text, WER/CER."""

from __future__ import annotations

import pyarrow as pa

from gpa import TranscribeOptions
from jobs.io import schema as S
from jobs.tasks.base import PIECE_RANGE, TOKEN_LISTS, Task, live_pieces, mark_error, run_pieces, uri_of
from jobs.tasks.quality import error_rates


class TranscribeTask(Task):
    name = "transcribe"
    summary = "speech -> text (ASR)"
    example = ("gpa-batch transcribe --input s3://bucket/archive/ --glob '**/*.mp3' --output s3://bucket/asr/ "
               "--model AutoArk-AI/GPA")
    manifest_names = ("stt", "asr", "")  # a GPA row without a task is an ASR row
    manifest_fields = {"audio": True, "text": False, "begin_time": False, "end_time": False}
    audio_fields = ("audio",)
    task_settings = {"keep_tokens": "it keeps each row's GLM and semantic token ids, which synthesize and convert "
                                    "rows always keep"}
    options_class = TranscribeOptions
    work_fields = [
        pa.field("out_text", pa.string()), pa.field("segments", pa.list_(S.SEGMENT)),
        pa.field("num_glm_tokens", pa.int32()), pa.field("num_semantic_tokens", pa.int32()),
        pa.field("num_generated_tokens", pa.int32()), pa.field("truncated", pa.bool_()),
        pa.field("glm_tokens", S.TOKENS), pa.field("semantic_tokens", S.TOKENS),
        pa.field("piece_ranges", pa.list_(PIECE_RANGE)), pa.field("piece_glm_tokens", TOKEN_LISTS),
        pa.field("piece_semantic_tokens", TOKEN_LISTS),
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

    # the staged pipeline: the generate stage also detokenizes (text needs only the tokenizer every stage has)
    tokenize_components = ("glm", "bicodec")

    def tokenize(self, model, rows, waves, options, speakers, quality):
        from gpa.errors import GPAError

        pieces, audio = [], []
        for i, row in enumerate(rows):
            if row["status"] != "ok":
                continue
            try:
                samples = model.load((waves["wav"][i], S.SAMPLE_RATE))
            except GPAError as exc:
                mark_error(row, exc)
                continue
            windows = model.transcription_windows(samples, options)
            row.update(piece_ranges=[{"start": a, "end": b} for a, b in windows], piece_glm_tokens=[],
                       piece_semantic_tokens=[])
            pieces += [(i, k) for k in range(len(windows))]
            audio += [samples[a:b] for a, b in windows]
        where = {piece: n for n, piece in enumerate(pieces)}
        tokens = run_pieces(lambda batch: model.tokenize_speech([audio[where[p]] for p in batch]), pieces, rows,
                            options.batch_size, size=lambda p: len(audio[where[p]]))
        for (i, _), speech in zip(pieces, tokens, strict=True):
            if speech is not None and rows[i]["status"] == "ok":
                rows[i]["piece_glm_tokens"].append([int(x) for x in speech.glm])
                rows[i]["piece_semantic_tokens"].append([int(x) for x in speech.semantic])

    def generate(self, model, rows, options):
        import numpy as np

        from gpa.chunking import join_texts
        from gpa.results import SpeechTokens

        pieces = live_pieces(rows, "piece_ranges")

        def seconds(piece) -> float:
            window = rows[piece[0]]["piece_ranges"][piece[1]]
            return (window["end"] - window["start"]) / S.SAMPLE_RATE

        def run(batch):
            tokens = [SpeechTokens(np.asarray(rows[i]["piece_glm_tokens"][k]),
                                   np.asarray(rows[i]["piece_semantic_tokens"][k])) for i, k in batch]
            return model.generate_transcription(tokens, options, seconds=[seconds(p) for p in batch])

        generations = run_pieces(run, pieces, rows, options.batch_size, size=seconds)
        texts = model.detokenize_text([g.ids if g else [] for g in generations])
        done: dict[int, list] = {}
        for (i, k), generation, text in zip(pieces, generations, texts, strict=True):
            if rows[i]["status"] == "ok":
                done.setdefault(i, []).append((k, generation, text))
        for i, parts in done.items():
            row = rows[i]
            offset = row.get("begin_time") or 0.0  # segment times are in the source file's timeline
            windows = row["piece_ranges"]
            row.update(
                out_text=join_texts([text for _, _, text in parts]),
                segments=[{"start": windows[k]["start"] / S.SAMPLE_RATE + offset,
                           "end": windows[k]["end"] / S.SAMPLE_RATE + offset, "text": text} for k, _, text in parts],
                glm_tokens=[t for tokens in row["piece_glm_tokens"] for t in tokens],
                semantic_tokens=[t for tokens in row["piece_semantic_tokens"] for t in tokens],
                num_generated_tokens=sum(len(g.ids) for _, g, _ in parts),
                truncated=any(g.hit_max_new_tokens for _, g, _ in parts),
            )
            row.update(num_glm_tokens=len(row["glm_tokens"]), num_semantic_tokens=len(row["semantic_tokens"]))

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
