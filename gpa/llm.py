"""GPA's language model: a Qwen3 (or Qwen2) causal LM with GPA's extended tokenizer, loaded strictly.

``load_llm`` reads a checkpoint root (config.json, model.safetensors, tokenizer files) with transformers. Only
safetensors weights are read: pickle files (``*.bin``, ``*.pt``) can run code when unpickled and are refused.

``write_random_checkpoint`` writes a random model in the same layout for tests and benchmarks; see its docstring
for how the random init is shaped so that generations are short and well formed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .checkpoint import abbreviate, check_loading_info, find_safetensors, quiet_transformers
from .errors import CheckpointError
from .vocab import (
    END_CONTENT,
    END_GLM,
    END_GLOBAL,
    END_SEMANTIC,
    GLM_TOKEN_FORMATS,
    GLOBAL_TOKEN_FORMAT,
    IM_END,
    SEMANTIC_TOKEN_FORMAT,
    START_CONTENT,
    START_GLM,
    START_GLOBAL,
    START_SEMANTIC,
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def load_tokenizer(directory: str | os.PathLike, *, trust_remote_code: bool = False):
    """The checkpoint's text tokenizer (its vocabulary holds the speech tokens too)."""
    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer from {directory}: {exc}") from exc


def load_llm(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
):
    """``(model, tokenizer)`` from a checkpoint root, in eval mode on ``device``.

    Strict: a missing, unexpected or mis-shaped weight is a :class:`CheckpointError` naming the key (an output
    embedding tied to the input embedding is not missing). ``trust_remote_code`` stays off unless asked for.
    """
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"no config.json in {directory}")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        find_safetensors(directory)  # raises the refusal (pickle) or "no weights" error
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code, local_files_only=True)
        _check_shapes(config, weights, trust_remote_code)
        with quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                dtype=dtype,
                use_safetensors=True,
                output_loading_info=True,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
    except CheckpointError:
        raise
    except Exception as exc:  # transformers raises many types (OSError, ValueError, RuntimeError ...)
        raise CheckpointError(f"cannot load the LLM from {directory}: {exc}") from exc
    check_loading_info(str(directory), info)
    tokenizer = load_tokenizer(directory, trust_remote_code=trust_remote_code)
    model.eval().to(device)
    return model, tokenizer


def _check_shapes(config, weights: list[Path], trust_remote_code: bool) -> None:
    """Compare the weight shapes in the safetensors headers with the model's (built on the meta device, no
    memory): transformers refuses a mis-shaped weight without naming it."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    mismatched = []
    for path in weights:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                if name in expected and shape != expected[name]:
                    mismatched.append(f"{name}: checkpoint {shape} vs model {expected[name]}")
    if mismatched:
        raise CheckpointError(f"{weights[0].parent}: shape mismatches {abbreviate(sorted(mismatched))}")


# ---------------------------------------------------------------------------------------------------------------
# random checkpoints
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    bpe_vocab: int  # byte-level BPE vocabulary (before the added tokens)
    gpa_specials: int  # GPA marker slots (the markers plus reserved tokens)
    vocab_size: int | None  # model vocabulary; None: len(tokenizer) rounded up to a multiple of 64
    tied: bool = False  # output layer tied to the input embedding (no lm_head.weight in the file)


_DIMS = {
    "tiny": _Dims(64, 2, 4, 2, 16, 128, 600, 12, None),
    "tiny-alt": _Dims(96, 3, 6, 2, 16, 160, 520, 16, None),
    # The released model: Qwen3, 28 layers, hidden 512, 16 attention heads and 8 key/value heads of 128, MLP 3072,
    # tied vocabulary of 180,445 with the audio blocks at 151727 / 168111 / 172207 (~0.31B parameters).
    "real": _Dims(512, 28, 16, 8, 128, 3072, 151643, 58, 180445, tied=True),
}

# Qwen's special tokens, in Qwen3's order, directly after the BPE vocabulary (True: special).
_QWEN_SPECIALS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    (IM_END, True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
_GPA_MARKERS = [
    START_CONTENT,
    START_GLOBAL,
    START_SEMANTIC,
    START_GLM,
    END_CONTENT,
    END_GLOBAL,
    END_SEMANTIC,
    END_GLM,
]
_GLM_FORMAT = GLM_TOKEN_FORMATS[0]

# Qwen2's pre-tokenizer split pattern (contractions, letters, single digits, punctuation runs, newlines, spaces).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Training text for the small BPE: English with some accents, digits and punctuation, plus a little Chinese and
# Japanese, so that any text tokenizes into a mix of merged tokens and raw bytes.
_BPE_TEXT = """\
The weather station on the hill records the wind, the rain and the temperature every ten minutes.
When the evening train arrives, the platform fills with people who are going home after a long day.
She opened the window, listened to the birds in the garden and started to read the morning paper.
Speech recognition turns spoken words into text; speech synthesis turns text back into a voice.
A good recording is quiet, clear and not too loud. Please speak slowly and keep the microphone close.
They counted 1, 2, 3, 4, 5, 6, 7, 8, 9 and 10 boxes, then wrote the total on the first page: 55.
Is this the right way to the museum? Yes, turn left at the bridge and walk for about five minutes.
The café near the théâtre serves crème brûlée, piñata cookies and a naïve little soufflé.
Über den Wolken ist die Freiheit grenzenlos; señora García llegó a las tres de la tarde.
今天天气很好，我们一起去公园散步吧。这是一个语音识别和语音合成的测试句子。
音声合成と音声認識のテストです。ありがとうございます。
"Hello," he said. "It's nice to meet you!" -- and then the meeting began at 9:30 a.m.
Numbers like 2024, 3.14 and 100% appear in news reports, recipes and scientific papers alike.
"""

_CHAT_TEMPLATE = """\
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def write_random_checkpoint(
    directory: str | os.PathLike,
    *,
    seed: int,
    size: str = "tiny",
    arch: str = "qwen3",
    glm_codebook_size: int,
    global_codebook_size: int,
    semantic_codebook_size: int,
    emitted_text: str | None = None,
) -> None:
    """Write config.json, generation_config.json, model.safetensors and the tokenizer files at ``directory``.

    Deterministic: the same arguments give byte-identical files. The tokenizer is a small byte-level BPE trained
    on built-in text, followed by Qwen's special tokens, GPA's markers and the GLM, global and semantic audio
    tokens (in that order, each block contiguous). ``size="real"`` pads the vocabulary so the blocks sit at the
    released model's ids (151727 / 168111 / 172207) and the vocabulary is 180,445.

    ``emitted_text``: of the text tokens, only those of this string's tokenization that decode to whole
    characters on their own can be emitted (the others get the never-emitted bias), and generation_config.json
    sets a repetition penalty of 2 (which STT takes from there) so that greedy transcripts move through those
    tokens instead of repeating one: readable text for tests of transcript decoding. ``None`` writes the same
    bytes as without the option.
    """
    if size not in _DIMS:
        raise ValueError(f"size must be one of {tuple(_DIMS)}")
    if arch not in ("qwen3", "qwen2"):
        raise ValueError("arch must be 'qwen3' or 'qwen2'")
    dims = _DIMS[size]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(directory, dims, glm_codebook_size, global_codebook_size, semantic_codebook_size)
    vocab_size = dims.vocab_size or 64 * math.ceil(ids["size"] / 64)
    if vocab_size < ids["size"]:
        raise ValueError(f"vocabulary of {vocab_size} is smaller than the tokenizer ({ids['size']})")
    config = _config(dims, arch, vocab_size, ids)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation_config = {
        "bos_token_id": ids["endoftext"],
        "eos_token_id": ids["im_end"],
        "pad_token_id": ids["endoftext"],
        "transformers_version": "4.57.1",
    }
    if emitted_text is not None:
        generation_config["repetition_penalty"] = 2.0
    (directory / "generation_config.json").write_text(json.dumps(generation_config, indent=2, sort_keys=True) + "\n")
    state = _random_weights(dims, arch, vocab_size, ids, seed)
    if emitted_text is not None:
        _restrict_text(state["lm_head.weight"], ids, _whole_character_ids(directory, emitted_text, ids["learned_text"]))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _config(dims: _Dims, arch: str, vocab_size: int, ids: dict) -> dict:
    # Written in the transformers 4.x layout of the released checkpoint (rope_theta at the top level), which
    # transformers 5 still reads.
    config = {
        "architectures": ["Qwen3ForCausalLM" if arch == "qwen3" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "attention_dropout": 0.0,
        "bos_token_id": ids["endoftext"],
        "eos_token_id": ids["im_end"],
        "hidden_act": "silu",
        "hidden_size": dims.hidden,
        "initializer_range": 0.02,
        "intermediate_size": dims.intermediate,
        "max_position_embeddings": 32768,
        "max_window_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "num_hidden_layers": dims.layers,
        "num_key_value_heads": dims.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": dims.tied,
        "torch_dtype": "float32",
        "transformers_version": "4.57.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    if arch == "qwen3":
        config.update(head_dim=dims.head_dim, attention_bias=False)
    elif dims.hidden != dims.heads * dims.head_dim:
        raise ValueError("qwen2 needs hidden_size == num_attention_heads * head_dim")
    return config


def _write_tokenizer(directory: Path, dims: _Dims, n_glm: int, n_global: int, n_semantic: int) -> dict:
    """Write the tokenizer files; returns the ids the weight writer needs."""
    bpe = Tokenizer(models.BPE())
    _configure(bpe)
    trainer = trainers.BpeTrainer(
        vocab_size=dims.bpe_vocab if dims.bpe_vocab < 4000 else 1000,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_BPE_TEXT.splitlines(), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in trained["merges"]]
    # "real": fill the rest of Qwen's 151,643-token BPE vocabulary with tokens no merge can produce.
    for i in range(len(vocab), dims.bpe_vocab):
        vocab[f"<unused_{i}>"] = i

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    _configure(tokenizer)
    added: list[tuple[str, bool]] = list(_QWEN_SPECIALS)
    reserved = dims.gpa_specials - len(_GPA_MARKERS)
    added += [(name, False) for name in _GPA_MARKERS]
    added += [(f"<|gpa_reserved_{i}|>", False) for i in range(reserved)]
    added += [(_GLM_FORMAT.format(i), False) for i in range(n_glm)]
    added += [(GLOBAL_TOKEN_FORMAT.format(i), False) for i in range(n_global)]
    added += [(SEMANTIC_TOKEN_FORMAT.format(i), False) for i in range(n_semantic)]
    if dims.vocab_size is not None:  # pad to the released vocabulary size
        base = len(vocab) + len(added)
        added += [(f"<|gpa_pad_{i}|>", False) for i in range(dims.vocab_size - base)]
    tokenizer.add_special_tokens(
        [
            AddedToken(name, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
            for name, special in added
        ]
    )
    first_added = len(vocab)
    added_ids = {name: first_added + i for i, (name, _) in enumerate(added)}
    # add_special_tokens marks every token special; restore the non-special flag in the serialized file.
    data = json.loads(tokenizer.to_str())
    special_flags = dict(added)
    for entry in data["added_tokens"]:
        entry["special"] = special_flags[entry["content"]]
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")

    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "added_tokens.json").write_text(json.dumps(added_ids, ensure_ascii=False, indent=2) + "\n")
    special_map = {
        "additional_special_tokens": ["<|im_start|>", IM_END],
        "eos_token": {"content": IM_END, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": {
            "content": "<|endoftext|>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(added_ids[name]): {
                "content": name,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for name, special in added
        },
        "additional_special_tokens": ["<|im_start|>", IM_END],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=2) + "\n")
    (directory / "chat_template.jinja").write_text(_CHAT_TEMPLATE)

    glm0 = added_ids[_GLM_FORMAT.format(0)]
    global0 = added_ids[GLOBAL_TOKEN_FORMAT.format(0)]
    semantic0 = added_ids[SEMANTIC_TOKEN_FORMAT.format(0)]
    return {
        "size": len(vocab) + len(added),
        "endoftext": added_ids["<|endoftext|>"],
        "im_end": added_ids[IM_END],
        "start_content": added_ids[START_CONTENT],
        "end_content": added_ids[END_CONTENT],
        "glm": (glm0, glm0 + n_glm),
        "global": (global0, global0 + n_global),
        "semantic": (semantic0, semantic0 + n_semantic),
        "learned_text": len(trained["vocab"]),
    }


def _configure(tokenizer: Tokenizer) -> None:
    """Qwen2's normalizer, pre-tokenizer and decoder."""
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)


# Residual-stream dimensions reserved by the shaped init (see _random_weights); the rest are random.
_C, _MODE, _KEY, _MARK, _SEEN, _FRAC = range(6)
_DESIGNED = 6


def _random_weights(dims: _Dims, arch: str, vocab_size: int, ids: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights (normal, std 0.02) plus a small hand-wired circuit that makes generations well formed.

    A purely random LM almost never emits ``<|im_end|>`` and, after a TTS prompt, rarely a semantic token, so every
    tiny run would be 512 tokens of noise. The init therefore reserves six residual-stream dimensions:

    * ``MODE``: +1 in the embedding of semantic tokens and ``<|end_content|>``, -1 for text tokens and
      ``<|start_content|>``. The output head scores semantic tokens by +MODE and text tokens by -MODE, so a TTS/VC
      prompt (ending in ``<|end_content|>``) continues with semantic tokens and an STT prompt (ending in
      ``<|start_content|>``) with text, and each mode sustains itself. Other audio and control tokens get a large
      negative output bias and are never emitted.
    * Layer 0, head 0 ("marker head"): tokens with MODE != 0 attend to the opening marker of their own output
      (semantic tokens to ``<|end_content|>``, text tokens to ``<|start_content|>``; text in a TTS prompt also sees
      the 32 global tokens, which dilutes it) and copy a 1 into ``SEEN``: SEEN is 1 for generated tokens and ~0
      for the prompt. Query and key live in the head's lowest RoPE frequency, so the score does not depend on
      distance.
    * Layer 1, head 0: uniform attention (zero query and key) averaging SEEN, i.e. the fraction of the sequence
      generated so far, into ``FRAC``.
    * ``<|im_end|>``'s logit rises with FRAC and crosses the best semantic (text) token at FRAC ~ 0.5 (~0.2):
      TTS/VC outputs about as many tokens as their prompt has (~40-150), STT about a quarter of its prompt.

    The random parts of the embedding and output head keep outputs varied; repetition penalty keeps them moving.
    """
    g = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    hidden, hd = dims.hidden, dims.head_dim
    n_rand = hidden - _DESIGNED
    std = 0.02

    def normal(*shape, scale=std):
        return torch.randn(*shape, generator=g) * scale

    text_lo, text_hi = 0, ids["learned_text"]  # the trained BPE tokens ("real" pads the vocabulary after them)
    sem_lo, sem_hi = ids["semantic"]
    glob_lo, glob_hi = ids["global"]

    embed = torch.zeros(vocab_size, hidden)
    rand = torch.randn(vocab_size, n_rand, generator=g)
    embed[:, _DESIGNED:] = rand / rand.norm(dim=1, keepdim=True) * math.sqrt(n_rand)  # unit RMS per component
    embed[:, _C] = 1.0
    embed[text_lo:text_hi, _MODE] = -1.0
    embed[sem_lo:sem_hi, _MODE] = 1.0
    embed[ids["end_content"], _MODE] = 1.0
    embed[ids["start_content"], _MODE] = -1.0
    embed[ids["end_content"], _KEY] = 1.0
    embed[ids["start_content"], _KEY] = -1.0
    embed[glob_lo:glob_hi, _KEY] = -1.0
    embed[ids["end_content"], _MARK] = 1.0
    embed[ids["start_content"], _MARK] = 1.0

    state: dict[str, torch.Tensor] = {"model.embed_tokens.weight": embed}
    group = dims.heads // dims.kv_heads  # query heads sharing key/value head 0: the designed heads' group
    slow = hd // 2 - 1  # rotate_half pairs (i, i + hd/2); pair hd/2-1 has the lowest RoPE frequency
    score = 12.0  # attention logit of a matching marker: e^12 outweighs thousands of other positions
    for layer in range(dims.layers):
        p = f"model.layers.{layer}."
        q = normal(dims.heads * hd, hidden)
        k = normal(dims.kv_heads * hd, hidden)
        v = normal(dims.kv_heads * hd, hidden)
        o = normal(hidden, dims.heads * hd)
        down = normal(hidden, dims.intermediate)
        o[:_DESIGNED] = 0.0  # only the designed heads write the reserved dimensions
        down[:_DESIGNED] = 0.0
        q_norm = torch.ones(hd)
        k_norm = torch.ones(hd)
        if layer < 2:
            q[: group * hd] = 0.0
            k[:hd] = 0.0
            v[:hd] = 0.0
            o[:, : group * hd] = 0.0
            if layer == 0:  # marker head
                if arch == "qwen3":  # q/k are RMS-normalized per head: set the score through the norm weights
                    q[slow, _MODE] = 1.0
                    k[slow, _KEY] = 1.0
                    q_norm[slow] = k_norm[slow] = math.sqrt(score / math.sqrt(hd))
                else:
                    q[slow, _MODE] = k[slow, _KEY] = math.sqrt(score * math.sqrt(hd))
                v[0, _MARK] = 1.0
                o[_SEEN, 0] = 1.0
            else:  # uniform head averaging SEEN
                v[0, _SEEN] = 1.0
                o[_FRAC, 0] = 1.0
                # Second key/value group: uniform attention mixing the mean of the context's random embedding
                # parts into the stream, so that what is generated depends on the whole prompt (e.g. different
                # audio gives a different transcript), not only on the last token.
                mix = slice(group * hd, 2 * group * hd)
                q[mix] = 0.0
                k[hd : 2 * hd] = 0.0
                v[hd : 2 * hd] = 0.0
                v[hd : 2 * hd, _DESIGNED:] = normal(hd, n_rand, scale=1 / math.sqrt(n_rand))
                o[:, mix] = 0.0
                o[_DESIGNED:, group * hd : (group + 1) * hd] = normal(n_rand, hd, scale=_MIX_GAIN / math.sqrt(hd))
        state[p + "self_attn.q_proj.weight"] = q
        state[p + "self_attn.k_proj.weight"] = k
        state[p + "self_attn.v_proj.weight"] = v
        state[p + "self_attn.o_proj.weight"] = o
        if arch == "qwen3":
            state[p + "self_attn.q_norm.weight"] = q_norm
            state[p + "self_attn.k_norm.weight"] = k_norm
        else:
            state[p + "self_attn.q_proj.bias"] = torch.zeros(dims.heads * hd)
            state[p + "self_attn.k_proj.bias"] = torch.zeros(dims.kv_heads * hd)
            state[p + "self_attn.v_proj.bias"] = torch.zeros(dims.kv_heads * hd)
        state[p + "mlp.gate_proj.weight"] = normal(dims.intermediate, hidden)
        state[p + "mlp.up_proj.weight"] = normal(dims.intermediate, hidden)
        state[p + "mlp.down_proj.weight"] = down
        state[p + "input_layernorm.weight"] = torch.ones(hidden)
        state[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    state["model.norm.weight"] = torch.ones(hidden)

    head = torch.zeros(vocab_size, hidden)
    head[:, _DESIGNED:] = torch.randn(vocab_size, n_rand, generator=g) * (2.0 / math.sqrt(n_rand))  # logit std ~2
    head[:, _C] = _NEVER_EMITTED  # never emitted ...
    head[text_lo:text_hi, _C] = 0.0  # ... except text, semantic tokens and <|im_end|>
    head[text_lo:text_hi, _MODE] = -_MODE_GAIN
    head[sem_lo:sem_hi, _C] = 0.0
    head[sem_lo:sem_hi, _MODE] = _MODE_GAIN
    im_end = ids["im_end"]
    head[im_end] = 0.0
    head[im_end, _FRAC] = _STOP_GAIN
    head[im_end, _MODE] = _STOP_MODE
    head[im_end, _C] = _STOP_BIAS
    if not dims.tied:
        # Tied (the real size): the embedding is the output layer too, so the circuit's stop logic is lost and
        # generations run to their limit; benchmarks force their lengths anyway (min_new_tokens).
        state["lm_head.weight"] = head
    return {name: t.contiguous() for name, t in state.items()}


def _whole_character_ids(directory: Path, text: str, learned_text: int) -> list[int]:
    """The distinct learned BPE token ids of ``text`` whose decoding alone has no broken UTF-8 sequence."""
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = sorted(set(tokenizer.encode(text).ids))
    whole = [i for i in ids if i < learned_text and "\ufffd" not in tokenizer.decode([i])]
    if not whole:
        raise ValueError(f"no token of {text!r} decodes to whole characters")
    return whole


def _restrict_text(head: torch.Tensor, ids: dict, allowed: list[int]) -> None:
    """Give every text token outside ``allowed`` the output bias of tokens that are never emitted."""
    suppressed = torch.ones(ids["learned_text"], dtype=torch.bool)
    suppressed[allowed] = False
    head[: ids["learned_text"]][suppressed, _C] = _NEVER_EMITTED


# <|im_end|> logit = GAIN * FRAC + MODE_W * MODE + BIAS against ~MODE_GAIN + 8 for the best semantic token and
# ~MODE_GAIN + 6 for the best text token: crossing at FRAC ~ 0.5 in audio mode and ~ 0.2 in text mode.
_MODE_GAIN = 10.0
_NEVER_EMITTED = -30.0  # output bias of tokens the init never emits
_MIX_GAIN = 6.0
_STOP_GAIN = 40.0
_STOP_MODE = -5.0
_STOP_BIAS = 3.0
