"""A HuggingFace causal LM (in memory) → one GGUF file that llama.cpp, Ollama and LM Studio read.

Written with the `gguf` package (llama.cpp's own Python writer, tensor-name maps and quantisers) and no
llama.cpp build: unsloth's `save_pretrained_gguf` compiles llama.cpp and that is where its users' exports
fail. What llama.cpp's `convert_hf_to_gguf.py` does beyond the package is the per-architecture part —
which metadata keys, which tensors are reshaped, which stay float32 — and that is what this module holds,
for the architectures below only; anything else is refused before a tensor is written.

Tensor by tensor: the header and tensor table are written first from shapes alone, then each tensor is
converted, quantised, written and dropped, so the file never needs a second copy of the model in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

# HF model_type -> the llama.cpp architecture it is written as. Mistral is written as llama, as llama.cpp's
# converter does (same tensors; llama.cpp reads the sliding window from no key for it either).
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}

# --quant -> (GGML tensor type of the large matrices, llama.cpp file type). The q4/q5 types keep the
# token embedding and output head at q8_0: llama.cpp's llama-quantize keeps them at a higher type too
# (q6_K, which the gguf package cannot write), since they dominate quantisation error on small models.
QUANT_TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
FLOAT_TYPES = ("f32", "f16", "bf16")
LOW_BIT_TYPES = ("q5_1", "q5_0", "q4_1", "q4_0")

# The pre-tokenizer llama.cpp must apply (tokenizer.ggml.pre), recognised from the tokenizer's own
# tokenizer.json. llama.cpp picks it by hashing a probe's token ids against a table of known models; we
# read the pre-tokenizer itself, which says the same for the families exported here and needs no table.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2", _GPT2_SPLIT: "gpt-2"}


@dataclass
class GgufPlan:
    """What will be written: decided from the config and tokenizer before any tensor is touched."""

    architecture: str
    quant: str
    tensors: list[tuple[str, str, tuple[int, ...], str]] = field(
        default_factory=list
    )  # hf, gguf, shape, type
    notes: list[str] = field(default_factory=list)
    tensor_bytes: int = 0  # the tensor data as written (the rest of the file is metadata and padding)


def check_exportable(config, quant: str) -> str:
    """The llama.cpp architecture for this config; LlmtuneError (exit 2) for what cannot be exported."""
    if quant not in QUANT_TYPES:
        raise LlmtuneError(
            f"--quant {quant!r} is not a GGUF type llmtune writes. Types: {', '.join(QUANT_TYPES)} "
            "(the ones the gguf package quantises; k-quants such as q4_K_M need llama.cpp's llama-quantize, "
            "which can be run on the f16 export)."
        )
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise LlmtuneError(
            f"GGUF export does not support the architecture {model_type!r} "
            f"({', '.join(getattr(config, 'architectures', None) or ['?'])}). Supported: "
            f"{', '.join(sorted(ARCHITECTURES))} (Llama 2/3, SmolLM, Mistral, Qwen2/2.5, GPT-2).",
            hint="Export it as safetensors (llmtune merge) or with --format bnb-4bit/bnb-8bit.",
        )
    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type", "default")
    if model_type != "gpt2" and rope_type not in ("default", "linear"):
        raise LlmtuneError(
            f"GGUF export of a model with rope_type {rope_type!r} is not supported yet: llama.cpp reads it "
            "from extra metadata (and a rope_freqs tensor for llama3), but transformers' GGUF reader, the "
            "independent reader the export is checked with, ignores those keys, so the export could not be "
            "proven to answer like the source. Supported: default and linear rope.",
        )
    if model_type == "mistral" and getattr(config, "sliding_window", None):
        if config.sliding_window < getattr(config, "max_position_embeddings", 0):
            raise LlmtuneError(
                f"this Mistral model attends through a sliding window of {config.sliding_window} tokens, "
                "which a GGUF written as llama (as llama.cpp writes Mistral) does not describe.",
            )
    return ARCHITECTURES[model_type]


def _rope_parameters(config) -> dict:
    """transformers 5 keeps rope settings in `rope_parameters`; older configs in rope_theta/rope_scaling."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
        if "type" in scaling and "rope_type" not in params:
            params["rope_type"] = scaling["type"]
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


# ---------------------------------------------------------------------------------------- tensors
def plan_tensors(model, quant: str) -> GgufPlan:
    """Every tensor's GGUF name, shape and type, from the model's state dict (no data is read)."""
    import gguf

    config = model.config
    arch = check_exportable(config, quant)
    plan = GgufPlan(architecture=arch, quant=quant)
    names = gguf.get_tensor_name_map(_model_arch(arch), _layer_count(config))
    main_type = QUANT_TYPES[quant][0]
    fallbacks = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias")) or "rotary_emb" in hf_name:
            continue  # GPT-2's causal-mask buffers and rotary caches are computed, not weights
        if hf_name == "lm_head.weight" and _tied(model):
            continue  # llama.cpp reuses token_embd when there is no output tensor (tie_word_embeddings)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise LlmtuneError(
                f"GGUF export: no llama.cpp name for the tensor {hf_name} of this {arch} model."
            )
        shape = tuple(tensor.shape)
        ggml_type = _tensor_type(gguf_name, shape, main_type, quant)
        if ggml_type != main_type and len(shape) == 2 and ggml_type == "F16":
            fallbacks.append(gguf_name)
        plan.tensors.append((hf_name, gguf_name, shape, ggml_type))
        if arch == "gpt2" and gguf_name == "token_embd.weight":
            # GPT-2 ties its head to wte; llama.cpp's converter writes the tied copy as output.weight
            plan.tensors.append(
                (hf_name, "output.weight", shape, _tensor_type("output.weight", shape, main_type, quant))
            )
    if fallbacks:
        plan.notes.append(
            f"{len(fallbacks)} matrices kept at f16: their rows are not a multiple of the {quant} block "
            f"({fallbacks[0]}, ...), as llama.cpp's converter does."
        )
    if quant in LOW_BIT_TYPES:
        plan.notes.append(
            f"token embedding and output head kept at q8_0 (the rest {quant}), as llama-quantize keeps them higher."
        )
    return plan


def _tensor_type(gguf_name: str, shape: tuple[int, ...], main_type: str, quant: str) -> str:
    import gguf

    if len(shape) < 2 or gguf_name.startswith("position_embd") or main_type == "F32":
        return "F32"  # norms, biases and positions stay float32, as in every llama.cpp conversion
    if main_type in ("F16", "BF16"):
        return main_type
    chosen = (
        "Q8_0" if quant in LOW_BIT_TYPES and gguf_name.startswith(("token_embd", "output.")) else main_type
    )
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[chosen]]
    return chosen if shape[-1] % block == 0 else "F16"


def _tensor_data(model_state, hf_name: str, gguf_name: str, config, arch: str) -> np.ndarray:
    """The float32 array llama.cpp expects for this tensor (reshaped as its converter does)."""
    array = model_state[hf_name].detach().float().cpu().numpy()
    if arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
        # llama.cpp's rope pairs dimensions (i, i+1); HF's pairs (i, i+d/2): permute rows into its order.
        heads = config.num_attention_heads
        if gguf_name.endswith("attn_k.weight"):
            heads = getattr(config, "num_key_value_heads", None) or heads
        array = array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:])
        array = array.swapaxes(1, 2).reshape(model_state[hf_name].shape)
    if arch == "gpt2" and hf_name.endswith(
        ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    ):
        array = array.T  # GPT-2's Conv1D stores (in, out); llama.cpp wants (out, in) like nn.Linear
    return np.ascontiguousarray(array)


def _encode(array: np.ndarray, ggml_type: str) -> np.ndarray:
    import gguf

    if ggml_type == "F32":
        return array.astype(np.float32, copy=False)
    if ggml_type == "F16":
        return array.astype(np.float16)
    return gguf.quants.quantize(array, gguf.GGMLQuantizationType[ggml_type])


def _nbytes(shape: tuple[int, ...], ggml_type: str) -> tuple[tuple[int, ...], np.dtype]:
    """(the shape the writer is given, its numpy dtype) without converting the data."""
    import gguf

    if ggml_type == "F32":
        return shape, np.dtype(np.float32)
    if ggml_type == "F16":
        return shape, np.dtype(np.float16)
    return gguf.quants.quant_shape_to_byte_shape(shape, gguf.GGMLQuantizationType[ggml_type]), np.dtype(
        np.uint8
    )


# ---------------------------------------------------------------------------------------- the file
def write_gguf(
    model,
    tokenizer,
    path: Path,
    quant: str,
    *,
    name: str,
    chat_template: str | None,
    end_of_turn: str | None = None,
    add_bos: bool | None = None,
) -> GgufPlan:
    """Write `model` + `tokenizer` to `path` as a GGUF of type `quant`; returns the plan it followed."""
    import gguf

    config = model.config
    plan = plan_tensors(model, quant)
    writer = gguf.GGUFWriter(str(path), plan.architecture)
    _add_model_metadata(writer, config, plan, name, quant)
    plan.notes += _add_tokenizer(writer, tokenizer, chat_template, end_of_turn, _vocab_rows(model), add_bos)
    for _, gguf_name, shape, ggml_type in plan.tensors:
        byte_shape, dtype = _nbytes(_gguf_shape(shape, gguf_name, plan.architecture), ggml_type)
        nbytes = int(np.prod(byte_shape)) * dtype.itemsize
        plan.tensor_bytes += nbytes
        writer.add_tensor_info(
            gguf_name,
            byte_shape,
            dtype,
            nbytes,
            raw_dtype=gguf.GGMLQuantizationType[ggml_type],
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    state = model.state_dict()
    for hf_name, gguf_name, _, ggml_type in plan.tensors:
        data = _encode(_tensor_data(state, hf_name, gguf_name, config, plan.architecture), ggml_type)
        writer.write_tensor_data(data)
        del data
    writer.close()
    return plan


def _gguf_shape(shape, gguf_name, arch):
    if (
        arch == "gpt2"
        and len(shape) == 2
        and gguf_name.split(".")[-2] in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")
    ):
        return (shape[1], shape[0])  # Conv1D, transposed in _tensor_data
    return shape


def _model_arch(arch: str):
    import gguf

    return {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gpt2": gguf.MODEL_ARCH.GPT2}[
        arch
    ]


def _layer_count(config) -> int:
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def _tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _vocab_rows(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def _add_model_metadata(writer, config, plan: GgufPlan, name: str, quant: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(getattr(gguf.LlamaFileType, QUANT_TYPES[quant][1]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    if plan.architecture == "gpt2":
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


# ---------------------------------------------------------------------------------------- tokenizer
def _add_tokenizer(
    writer,
    tokenizer,
    chat_template: str | None,
    end_of_turn: str | None,
    rows: int,
    add_bos: bool | None = None,
) -> list[str]:
    """The vocabulary, merges, special-token ids and chat template, as llama.cpp's converter writes a
    byte-level BPE tokenizer. Returns notes for the report."""

    notes = []
    if len(tokenizer) > rows:
        raise LlmtuneError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows} rows: ids "
            f"{rows}..{len(tokenizer) - 1} have no embedding, and a GGUF reader would index past it.",
            hint="Export the run folder the model was trained with (its tokenizer), or resize the "
            "embedding (a new training run does this).",
        )
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if tokenizer.is_fast else None
    if backend is None or backend["model"]["type"] != "BPE" or not _byte_level(backend):
        kind = backend["model"]["type"] if backend else type(tokenizer).__name__
        raise LlmtuneError(
            f"GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM); this one is "
            f"{kind}{' without byte-level pre-tokenizing' if backend else ''} (SentencePiece-style, as in "
            "Llama 2 and Mistral 7B v0.1), which is not supported yet.",
        )
    tokens, types = _token_list(tokenizer, rows)
    vocab = tokenizer.get_vocab()
    if rows > len(tokenizer):
        notes.append(
            f"embedding rows {len(tokenizer)}..{rows - 1} have no token; written as unused [PAD] tokens."
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(backend))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = backend["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, token in (
        ("bos", tokenizer.bos_token),
        ("eos", tokenizer.eos_token),
        ("unk", tokenizer.unk_token),
        ("pad", tokenizer.pad_token),
    ):
        if token is not None and token in vocab:
            getattr(writer, f"add_{key}_token_id")(vocab[token])
    if end_of_turn and end_of_turn in vocab and end_of_turn != tokenizer.eos_token:
        writer.add_eot_token_id(vocab[end_of_turn])  # llama.cpp stops at EOT as well as EOS
    # add_bos: whether llama.cpp puts BOS before a prompt. By default as the tokenizer encodes text; for
    # Ollama, as the chat template starts (its TEMPLATE leaves BOS to llama.cpp)
    writer.add_add_bos_token(_adds_bos(tokenizer) if add_bos is None else add_bos)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    else:
        notes.append("no chat template: the GGUF has none, and chat front-ends will use their own default.")
    return notes


def _token_list(tokenizer, rows: int) -> tuple[list[str], list]:
    """Every id's token and type, as llama.cpp's converter lists them: added special tokens are CONTROL
    (a reader must match them whole, never split them), other added tokens USER_DEFINED, ids without a
    token (a padded embedding) UNUSED."""
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(rows):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _byte_level(backend: dict) -> bool:
    text = json.dumps(backend.get("pre_tokenizer")) + json.dumps(backend.get("decoder"))
    return "ByteLevel" in text


def _pre_tokenizer(backend: dict) -> str:
    """tokenizer.ggml.pre for this tokenizer's pre-tokenizer (see _SPLITS)."""
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Split":
            pattern = step.get("pattern", {})
            regex = pattern.get("Regex") or pattern.get("String")
            if regex in _SPLITS:
                return _SPLITS[regex]
            raise LlmtuneError(
                "GGUF export: this tokenizer splits text with a regular expression llmtune does not know "
                f"({regex[:60]!r}...), so llama.cpp would not be told how to pre-tokenize it.",
            )
    types = [step.get("type") for step in steps]
    if types == ["ByteLevel"]:
        return "gpt-2"
    if types == ["Digits", "ByteLevel"]:
        return "smollm"  # llama.cpp's SmolLM pre-tokenizer: single digits, then GPT-2's split
    raise LlmtuneError(f"GGUF export: unknown pre-tokenizer sequence {types}.")


def _adds_bos(tokenizer) -> bool:
    """Whether encoding a text puts BOS in front (llama.cpp's add_bos_token must say the same)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
