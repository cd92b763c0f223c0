"""Prompts for online RL (grpo, rloo): rows → {"prompt": messages, "answer": reference, other columns}.

One reader per shape, each detected from a file's first row (after `data.columns` mapping) and reported:

    messages         messages: [{role, content}] ending with the user's turn, or with an assistant turn
                     that is then the reference answer
    prompt           prompt (a string or messages) [, answer]
    question_answer  question [, answer]                      (MedicalGPT's grpo data)
    alpaca           instruction [, input] [, output → answer]

Every other column of a row travels with the prompt to the reward functions (TRL passes dataset columns to
them by name). A prompt longer than `data.max_prompt_length` once rendered with the chat template is dropped
and counted (TRL 1.16 no longer truncates prompts), as is a bad row under `on_bad_rows: skip`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from llmtune.data.chat_dataset import CHAT_SUFFIXES, length_stats
from llmtune.data.chat_formats import BadRow, _checked, _openai_messages, _text
from llmtune.data.sources import BadRows, expand_sources, file_sha256, iter_json_rows, report_bad_row
from llmtune.errors import LlmtuneError

PROMPT_FORMATS = ("messages", "prompt", "question_answer", "alpaca")
_CONSUMED = {
    "messages": ("messages", "system"),
    "prompt": ("prompt", "system"),
    "question_answer": ("question", "system"),
    "alpaca": ("instruction", "input", "output", "system"),
}


@dataclass
class PromptReport:
    files: dict[str, str] = field(default_factory=dict)  # path → sha256
    formats: dict[str, str] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)
    skipped_rows: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, str] = field(default_factory=dict)
    split: str = ""
    examples: dict[str, int] = field(default_factory=dict)
    dropped_long_prompt: dict[str, int] = field(default_factory=dict)
    prompt_tokens: dict[str, dict] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)  # what reaches the reward functions besides the prompt
    with_answer: dict[str, int] = field(default_factory=dict)
    max_prompt_length: int = 0
    template: str = ""

    def lines(self) -> list[str]:
        out = [f"data: {len(self.files)} file(s) of prompts"]
        for path, fmt in self.formats.items():
            out.append(f"  {path}: {self.rows_read.get(path, 0):,} rows, format {fmt}")
        for reason, count in self.skipped_rows.items():
            out.append(
                f"  bad rows skipped ({reason}): {count:,}, first at {self.skipped_examples.get(reason, '?')}"
            )
        if self.split:
            out.append(f"  split: {self.split}")
        if self.template:
            out.append(f"  chat template: {self.template}")
        for name, count in self.examples.items():
            stats = self.prompt_tokens.get(name)
            line = f"  {name}: {count:,} prompts, {self.with_answer.get(name, 0):,} with a reference answer"
            if stats:
                line += f"; prompt tokens min {stats['min']}, median {stats['median']:g}, max {stats['max']}"
            if self.dropped_long_prompt.get(name):
                line += (
                    f"; {self.dropped_long_prompt[name]:,} dropped as longer than data.max_prompt_length "
                    f"{self.max_prompt_length}"
                )
            out.append(line)
        out.append(f"  columns passed to the reward functions: {', '.join(self.columns) or '(none)'}")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def detect_prompt_format(row: dict, columns: dict[str, str]) -> str | None:
    has = {
        name for name in ("messages", "prompt", "question", "instruction") if columns.get(name, name) in row
    }
    for fmt, key in (
        ("messages", "messages"),
        ("prompt", "prompt"),
        ("question_answer", "question"),
        ("alpaca", "instruction"),
    ):
        if key in has:
            return fmt
    return None


def parse_prompt_row(row: dict, fmt: str, columns: dict[str, str], default_system: str | None) -> dict:
    """One row → {"prompt": messages ending with the user's turn, "answer"?: reference, **other columns}."""

    def get(name: str):
        return row.get(columns.get(name, name))

    system = get("system")
    if system is not None and not isinstance(system, str):
        raise BadRow("field 'system' is not a string")
    system = system or default_system
    head = [{"role": "system", "content": system}] if system else []
    answer = get("answer")
    if fmt == "messages":
        messages = _openai_messages(get("messages"), system)
        if messages and messages[-1]["role"] == "assistant":
            answer = messages.pop()["content"]
        prompt = messages
    elif fmt == "prompt":
        value = get("prompt")
        prompt = (
            _openai_messages(value, system)
            if isinstance(value, list)
            else [*head, {"role": "user", "content": _text(value, "prompt")}]
        )
    elif fmt == "question_answer":
        prompt = [*head, {"role": "user", "content": _text(get("question"), "question")}]
    else:
        instruction = _text(get("instruction"), "instruction")
        extra = get("input")
        content = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        prompt = [*head, {"role": "user", "content": content}]
        if answer is None:
            answer = get("output")
    prompt = _checked(prompt, final="user")
    consumed = {columns.get(name, name) for name in (*_CONSUMED[fmt], "answer")}
    out = {"prompt": prompt}
    if answer is not None:
        out["answer"] = answer if isinstance(answer, str) else str(answer)
    for key, value in row.items():
        if key not in consumed and key != "prompt":
            out[key] = value
    return out


def load_prompts(tokenizer, data, describe=None) -> tuple[dict[str, list[dict]], PromptReport]:
    """{"train": rows, "validation"?: rows} and the report; the chat template (data.template or the model's
    own) is set on `tokenizer` first, and each prompt is measured with it."""
    from llmtune.data.templates import apply_template

    template, added = apply_template(tokenizer, data.template)
    report = PromptReport(max_prompt_length=data.max_prompt_length)
    report.template = template + (f" (added tokens {', '.join(added)})" if added else "")
    bad = BadRows()
    files = expand_sources(data.train_files, "data.train_files", CHAT_SUFFIXES, describe)
    train: list[dict] = []
    for path in files:
        rows = _read(path, data, bad, report)
        train.extend(rows[: data.max_samples] if data.max_samples else rows)
    validation: list[dict] = []
    if data.validation_files:
        for path in expand_sources(data.validation_files, "data.validation_files", CHAT_SUFFIXES, describe):
            validation.extend(_read(path, data, bad, report))
        report.split = "validation from data.validation_files"
    elif data.validation_split > 0:
        order = list(range(len(train)))
        random.Random(data.seed).shuffle(order)
        held = set(order[: max(1, round(len(train) * data.validation_split))])
        validation = [train[i] for i in sorted(held)]
        train = [row for i, row in enumerate(train) if i not in held]
        report.split = f"{data.validation_split:.0%} of rows (seed {data.seed}) held out"
    report.skipped_rows, report.skipped_examples = dict(bad.counts), dict(bad.examples)
    splits = {"train": train, **({"validation": validation} if validation else {})}
    out = {}
    for name, rows in splits.items():
        kept, lengths, dropped = [], [], 0
        for row in rows:
            text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if length > data.max_prompt_length:
                dropped += 1
                continue
            kept.append(row)
            lengths.append(length)
        if not kept:
            raise LlmtuneError(
                f"data ({name}): no usable prompt ({dropped} longer than data.max_prompt_length "
                f"{data.max_prompt_length}" + (f", {bad.total} bad rows skipped" if bad.total else "") + ")."
            )
        out[name] = kept
        report.examples[name] = len(kept)
        report.dropped_long_prompt[name] = dropped
        report.prompt_tokens[name] = length_stats(lengths)
        report.with_answer[name] = sum("answer" in row for row in kept)
    report.columns = sorted({key for row in out["train"] for key in row if key != "prompt"})
    _check_columns(out)
    return out, report


def _read(path, data, bad: BadRows, report: PromptReport) -> list[dict]:
    fmt = data.format
    rows = []
    for where, row in iter_json_rows(path, data.on_bad_rows, bad):
        if fmt == "auto":
            fmt = detect_prompt_format(row, data.columns)
            if fmt is None:
                raise LlmtuneError(
                    f"{where}: cannot tell the prompt format from the keys {sorted(row)[:12]}; expected one of "
                    f"{', '.join(PROMPT_FORMATS)} (messages, prompt, question [+ answer], instruction), or map "
                    "your column names with data.columns, e.g. {question: problem, answer: solution}."
                )
        try:
            parsed = parse_prompt_row(row, fmt, data.columns, data.system)
        except BadRow as exc:
            report_bad_row(where, str(exc), data.on_bad_rows, bad)
            continue
        parsed["where"] = where
        rows.append(parsed)
    report.files[str(path)] = file_sha256(path)
    report.formats[str(path)] = fmt if fmt != "auto" else "empty"
    report.rows_read[str(path)] = len(rows)
    return rows


def _check_columns(splits: dict[str, list[dict]]) -> None:
    """Every row must carry the same columns: TRL hands a reward function one list per column, and a row
    without one would make the dataset fill it with None behind the user's back."""
    for name, rows in splits.items():
        expected = set(rows[0])
        for row in rows[1:]:
            if set(row) != expected:
                missing = sorted(expected ^ set(row))
                raise LlmtuneError(
                    f"{row['where']}: its columns differ from the first {name} row's ({rows[0]['where']}): "
                    f"{', '.join(missing)}; every row must have the same fields."
                )
