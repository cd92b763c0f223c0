"""Each training command's recipe, made of the shared sections plus the sections only it has (dpo:,
ner:, samples:), with the cross-section rules."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from llmtune.recipe.base import OneOrMany, Recipe, Section
from llmtune.recipe.data import ChatDataSection, NerDataSection, TextDataSection
from llmtune.recipe.model import ModelSection
from llmtune.recipe.peft import PeftSection
from llmtune.recipe.training import EarlyStoppingSection, LaunchSection, TrainSection


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
    loss_type: OneOrMany[str] = Field(
        default_factory=lambda: ["sigmoid"],
        description="dpo: TRL's loss types (sigmoid, ipo, hinge, robust, bco_pair, sppo_hard, nca_pair, "
        "aot, aot_unpaired, apo_zero, apo_down, exo_pair, discopop, sft, sigmoid_norm); several are combined.",
    )
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    simpo_gamma: float = Field(0.5, description="simpo: target reward margin.")
    precompute_ref_log_probs: bool = False


class NerSection(Section):
    """The tagger head."""

    use_crf: bool = Field(
        True, description="A CRF over the word tags (pytorch-crf), scheme-constrained decoding."
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    seqeval_mode: Literal["default", "strict"] = Field(
        "default", description="seqeval's entity matching: default (conlleval) or strict (scheme-exact)."
    )


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

    @model_validator(mode="after")
    def check_streaming_schedule(self) -> PretrainRecipe:
        if not self.data.streaming:
            return self
        train = self.train.trainer_kwargs()
        max_steps = train.get("max_steps")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
            given = "" if max_steps is None else f" (got {max_steps!r})"
            epochs = " instead of train.num_train_epochs" if "num_train_epochs" in train else ""
            raise ValueError(
                f"data.streaming needs train.max_steps > 0{given}: a stream has no length to count epochs "
                f"in, so the run lasts max_steps optimizer steps; set train.max_steps: N{epochs}"
            )
        for key in ("eval_strategy", "save_strategy", "logging_strategy"):
            if str(train.get(key, "")).lower() == "epoch":
                raise ValueError(
                    f"train.{key} is 'epoch', but with data.streaming an epoch never ends (the stream starts "
                    f"over by itself); use train.{key}: steps"
                )
        if int(train.get("dataloader_num_workers") or 0) > 0:
            raise ValueError(
                "train.dataloader_num_workers > 0 with data.streaming: each worker would read the whole "
                "stream again and the checkpoint could not say where it stands; the stream is read in the "
                "training process, so remove train.dataloader_num_workers"
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
