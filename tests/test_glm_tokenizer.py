import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperFeatureExtractor

from gpa.errors import CheckpointError, EmptyAudio, GPAError, NonFiniteAudio
from gpa.glm_tokenizer import (
    GLMSpeechTokenizer,
    GLMTokenizerConfig,
    TooLongAudio,
    log_mel_spectrogram,
)
from gpa.testing.glm import write_random_checkpoint

SIZES = ["tiny", "tiny-alt"]


def _signals(seed: int = 0) -> list[np.ndarray]:
    """Speech-like test audio of assorted lengths: a chirp with tremolo, gated noise, a gated tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(40000) / 16000
    chirp = 0.5 * np.sin(2 * np.pi * (200 + 1500 * t) * t) * (1 + np.sin(2 * np.pi * 0.7 * t))
    noise = 0.1 * rng.standard_normal(t.size) * (1 + np.sin(2 * np.pi * 1.3 * t))
    tone = 0.3 * np.sin(2 * np.pi * 300 * t) * (np.sin(2 * np.pi * 2 * t) > 0) + 0.01 * rng.standard_normal(t.size)
    return [chirp.astype(np.float32), noise[:25600].astype(np.float32), tone[:13001].astype(np.float32)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("glm")
    for size in SIZES:
        write_random_checkpoint(root / size, seed=0, size=size)
    return root


@pytest.fixture(scope="module")
def tokenizers(checkpoints):
    return {size: GLMSpeechTokenizer.from_pretrained(checkpoints / size) for size in SIZES}


@pytest.mark.parametrize("n_mels", [128, 80])
def test_log_mel_matches_transformers_on_padded_batch(n_mels):
    rng = np.random.default_rng(1)
    audios = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (5120, 3000)]
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    expected = extractor(audios, sampling_rate=16000, return_tensors="pt", return_attention_mask=True,
                         padding="longest", pad_to_multiple_of=1280)["input_features"]
    padded = torch.zeros(2, 5120)
    for row, audio in enumerate(audios):
        padded[row, : audio.size] = torch.from_numpy(audio)
    ours = log_mel_spectrogram(padded, n_mels)
    assert ours.shape == expected.shape == (2, n_mels, 32)
    assert (ours - expected).abs().max().item() <= 1e-5
    single = log_mel_spectrogram(padded[1], n_mels)
    assert (single - expected[1]).abs().max().item() <= 1e-5


def test_log_mel_lengths_treat_each_item_alone():
    """Reflection at each item's own end, whatever lies past it; an item too short to reflect is refused."""
    rng = np.random.default_rng(2)
    lengths = torch.tensor([6400, 1280, 3840])
    batch = torch.from_numpy(rng.standard_normal((3, 6400)).astype(np.float32))  # noise past each item's end
    batch[1, 3000] = torch.nan  # even non-finite samples there
    ours = log_mel_spectrogram(batch, 80, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        alone = log_mel_spectrogram(batch[row, :n], 80)
        # equal but for rounding: the mel product's kernel may depend on the batch's shape (1 ulp on some CPUs)
        torch.testing.assert_close(ours[row, :, : n // 160], alone, rtol=0, atol=1e-6)
        assert not ours[row, :, n // 160 :].any()
    with pytest.raises(ValueError, match="n_fft // 2"):
        log_mel_spectrogram(batch, 80, lengths=torch.tensor([6400, 160, 3840]))
    with pytest.raises(ValueError, match="exceeds the 6400 samples"):
        log_mel_spectrogram(batch, 80, lengths=torch.tensor([6400, 1280, 6560]))


@pytest.mark.parametrize("size", SIZES)
def test_features_equal_feature_extractor_alone(checkpoints, tokenizers, size):
    tokenizer = tokenizers[size]
    extractor = WhisperFeatureExtractor.from_pretrained(checkpoints / size)
    audios = _signals()[:2] + [_signals()[2][:2560]]  # 2560: a whole number of tokens, no zero padding at all
    ours = tokenizer.features(audios)  # one batch, but each item featurised as if alone
    for audio, feature in zip(audios, ours, strict=True):
        expected = extractor([audio], sampling_rate=16000, return_tensors="np", padding="longest",
                             pad_to_multiple_of=tokenizer.samples_per_token)["input_features"][0]
        assert feature.shape == expected.shape
        assert np.abs(feature - expected).max() <= 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_token_count_and_variation(tokenizers, size):
    tokenizer = tokenizers[size]
    assert tokenizer.samples_per_token == 1280  # 12.5 tokens/s
    lengths = [1, 100, 1279, 1280, 1281, 5000, 16000, tokenizer.max_samples]
    rng = np.random.default_rng(2)
    audios = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    tokens = tokenizer.tokenize(audios)
    vocab = tokenizer.config.quantize_vocab_size
    for n, ids in zip(lengths, tokens, strict=True):
        assert ids.dtype == np.int64 and ids.shape == (math.ceil(n / 1280),)
        assert ids.min() >= 0 and ids.max() < vocab
    # A random model still gives tokens that change over time and differ between signals.
    tokens = tokenizer.tokenize(_signals())
    assert all(len(set(ids.tolist())) >= 3 for ids in tokens)
    assert len(set(np.concatenate(tokens).tolist())) >= 8


@pytest.mark.parametrize("size", SIZES)
def test_batch_equals_single(tokenizers, size):
    tokenizer = tokenizers[size]
    chirp, noise, tone = _signals(3)
    audios = [chirp, noise, tone, chirp[:2560], noise[:700], tone[:1280 * 7 + 1], chirp[5000:30000]]
    alone = [tokenizer.tokenize([audio])[0] for audio in audios]
    batched = tokenizer.tokenize(audios)
    for one, many in zip(alone, batched, strict=True):
        np.testing.assert_array_equal(one, many)
    tokenizer.batch_size = 2  # other groupings, other padding
    try:
        for one, many in zip(alone, tokenizer.tokenize(audios[::-1])[::-1], strict=True):
            np.testing.assert_array_equal(one, many)
    finally:
        tokenizer.batch_size = 32


def test_writer_is_deterministic(tmp_path):
    names = ["config.json", "preprocessor_config.json", "model.safetensors"]
    for size in SIZES:
        write_random_checkpoint(tmp_path / "a", seed=7, size=size)
        write_random_checkpoint(tmp_path / "b", seed=7, size=size)
        write_random_checkpoint(tmp_path / "c", seed=8, size=size)
        for name in names:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / names[2]).read_bytes() != (tmp_path / "c" / names[2]).read_bytes()


def test_checkpoint_layout(checkpoints):
    tiny = load_file(str(checkpoints / "tiny" / "model.safetensors"))
    assert {"conv1.weight", "conv2.bias", "embed_positions.weight", "embed_positions2.weight", "codebook.weight",
            "ema_count", "ema_weight", "layers.1.self_attn.q_proj.bias", "layers.1.fc2.weight"} <= set(tiny)
    assert "layers.0.self_attn.k_proj.bias" not in tiny and "layers.2.fc1.weight" not in tiny
    assert tiny["codebook.weight"].shape == (64, 32) and tiny["embed_positions2.weight"].shape == (50, 32)
    alt = load_file(str(checkpoints / "tiny-alt" / "model.safetensors"))
    assert "layer_norm.weight" in alt and "layers.3.fc1.weight" in alt and "ema_count" not in alt
    assert alt["conv1.weight"].shape == (48, 80, 3)
    config = GLMTokenizerConfig.from_dir(checkpoints / "tiny-alt")
    assert (config.num_layers, config.quantize_position, config.pooling_position) == (4, 3, 2)


def test_strict_loading_names_missing_key(checkpoints, tmp_path):
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((checkpoints / "tiny" / name).read_bytes())
    state = load_file(str(checkpoints / "tiny" / "model.safetensors"))
    del state["layers.1.self_attn.v_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.v_proj\.weight"):
        GLMSpeechTokenizer.from_pretrained(tmp_path)


def test_bad_inputs_raise_typed_errors(tokenizers):
    tokenizer = tokenizers["tiny"]
    assert tokenizer.max_samples == 64000  # 200 positions * 2 * 160
    assert len(tokenizer.tokenize([np.zeros(tokenizer.max_samples, np.float32)])[0]) == 50
    with pytest.raises(TooLongAudio, match="chunk") as info:
        tokenizer.tokenize([np.zeros(100, np.float32), np.zeros(tokenizer.max_samples + 1, np.float32)])
    assert isinstance(info.value, GPAError) and isinstance(info.value, ValueError)
    assert info.value.kind == "too_long_audio"
    with pytest.raises(EmptyAudio):
        tokenizer.tokenize([np.zeros(0, np.float32)])
    with pytest.raises(NonFiniteAudio):
        tokenizer.tokenize([np.array([0.0, np.nan], np.float32)])
