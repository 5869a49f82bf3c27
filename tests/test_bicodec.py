"""BiCodec on random tiny checkpoints: token rates, batching, decoding, config handling, strict loading."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from gpa.bicodec import BiCodec, load_config
from gpa.bicodec.config import FeatDecoderConfig, config_from_dict
from gpa.bicodec.feature_codec import Decoder
from gpa.bicodec.layers import Snake1d, WNConv1d
from gpa.bicodec.preprocess import peak_normalize, percentile_normalize, reference_clip
from gpa.bicodec.wave_generator import ResidualUnit
from gpa.errors import CheckpointError, EmptyAudio, TooShortAudio
from gpa.testing import speech_like
from gpa.testing.bicodec import write_random_checkpoint

SR = 16000


def voice(seconds: float, f0: float, seed: int, amp: float = 0.5) -> np.ndarray:
    """A buzzy harmonic tone with vibrato and a little noise: different f0/seed = a different 'speaker'."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(f0 + 0.1 * f0 * np.sin(2 * np.pi * 4 * t)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 10)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t + seed))
    x = x + 0.05 * rng.standard_normal(n)
    return (amp * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: intra-op threads only add synchronisation, which on a loaded shared machine
    # costs far more than it gains (observed 5x slower with 2 threads).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bicodec") / "BiCodec"
    write_random_checkpoint(d, seed=0, size="tiny")
    return d


@pytest.fixture(scope="module")
def alt_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bicodec_alt") / "BiCodec"
    write_random_checkpoint(d, seed=1, size="tiny-alt")
    return d


@pytest.fixture(scope="module")
def codec(tiny_dir) -> BiCodec:
    return BiCodec.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def alt_codec(alt_dir) -> BiCodec:
    return BiCodec.from_pretrained(alt_dir)


def test_layout_and_sizes(tiny_dir, alt_dir):
    for d in (tiny_dir, alt_dir):
        names = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
        assert names == [
            "config.yaml",
            "model.safetensors",
            "wav2vec2-large-xlsr-53/config.json",
            "wav2vec2-large-xlsr-53/model.safetensors",
            "wav2vec2-large-xlsr-53/preprocessor_config.json",
        ]
        assert sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) < 16e6
    # The released layout: network under audio_tokenizer:, preprocessing at the top level.
    raw = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    assert set(raw["audio_tokenizer"]) >= {"mel_params", "encoder", "quantizer", "speaker_encoder", "prenet"}
    assert raw["ref_segment_duration"] == 6.0 and raw["latent_hop_length"] == 320


def test_attributes(codec, alt_codec):
    for c in (codec, alt_codec):
        assert c.sample_rate == 16000
        assert c.samples_per_semantic_token == 320
        assert c.num_global_tokens == 32
    assert (codec.semantic_codebook_size, codec.global_codebook_size) == (64, 4**6)
    assert (alt_codec.semantic_codebook_size, alt_codec.global_codebook_size) == (100, 8 * 5 * 5 * 5)
    assert codec.config.mel_params.num_mels != alt_codec.config.mel_params.num_mels


@pytest.mark.parametrize("which", ["codec", "alt_codec"])
def test_token_rates_and_ranges(which, request):
    c = request.getfixturevalue(which)
    global_tokens, semantic = c.tokenize([voice(2.0, 140, 0)])[0]
    assert semantic.dtype == np.int64 and global_tokens.dtype == np.int64
    assert abs(len(semantic) - 50 * 2.0) <= 1, "semantic tokens come at 50 per second"
    assert global_tokens.shape == (32,)
    assert 0 <= semantic.min() and semantic.max() < c.semantic_codebook_size
    assert 0 <= global_tokens.min() and global_tokens.max() < c.global_codebook_size
    assert len(set(semantic.tolist())) > 2, "semantic tokens vary over time"
    assert len(set(global_tokens.tolist())) > 4


def test_global_tokens_and_embeddings_differ_between_speakers(codec):
    a, b = voice(3.0, 110, 0), voice(3.0, 260, 5)
    ga, gb = codec.global_tokens([a, b])
    assert (ga != gb).sum() >= 4
    emb = codec.speaker_embedding([a, b, a])
    assert emb.shape == (3, codec.speaker_embedding_dim) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb[0], emb[2])
    assert not np.allclose(emb[0], emb[1])


def test_batch_equals_single(codec):
    # Several lengths, two items of equal length (batched together), a short one (tiled reference clip).
    audios = [voice(1.3, 120, 0), voice(0.7, 200, 1), voice(1.3, 180, 2), voice(2.1, 90, 3, amp=0.05)]
    batched = codec.tokenize(audios)
    for audio, (g, s) in zip(audios, batched, strict=True):
        g1, s1 = codec.tokenize([audio])[0]
        np.testing.assert_array_equal(g, g1)
        np.testing.assert_array_equal(s, s1)
    # The single-stream entry points agree with tokenize.
    for (g, s), g2, s2 in zip(batched, codec.global_tokens(audios), codec.semantic_tokens(audios), strict=True):
        np.testing.assert_array_equal(g, g2)
        np.testing.assert_array_equal(s, s2)
    wavs = codec.decode([g for g, _ in batched], [s for _, s in batched])
    for (g, s), wav in zip(batched, wavs, strict=True):
        np.testing.assert_allclose(wav, codec.decode([g], [s])[0], atol=1e-4)
    emb = codec.speaker_embedding(audios)
    np.testing.assert_allclose(emb[1], codec.speaker_embedding([audios[1]])[0], atol=1e-5)


def test_decode_batches_different_lengths_without_changing_an_item(codec, alt_codec, monkeypatch):
    """Semantic sequences of different lengths decode in one padded batch; padding never reaches an item's
    samples (a leak would change the shorter items' ends by far more than float rounding)."""
    rng = np.random.default_rng(7)
    for c in (codec, alt_codec):
        lengths = [90, 84, 77, 73]  # within length_batches' 25 % padding: one batch
        globals_ = [rng.integers(0, c.global_codebook_size, 32) for _ in lengths]
        semantics = [rng.integers(0, c.semantic_codebook_size, n) for n in lengths]
        calls = []

        def counted(semantic, global_tokens, lengths=None, decode=c.codec.decode, calls=calls):
            calls.append(lengths)
            return decode(semantic, global_tokens, lengths)

        monkeypatch.setattr(c.codec, "decode", counted)
        batched = c.decode(globals_, semantics)
        assert calls == [lengths], "one padded batch with each item's own length"
        monkeypatch.undo()
        for g, s, wav in zip(globals_, semantics, batched, strict=True):
            alone = c.decode([g], [s])[0]
            assert wav.shape == alone.shape == (len(s) * c.samples_per_semantic_token,)
            np.testing.assert_allclose(wav, alone, rtol=0, atol=5e-5)


@pytest.mark.parametrize("ratios", [(2, 3), (3,), (1, 2)])
def test_prenet_that_upsamples_keeps_padding_out(ratios):
    """The released prenets keep the frame rate; one that upsamples (a config the loader accepts) batches items of
    different lengths as exactly: its transposed convolutions and repeats see no padding."""
    torch.manual_seed(0)
    prenet = Decoder(FeatDecoderConfig(8, 16, 32, 2, 8, condition_dim=6, sample_ratios=ratios)).eval()
    lengths = [11, 8, 5]
    x, condition = torch.randn(3, 8, max(lengths)), torch.randn(3, 6)
    with torch.no_grad():
        batched = prenet(x, condition, torch.tensor(lengths))
        for i, n in enumerate(lengths):
            alone = prenet(x[i : i + 1, :, :n], condition[i : i + 1])
            assert alone.shape[-1] == prenet.output_length(n)
            torch.testing.assert_close(batched[i : i + 1, :, : prenet.output_length(n)], alone, rtol=0, atol=1e-5)


def test_inference_layers_equal_their_formulas():
    """Without autograd Snake works in place on one new tensor and a kernel-1 convolution is a batched matrix
    product: Snake's values are the formula's bit for bit, the product equals conv1d to rounding, and under
    autograd both still give gradients."""
    torch.manual_seed(0)
    snake, pointwise, tap7 = Snake1d(4), WNConv1d(4, 3, kernel_size=1), WNConv1d(3, 2, kernel_size=7, padding=3)
    for module in (snake, pointwise, tap7):
        for param in module.parameters():
            param.data.uniform_(0.3, 1.5)
    x = torch.randn(5, 4, 97)
    with torch.inference_mode():
        fast = snake(x)
        conv = pointwise(x)
    assert torch.equal(fast, x + (snake.alpha + 1e-9).reciprocal() * torch.sin(snake.alpha * x).pow(2))
    weight = pointwise.weight_v * (pointwise.weight_g / pointwise.weight_v.norm(2, dim=(1, 2), keepdim=True))
    torch.testing.assert_close(conv, torch.nn.functional.conv1d(x, weight, pointwise.bias), rtol=0, atol=1e-6)
    unit, mask = ResidualUnit(4, dilation=3), (torch.arange(97) < 60).float().expand(5, 1, 97)
    for param in unit.parameters():
        param.data.uniform_(0.3, 1.5)
    before = x.clone()
    with torch.inference_mode():
        in_place = unit(x, mask)
    with torch.enable_grad():
        formula = unit(x, mask)
    assert torch.equal(x, before), "the layers must not write into their input"
    torch.testing.assert_close(in_place, formula.detach(), rtol=0, atol=0)
    x.requires_grad_(True)
    tap7(pointwise(snake(x)).tanh()).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and snake.alpha.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(snake(x), fast, rtol=0, atol=0)


def test_decode_length_and_signal(codec, alt_codec):
    for c in (codec, alt_codec):
        g, s = c.tokenize([voice(1.5, 150, 4)])[0]
        short = s[:7]
        wavs = c.decode([g, g], [s, short])
        assert [w.shape for w in wavs] == [(320 * len(s),), (320 * 7,)]
        for w in wavs:
            assert w.dtype == np.float32 and np.isfinite(w).all()
            assert 0.01 < np.abs(w).mean() < 0.99, "neither silent nor a saturated square wave"
    assert codec.decode([g], [np.zeros(0, np.int64)])[0].shape == (0,)
    with pytest.raises(ValueError, match="out of range"):
        codec.decode([g], [np.array([codec.semantic_codebook_size])])
    with pytest.raises(ValueError, match="global tokens"):
        codec.decode([g[:31]], [s])


def test_too_short_and_empty_audio(codec):
    with pytest.raises(TooShortAudio, match="too short"):
        codec.semantic_tokens([np.full(100, 0.1, np.float32)])
    with pytest.raises(TooShortAudio):
        codec.tokenize([voice(1.0, 100, 0), np.full(100, 0.1, np.float32)])
    # The speaker path tiles a short clip, so global tokens exist even for a few samples.
    assert codec.global_tokens([np.full(100, 0.1, np.float32)])[0].shape == (32,)
    # The front end's receptive field is enough for one token.
    n = codec.min_semantic_samples
    assert 100 < n <= 400
    assert len(codec.semantic_tokens([voice(1.0, 100, 0)[:n]])[0]) == 1
    with pytest.raises(TooShortAudio, match=f"{n} samples needed"):
        codec.semantic_tokens([voice(1.0, 100, 0)[: n - 1]])
    with pytest.raises(EmptyAudio):
        codec.tokenize([np.zeros(0, np.float32)])


def _percentile_normalize_by_full_sort(wav: np.ndarray, coeff: float = 0.2) -> np.ndarray:
    """The reference's formula as it reads: every magnitude sorted."""
    audio = np.asarray(wav, dtype=np.float64)
    magnitudes = np.sort(np.abs(audio))
    if magnitudes[-1] < 0.1:
        audio = audio / max(magnitudes[-1], 1e-3) * 0.1
    loud = magnitudes[magnitudes > 0.01]
    if loud.shape[0] <= 10:
        return audio.astype(np.float32)
    audio = audio * np.clip(coeff / np.mean(loud[int(0.9 * len(loud)) : int(0.99 * len(loud))]), 0.1, 10)
    return (audio / max(np.max(np.abs(audio)), 1.0)).astype(np.float32)


def test_percentile_normalize_equals_the_full_sort_bit_for_bit():
    rng = np.random.default_rng(5)
    cases = [speech_like(int(rng.integers(400, 160_000)), seed) * gain for seed in range(6) for gain in (1.0, 0.04)]
    cases += [(scale * rng.standard_normal(n)).astype(np.float32) for n in (5, 11, 12, 13, 120) for scale in (0.02, 3)]
    cases += [np.full(500, 0.5, np.float32), np.r_[np.zeros(990), np.full(11, 0.3)].astype(np.float32)]  # ties
    for wav in cases:
        assert np.array_equal(percentile_normalize(wav), _percentile_normalize_by_full_sort(wav))


def test_preprocessing_helpers():
    x = np.array([0.0, -0.2, 0.1], np.float32)
    np.testing.assert_allclose(peak_normalize(x), [0.0, -0.9, 0.45], rtol=1e-6)
    assert peak_normalize(np.zeros(4, np.float32)).tolist() == [0.0] * 4
    loud = percentile_normalize(np.linspace(-0.5, 0.5, 1001))
    top = np.sort(np.abs(loud))[-100:]
    assert abs(loud).max() <= 1.0 and 0.15 < top.mean() < 0.25  # the loud percentiles sit near 0.2
    clip = reference_clip(np.arange(5, dtype=np.float32), 12)
    assert clip.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert reference_clip(np.arange(20, dtype=np.float32), 12).tolist() == list(range(12))


def test_reference_clip_length(codec, alt_codec):
    assert codec.config.ref_segment_length == 96000  # 6 s
    assert alt_codec.config.ref_segment_length == 40000  # 2.5 s = 125 hops of 320
    mel = codec.mel([voice(0.5, 100, 0)])[0]
    assert mel.shape == (codec.config.mel_params.num_mels, 96000 // 320 + 1)


def test_nested_and_flat_config_load_the_same(tiny_dir, tmp_path):
    raw = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    flat = {**raw.pop("audio_tokenizer"), **raw}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(flat))
    assert load_config(path) == load_config(tiny_dir / "config.yaml")
    # The preprocessing settings may also sit inside audio_tokenizer.
    nested = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    nested["audio_tokenizer"]["ref_segment_duration"] = nested.pop("ref_segment_duration")
    assert config_from_dict(nested) == load_config(tiny_dir / "config.yaml")


def test_config_errors(tiny_dir):
    raw = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    missing = {k: v for k, v in raw.items() if k != "ref_segment_duration"}
    with pytest.raises(CheckpointError, match="ref_segment_duration"):
        config_from_dict(missing)
    raw["audio_tokenizer"]["encoder"]["vocos_layers"] = 3
    with pytest.raises(CheckpointError, match="vocos_layers"):
        config_from_dict(raw)
    raw = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    raw["audio_tokenizer"]["speaker_encoder"]["input_dim"] = 99
    with pytest.raises(CheckpointError, match="num_mels"):
        config_from_dict(raw)
    raw = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    raw["audio_tokenizer"]["decoder"]["kernel_sizes"][1] = 10  # against rate 5: 5 * frames + 1 samples
    with pytest.raises(CheckpointError, match="differ by an even number, got 10 and 5"):
        config_from_dict(raw)


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    for p in src.rglob("*"):
        if p.is_file():
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
    return dst


def test_strict_loading_names_missing_and_unexpected_keys(tiny_dir, tmp_path):
    d = _copy_checkpoint(tiny_dir, tmp_path / "BiCodec")
    state = load_file(d / "model.safetensors")
    removed = "speaker_encoder.perceiver_sampler.latents"
    state.pop(removed)
    state["decoder.extra_weight"] = state["quantizer.cluster_size"].clone()
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        BiCodec.from_pretrained(d)
    assert removed in str(err.value) and "decoder.extra_weight" in str(err.value)

    d = _copy_checkpoint(tiny_dir, tmp_path / "BiCodec2")
    w2v = d / "wav2vec2-large-xlsr-53" / "model.safetensors"
    state = load_file(w2v)
    removed = "encoder.layers.3.attention.k_proj.weight"
    state.pop(removed)
    save_file(state, w2v, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.3\.attention\.k_proj\.weight"):
        BiCodec.from_pretrained(d)


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_writer_is_deterministic(tiny_dir, tmp_path):
    write_random_checkpoint(tmp_path / "same", seed=0, size="tiny")
    write_random_checkpoint(tmp_path / "other", seed=7, size="tiny")
    assert _digest(tmp_path / "same") == _digest(tiny_dir)
    other = _digest(tmp_path / "other")
    assert other["model.safetensors"] != _digest(tiny_dir)["model.safetensors"]
    assert other["config.yaml"] == _digest(tiny_dir)["config.yaml"]
    with pytest.raises(ValueError, match="size"):
        write_random_checkpoint(tmp_path / "bad", seed=0, size="huge")


def test_loudness_is_normalised_before_tokenizing(tiny_dir, codec):
    x = voice(1.0, 170, 2, amp=0.05)
    assert codec.normalization == "percentile"  # config volume_normalize: true
    raw = BiCodec.from_pretrained(tiny_dir, normalization="none")
    for got, expected in zip(codec.tokenize([x]), raw.tokenize([percentile_normalize(x)]), strict=True):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    # Peak normalisation: halving is exact in floating point, so both inputs become bit-identical.
    peak = BiCodec.from_pretrained(tiny_dir, normalization="peak")
    (g1, s1), (g2, s2) = peak.tokenize([x, 0.5 * x])
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_array_equal(s1, s2)
    features = codec.wav2vec2_features([x, 0.5 * x], preprocess=False)
    assert features[0].shape == (len(s1), codec.wav2vec2.hidden_size)


def test_wav2vec2_pretraining_layout_loads(tiny_dir, tmp_path, codec):
    """The released xlsr-53 weights are a Wav2Vec2ForPreTraining state: prefixed keys plus unused heads."""
    d = _copy_checkpoint(tiny_dir, tmp_path / "BiCodec")
    w2v = d / "wav2vec2-large-xlsr-53"
    state = {f"wav2vec2.{k}": v for k, v in load_file(w2v / "model.safetensors").items()}
    state["quantizer.codevectors"] = torch.zeros(1, 4, 8)
    state["project_q.weight"] = torch.zeros(8, 8)
    save_file(state, w2v / "model.safetensors", metadata={"format": "pt"})
    x = voice(0.5, 150, 1)
    np.testing.assert_array_equal(BiCodec.from_pretrained(d).semantic_tokens([x])[0], codec.semantic_tokens([x])[0])
