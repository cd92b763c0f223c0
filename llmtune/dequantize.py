"""GGUF → a normal, trainable, saveable HuggingFace model.

transformers de-quantises a GGUF file to float weights when loading it with `gguf_file=`, but the model
keeps a `quantization_config` (quant_method "gguf") and then refuses `save_pretrained` ("quantized with
gguf and is not serializable"). A fine-tuned model must be saveable, so we rebuild a plain model from
the config without that entry and move the de-quantised weights into it (no copy: `assign=True`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def plain_model_from_gguf(model):
    """A copy of a GGUF-loaded causal LM without the GGUF quantisation marker (same tensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    # Tied output heads are one tensor: "lm_head.weight" may be absent from the state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(
            f"GGUF weights do not match the architecture: missing {missing}, unexpected {unexpected}"
        )
    # Non-persistent buffers (rotary inv_freq, ...) are not in the state dict: take the loaded model's.
    for name, buffer in model.named_buffers():
        module_name, _, attr = name.rpartition(".")
        plain.get_submodule(module_name)._buffers[attr] = buffer
    if config.tie_word_embeddings:
        plain.tie_weights()
    left_on_meta = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"GGUF conversion left tensors without data: {left_on_meta[:5]}")
    plain.generation_config = model.generation_config
    return plain.eval()


def convert_gguf_to_hf(source_dir: Path, gguf_file: str, target: Path) -> Path:
    """Write `source_dir/gguf_file` as a safetensors folder with its tokenizer and chat template.

    Written into a temporary sibling folder and renamed at the end, so that an interrupted conversion
    never leaves a folder that looks complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
    model = plain_model_from_gguf(AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_file))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "llmtune_converted.json").write_text(
        json.dumps(
            {
                "from": str(Path(source_dir) / gguf_file),
                "dtype": str(model.dtype).removeprefix("torch."),
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds": round(time.time() - start, 1),
            },
            indent=2,
        )
    )
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target
