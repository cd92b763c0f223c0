"""Typed recipe sections: load a YAML recipe, apply `--set` overrides, validate, report problems.

A recipe is plain YAML with one section per concern:

    model:  what to load (hub id, local folder, demo alias, GGUF, or an architecture built from config)
    data:   what to train on (the shape depends on the command)
    peft:   adapter method and its settings, or `method: none` for full training
    train:  HuggingFace TrainingArguments keys under their own names, checked against the dataclass

Each command has its own recipe class (e.g. `PretrainRecipe`) made of these sections; later commands
add their own sections beside them. Unknown keys are errors with a "did you mean", wrong types name
`section.key`, what was given and what is expected, and every message names the recipe file.

Relative input paths written in a recipe file are relative to the recipe file's folder (a recipe means
the same thing from wherever it is run); relative paths given with `--set` are relative to the current
folder. `train.output_dir` is an output, and relative to the current folder in both cases, so that a
recipe on a read-only mount (a Kaggle input, say) still writes its run where the user is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from llmtune.errors import LlmtuneError, did_you_mean

# Marks a string field as a path to an input on disk (resolved against the recipe file's folder).
INPUT_PATH = "input_path"
InputPath = Annotated[str, Field(json_schema_extra={INPUT_PATH: True})]


class _RecipeYamlLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `save_strategy: no` is the boolean False and `4e-4` is a string.
    Recipes follow YAML 1.2 on both: only true/false are booleans, and 4e-4 is a number."""


_RecipeYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeYamlLoader)  # noqa: S506 - a SafeLoader subclass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
    # Names users bring from other tools → ours; used only to suggest the right key.
    key_aliases: ClassVar[dict[str, str]] = {}


# ----------------------------------------------------------------------------------------------- model
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


# ------------------------------------------------------------------------------------------------ peft
class PeftSection(Section):
    """Adapter settings under PEFT's own names; `method: none` trains every weight.

    lora / dora / qlora (LoRA on a 4-bit nf4 base, bitsandbytes) use r, lora_alpha, lora_dropout,
    target_modules, use_rslora; prompt_tuning / prefix_tuning / p_tuning use num_virtual_tokens; ia3 uses
    target_modules + feedforward_modules; freeze trains only the modules named in `trainable`.
    """

    key_aliases: ClassVar[dict[str, str]] = {
        "rank": "r",
        "lora_r": "r",
        "lora_rank": "r",
        "alpha": "lora_alpha",
        "dropout": "lora_dropout",
        "lora_target": "target_modules",
        "target": "target_modules",
        "finetuning_type": "method",
        "type": "method",
        "freeze_trainable_modules": "trainable",
        "freeze_trainable_layers": "trainable_last_layers",
        "pre_seq_len": "num_virtual_tokens",
    }

    method: Literal[
        "none", "lora", "dora", "qlora", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3", "freeze"
    ] = "none"
    r: int = Field(8, gt=0)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Modules to adapt; default all-linear (LoRA family) or the architecture's own (IA3).",
    )
    modules_to_save: list[str] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    # qlora
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the 4-bit layers' matmuls; auto = the model dtype."
    )
    # prompt learning
    num_virtual_tokens: int = Field(20, gt=0)
    prompt_tuning_init_text: str | None = Field(
        None, description="prompt_tuning: initialise the virtual tokens from this text (else random)."
    )
    encoder_hidden_size: int = Field(128, gt=0, description="p_tuning: hidden size of the prompt encoder.")
    # ia3
    feedforward_modules: list[str] | None = None
    # freeze
    trainable: list[str] = Field(
        default_factory=list,
        description="freeze: substrings of parameter names to train (e.g. lm_head, layers.29.)",
    )
    trainable_last_layers: int = Field(
        0, ge=0, description="freeze: also train the last N transformer blocks."
    )

    @field_validator("target_modules", "feedforward_modules", "trainable", mode="before")
    @classmethod
    def _one_module_as_list(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            return [value]
        return value

    @model_validator(mode="after")
    def check_keys_apply_to_the_method(self) -> PeftSection:
        """A setting that only one method reads is an error under another: it would be ignored silently
        (quant_type without qlora trains an unquantised model while the recipe says 4-bit)."""
        only = {
            "qlora": ("quant_type", "double_quant", "compute_dtype"),
            "freeze": ("trainable", "trainable_last_layers"),
        }
        for method, keys in only.items():
            stray = [k for k in keys if k in self.model_fields_set and self.method != method]
            if stray:
                raise ValueError(
                    f"peft.{stray[0]} applies to peft.method {method} only, and the method is {self.method!r}; "
                    f"remove it or set peft.method: {method}"
                )
        return self

    @model_validator(mode="after")
    def check_freeze(self) -> PeftSection:
        if self.method == "freeze" and not self.trainable and not self.trainable_last_layers:
            raise ValueError(
                "peft.method is freeze but nothing is trainable: give peft.trainable (parameter name parts, "
                "e.g. [lm_head]) or peft.trainable_last_layers (e.g. 2)"
            )
        return self

    @property
    def is_prompt_learning(self) -> bool:
        return self.method in ("prompt_tuning", "prefix_tuning", "p_tuning")

    @property
    def is_peft(self) -> bool:
        """True when the result is a PEFT adapter (freeze and none train the model itself)."""
        return self.method not in ("none", "freeze")


# ------------------------------------------------------------------------------------------ pretraining
class CleaningSection(Section):
    """Optional text cleaning; each step reports how many documents it changed or removed."""

    unicode_normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = None
    collapse_whitespace: bool = False
    deduplicate: bool = False
    min_chars: int = Field(0, ge=0)
    max_chars: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def check_length_bounds(self) -> CleaningSection:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"data.clean.max_chars ({self.max_chars}) is below data.clean.min_chars ({self.min_chars})"
            )
        return self


class TextDataSection(Section):
    """Raw text for (continued) pretraining: files, folders or globs of .txt / .jsonl / .json."""

    train_files: list[InputPath] = Field(..., min_length=1)
    validation_files: list[InputPath] = Field(default_factory=list)
    validation_split: float = Field(
        0.0, ge=0, lt=1, description="Share held out for validation when no files are given."
    )
    split_by: Literal["document", "character"] = Field(
        "document",
        description="document: a seeded random share of documents; character: the last share of the "
        "joined text (the LLMs-from-scratch split).",
    )
    seed: int = Field(42, description="Seed of the document-level validation split.")
    text_field: str = Field("text", description="Field holding the text in .jsonl/.json rows.")
    txt_document: Literal["line", "paragraph", "file"] = Field(
        "line",
        description="What one document is in a .txt file: a line, a blank-line paragraph, or the whole file.",
    )
    block_size: int = Field(1024, gt=0, description="Tokens per training block.")
    stride: int | None = Field(
        None,
        gt=0,
        description="Start a block every `stride` tokens (overlapping windows); default = block_size.",
    )
    add_eos: bool = Field(True, description="Append the tokenizer's EOS token after each document.")
    eval_train_blocks: int = Field(
        0,
        ge=0,
        description="Also evaluate on this many training blocks at each evaluation, in eval mode (the "
        "'train loss' LLMs-from-scratch reports); logged as eval_train_loss.",
    )
    clean: CleaningSection = Field(default_factory=CleaningSection)
    on_bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="A .jsonl row that is not JSON or lacks the text field: stop, or skip and count it.",
    )
    cache: bool = Field(
        True, description="Reuse the tokenised blocks from $LLMTUNE_HOME/cache when inputs match."
    )
    num_proc: int | None = Field(
        None, gt=0, description="Processes for tokenisation (datasets.map num_proc)."
    )

    @field_validator("train_files", "validation_files", mode="before")
    @classmethod
    def _one_file_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def check_validation_source(self) -> TextDataSection:
        if self.validation_files and self.validation_split > 0:
            raise ValueError(
                "give data.validation_files or data.validation_split, not both "
                "(validation_split holds out part of train_files)"
            )
        if self.eval_train_blocks and not (self.validation_files or self.validation_split):
            raise ValueError(
                "data.eval_train_blocks evaluates beside the validation data: give validation data too"
            )
        if self.stride is not None and self.stride > self.block_size:
            raise ValueError(
                f"data.stride ({self.stride}) is larger than data.block_size ({self.block_size}): "
                "tokens between blocks would never be trained on"
            )
        return self


class EarlyStoppingSection(Section):
    """Stop when the eval metric (train.metric_for_best_model, default eval_loss) stops improving."""

    patience: int = Field(..., gt=0, description="Evaluations without improvement before stopping.")
    threshold: float = Field(0.0, ge=0, description="Minimum improvement that counts.")


# ------------------------------------------------------------------------------------------ chat data
class ChatDataSection(Section):
    """Chat-shaped data for sft (conversations) and dpo (preference pairs): .jsonl or .json files."""

    key_aliases: ClassVar[dict[str, str]] = {
        "dataset": "train_files",
        "train_file_dir": "train_files",
        "cutoff_len": "max_length",
        "model_max_length": "max_length",
        "max_seq_length": "max_length",
        "val_size": "validation_split",
        "interleave_probs": "weights",
        "mix_strategy": "weights",
        "max_train_samples": "max_samples",
    }

    train_files: list[InputPath] = Field(..., min_length=1)
    weights: list[Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="One per train file: copies of its rows in the mix (0.5 = a seeded random half, 2 = twice).",
    )
    validation_files: list[InputPath] = Field(default_factory=list)
    validation_split: float = Field(0.0, ge=0, lt=1)
    seed: int = 42
    format: Literal[
        "auto",
        "alpaca",
        "sharegpt",
        "messages",
        "prompt_completion",
        "preference",
        "alpaca_preference",
        "sharegpt_preference",
    ] = Field("auto", description="Row shape; auto = detected from each file's first row (and reported).")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Our field name → the file's, e.g. {instruction: question}."
    )
    system: str | None = Field(None, description="System prompt for rows that have none.")
    template: str | None = Field(
        None,
        description="Chat template: none = the model's own; chatml, llama3, qwen, alpaca; or a Jinja string.",
    )
    max_length: int = Field(1024, gt=0, description="Tokens per example (prompt + answer).")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="An example longer than max_length: cut its end, or drop it (counted)."
    )
    train_on_prompt: bool = Field(False, description="Loss on every token, not only assistant turns.")
    packing: bool = Field(
        False,
        description="sft: pack examples into max_length rows (TRL best-fit decreasing, padding-free with "
        "position_ids so attention never crosses examples).",
    )
    max_samples: int | None = Field(None, gt=0, description="Use only the first N valid rows of each file.")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="A bad row: stop naming file and line, or skip and count it by reason."
    )

    @field_validator("train_files", "validation_files", mode="before")
    @classmethod
    def _one_file_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def check_validation_source(self) -> ChatDataSection:
        if self.validation_files and self.validation_split > 0:
            raise ValueError("give data.validation_files or data.validation_split, not both")
        return self


class SamplesSection(Section):
    """Prompts answered (greedy) before and after training, to see what changed; saved in samples.json."""

    prompts: list[str] = Field(..., min_length=1)
    max_new_tokens: int = Field(64, gt=0)


class DpoSection(Section):
    """Preference optimisation: the algorithm, and its settings under TRL's names."""

    algorithm: Literal["dpo", "orpo", "simpo", "kto"] = Field(
        "dpo",
        description="dpo (TRL DPOTrainer, any loss_type), orpo (reference-free odds ratio), simpo "
        "(reference-free, length-normalised; TRL's CPOTrainer), kto (pairs unpaired into good/bad answers).",
    )
    beta: float = Field(0.1, gt=0)
    loss_type: list[str] = Field(
        default_factory=lambda: ["sigmoid"],
        description="dpo: TRL's loss types (sigmoid, ipo, hinge, robust, bco_pair, sppo_hard, nca_pair, "
        "aot, aot_unpaired, apo_zero, apo_down, exo_pair, discopop, sft, sigmoid_norm); several are combined.",
    )
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    simpo_gamma: float = Field(0.5, description="simpo: target reward margin.")
    precompute_ref_log_probs: bool = False

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_loss_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


# ------------------------------------------------------------------------------------------- ner data
class NerDataSection(Section):
    """Token-tagging data: CoNLL/BIO column files or CLUENER span JSON (one character per token)."""

    train_files: list[InputPath] = Field(..., min_length=1)
    validation_files: list[InputPath] = Field(default_factory=list)
    test_files: list[InputPath] = Field(default_factory=list, description="Scored at the end of training.")
    format: Literal["auto", "conll", "span_json"] = Field(
        "auto", description="auto: .json/.jsonl files are span JSON, anything else CoNLL columns."
    )
    tag_column: int = Field(-1, description="CoNLL: the column holding the tag (-1 = the last).")
    scheme: Literal["BIO", "BIOES"] = "BIO"
    strict: bool = Field(
        True, description="BIO: an I-X after O or another type is an error (false: repaired to B-X, counted)."
    )
    label_all_subtokens: bool = Field(
        False, description="Label every sub-token of a word (default: only the first carries loss and tags)."
    )
    max_length: int = Field(256, gt=8, description="Sub-tokens per example; longer sentences are split.")
    stride: int = Field(
        8, ge=0, description="Words of overlap between the pieces of a split training sentence."
    )
    max_samples: int | None = Field(None, gt=0, description="Use only the first N sentences of each file.")
    on_bad_rows: Literal["error", "skip"] = "error"

    @field_validator("train_files", "validation_files", "test_files", mode="before")
    @classmethod
    def _one_file_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class NerSection(Section):
    """The tagger head."""

    use_crf: bool = Field(
        True, description="A CRF over the word tags (pytorch-crf), scheme-constrained decoding."
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    seqeval_mode: Literal["default", "strict"] = Field(
        "default", description="seqeval's entity matching: default (conlleval) or strict (scheme-exact)."
    )


# ------------------------------------------------------------------------------------------------ train
# TrainingArguments keys that users bring from transformers 4 scripts (MedicalGPT, LLaMA-Factory):
# renamed keys are mapped with a note; removed ones are dropped with a note that says what replaces them.
RENAMED_TRAIN_KEYS = {
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
}
DROPPED_TRAIN_KEYS = {
    "logging_dir": "TensorBoard logs always go to <output_dir>/tensorboard",
    "save_safetensors": "weights are always saved as safetensors",
    "overwrite_output_dir": "llmtune never overwrites a run folder silently; pass --overwrite on the command line",
}


class TrainSection(BaseModel):
    """TrainingArguments keys (or SFTConfig/DPOConfig keys) under HuggingFace's own names.

    Only `output_dir` is declared here; every other key is checked against the fields of the trainer's
    argument dataclass when the recipe is loaded (see `check_train_keys`), so that HF's hundred arguments
    are not copied into our schema.
    """

    model_config = ConfigDict(extra="allow")
    output_dir: str = Field(..., description="Run folder (relative to the current folder).")

    def trainer_kwargs(self) -> dict[str, Any]:
        return self.model_dump()


class LaunchSection(Section):
    """How many processes train, and how they share the model (the command-line flags override these)."""

    nproc: int = Field(1, ge=1, description="Processes (GPUs) per node; > 1 re-launches under accelerate.")
    strategy: Literal["single", "ddp", "fsdp", "zero2", "zero3", "zero3-offload"] = Field(
        "single", description="ddp; fsdp (full shard, FSDP2); DeepSpeed ZeRO-2, ZeRO-3, ZeRO-3 + CPU offload."
    )
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int = Field(29500, gt=0, lt=65536)
    accelerate_config: InputPath | None = Field(None, description="Your own accelerate config file.")


# ----------------------------------------------------------------------------------------------- recipes
class Recipe(Section):
    """Base of every command's recipe. `train_arguments` names the dataclass `train:` is checked against."""

    train_arguments: ClassVar[str] = "transformers.TrainingArguments"
    _source: str = PrivateAttr("<recipe>")
    _notes: list[str] = PrivateAttr(default_factory=list)
    _given_paths: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The recipe file as the user named it (for messages)."""
        return self._source

    @property
    def notes(self) -> list[str]:
        """Notes made while loading (legacy keys mapped, and so on), to print once."""
        return self._notes

    def describe_path(self, path: str) -> str:
        """A path for an error message: as the user gave it, and where it was looked for."""
        given = self._given_paths.get(path)
        if given and given != path:
            return f"'{given}' (looked for at {path})"
        return f"'{path}'"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


class PretrainRecipe(Recipe):
    """`llmtune pretrain`: continued pretraining (full, LoRA, DoRA) or training from scratch."""

    model: ModelSection
    data: TextDataSection
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection
    launch: LaunchSection = Field(default_factory=LaunchSection)
    early_stopping: EarlyStoppingSection | None = None

    @model_validator(mode="after")
    def check_peft_needs_pretrained(self) -> PretrainRecipe:
        if self.model.from_config is not None and self.peft.method != "none":
            raise ValueError(
                f"peft.method is {self.peft.method!r} but model.from_config builds an untrained model; "
                "an adapter on random weights learns nothing useful. Use peft.method: none to train from scratch."
            )
        return self


class SftRecipe(Recipe):
    """`llmtune sft`: supervised fine-tuning on conversations with TRL's SFTTrainer."""

    train_arguments: ClassVar[str] = "trl.SFTConfig"
    model: ModelSection
    data: ChatDataSection
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection
    launch: LaunchSection = Field(default_factory=LaunchSection)
    early_stopping: EarlyStoppingSection | None = None
    samples: SamplesSection | None = None

    @model_validator(mode="after")
    def check_sft(self) -> SftRecipe:
        _check_chat_recipe(self, preference=False)
        if self.data.packing and self.peft.is_prompt_learning:
            raise ValueError(
                f"data.packing with peft.method {self.peft.method}: virtual tokens are prepended to each "
                "row, which packed rows of several examples cannot have; set data.packing: false."
            )
        return self


class DpoRecipe(Recipe):
    """`llmtune dpo`: preference tuning (DPO and its loss types, ORPO, SimPO, KTO) with TRL."""

    train_arguments: ClassVar[str] = "trl.DPOConfig"
    model: ModelSection
    data: ChatDataSection
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection
    launch: LaunchSection = Field(default_factory=LaunchSection)
    dpo: DpoSection = Field(default_factory=DpoSection)
    early_stopping: EarlyStoppingSection | None = None

    @model_validator(mode="after")
    def check_dpo(self) -> DpoRecipe:
        _check_chat_recipe(self, preference=True)
        if self.data.packing:
            raise ValueError("data.packing is an sft option; preference pairs are never packed")
        if self.peft.is_prompt_learning:
            raise ValueError(
                f"peft.method {self.peft.method} is not supported for dpo; use lora, dora or qlora"
            )
        return self


class NerRecipe(Recipe):
    """`llmtune lora-ner`: a BERT-like encoder + linear + optional CRF token tagger, LoRA on the encoder."""

    model: ModelSection
    data: NerDataSection
    ner: NerSection = Field(default_factory=NerSection)
    peft: PeftSection = Field(
        default_factory=lambda: PeftSection(
            method="lora", r=8, lora_alpha=16, target_modules=["query", "value"]
        )
    )
    train: TrainSection
    launch: LaunchSection = Field(default_factory=LaunchSection)
    early_stopping: EarlyStoppingSection | None = None

    @model_validator(mode="after")
    def check_ner(self) -> NerRecipe:
        if self.model.from_config is not None:
            raise ValueError("lora-ner fine-tunes a pretrained encoder: give model.name_or_path")
        if self.peft.method not in ("none", "lora", "dora"):
            raise ValueError(f"peft.method {self.peft.method!r}: lora-ner supports none, lora and dora")
        return self


# ------------------------------------------------------------------------------------------------ eval
class EvalSection(Section):
    """How `llmtune eval` runs: where results go, the chat template, two models to compare."""

    output_dir: str | None = Field(
        None, description="Results folder (default: runs/eval-<date>-<time>); never overwritten silently."
    )
    compare: list[str] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="Two models (name, folder or run) to compare side by side.",
    )
    template: str | None = Field(
        None,
        description="Chat template for every model: a built-in name or Jinja (default: the first model's own).",
    )


class PerplexityTaskSection(Section):
    """Perplexity on text files with a sliding window (HF's recipe)."""

    files: list[InputPath] = Field(..., min_length=1)
    text_field: str = Field("text", description="Field holding the text in .jsonl/.json rows.")
    join: str = Field(
        "\n\n", description="Joins the documents of a file (HF's recipe joins with blank lines)."
    )
    max_length: int = Field(1024, ge=2, description="Window length in tokens.")
    stride: int = Field(512, gt=0, description="Tokens the window moves; each token is scored once.")
    batch_size: int = Field(4, gt=0)

    @field_validator("files", mode="before")
    @classmethod
    def _one_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def check_stride(self) -> PerplexityTaskSection:
        if self.stride > self.max_length:
            raise ValueError(f"perplexity.stride {self.stride} is larger than max_length {self.max_length}")
        return self


class McqTaskSection(Section):
    """Multiple-choice questions in the MMLU / CMMLU CSV layouts, scored by log-likelihood."""

    files: list[InputPath] = Field(
        ..., min_length=1, description="CSV files or folders of them (one subject each)."
    )
    layout: Literal["auto", "mmlu", "mmlu_original", "cmmlu"] = "auto"
    shots: int = Field(0, ge=0, description="Worked examples before each question, from shots_files.")
    shots_files: list[InputPath] = Field(
        default_factory=list, description="Dev files with the k-shot examples (matched by subject)."
    )
    score: Literal["letter", "text", "both"] = Field(
        "letter", description="Score the answer letter, each option's text, or both."
    )
    chat: bool = Field(False, description="Put the question in the chat template (the harnesses do not).")
    max_questions: int | None = Field(None, gt=0, description="Score only the first N questions per subject.")
    batch_size: int = Field(8, gt=0)
    on_bad_rows: Literal["error", "skip"] = "error"

    @field_validator("files", "shots_files", mode="before")
    @classmethod
    def _one_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class GenerateTaskSection(Section):
    """Answers to prompts through the chat template."""

    prompts: list[str] = Field(default_factory=list)
    prompts_file: InputPath | None = Field(
        None, description="A .txt file (one prompt per line) or .jsonl rows."
    )
    system: str | None = None
    max_new_tokens: int = Field(128, gt=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0
    batch_size: int = Field(4, gt=0)

    @field_validator("prompts", mode="before")
    @classmethod
    def _one_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class NerTaskSection(Section):
    """Entity F1 of a lora-ner run."""

    files: list[InputPath] = Field(..., min_length=1)
    model: InputPath | None = Field(
        None, description="The lora-ner run (default: the model under evaluation)."
    )
    format: Literal["auto", "conll", "span_json"] = "auto"
    tag_column: int = -1
    max_samples: int | None = Field(None, gt=0)
    on_bad_rows: Literal["error", "skip"] = "error"

    @field_validator("files", mode="before")
    @classmethod
    def _one_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class EvalRecipe(Recipe):
    """`llmtune eval`: perplexity, multiple choice, generation and NER F1 on one model or two."""

    model: ModelSection | None = None
    eval: EvalSection = Field(default_factory=EvalSection)
    perplexity: PerplexityTaskSection | None = None
    mcq: McqTaskSection | None = None
    generate: GenerateTaskSection | None = None
    ner: NerTaskSection | None = None

    @property
    def tasks(self) -> list[str]:
        return [name for name in ("perplexity", "mcq", "generate", "ner") if getattr(self, name) is not None]

    @model_validator(mode="after")
    def check_eval(self) -> EvalRecipe:
        if not self.tasks:
            raise ValueError("no task: add at least one of the sections perplexity, mcq, generate, ner")
        return self


def _check_chat_recipe(recipe, preference: bool) -> None:
    if recipe.model.from_config is not None:
        raise ValueError(
            "sft and dpo fine-tune a pretrained model: give model.name_or_path, not model.from_config"
        )
    owned = {"max_length", "packing", "dataset_text_field", "assistant_only_loss", "completion_only_loss"}
    clashing = sorted(owned & set(recipe.train.model_extra or {}))
    dpo_owned = sorted(
        {"beta", "loss_type", "loss_weights", "label_smoothing"} & set(recipe.train.model_extra or {})
    )
    if preference and dpo_owned:
        raise ValueError(
            f"train.{dpo_owned[0]} belongs in the dpo section (dpo.{dpo_owned[0]}); move it there"
        )
    if clashing:
        raise ValueError(
            f"train.{clashing[0]} is set by the data section in llmtune recipes "
            f"(data.max_length, data.packing, data.train_on_prompt); remove it from train"
        )


# ------------------------------------------------------------------------------------------------ loading
def load_recipe(
    path: str | os.PathLike, recipe_class: type[Recipe], overrides: list[str] | None = None
) -> Recipe:
    """Read `path`, merge `overrides` ("section.key=value", value parsed as YAML), validate, and return
    the typed recipe. Every problem is raised as one `LlmtuneError` listing all the bad keys."""
    raw = _read_yaml_mapping(Path(path))
    return recipe_from_mapping(raw, recipe_class, str(path), Path(path).resolve().parent, overrides)


def recipe_from_mapping(
    raw: dict[str, Any],
    recipe_class: type[Recipe],
    source: str,
    base_dir: Path,
    overrides: list[str] | None = None,
) -> Recipe:
    """`load_recipe` for a mapping built in code (e.g. from command-line flags); paths relative to `base_dir`."""
    given: dict[str, str] = {}
    _resolve_input_paths(raw, recipe_class, base_dir, given)
    override_keys: dict[str, str] = {}
    for item in overrides or []:
        key, value = _parse_override(item)
        override_keys[key] = item
        _check_override_path(key, recipe_class, item)
        value = _absolute_override_path(key, value, recipe_class, given)
        _set_dotted(raw, key, value)

    notes: list[str] = []
    problems: list[str] = []
    if isinstance(raw.get("train"), dict):
        raw["train"] = _check_train_keys(raw["train"], recipe_class.train_arguments, notes, problems)
    try:
        recipe = recipe_class.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe_validation_error(exc, recipe_class))
    if problems:
        raise LlmtuneError(_format_problems(problems, source, override_keys))
    recipe._source = source
    recipe._notes = notes
    recipe._given_paths = given
    return recipe


def load_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe file's top-level mapping (no validation): to choose a recipe class by its sections."""
    return _read_yaml_mapping(Path(path))


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise LlmtuneError(f"recipe file not found: {path}", hint="Check the path given to --recipe.")
    if path.is_dir():
        raise LlmtuneError(f"--recipe {path} is a folder; give a YAML file, e.g. {path}/<name>.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LlmtuneError(
            f"recipe {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); save it as UTF-8."
        ) from None
    except OSError as exc:
        raise LlmtuneError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LlmtuneError(f"recipe {path}{where}: invalid YAML: {problem}.") from None
    if data is None:
        raise LlmtuneError(f"recipe {path} is empty; it needs at least the model, data and train sections.")
    if not isinstance(data, dict):
        raise LlmtuneError(
            f"recipe {path} must be a YAML mapping of sections (model:, data:, train: ...), "
            f"but its top level is a {type(data).__name__}."
        )
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise LlmtuneError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise LlmtuneError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4")
    try:
        value = load_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not valid YAML on its own: take it as a plain string, the schema will judge it
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _section_field(model_class: type[BaseModel], name: str):
    """The pydantic field `name` of `model_class`, or None."""
    return model_class.model_fields.get(name)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as `X`, `X | None`."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _is_input_path(field) -> bool:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get(INPUT_PATH):
        return True
    for meta in field.metadata:
        meta_extra = getattr(meta, "json_schema_extra", None)
        if isinstance(meta_extra, dict) and meta_extra.get(INPUT_PATH):
            return True
    import typing

    for arg in typing.get_args(field.annotation):  # list[InputPath]
        for meta in getattr(arg, "__metadata__", ()):
            meta_extra = getattr(meta, "json_schema_extra", None)
            if isinstance(meta_extra, dict) and meta_extra.get(INPUT_PATH):
                return True
    return False


def _is_local_looking(value: str) -> bool:
    return value.startswith(("./", "../", "/", "~")) or value in (".", "..")


def _resolve_one(value: Any, base_dir: Path, given: dict[str, str]) -> Any:
    if not isinstance(value, str) or not value:
        return value
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    resolved = os.path.normpath(str(base_dir / expanded))
    given[resolved] = value
    return resolved


def _resolve_input_paths(
    raw: dict[str, Any], recipe_class: type[BaseModel], base_dir: Path, given: dict
) -> None:
    """Make relative input paths written in the recipe file absolute, against the recipe's folder."""
    for section_name, section_value in raw.items():
        field = _section_field(recipe_class, section_name)
        section_class = _submodel(field.annotation) if field else None
        if section_class is None or not isinstance(section_value, dict):
            continue
        for key, value in section_value.items():
            sub = _section_field(section_class, key)
            if sub is None:
                continue
            if _is_input_path(sub):
                if isinstance(value, list):
                    section_value[key] = [_resolve_one(v, base_dir, given) for v in value]
                else:
                    section_value[key] = _resolve_one(value, base_dir, given)
        # model.name_or_path / model.tokenizer may be hub ids: a relative value is a path only when it
        # exists beside the recipe or is written like one (./x, ../x).
        if section_class is ModelSection:
            for key in ("name_or_path", "tokenizer", "gguf_file"):
                value = section_value.get(key)
                if isinstance(value, str) and value:
                    candidate = base_dir / os.path.expanduser(value)
                    if _is_local_looking(value) or candidate.exists():
                        section_value[key] = _resolve_one(value, base_dir, given)
        if section_class is EvalSection and isinstance(section_value.get("compare"), list):
            section_value["compare"] = [
                _resolve_one(v, base_dir, given)
                if isinstance(v, str)
                and (_is_local_looking(v) or (base_dir / os.path.expanduser(v)).exists())
                else v
                for v in section_value["compare"]
            ]


def _check_override_path(key: str, recipe_class: type[BaseModel], item: str) -> None:
    """An override must name a real section (the key inside is judged later, with the others)."""
    section = key.split(".")[0]
    if section not in recipe_class.model_fields:
        raise LlmtuneError(
            f"--set {item!r}: unknown section '{section}'{did_you_mean(section, recipe_class.model_fields)} "
            f"(sections: {', '.join(recipe_class.model_fields)})"
        )


def _absolute_override_path(key: str, value: Any, recipe_class: type[BaseModel], given: dict) -> Any:
    parts = key.split(".")
    if len(parts) != 2:
        return value
    field = _section_field(recipe_class, parts[0])
    section_class = _submodel(field.annotation) if field else None
    sub = _section_field(section_class, parts[1]) if section_class else None
    is_model_path = section_class is ModelSection and parts[1] in ("name_or_path", "tokenizer", "gguf_file")
    if sub is None or not (_is_input_path(sub) or is_model_path):
        return value
    cwd = Path.cwd()

    def absolute(v: Any) -> Any:
        if not isinstance(v, str) or not v:
            return v
        if is_model_path and not (_is_local_looking(v) or (cwd / v).exists()):
            return v  # a hub id or demo alias
        return _resolve_one(v, cwd, given)

    return [absolute(v) for v in value] if isinstance(value, list) else absolute(value)


# ------------------------------------------------------------------------------------------ train keys
def _import_dotted(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_train_keys(
    train: dict[str, Any], arguments_class: str, notes: list[str], problems: list[str]
) -> dict:
    """Check `train:` keys against the trainer's argument dataclass; map legacy names; coerce types."""
    import dataclasses
    import enum
    import typing

    from pydantic import TypeAdapter

    args_class = _import_dotted(arguments_class)
    fields = {f.name: f for f in dataclasses.fields(args_class) if f.init}
    hints = typing.get_type_hints(args_class)
    out: dict[str, Any] = {}
    for key, value in train.items():
        if key in DROPPED_TRAIN_KEYS:
            notes.append(
                f"train.{key} is not a transformers 5 argument; ignored ({DROPPED_TRAIN_KEYS[key]})."
            )
            continue
        if key in RENAMED_TRAIN_KEYS:
            new = RENAMED_TRAIN_KEYS[key]
            if new in train:
                problems.append(
                    f"train.{key}: legacy name of train.{new}, and both are given; keep only {new}"
                )
                continue
            if key == "warmup_ratio" and not (isinstance(value, (int, float)) and 0 <= value < 1):
                problems.append(f"train.warmup_ratio: a ratio in [0, 1) of the total steps, got {value!r}")
                continue
            extra = " (a float below 1 is a ratio of the total steps)" if key == "warmup_ratio" else ""
            notes.append(f"train.{key} is called train.{new} in transformers 5; using {new}: {value}{extra}.")
            key = new
        if key not in fields:
            problems.append(
                f"train.{key}: unknown key{did_you_mean(key, fields)} (not a {args_class.__name__} argument)"
            )
            continue
        out[key] = _coerce_train_value(key, value, hints.get(key), problems, TypeAdapter, enum)
    return out


def _coerce_train_value(key, value, annotation, problems, type_adapter, enum_module):
    import typing

    if annotation is None:
        return value
    try:
        result = type_adapter(annotation).validate_python(value)
    except ValidationError:
        problems.append(f"train.{key}: expected {_describe_type(annotation)}, got {value!r}")
        return value
    except Exception:  # an annotation pydantic cannot build a validator for: leave it to TrainingArguments
        return value
    members = typing.get_args(annotation) or (annotation,)
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum_module.Enum)]
    if enums and isinstance(value, str):
        allowed = [e.value for e in enums[0]]
        if value not in allowed:
            problems.append(
                f"train.{key}: {value!r} is not one of {', '.join(map(str, allowed))}{did_you_mean(value, allowed)}"
            )
    # A string that the field reads as a number or boolean ("1e-4", "yes") is passed on converted;
    # anything else is kept as the user wrote it (an enum member stays its string).
    if isinstance(value, str) and isinstance(result, (int, float)):
        return result
    return value


def _describe_type(annotation: Any) -> str:
    import typing

    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    members = typing.get_args(annotation) or (annotation,)
    parts = []
    for m in members:
        if m is type(None):
            continue
        origin = typing.get_origin(m) or m
        parts.append(
            names.get(origin, "a list" if origin is list else getattr(origin, "__name__", str(origin)))
        )
    return " or ".join(dict.fromkeys(parts))


# ------------------------------------------------------------------------------------------ error text
_EXPECTED_TYPES = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}


def _fields_at(recipe_class: type[BaseModel], loc: tuple) -> tuple[list[str], dict[str, str]]:
    """The field names allowed at `loc` and that section's key aliases (for "did you mean")."""
    model: type[BaseModel] | None = recipe_class
    for part in loc:
        if model is None or not isinstance(part, str):
            break
        field = model.model_fields.get(part)
        if field is None:
            break
        model = _submodel(field.annotation)
    if model is None:
        return [], {}
    return list(model.model_fields), getattr(model, "key_aliases", {})


def _describe_validation_error(exc: ValidationError, recipe_class: type[BaseModel]) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "json-or")))
        )
        # pydantic reports union members as extra loc parts ("list[str]", "literal['all-linear']"): drop them
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float"))))
        key = ".".join(str(p) for p in loc)
        kind = err["type"]
        given = err.get("input")
        if kind == "extra_forbidden":
            name = str(loc[-1])
            allowed, aliases = _fields_at(recipe_class, loc[:-1])
            where = "unknown section" if len(loc) == 1 else "unknown key"
            lines.append(f"{key}: {where}{did_you_mean(name, allowed, aliases)}")
        elif kind == "missing":
            lines.append(f"{key}: missing (required)")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
            lines.append(
                f"{key}: expected one of {expected}, got {given!r}{did_you_mean(str(given), choices)}"
            )
        elif kind in _EXPECTED_TYPES:
            lines.append(f"{key}: expected {_EXPECTED_TYPES[kind]}, got {given!r}")
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            lines.append(f"{key}: {err['msg'].lower()}, got {given!r}")
        elif kind in ("too_short", "too_long"):
            lines.append(f"{key}: {err['msg'].lower()}")
        elif kind == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" if key else msg)
        else:
            lines.append(f"{key}: {err['msg']}, got {given!r}" if key else err["msg"])
    return lines


def _format_problems(problems: list[str], source: str, override_keys: dict[str, str]) -> str:
    def origin(line: str) -> str:
        key = line.split(":", 1)[0]
        for override_key, item in override_keys.items():
            if key == override_key or key.startswith(override_key + "."):
                return f"(from --set {item})"
        return f"({source})"

    lines = [f"{p} {origin(p)}" for p in dict.fromkeys(problems)]
    head = "invalid recipe:" if len(lines) > 1 else "invalid recipe:"
    return head + ("\n  " if len(lines) > 1 else " ") + "\n  ".join(lines)
