"""A bitsandbytes-quantised safetensors folder (nf4 or int8) that plain `from_pretrained` loads.

bitsandbytes quantises while transformers loads a checkpoint (its quantizer replaces the linear layers as
the weights arrive), so an in-memory model (a merged adapter, a de-quantised GGUF) is first saved as float
into a scratch folder inside the staging folder, loaded back with the quantisation config, and saved; the
scratch folder is removed before the check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SCRATCH = ".float-source"


def quantization_config(fmt: str, compute_dtype):
    from transformers import BitsAndBytesConfig

    if fmt == "bnb-4bit":
        # nf4 with double quantisation: QLoRA's format, the most common 4-bit checkpoint on the hub.
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def write_bnb(model, tokenizer, folder: Path, fmt: str) -> dict:
    """Save `model` quantised into `folder`; returns facts for the report."""
    import torch
    from transformers import AutoModelForCausalLM

    scratch = Path(folder) / SCRATCH
    model.save_pretrained(scratch)
    # The compute dtype is saved in the config and used wherever the folder is loaded: bfloat16 for a model
    # published in bfloat16 (what a GPU user expects), float32 otherwise.
    published = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    compute = torch.bfloat16 if str(published).endswith("bfloat16") else torch.float32
    # the layers bitsandbytes does not quantise (embeddings, norms, the head) are saved in that dtype too
    quantized = AutoModelForCausalLM.from_pretrained(
        scratch, quantization_config=quantization_config(fmt, compute), dtype=compute
    )
    quantized.generation_config = model.generation_config
    quantized.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.rmtree(scratch)
    linear = sum(1 for m in quantized.modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt"))
    del quantized
    return {"quantized_linear_layers": linear, "compute_dtype": str(compute).removeprefix("torch.")}
