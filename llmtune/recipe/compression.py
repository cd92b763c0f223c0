"""The recipes of the commands that make a model smaller: `llmtune prune` (remove layers, MLP channels,
attention heads or single weights, ranked on calibration text) and `llmtune distill` (train a student on a
frozen teacher's predictions and hidden states), with the sections only they have (prune:, distill:)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from llmtune.recipe.base import OutputPath, Recipe, Section
from llmtune.recipe.data import ChatDataSection, PromptDataSection, TextDataSection
from llmtune.recipe.model import ModelSection
from llmtune.recipe.peft import PeftSection
from llmtune.recipe.training import EarlyStoppingSection, LaunchSection, TrainSection


# ------------------------------------------------------------------------------------------- prune
class DepthPruneSection(Section):
    """Remove whole decoder layers: the least important by `method`, or the ones listed."""

    method: Literal["block_influence", "perplexity"] = Field(
        "block_influence",
        description="block_influence: 1 - cos(layer input, layer output) on the calibration text (ShortGPT); "
        "perplexity: how much the calibration loss rises when the layer alone is skipped.",
    )
    keep_layers: int | None = Field(None, gt=0, description="Layers left after pruning.")
    remove_layers: list[int] | None = Field(
        None,
        min_length=1,
        description="Exactly these layers (0-based) are removed; the scores are still reported.",
    )

    @model_validator(mode="after")
    def check_target(self) -> DepthPruneSection:
        if (self.keep_layers is None) == (self.remove_layers is None):
            raise ValueError("give exactly one of prune.depth.keep_layers and prune.depth.remove_layers")
        if self.remove_layers is not None and len(set(self.remove_layers)) != len(self.remove_layers):
            raise ValueError(f"prune.depth.remove_layers {self.remove_layers} names a layer twice")
        return self


class WidthPruneSection(Section):
    """Narrow every layer alike (HF configs have one size for all layers), keeping the channels and heads
    with the largest mean activation on the calibration text (Minitron)."""

    intermediate_size: int | None = Field(None, gt=0, description="MLP channels kept per layer.")
    attention_heads: int | None = Field(None, gt=0, description="Query heads kept per layer.")
    kv_heads: int | None = Field(
        None,
        gt=0,
        description="Key/value head groups kept (grouped-query attention); whole groups go first, then "
        "each kept group keeps attention_heads / kv_heads query heads.",
    )

    @model_validator(mode="after")
    def check_target(self) -> WidthPruneSection:
        if self.intermediate_size is None and self.attention_heads is None:
            raise ValueError("prune.width needs intermediate_size, attention_heads, or both")
        if self.kv_heads is not None and self.attention_heads is None:
            raise ValueError("prune.width.kv_heads needs prune.width.attention_heads (the query heads kept)")
        return self


class UnstructuredPruneSection(Section):
    """Zero single weights of the decoder layers' linear maps; the checkpoint stays dense."""

    method: Literal["magnitude", "wanda"] = Field(
        "wanda",
        description="magnitude: the smallest |W| of each matrix; wanda: the smallest |W| x input activation "
        "norm within each output row (Sun et al. 2023).",
    )
    sparsity: float = Field(..., gt=0, lt=1, description="Fraction of each matrix's weights set to zero.")


class PruneSection(Section):
    """What to remove, in this order: layers (depth), then channels and heads (width), then single weights."""

    output_dir: OutputPath = Field(..., description="The pruned model folder (never overwritten silently).")
    depth: DepthPruneSection | None = None
    width: WidthPruneSection | None = None
    unstructured: UnstructuredPruneSection | None = None
    calibration_blocks: int = Field(
        32, gt=0, description="Blocks of data.train_files (data.block_size tokens each) the scores come from."
    )
    eval_blocks: int | None = Field(
        64,
        gt=0,
        description="Held-out blocks (data.validation_files / validation_split) for perplexity before and "
        "after; null = all of them.",
    )
    batch_size: int = Field(4, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the scoring and of the saved model."
    )

    @model_validator(mode="after")
    def check_something(self) -> PruneSection:
        if self.depth is None and self.width is None and self.unstructured is None:
            raise ValueError("prune: nothing to do; give prune.depth, prune.width or prune.unstructured")
        return self


class PruneRecipe(Recipe):
    """`llmtune prune`: remove layers, channels, heads or weights ranked on calibration text."""

    model: ModelSection
    data: TextDataSection
    prune: PruneSection

    @model_validator(mode="after")
    def check_prune(self) -> PruneRecipe:
        if self.model.from_config is not None:
            raise ValueError("prune ranks the parts of a trained model: give model.name_or_path")
        if not self.data.validation_files and not self.data.validation_split:
            raise ValueError(
                "prune reports held-out perplexity before and after: set data.validation_files (or "
                "data.validation_split)"
            )
        return self


# ----------------------------------------------------------------------------------------- distill
CHAT_ONLY_DATA_KEYS = frozenset(
    set(ChatDataSection.model_fields) - set(TextDataSection.model_fields) - {"max_samples"}
)


class DistillSection(Section):
    """The distillation loss: alpha * T^2 * divergence(teacher, student at temperature T) + (1 - alpha) *
    cross-entropy on the data, + hidden_weight * MSE(projected student hidden states, teacher's)."""

    data: Literal["text", "chat", "prompts"] | None = Field(
        None,
        description="text: raw text in blocks (the pretrain pipeline); chat: conversations, loss on the "
        "assistant's tokens (the sft pipeline); prompts: on_policy's. Default: chat when the data section has "
        "chat keys, prompts with on_policy, else text.",
    )
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the distillation term; 1 - alpha on the data."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of both models in the KD term.")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl",
        description="forward_kl: KL(teacher || student) (Hinton); reverse_kl: KL(student || teacher) "
        "(mode-seeking, MiniLLM); jsd: generalized Jensen-Shannon with beta (GKD).",
    )
    beta: float = Field(0.5, gt=0, lt=1, description="jsd: the mixture weight (GKD's beta).")
    hidden_layers: dict[int, int] | Literal["uniform"] | None = Field(
        None,
        description="Intermediate-layer loss: {student layer: teacher layer}, counted as HF's "
        "hidden_states (0 = embeddings, i = after layer i); uniform = student layer i to teacher layer "
        "round(i * teacher_layers / student_layers) for every student layer.",
    )
    hidden_weight: float = Field(1.0, ge=0, description="Weight of the intermediate-layer MSE term.")
    on_policy: bool = Field(
        False,
        description="The student answers the data's prompts and learns the teacher's distribution on its own "
        "answers (GKD), with TRL's DistillationTrainer; data is then prompts (as grpo reads them) and the "
        "loss is the divergence alone (alpha 1, no hidden_layers).",
    )

    @model_validator(mode="after")
    def check_hidden(self) -> DistillSection:
        if isinstance(self.hidden_layers, dict):
            if not self.hidden_layers:
                raise ValueError("distill.hidden_layers is empty; map at least one student layer")
            bad = [k for k, v in self.hidden_layers.items() if k < 0 or v < 0]
            if bad:
                raise ValueError(f"distill.hidden_layers: layer indices are >= 0 (got {bad[0]})")
        if self.alpha == 0 and self.hidden_layers is None:
            raise ValueError(
                "distill.alpha 0 with no hidden_layers trains on the data alone, without the teacher; use "
                "llmtune pretrain/sft for that, or raise distill.alpha"
            )
        return self


class DistillRecipe(Recipe):
    """`llmtune distill` on raw text: a student learns from a frozen teacher's predictions."""

    teacher: ModelSection
    model: ModelSection
    data: TextDataSection
    distill: DistillSection = Field(default_factory=DistillSection)
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection
    launch: LaunchSection = Field(default_factory=LaunchSection)
    early_stopping: EarlyStoppingSection | None = None

    @classmethod
    def variant(cls, raw: dict[str, Any], overrides: list[str]) -> type[DistillRecipe]:
        """The recipe class for this mapping: chat data (the sft pipeline) or raw text (pretrain's)."""
        kind, on_policy = None, False
        section = raw.get("distill")
        if isinstance(section, dict):
            kind, on_policy = section.get("data"), section.get("on_policy") is True
        for item in overrides:
            key, _, value = item.partition("=")
            if key.strip() == "distill.data":
                kind = value.strip()
            if key.strip() == "distill.on_policy":
                on_policy = value.strip().lower() == "true"
        if on_policy:
            return OnPolicyDistillRecipe
        if kind is None:
            data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
            kind = "chat" if CHAT_ONLY_DATA_KEYS & set(data) else "text"
        return ChatDistillRecipe if kind == "chat" else DistillRecipe

    @model_validator(mode="after")
    def check_distill(self) -> DistillRecipe:
        prompts = isinstance(self.data, PromptDataSection)
        kind = "prompts" if prompts else "text" if isinstance(self.data, TextDataSection) else "chat"
        if self.distill.data is None:
            self.distill.data = kind
        if self.distill.on_policy != prompts:
            raise ValueError(
                "distill.on_policy does not match the data section: on-policy distillation reads prompts, "
                "off-policy reads text or conversations"
            )
        if self.teacher.from_config is not None:
            raise ValueError("teacher: a teacher must be trained; give teacher.name_or_path")
        if self.peft.method != "none" and self.model.from_config is not None:
            raise ValueError(
                f"peft.method is {self.peft.method!r} but model.from_config builds an untrained student; "
                "train it whole (peft.method: none)"
            )
        if self.peft.is_prompt_learning:
            raise ValueError(f"peft.method {self.peft.method} is not supported for distill; use lora or dora")
        if getattr(self.data, "packing", False):
            raise ValueError(
                "data.packing is not supported for distill (each row is scored by both models as is)"
            )
        if self.launch.strategy in ("zero3", "zero3-offload", "fsdp"):
            raise ValueError(
                f"launch.strategy {self.launch.strategy}: distill keeps a whole teacher on every process; "
                "use ddp or zero2"
            )
        return self


class ChatDistillRecipe(DistillRecipe):
    """`llmtune distill` on conversations: the loss on the assistant's tokens only."""

    train_arguments: ClassVar[str] = "transformers.TrainingArguments"
    data: ChatDataSection


class OnPolicyDistillRecipe(DistillRecipe):
    """`llmtune distill` on-policy: the student answers prompts and the teacher scores every token of its
    answers (TRL's DistillationTrainer; its DistillationConfig keys, e.g. max_completion_length, go in train:)."""

    train_arguments: ClassVar[str] = "trl.DistillationConfig"
    data: PromptDataSection

    @model_validator(mode="after")
    def check_on_policy(self) -> OnPolicyDistillRecipe:
        if self.distill.alpha != 1:
            raise ValueError(
                f"distill.alpha {self.distill.alpha}: on-policy distillation (TRL's DistillationTrainer) trains "
                "on the divergence alone (the student's own answers have no reference tokens for a "
                "cross-entropy term); set distill.alpha: 1"
            )
        if self.distill.hidden_layers is not None:
            raise ValueError(
                "distill.hidden_layers is not supported on-policy (TRL's DistillationTrainer compares logits "
                "only); remove it, or distil off-policy"
            )
        owned = sorted(
            {"beta", "temperature", "teacher_model_name_or_path"} & set(self.train.model_extra or {})
        )
        if owned:
            where = {"beta": "distill.divergence / distill.beta", "temperature": "distill.temperature"}
            raise ValueError(
                f"train.{owned[0]} is set by llmtune from "
                f"{where.get(owned[0], 'the teacher section')}; remove it from train"
            )
        return self
