"""Chat datasets for sft, dpo, data check and merge's check prompts: read → validate → mix → split, then
(sft) render with the chat template and tokenise with a loss mask on the assistant turns. The row formats
themselves are read by chat_formats.py.

The loss mask is computed here rather than by TRL's `assistant_only_loss`, which needs `{% generation %}`
markers in the template (SmolLM2's, Llama's and Qwen's have none). Any template works: for each
assistant turn we render the conversation up to the turn with the generation prompt and through the
turn, and the characters between the two are the assistant's (its end-of-turn token included, so the
model learns to stop). Token offsets map characters to tokens. A template that does not render
conversations prefix by prefix (one that rewrites earlier turns) is reported as such.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmtune.data.chat_formats import PREFERENCE_FORMATS, SFT_FORMATS, Conversation, read_rows
from llmtune.data.sources import BadRows, expand_sources, file_sha256
from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")
CHAT_SUFFIXES = (".jsonl", ".json")
IGNORE_INDEX = -100


@dataclass
class ChatDataReport:
    """What reading, validating, mixing, splitting and tokenising did (console, run folder, manifest)."""

    files: dict[str, str] = field(default_factory=dict)  # path → sha256
    formats: dict[str, str] = field(default_factory=dict)  # path → format used (detected or given)
    detected: bool = False
    rows_read: dict[str, int] = field(default_factory=dict)  # path → valid rows
    weights: dict[str, float] = field(default_factory=dict)
    rows_after_mixing: int = 0
    skipped_rows: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, str] = field(default_factory=dict)
    split: str = ""
    examples: dict[str, int] = field(default_factory=dict)  # split → examples kept
    truncated: dict[str, int] = field(default_factory=dict)
    dropped_overlong: dict[str, int] = field(default_factory=dict)
    dropped_no_answer_tokens: dict[str, int] = field(default_factory=dict)
    dropped_long_prompt: dict[str, int] = field(default_factory=dict)  # reward pairs: no room for an answer
    prompt_cut: dict[str, int] = field(default_factory=dict)  # reward pairs: the prompt's start cut too
    tokens: dict[str, int] = field(default_factory=dict)
    trained_tokens: dict[str, int] = field(default_factory=dict)
    length_stats: dict[str, dict] = field(default_factory=dict)
    template: str = ""
    max_length: int = 0
    tokenize_seconds: float = 0.0

    def add_bad(self, bad: BadRows) -> None:
        self.skipped_rows = dict(bad.counts)
        self.skipped_examples = dict(bad.examples)

    def lines(self) -> list[str]:
        how = "detected" if self.detected else "given"
        out = [f"data: {len(self.files)} file(s)"]
        for path, fmt in self.formats.items():
            weight = self.weights.get(path, 1.0)
            out.append(
                f"  {path}: {self.rows_read.get(path, 0):,} rows, format {fmt} ({how})"
                + (f", weight {weight:g}" if weight != 1.0 else "")
            )
        if len(self.weights) > 1 or any(w != 1.0 for w in self.weights.values()):
            out.append(f"  mixed: {self.rows_after_mixing:,} rows")
        for reason, count in self.skipped_rows.items():
            out.append(
                f"  bad rows skipped ({reason}): {count:,}, first at {self.skipped_examples.get(reason, '?')}"
            )
        if self.split:
            out.append(f"  split: {self.split}")
        if self.template:
            out.append(f"  chat template: {self.template}")
        for name, count in self.examples.items():
            line = f"  {name}: {count:,} examples"
            if name in self.tokens:
                share = self.trained_tokens[name] / max(self.tokens[name], 1)
                line += f", {self.tokens[name]:,} tokens ({share:.0%} trained)"
            extra = []
            if self.truncated.get(name):
                extra.append(f"{self.truncated[name]:,} truncated to {self.max_length}")
            if self.dropped_overlong.get(name):
                extra.append(f"{self.dropped_overlong[name]:,} dropped as longer than {self.max_length}")
            if self.prompt_cut.get(name):
                extra.append(
                    f"{self.prompt_cut[name]:,} of them with the start of the prompt cut too (the prompt alone "
                    f"leaves less than a quarter of max_length for the answer)"
                )
            if self.dropped_long_prompt.get(name):
                extra.append(
                    f"{self.dropped_long_prompt[name]:,} dropped (the prompt alone fills max_length {self.max_length})"
                )
            if self.dropped_no_answer_tokens.get(name):
                extra.append(
                    f"{self.dropped_no_answer_tokens[name]:,} dropped (no answer token left within max_length)"
                )
            out.append(line + (f"; {', '.join(extra)}" if extra else ""))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ examples
def load_chat_data(
    tokenizer, data, *, preference: bool, describe=None
) -> tuple[dict[str, list], ChatDataReport]:
    """The chat template set on `tokenizer` (data.template, or the model's own), then `load_examples`;
    the report names the template. What sft, dpo and data check all start from."""
    from llmtune.data.templates import apply_template

    template, added = apply_template(tokenizer, data.template)
    examples, report = load_examples(data, preference=preference, describe=describe)
    report.template = template + (f" (added tokens {', '.join(added)})" if added else "")
    return examples, report


def load_examples(data, *, preference: bool, describe=None) -> tuple[dict[str, list], ChatDataReport]:
    """{"train": [...], "validation": [...]} of Conversation (sft) or PreferencePair (dpo), and the report."""
    report = ChatDataReport()
    bad = BadRows()
    wanted = PREFERENCE_FORMATS if preference else SFT_FORMATS
    if data.format != "auto" and data.format not in wanted:
        kind = "a preference (dpo)" if preference else "an sft"
        raise LlmtuneError(
            f"data.format: {data.format!r} is not {kind} format; use auto or one of {', '.join(wanted)}."
        )
    files = expand_sources(data.train_files, "data.train_files", CHAT_SUFFIXES, describe)
    if data.weights is not None and len(data.weights) != len(files):
        raise LlmtuneError(
            f"data.weights has {len(data.weights)} values but data.train_files names {len(files)} file(s) "
            f"({', '.join(map(str, files))}); give one weight per file."
        )
    rng = random.Random(data.seed)
    train: list = []
    for index, path in enumerate(files):
        rows = _read(path, data, preference, bad, report)
        if data.max_samples is not None:
            rows = rows[: data.max_samples]
        weight = data.weights[index] if data.weights else 1.0
        report.weights[str(path)] = weight
        train.extend(_weighted(rows, weight, rng))
    report.rows_after_mixing = len(train)

    validation: list = []
    if data.validation_files:
        val_files = expand_sources(data.validation_files, "data.validation_files", CHAT_SUFFIXES, describe)
        for path in val_files:
            validation.extend(_read(path, data, preference, bad, report))
        if not validation:  # else the run would silently go without the validation it was asked for
            raise LlmtuneError(
                f"no usable validation rows in data.validation_files ({', '.join(str(p) for p in val_files)})"
                + (f" ({bad.total:,} bad rows skipped: {dict(bad.counts)})" if bad.total else "")
                + "."
            )
        report.split = "validation from data.validation_files"
    elif data.validation_split > 0:
        order = list(range(len(train)))
        random.Random(data.seed).shuffle(order)
        n_val = max(1, round(len(train) * data.validation_split))
        held = set(order[:n_val])
        validation = [train[i] for i in sorted(held)]
        train = [row for i, row in enumerate(train) if i not in held]
        report.split = f"{data.validation_split:.0%} of rows (seed {data.seed}) held out"
    report.add_bad(bad)
    if not train:
        raise LlmtuneError(
            f"no usable training rows in data.train_files ({', '.join(str(p) for p in files)})"
            + (f" ({bad.total:,} bad rows skipped: {dict(bad.counts)})" if bad.total else "")
            + "."
        )
    examples = {"train": train}
    if validation:
        examples["validation"] = validation
    report.examples = {name: len(rows) for name, rows in examples.items()}
    return examples, report


def _read(path: Path, data, preference: bool, bad: BadRows, report: ChatDataReport) -> list:
    fmt, rows = read_rows(
        path,
        fmt=data.format,
        columns=data.columns,
        preference=preference,
        on_bad_rows=data.on_bad_rows,
        bad=bad,
        default_system=data.system,
    )
    report.files[str(path)] = file_sha256(path)
    report.formats[str(path)] = fmt
    report.detected = data.format == "auto"
    report.rows_read[str(path)] = len(rows)
    return rows


def _weighted(rows: list, weight: float, rng: random.Random) -> list:
    """`weight` copies of the rows: whole copies, then a seeded random share for the fraction."""
    whole, fraction = int(weight), weight - int(weight)
    out = rows * whole
    if fraction > 0:
        out += rng.sample(rows, round(len(rows) * fraction))
    return out


# ------------------------------------------------------------------------------------------ tokenising
def render_with_mask(tokenizer, conversation: Conversation, train_on_prompt: bool = False):
    """(input_ids, labels, text, trained character spans) of one conversation under the tokenizer's
    chat template; labels are -100 outside assistant turns unless `train_on_prompt`."""
    messages = conversation.messages
    tools = _tools(conversation.tools)

    def render(msgs, generation_prompt=False):
        import jinja2

        try:
            return tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=generation_prompt, tools=tools
            )
        except (jinja2.TemplateError, TypeError, ValueError, RecursionError) as exc:
            # The template itself failed on this row (raise_exception("roles must alternate"), an
            # undefined variable, a type error inside it): name the row and the template, no traceback.
            first = str(exc).strip().split("\n")[0][:200]
            raise LlmtuneError(
                f"{conversation.where}: the chat template fails on this conversation "
                f"({type(exc).__name__}: {first}).",
                hint="Fix the row, or the template (data.template; a built-in one: chatml, qwen, llama3, "
                "alpaca).",
            ) from None

    text = render(messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:index], generation_prompt=True)
        through = render(messages[: index + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise LlmtuneError(
                f"{conversation.where}: the chat template does not render this conversation prefix by "
                "prefix (it rewrites earlier turns), so assistant turns cannot be located for the loss mask. "
                "Set data.template to a built-in (chatml, llama3, qwen, alpaca) or data.train_on_prompt: true."
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    if train_on_prompt:
        return input_ids, list(input_ids), text, [(0, len(text))]
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(input_ids, encoded["offset_mapping"], strict=True)
    ]
    return input_ids, labels, text, spans


def _tools(tools: str | None):
    if tools is None:
        return None
    import json

    try:
        parsed = json.loads(tools)
    except (json.JSONDecodeError, RecursionError):  # not a JSON tool list: rendered without tools
        return None
    return parsed if isinstance(parsed, list) else [parsed]


def tokenize_examples(tokenizer, examples: dict[str, list], data, report: ChatDataReport):
    """datasets.DatasetDict with input_ids + labels, truncated or dropped to data.max_length (counted)."""
    from datasets import Dataset, DatasetDict

    started = time.perf_counter()
    out = {}
    report.max_length = data.max_length
    for name, conversations in examples.items():
        ids_column, labels_column, lengths = [], [], []
        truncated = dropped = no_answer = trained = 0
        for conversation in conversations:
            input_ids, labels, _, _ = render_with_mask(tokenizer, conversation, data.train_on_prompt)
            cut = len(input_ids) > data.max_length
            if cut:
                if data.overlong == "drop":
                    dropped += 1
                    continue
                input_ids, labels = input_ids[: data.max_length], labels[: data.max_length]
            n_trained = sum(
                label != IGNORE_INDEX for label in labels[1:]
            )  # the first token is never a target
            if n_trained == 0:
                no_answer += 1
                continue
            truncated += cut
            trained += n_trained
            ids_column.append(input_ids)
            labels_column.append(labels)
            lengths.append(len(input_ids))
        if not ids_column:
            raise LlmtuneError(
                f"data ({name}): every example was dropped ({dropped} longer than data.max_length "
                f"{data.max_length}, {no_answer} with no answer token within it); raise data.max_length."
            )
        out[name] = Dataset.from_dict({"input_ids": ids_column, "labels": labels_column})
        report.examples[name] = len(ids_column)
        report.truncated[name] = truncated
        report.dropped_overlong[name] = dropped
        report.dropped_no_answer_tokens[name] = no_answer
        report.tokens[name] = sum(lengths)
        report.trained_tokens[name] = trained
        report.length_stats[name] = length_stats(lengths)
    report.tokenize_seconds = time.perf_counter() - started
    return DatasetDict(out)


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def padding_shares(lengths: list[int], batch_size: int, max_length: int, seed: int = 42) -> dict:
    """Share of pad tokens a model would process, without packing (shuffled batches padded to their longest)
    and with TRL's bfd packing (best-fit decreasing into max_length bins, padding-free batches)."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    padded = sum(
        max(order[i : i + batch_size]) * len(order[i : i + batch_size])
        for i in range(0, len(order), batch_size)
    )
    real = sum(lengths)
    bins: list[int] = []  # remaining space per bin, best-fit decreasing
    for length in sorted((min(n, max_length) for n in lengths), reverse=True):
        best = min((i for i, room in enumerate(bins) if room >= length), key=lambda i: bins[i], default=None)
        if best is None:
            bins.append(max_length - length)
        else:
            bins[best] -= length
    return {
        "unpacked_padding_share": 1 - real / padded,
        "packed_padding_share": 0.0,  # padding-free: packed sequences are concatenated, no pad tokens
        "packed_bins": len(bins),
        "packed_bin_fill": real / (len(bins) * max_length),
    }
