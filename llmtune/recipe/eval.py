"""`llmtune eval`'s recipe: which models, and one section per task."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from llmtune.recipe.base import (
    InputFile,
    InputFolder,
    InputPath,
    OneOrMany,
    OutputPath,
    Recipe,
    Section,
    Seed,
)
from llmtune.recipe.model import ModelSection


class EvalSection(Section):
    """How `llmtune eval` runs: where results go, the chat template, two models to compare."""

    output_dir: OutputPath | None = Field(
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

    files: OneOrMany[InputPath] = Field(..., min_length=1)
    text_field: str = Field("text", description="Field holding the text in .jsonl/.json rows.")
    join: str = Field(
        "\n\n", description="Joins the documents of a file (HF's recipe joins with blank lines)."
    )
    max_length: int = Field(1024, ge=2, description="Window length in tokens.")
    stride: int = Field(512, gt=0, description="Tokens the window moves; each token is scored once.")
    batch_size: int = Field(4, gt=0)

    @model_validator(mode="after")
    def check_stride(self) -> PerplexityTaskSection:
        if self.stride > self.max_length:
            raise ValueError(f"perplexity.stride {self.stride} is larger than max_length {self.max_length}")
        return self


class McqTaskSection(Section):
    """Multiple-choice questions in the MMLU / CMMLU / C-Eval CSV layouts, scored by log-likelihood."""

    files: OneOrMany[InputPath] = Field(
        ..., min_length=1, description="CSV files or folders of them (one subject each)."
    )
    layout: Literal["auto", "mmlu", "mmlu_columns", "mmlu_original", "cmmlu", "ceval"] = Field(
        "auto",
        description="auto = detected from each file's header; another value must agree with the header.",
    )
    shots: int = Field(0, ge=0, description="Worked examples before each question, from shots_files.")
    shots_files: OneOrMany[InputPath] = Field(
        default_factory=list, description="Dev files with the k-shot examples (matched by subject)."
    )
    score: Literal["letter", "text", "both"] = Field(
        "letter", description="Score the answer letter, each option's text, or both."
    )
    chat: bool = Field(False, description="Put the question in the chat template (the harnesses do not).")
    max_questions: int | None = Field(None, gt=0, description="Score only the first N questions per subject.")
    batch_size: int = Field(8, gt=0)
    on_bad_rows: Literal["error", "skip"] = "error"


class GenerateTaskSection(Section):
    """Answers to prompts through the chat template."""

    prompts: OneOrMany[str] = Field(default_factory=list)
    prompts_file: InputFile | None = Field(
        None, description="A .txt file (one prompt per line) or .jsonl rows."
    )
    system: str | None = None
    max_new_tokens: int = Field(128, gt=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: Seed = 0
    batch_size: int = Field(4, gt=0)


class NerTaskSection(Section):
    """Entity F1 of a lora-ner run."""

    files: OneOrMany[InputPath] = Field(..., min_length=1)
    model: InputFolder | None = Field(
        None, description="The lora-ner run (default: the model under evaluation)."
    )
    format: Literal["auto", "conll", "span_json"] = "auto"
    tag_column: int = -1
    max_samples: int | None = Field(None, gt=0)
    on_bad_rows: Literal["error", "skip"] = "error"
    batch_size: int = Field(32, gt=0, description="Sentences (or windows of long ones) tagged at once.")


class RewardTaskSection(Section):
    """Pairwise accuracy of a reward model (an `llmtune reward` run or a merged one) on preference pairs."""

    files: OneOrMany[InputPath] = Field(
        ..., min_length=1, description="Preference files (.jsonl/.json) in any format dpo and reward read."
    )
    format: Literal[
        "auto", "preference", "alpaca_preference", "sharegpt_preference", "question_preference"
    ] = Field("auto", description="Row shape; auto = detected from each file's first row (and reported).")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Our field name → the file's, e.g. {question: prompt}."
    )
    system: str | None = Field(None, description="System prompt for rows that have none.")
    template: str | None = Field(
        None,
        description="Chat template: none = the reward model's own (the one it was trained with); or a name "
        "or Jinja string.",
    )
    max_length: int = Field(
        1024,
        gt=0,
        description="Tokens per scored answer (prompt + answer); longer answers are cut as in "
        "training, keeping the prompt, and counted.",
    )
    max_samples: int | None = Field(
        None, gt=0, description="Score only the first N valid pairs of each file."
    )
    on_bad_rows: Literal["error", "skip"] = "error"
    batch_size: int = Field(16, gt=0, description="Sequences scored at once.")


def _split_commas(value: Any) -> Any:
    """`a,b` or [a, "b,c"] → [a, b, c], as lm-eval's own `--tasks a,b` takes them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        return value  # the type check reports it
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


class LmEvalTaskSection(Section):
    """Tasks of EleutherAI's lm-evaluation-harness (lm-eval) run on the model llmtune loaded."""

    tasks: Annotated[list[str], BeforeValidator(_split_commas)] = Field(
        ...,
        min_length=1,
        description="lm-eval task, group or tag names (mmlu, hellaswag, mytask) or glob patterns; "
        "'a,b' is two.",
    )
    include_path: OneOrMany[InputPath] = Field(
        default_factory=list,
        description="Folders of task YAML files, or task .yaml files, defining local tasks (lm-eval's "
        "include_path).",
    )
    num_fewshot: int | None = Field(
        None, ge=0, description="Worked examples per question (default: each task's own, else 0)."
    )
    limit: int | float | None = Field(
        None,
        gt=0,
        description="Documents per task: a count, or a share below 1 (0.1 = the first tenth); for tests.",
    )
    batch_size: int = Field(8, gt=0)
    apply_chat_template: bool = Field(
        False, description="Put each prompt in the model's chat template (lm-eval's --apply_chat_template)."
    )
    system_instruction: str | None = Field(None, description="System message put before every prompt.")
    seed: Seed = Field(0, description="lm-eval's random, numpy, torch and few-shot seeds.")

    @field_validator("limit")
    @classmethod
    def _limit_is_a_count_or_a_share(cls, value: int | float | None) -> int | float | None:
        # lm-eval reads a float below 1 as a share and anything else as a count: 2.5 would quietly be 2.
        if isinstance(value, float) and value >= 1:
            raise ValueError(f"{value} is neither a count (write an integer) nor a share (below 1)")
        return value


class EvalRecipe(Recipe):
    """`llmtune eval`: perplexity, multiple choice, generation, NER F1, reward-model accuracy and lm-eval
    tasks on one model or two."""

    model: ModelSection | None = None
    eval: EvalSection = Field(default_factory=EvalSection)
    perplexity: PerplexityTaskSection | None = None
    mcq: McqTaskSection | None = None
    generate: GenerateTaskSection | None = None
    ner: NerTaskSection | None = None
    reward: RewardTaskSection | None = None
    lm_eval: LmEvalTaskSection | None = None

    @property
    def tasks(self) -> list[str]:
        return [
            name
            for name in ("perplexity", "mcq", "generate", "ner", "reward", "lm_eval")
            if getattr(self, name) is not None
        ]

    @model_validator(mode="after")
    def check_eval(self) -> EvalRecipe:
        if not self.tasks:
            raise ValueError(
                "no task: add at least one of the sections perplexity, mcq, generate, ner, reward, lm_eval"
            )
        return self
