"""`llmtune export`'s recipe: which model, which format and type, where, and what the check runs on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipe.base import InputFile, OutputPath, Recipe, Section
from llmtune.recipe.model import ModelSection
from llmtune.recipe.recipes import SamplesSection

GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


class ExportSection(Section):
    """The format, the type, the folder, and the check's inputs."""

    format: Literal["gguf", "ollama", "bnb-4bit", "bnb-8bit"] = Field(
        ...,
        description="gguf: one GGUF file (llama.cpp, LM Studio); ollama: the GGUF plus a Modelfile; "
        "bnb-4bit / bnb-8bit: a bitsandbytes-quantised safetensors folder for from_pretrained.",
    )
    quant: str | None = Field(
        None,
        description=f"GGUF type: {', '.join(GGUF_QUANTS)} (default q8_0). Not used by bnb formats.",
    )
    output_dir: OutputPath = Field(..., description="The export folder (never overwritten silently).")
    name: str | None = Field(None, description="Model name in the GGUF metadata and file name.")
    check_text: InputFile | None = Field(
        None,
        description="Text file the check runs on (perplexity, logits, tokenizer round trip); default: the "
        "run's validation data, else a built-in paragraph set.",
    )
    check_samples: int = Field(16, gt=0, description="Validation conversations or text chunks checked.")
    check_tokens: int = Field(256, ge=16, description="Longest check sequence, in tokens.")
    logit_bound: float | None = Field(
        None,
        gt=0,
        description="The check's bound on max |export - source| logit for f32/f16/bf16 (default 1e-4 / 0.1 / "
        "0.75, measured on SmolLM2-135M); a larger model's larger logits may need more.",
    )
    ollama_template: InputFile | None = Field(
        None, description="A Go template file for the Modelfile, for a chat template llmtune does not know."
    )
    system: str | None = Field(
        None, description="System prompt in the Modelfile (default: the run's data.system, if any)."
    )
    verify: list[Literal["llama-cpp"]] = Field(
        default_factory=list,
        description="Second readers: llama-cpp loads the GGUF in llama.cpp (pip install llama-cpp-python) "
        "and compares next-token log-probabilities and greedy answers with the source.",
    )

    @model_validator(mode="after")
    def check_quant(self) -> ExportSection:
        gguf = self.format in ("gguf", "ollama")
        if gguf:
            if self.quant is None:
                self.quant = "q8_0"
            if self.quant not in GGUF_QUANTS:
                raise ValueError(
                    f"export.quant {self.quant!r} is not a GGUF type llmtune writes; types: "
                    f"{', '.join(GGUF_QUANTS)} (k-quants such as q4_K_M: run llama.cpp's llama-quantize on "
                    "the f16 export)"
                )
        elif self.quant is not None:
            raise ValueError(
                f"export.quant {self.quant!r} applies to gguf/ollama; {self.format} sets its own type "
                "(nf4 for bnb-4bit, int8 for bnb-8bit): leave export.quant out"
            )
        if self.verify and not gguf:
            raise ValueError("export.verify llama-cpp reads a GGUF: use it with format gguf or ollama")
        if self.ollama_template is not None and self.format != "ollama":
            raise ValueError("export.ollama_template is for format ollama")
        return self


class ExportRecipe(Recipe):
    """`llmtune export`: write a model as GGUF / Ollama / bitsandbytes, checked against the source."""

    model: ModelSection
    export: ExportSection
    samples: SamplesSection | None = Field(
        None,
        description="Prompts whose greedy answers are compared (default: the run's samples, else fixed ones).",
    )

    @model_validator(mode="after")
    def check_model(self) -> ExportRecipe:
        if self.model.from_config is not None:
            raise ValueError("export writes a trained model: give model.name_or_path, not model.from_config")
        return self
