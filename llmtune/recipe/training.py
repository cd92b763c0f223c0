"""The `train:`, `launch:` and `early_stopping:` sections every training command shares."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmtune.recipe.base import InputFile, OutputPath, Section


class TrainSection(BaseModel):
    """TrainingArguments keys (or SFTConfig/DPOConfig keys) under HuggingFace's own names.

    Only `output_dir` is declared here; every other key is checked against the fields of the trainer's
    argument dataclass when the recipe is loaded (see `check_train_keys`), so that HF's hundred arguments
    are not copied into our schema.
    """

    model_config = ConfigDict(extra="allow")
    output_dir: OutputPath = Field(
        ..., description="Run folder (relative to the current folder; ~ expanded)."
    )
    nan_patience: int = Field(
        0,
        ge=0,
        description="Non-finite (NaN/inf) training steps in a row tolerated before the run stops "
        "(0: stop at the first; fp16 loss scaling may need a few).",
    )

    # llmtune's own keys, not passed to the trainer
    LLMTUNE_KEYS: ClassVar[tuple[str, ...]] = ("nan_patience",)

    def trainer_kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude=set(self.LLMTUNE_KEYS))


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
    accelerate_config: InputFile | None = Field(None, description="Your own accelerate config file.")


class EarlyStoppingSection(Section):
    """Stop when the eval metric (train.metric_for_best_model, default eval_loss) stops improving."""

    patience: int = Field(..., gt=0, description="Evaluations without improvement before stopping.")
    threshold: float = Field(0.0, ge=0, description="Minimum improvement that counts.")
