"""The `data:` sections, one per data shape: raw text (pretrain), chat (sft, dpo), tagged sentences (lora-ner)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from llmtune.recipe.base import InputPath, OneOrMany, Section, Seed
from llmtune.recipe.legacy import CHAT_DATA_KEY_ALIASES


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

    train_files: OneOrMany[InputPath] = Field(..., min_length=1)
    validation_files: OneOrMany[InputPath] = Field(default_factory=list)
    validation_split: float = Field(
        0.0, ge=0, lt=1, description="Share held out for validation when no files are given."
    )
    split_by: Literal["document", "character"] = Field(
        "document",
        description="document: a seeded random share of documents; character: the last share of the "
        "joined text (the LLMs-from-scratch split).",
    )
    seed: Seed = Field(42, description="Seed of the document-level validation split.")
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
    streaming: bool = Field(
        False,
        description="Read, clean, tokenise and pack the documents while training instead of up front (a "
        "corpus too large to tokenise first); the run's length is then train.max_steps.",
    )
    validation_documents: int = Field(
        0,
        ge=0,
        description="streaming: hold out the first N documents of the stream (after cleaning) for "
        "validation; they are never trained on.",
    )

    @model_validator(mode="after")
    def check_validation_source(self) -> TextDataSection:
        if self.validation_files and self.validation_split > 0:
            raise ValueError(
                "give data.validation_files or data.validation_split, not both "
                "(validation_split holds out part of train_files)"
            )
        if self.streaming and self.validation_split > 0:
            raise ValueError(
                "data.validation_split needs every document before training starts, which a stream does not "
                "read; with data.streaming use data.validation_documents: N (the first N documents of the "
                "stream, never trained on) or data.validation_files"
            )
        if self.validation_documents and not self.streaming:
            raise ValueError(
                "data.validation_documents holds out the start of a stream; set data.streaming: true, or use "
                "data.validation_split without streaming"
            )
        if self.validation_documents and self.validation_files:
            raise ValueError("give data.validation_files or data.validation_documents, not both")
        if self.eval_train_blocks and not (
            self.validation_files or self.validation_split or self.validation_documents
        ):
            raise ValueError(
                "data.eval_train_blocks evaluates beside the validation data: give validation data too"
            )
        if self.stride is not None and self.stride > self.block_size:
            raise ValueError(
                f"data.stride ({self.stride}) is larger than data.block_size ({self.block_size}): "
                "tokens between blocks would never be trained on"
            )
        return self


class ChatDataSection(Section):
    """Chat-shaped data for sft (conversations) and dpo (preference pairs): .jsonl or .json files."""

    key_aliases: ClassVar[dict[str, str]] = CHAT_DATA_KEY_ALIASES

    train_files: OneOrMany[InputPath] = Field(..., min_length=1)
    weights: list[Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="One per train file: copies of its rows in the mix (0.5 = a seeded random half, 2 = twice).",
    )
    validation_files: OneOrMany[InputPath] = Field(default_factory=list)
    validation_split: float = Field(0.0, ge=0, lt=1)
    seed: Seed = 42
    format: Literal[
        "auto",
        "alpaca",
        "sharegpt",
        "messages",
        "prompt_completion",
        "preference",
        "alpaca_preference",
        "sharegpt_preference",
        "question_preference",
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

    @model_validator(mode="after")
    def check_validation_source(self) -> ChatDataSection:
        if self.validation_files and self.validation_split > 0:
            raise ValueError("give data.validation_files or data.validation_split, not both")
        return self


class PromptDataSection(Section):
    """Prompts for online RL (grpo, rloo): the model answers them and reward functions score the answers.

    Rows are `messages` (ending with the user's turn; a final assistant turn is taken as the reference
    answer), `prompt` (a string or messages), `question` + `answer` (MedicalGPT's grpo data) or alpaca
    (`instruction`, `input`, `output` as the reference). Every other column of a row travels with the prompt
    to the reward functions (e.g. the reference answer).
    """

    key_aliases: ClassVar[dict[str, str]] = CHAT_DATA_KEY_ALIASES

    train_files: OneOrMany[InputPath] = Field(..., min_length=1)
    validation_files: OneOrMany[InputPath] = Field(default_factory=list)
    validation_split: float = Field(0.0, ge=0, lt=1)
    seed: Seed = 42
    format: Literal["auto", "messages", "prompt", "question_answer", "alpaca"] = Field(
        "auto", description="Row shape; auto = detected from each file's first row (and reported)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Our field name → the file's, e.g. {question: problem, answer: solution}.",
    )
    system: str | None = Field(None, description="System prompt for rows that have none.")
    template: str | None = Field(
        None,
        description="Chat template: none = the model's own; chatml, llama3, qwen, alpaca; or a Jinja string.",
    )
    max_prompt_length: int = Field(
        512, gt=0, description="Tokens of a rendered prompt; longer prompts are dropped and counted."
    )
    max_samples: int | None = Field(None, gt=0, description="Use only the first N valid rows of each file.")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="A bad row: stop naming file and line, or skip and count it by reason."
    )

    @model_validator(mode="after")
    def check_validation_source(self) -> PromptDataSection:
        if self.validation_files and self.validation_split > 0:
            raise ValueError("give data.validation_files or data.validation_split, not both")
        return self


class NerDataSection(Section):
    """Token-tagging data: CoNLL/BIO column files or CLUENER span JSON (one character per token)."""

    train_files: OneOrMany[InputPath] = Field(..., min_length=1)
    validation_files: OneOrMany[InputPath] = Field(default_factory=list)
    test_files: OneOrMany[InputPath] = Field(
        default_factory=list, description="Scored at the end of training."
    )
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
