"""The recipes of the stages after sft that learn from a score: `llmtune reward` (a scalar reward model
trained on preference pairs) and `llmtune grpo` / `llmtune rloo` (online RL on prompts, scored by reward
functions), with the sections only they have (reward:, rewards:, rl:)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from llmtune.recipe.base import Recipe, Section
from llmtune.recipe.data import ChatDataSection, PromptDataSection
from llmtune.recipe.model import ModelSection
from llmtune.recipe.peft import PeftSection
from llmtune.recipe.training import EarlyStoppingSection, LaunchSection, TrainSection

REWARD_FUNCTION_TYPES = (
    "exact_match",
    "numeric_match",
    "format",
    "length_penalty",
    "reward_model",
    "python",
)


class RewardSection(Section):
    """The reward model's own settings (TRL's RewardConfig keys, e.g. center_rewards_coefficient, go in train:)."""

    pad_token: str | None = Field(
        None,
        description="Padding token. Default: the tokenizer's own unless it occurs in the data (then an "
        "unused special token), so that the reward is always read at the last real token.",
    )
    score_batch_size: int = Field(
        16, gt=0, description="Pairs scored at once for the before/after accuracy and reward distribution."
    )


class RewardRecipe(Recipe):
    """`llmtune reward`: a causal LM with a scalar head trained on chosen/rejected pairs (TRL RewardTrainer)."""

    train_arguments: ClassVar[str] = "trl.RewardConfig"
    model: ModelSection
    data: ChatDataSection
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection
    launch: LaunchSection = Field(default_factory=LaunchSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    early_stopping: EarlyStoppingSection | None = None

    @model_validator(mode="after")
    def check_reward(self) -> RewardRecipe:
        if self.model.from_config is not None:
            raise ValueError("reward fine-tunes a pretrained model: give model.name_or_path")
        if self.data.packing:
            raise ValueError("data.packing is an sft option; preference pairs are never packed")
        if self.data.train_on_prompt:
            raise ValueError("data.train_on_prompt is an sft option; a reward model scores whole sequences")
        if self.peft.is_prompt_learning or self.peft.method == "ia3":
            raise ValueError(
                f"peft.method {self.peft.method} is not supported for reward; use lora, dora, qlora, freeze or none"
            )
        owned = sorted({"max_length", "pad_token", "dataset_num_proc"} & set(self.train.model_extra or {}))
        if owned:
            where = {"max_length": "data.max_length", "pad_token": "reward.pad_token"}.get(owned[0], "")
            raise ValueError(
                f"train.{owned[0]} is set by llmtune"
                + (f" (use {where})" if where else " (pairs are tokenised before the trainer sees them)")
                + "; remove it from train"
            )
        return self


class RewardFunctionSection(Section):
    """One reward function of grpo/rloo: a built-in `type` with its settings, and its weight in the total."""

    type: Literal["exact_match", "numeric_match", "format", "length_penalty", "reward_model", "python"] = (
        Field(
            ...,
            description="exact_match (the answer equals the reference, optionally normalised), numeric_match (the "
            "last number equals the reference number), format (the completion matches a regex or a preset), "
            "length_penalty (DAPO's soft overlong punishment), reward_model (a run of llmtune reward), python "
            "(your own function; needs rl.allow_user_code).",
        )
    )
    name: str | None = Field(
        None,
        description="Name in the logs (rewards/<name>/mean); default: the type.",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    weight: float = Field(1.0, description="Weight in the total reward (TRL's reward_weights).")
    answer_column: str = Field(
        "answer", description="exact_match / numeric_match: the data column holding the reference answer."
    )
    extract: Literal["auto", "answer_tag", "boxed", "last_number", "all"] = Field(
        "auto",
        description="What part of the completion is the answer: auto (inside <answer>...</answer> or \\boxed{} "
        "when present, else the whole completion; numeric_match: the last number), answer_tag, boxed, "
        "last_number, all.",
    )
    normalize: bool = Field(
        True, description="exact_match: compare case-, whitespace- and end-punctuation-insensitively."
    )
    tolerance: float = Field(
        1e-6, ge=0, description="numeric_match: largest |answer - reference| that counts."
    )
    pattern: str | None = Field(
        None,
        description="format: a regular expression the whole completion must match (re.fullmatch, DOTALL).",
    )
    preset: Literal["think_answer", "think", "answer_only_number"] | None = Field(
        None,
        description="format: think_answer (<think>...</think><answer>...</answer>), think (TRL's "
        "think_format_reward), answer_only_number (the completion is one number).",
    )
    max_completion_length: int | None = Field(
        None, gt=0, description="length_penalty: L_max (default: train.max_completion_length)."
    )
    soft_punish_cache: int = Field(
        16,
        ge=0,
        description="length_penalty: the penalty ramps from 0 to -1 over the last N tokens before L_max.",
    )
    model: str | None = Field(
        None, description="reward_model: an llmtune reward run (or a merged folder of one)."
    )
    function: str | None = Field(
        None, description="python: module:function or path/to/file.py:function (runs your code)."
    )

    @property
    def label(self) -> str:
        return self.name or self.type

    @model_validator(mode="after")
    def check_settings(self) -> RewardFunctionSection:
        if self.type == "format" and (self.pattern is None) == (self.preset is None):
            raise ValueError("a format reward needs exactly one of pattern (a regex) or preset")
        if self.type == "reward_model" and not self.model:
            raise ValueError("a reward_model reward needs model: the folder of an llmtune reward run")
        if self.type == "python" and not self.function:
            raise ValueError("a python reward needs function: module:function or path/to/file.py:function")
        if self.type == "python" and ":" not in (self.function or ""):
            raise ValueError(
                f"function {self.function!r}: write it as module:function or path/to/file.py:function"
            )
        return self


class RlSection(Section):
    """Settings of llmtune's own around TRL's loop (TRL's GRPOConfig/RLOOConfig keys go in train:)."""

    allow_user_code: bool = Field(
        False, description="Allow rewards of type python (they import and run your code in this process)."
    )
    completions_every: int = Field(
        10,
        gt=0,
        description="Write the sampled completions with their rewards to completions.jsonl every N steps.",
    )
    eval_max_prompts: int = Field(
        200,
        gt=0,
        description="Validation prompts answered (greedy) before and after training for held-out accuracy.",
    )
    eval_batch_size: int = Field(16, gt=0)


class GrpoRecipe(Recipe):
    """`llmtune grpo`: online RL on prompts with TRL's GRPOTrainer and reward functions."""

    train_arguments: ClassVar[str] = "trl.GRPOConfig"
    algorithm: ClassVar[str] = "grpo"
    # MedicalGPT's grpo_training.py (older TRL) names → where llmtune keeps them (loading.py moves them).
    moved_train_keys: ClassVar[dict[str, str]] = {
        "max_prompt_length": "data.max_prompt_length",
        "train_samples": "data.max_samples",
    }
    model: ModelSection
    data: PromptDataSection
    rewards: list[RewardFunctionSection] = Field(default_factory=list)
    peft: PeftSection = Field(default_factory=PeftSection)
    train: TrainSection
    launch: LaunchSection = Field(default_factory=LaunchSection)
    rl: RlSection = Field(default_factory=RlSection)
    early_stopping: EarlyStoppingSection | None = None

    @model_validator(mode="after")
    def check_grpo(self) -> GrpoRecipe:
        if self.model.from_config is not None:
            raise ValueError(f"{self.algorithm} fine-tunes a pretrained model: give model.name_or_path")
        if not self.rewards:
            raise ValueError(
                "rewards: no reward function; list at least one, e.g. rewards: [{type: numeric_match}] "
                f"(types: {', '.join(REWARD_FUNCTION_TYPES)})"
            )
        labels = [r.label for r in self.rewards]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"rewards: two functions are named {twice[0]!r}; give each a distinct name")
        if any(r.type == "python" for r in self.rewards) and not self.rl.allow_user_code:
            raise ValueError(
                "rewards: a python reward imports and runs your code; allow it explicitly with "
                "rl.allow_user_code: true"
            )
        if self.peft.is_prompt_learning:
            raise ValueError(f"peft.method {self.peft.method} is not supported for {self.algorithm}")
        extra = set(self.train.model_extra or {})
        if "reward_weights" in extra:
            raise ValueError("train.reward_weights is set from rewards[].weight; remove it from train")
        if self.early_stopping is not None:
            raise ValueError(f"early_stopping: {self.algorithm} has no validation loss to watch; remove it")
        return self


class RlooRecipe(GrpoRecipe):
    """`llmtune rloo`: the same as grpo, on TRL's RLOOTrainer (leave-one-out baseline)."""

    train_arguments: ClassVar[str] = "trl.RLOOConfig"
    algorithm: ClassVar[str] = "rloo"
