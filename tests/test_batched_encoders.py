"""Batched encoders in float32: items of different lengths in one batch get exactly the tokens they get alone.

GLM tokens, BiCodec semantic tokens (wav2vec2 -> feature encoder -> quantizer) and BiCodec global tokens (mel ->
ECAPA -> perceiver -> FSQ) on mixed lengths, among them lengths that are no multiple of any hop and the 0.1 s
minimum clip; an item's tokens do not depend on its batch mates or the batch size. The padding masks are shown
to matter: without them the padded items' results change.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from gpa.bicodec import BiCodec
from gpa.bicodec.wav2vec2 import Wav2Vec2Features
from gpa.errors import GPAError
from gpa.glm_tokenizer import GLMSpeechTokenizer
from gpa.inference import isolated, length_batches
from gpa.model import GPA
from gpa.testing import speech_like
from gpa.testing.bicodec import write_random_checkpoint as write_bicodec
from gpa.testing.glm import write_random_checkpoint as write_glm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import encoder_agreement  # noqa: E402

SIZES = ["tiny", "tiny-alt"]
# 0.1 s (the shortest input GPA accepts), one sample more, odd lengths, a whole number of every hop, 3-4 s
LENGTHS = [1600, 1601, 4481, 12345, 16000, 25600, 33333, 47999, 60001]


def clips(seed: int = 0, lengths=LENGTHS) -> list[np.ndarray]:
    return [speech_like(n, seed * 1000 + i) for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def codecs(tmp_path_factory) -> dict[str, BiCodec]:
    root = tmp_path_factory.mktemp("bicodec")
    out = {}
    for seed, size in enumerate(SIZES):
        write_bicodec(root / size, seed=seed, size=size)
        out[size] = BiCodec.from_pretrained(root / size)
    return out


@pytest.fixture(scope="module")
def glms(tmp_path_factory) -> dict[str, GLMSpeechTokenizer]:
    root = tmp_path_factory.mktemp("glm")
    out = {}
    for seed, size in enumerate(SIZES):
        write_glm(root / size, seed=seed, size=size)
        out[size] = GLMSpeechTokenizer.from_pretrained(root / size)
    return out


def assert_batch_invariant(encode, component, audios: list[np.ndarray]) -> list[np.ndarray]:
    """``encode`` of all ``audios`` at once == each alone, also in other orders and batch sizes."""
    alone = [encode([a])[0] for a in audios]
    saved = component.batch_size
    try:
        for batch_size, order in ((len(audios), slice(None)), (3, slice(None, None, -1)), (2, slice(None))):
            component.batch_size = batch_size
            batched = encode(audios[order])[order]
            for i, (one, many) in enumerate(zip(alone, batched, strict=True)):
                assert one.dtype == many.dtype == np.int64
                where = f"item {i} ({len(audios[i])} samples), batch size {batch_size}"
                np.testing.assert_array_equal(one, many, err_msg=where)
    finally:
        component.batch_size = saved
    return alone


@pytest.mark.parametrize("size", SIZES)
def test_semantic_tokens_batched_equal_alone(codecs, size):
    codec = codecs[size]
    audios = clips(1)
    alone = assert_batch_invariant(codec.semantic_tokens, codec, audios)
    for audio, tokens in zip(audios, alone, strict=True):
        assert len(tokens) == codec.wav2vec2.num_frames(len(audio))
    # tokens vary over time and between clips (a constant stream would prove nothing)
    assert len(set(np.concatenate(alone).tolist())) >= 8


@pytest.mark.parametrize("size", SIZES)
def test_global_tokens_batched_equal_alone(codecs, size):
    codec = codecs[size]
    audios = clips(2)
    alone = assert_batch_invariant(codec.global_tokens, codec, audios)
    assert len({tuple(t) for t in alone}) >= 3  # a random speaker model still tells some clips apart
    embeddings = codec.speaker_embedding(audios)
    for audio, embedding in zip(audios, embeddings, strict=True):
        np.testing.assert_allclose(embedding, codec.speaker_embedding([audio])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_glm_tokens_batched_equal_alone(glms, size):
    glm = glms[size]
    audios = [a[: glm.max_samples] for a in clips(3)]
    alone = assert_batch_invariant(glm.tokenize, glm, audios)
    assert len(set(np.concatenate(alone).tolist())) >= 8


def test_bicodec_tokenize_and_features_batched_equal_alone(codecs):
    codec = codecs["tiny"]
    audios = clips(4)
    batched = codec.tokenize(audios)
    features = codec.wav2vec2_features(audios)
    for audio, (g, s), f in zip(audios, batched, features, strict=True):
        g1, s1 = codec.tokenize([audio])[0]
        np.testing.assert_array_equal(g, g1)
        np.testing.assert_array_equal(s, s1)
        f1 = codec.wav2vec2_features([audio])[0]
        assert f.shape == f1.shape == (codec.wav2vec2.num_frames(len(audio)), codec.wav2vec2.hidden_size)
        torch.testing.assert_close(f, f1, rtol=1e-5, atol=1e-5)


def _padded(items: list[np.ndarray]) -> torch.Tensor:
    out = torch.zeros(len(items), max(len(x) for x in items))
    for row, x in enumerate(items):
        out[row, : len(x)] = torch.from_numpy(x)
    return out


@pytest.mark.parametrize("size", SIZES)
def test_wav2vec2_masks_padding(codecs, size):
    w2v = codecs[size].wav2vec2
    long, short = (w2v.normalize(a) for a in clips(5, [40000, 9001]))
    frames = w2v.num_frames(len(short))
    alone = w2v(torch.from_numpy(short)[None])[0]
    assert alone.shape[0] == frames
    masked = w2v(_padded([long, short]), [len(long), len(short)])[1, :frames]
    torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-5)
    unmasked = w2v(_padded([long, short]))[1, :frames]  # padding leaks through the positional conv and attention
    assert (unmasked - alone).abs().max() > 1e-2
    # the conv front end batched (what a GPU runs): valid frames see only their own samples
    front_end = w2v.model.feature_extractor
    batched = front_end(_padded([long, short]))[1, :, :frames]
    torch.testing.assert_close(batched, front_end(torch.from_numpy(short)[None])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_feature_encoder_masks_padding(codecs, size):
    encoder = codecs[size].codec.encoder
    channels = codecs[size].wav2vec2.hidden_size
    gen = torch.Generator().manual_seed(0)
    short = torch.randn(1, channels, 37, generator=gen)
    garbage = 5 * torch.randn(1, channels, 23, generator=gen)  # what padded frames hold after wav2vec2
    batch = torch.cat([torch.randn(1, channels, 60, generator=gen), torch.cat([short, garbage], dim=2)])
    alone = encoder(short)[0]
    assert alone.shape[-1] == encoder.output_length(37)
    masked = encoder(batch, [60, 37])[1, :, : alone.shape[-1]]
    torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-5)
    assert (encoder(batch)[1, :, : alone.shape[-1]] - alone).abs().max() > 1e-2


def test_group_norm_front_end_runs_item_by_item():
    # wav2vec2-base style: a GroupNorm over time after the first convolution, which padding would shift
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=16, num_attention_heads=2, intermediate_size=64,
                            conv_dim=[16, 16], conv_kernel=[10, 8], conv_stride=[5, 64], num_feat_extract_layers=2,
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
                            do_stable_layer_norm=False)
    torch.manual_seed(0)
    w2v = Wav2Vec2Features(Wav2Vec2Model(config).eval())
    assert not w2v.front_end_per_frame
    long, short = (w2v.normalize(a) for a in clips(6, [20000, 7001]))
    alone = w2v(torch.from_numpy(short)[None])[0]
    masked = w2v(_padded([long, short]), [len(long), len(short)])[1, : alone.shape[0]]
    torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-5)


def test_length_batches():
    lengths = [5, 100, 90, 96, 10, 50, 52, 99]
    batches = length_batches(lengths, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [1, 7, 3]  # longest first, at most batch_size
    for batch in batches:
        content = sum(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= 1.25 * content
    assert length_batches([], 4) == []
    # a bound on padded tokens too (the static engine's prefill chunks); an item over it is a batch alone
    bounded = length_batches([300, 40, 45, 50, 48], batch_size=10, max_tokens=150)
    assert bounded == [[0], [3, 4, 2], [1]]


def test_isolated_runs_the_largest_first_and_a_failure_errs_alone():
    calls: list[list[str]] = []

    def run(batch: list[str]) -> list[int]:
        calls.append(batch)
        if "x" in batch:
            raise ValueError("cannot take 'x'")
        return [len(x) for x in batch]

    items = ["aa", "x", "a", "aaaa", "aaa"]
    out = isolated(run, items, 2, size=len)
    assert calls[0] == ["aaaa", "aaa"]  # largest first: a generation engine sizes its cache once
    assert out[0] == 2 and out[2] == 1 and out[3] == 4 and out[4] == 3
    assert isinstance(out[1], GPAError) and "cannot take 'x'" in str(out[1])
    assert calls[1:] == [["aa", "x"], ["aa"], ["x"], ["a"]]  # the failed batch's items retried one by one


def test_bfloat16_is_refused_off_cuda(codecs, glms, tiny_checkpoint):
    # on a CPU, oneDNN's bf16 grouped convolutions are wrong (wav2vec2's positional convolution): refused
    codec, glm = codecs["tiny"], glms["tiny"]
    with pytest.raises(ValueError, match="precision 'bfloat16' needs a CUDA device"):
        BiCodec(codec.config, codec.codec, codec.wav2vec2, precision="bfloat16")
    with pytest.raises(ValueError, match="precision 'bfloat16' needs a CUDA device"):
        GLMSpeechTokenizer(glm.encoder, precision="bfloat16")
    with pytest.raises(ValueError, match="precision 'bfloat16' needs a CUDA device"):
        GPA.from_pretrained(tiny_checkpoint, encoder_precision="bfloat16")
    with pytest.raises(ValueError, match="must be one of"):
        GPA.from_pretrained(tiny_checkpoint, encoder_precision="fp8")
    try:  # set afterwards, it is refused at the next call
        codec.precision = "bfloat16"
        with pytest.raises(ValueError, match="needs a CUDA device"):
            codec.semantic_tokens(clips(7, [16000]))
    finally:
        codec.precision = "float32"
    with pytest.raises(SystemExit):
        encoder_agreement.main(["--clips", "1", "--precision", "bfloat16", "--device", "cpu"])


def test_quantizers_search_in_float32_under_autocast(codecs, glms):
    # bf16 rounding of the distances would move near-ties; the searches leave autocast
    codec = codecs["tiny"].codec
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(4, codec.config.quantizer.input_dim, 200, generator=gen)
    speaker = torch.randn(4, codec.config.speaker_encoder.token_num, codec.config.speaker_encoder.latent_dim,
                          generator=gen)
    glm = glms["tiny"].encoder
    hidden = torch.randn(4, 50, glm.config.d_model, generator=gen)
    exact = [codec.quantizer.tokenize(latents), codec.speaker_encoder.quantizer.tokenize(speaker), glm.quantize(hidden)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = [codec.quantizer.tokenize(latents), codec.speaker_encoder.quantizer.tokenize(speaker),
                   glm.quantize(hidden)]
    for a, b in zip(exact, rounded, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_agreement_script_float32_is_exact(capsys):
    report = encoder_agreement.main(["--clips", "5", "--min-s", "0.1", "--max-s", "3", "--batch-size", "4",
                                     "--precision", "float32"])
    assert json.loads(capsys.readouterr().out) == report
    for stream in ("glm", "semantic", "global"):
        assert report[stream]["token_agreement"] == report[stream]["clip_agreement"] == 1.0
        assert report[stream]["tokens"] > 0


def test_agreement_counts_disagreements():
    ref = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    result = encoder_agreement.agreement(ref, [np.array([1, 2, 0, 4]), np.array([5, 6, 7])])
    assert result == {"token_agreement": 5 / 7, "clip_agreement": 0.0, "tokens": 7}
    assert encoder_agreement.agreement(ref, ref)["clip_agreement"] == 1.0
