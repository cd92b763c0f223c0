"""The `model:` section: what to load (hub id, local folder, demo alias, GGUF) or build from a config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmtune.recipe.base import Section


class ModelSection(Section):
    """What to load. Exactly one of `name_or_path` and `from_config`."""

    name_or_path: str | None = Field(
        None,
        description="Local folder, demo alias (smollm2-135m-instruct, minilm-l6), HuggingFace id, or ModelScope id.",
    )
    hub: Literal["auto", "hf", "modelscope"] = Field(
        "auto", description="Where a hub id is fetched from; auto = $LLMTUNE_HUB or HuggingFace."
    )
    revision: str | None = None
    gguf_file: str | None = Field(
        None, description="GGUF file name inside name_or_path, or a path to a .gguf file."
    )
    from_config: dict[str, Any] | None = Field(
        None,
        description="Build an untrained model: {architecture: gpt2|llama|..., <config sizes>}. Needs `tokenizer`.",
    )
    init: Literal["hf", "pytorch"] = Field(
        "hf",
        description="Weights of a from_config model: hf = the architecture's own initialisation (normal, "
        "std initializer_range); pytorch = PyTorch's layer defaults (embeddings N(0, 1), Kaiming-uniform "
        "linears), what hand-written models such as LLMs-from-scratch's GPTModel start from.",
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer folder or id; defaults to name_or_path. A folder may hold tokenizer.json, "
        "vocab.json + merges.txt, or GPT-2's encoder.json + vocab.bpe.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on a GPU that supports it, else float32."
    )
    trust_remote_code: bool = False
    attn_implementation: (
        Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] | None
    ) = Field(
        None, description="Attention kernel; default: sdpa where the architecture supports it, else eager."
    )

    @model_validator(mode="after")
    def check_one_source(self) -> ModelSection:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError(
                "give exactly one of model.name_or_path (a pretrained model) and model.from_config "
                "(an untrained model built from an architecture)"
            )
        return self

    @model_validator(mode="after")
    def check_from_config(self) -> ModelSection:
        if self.from_config is None:
            return self
        if "architecture" not in self.from_config:
            raise ValueError(
                "model.from_config needs an `architecture` key naming the model type, e.g. gpt2, llama, bloom"
            )
        if self.tokenizer is None:
            raise ValueError(
                "model.from_config builds an untrained model: give model.tokenizer (a folder or id)"
            )
        if self.gguf_file is not None:
            raise ValueError(
                "model.gguf_file loads pretrained weights; it cannot be combined with model.from_config"
            )
        return self

    @model_validator(mode="after")
    def check_init_needs_from_config(self) -> ModelSection:
        if self.init != "hf" and self.from_config is None:
            raise ValueError("model.init chooses how an untrained model starts; it needs model.from_config")
        return self
