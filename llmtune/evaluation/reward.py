"""Pairwise accuracy of a reward model on chosen/rejected pairs: each answer scored after its prompt, as in
training, and the pair counted correct when the chosen answer scores strictly higher.

The pairs are read by the same readers as `llmtune reward` and `llmtune dpo` (every preference format) and
rendered with the reward model's own chat template (the one it was trained with, saved in its run folder),
unless reward.template names another. An answer longer than reward.max_length is cut as in training (the
prompt kept whole, the end-of-turn tokens put back); a pair whose prompt alone fills reward.max_length is
dropped. Both are counted and reported, never silent.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

# The preference readers name the sft/dpo keys (data.format, data.columns ...); here the same settings live
# under reward.*, so their messages are re-pointed at the keys the user actually wrote.
_DATA_KEYS = re.compile(r"\bdata\.(train_files|format|columns|system|on_bad_rows|max_samples|template)\b")
_RENAMED = {"train_files": "files"}


@dataclass
class PairFile:
    """The valid pairs of one file, read before any model loads."""

    path: Path
    format: str
    pairs: list
    skipped: dict


def read_pair_files(files: list[Path], section, describe=None) -> list[PairFile]:
    """Each file's preference pairs, validated (a bad row stops or is skipped, per reward.on_bad_rows)."""
    from llmtune.data.chat_dataset import load_examples
    from llmtune.recipe import ChatDataSection

    out = []
    for path in files:
        data = ChatDataSection(
            train_files=[str(path)],
            format=section.format,
            columns=section.columns,
            system=section.system,
            max_samples=section.max_samples,
            on_bad_rows=section.on_bad_rows,
        )
        try:
            examples, report = load_examples(data, preference=True, describe=describe)
        except LlmtuneError as exc:
            raise _repointed(exc) from None
        out.append(
            PairFile(
                path, report.formats.get(str(path), section.format), examples["train"], report.skipped_rows
            )
        )
    return out


def _repointed(exc: LlmtuneError) -> LlmtuneError:
    return LlmtuneError(
        _DATA_KEYS.sub(lambda m: f"reward.{_RENAMED.get(m[1], m[1])}", exc.message), hint=exc.hint
    )


def evaluate_reward(model, tokenizer, pair_files: list[PairFile], section) -> dict:
    """{"metrics": accuracy, margin, distributions, counts (overall and per file), "rows": one per scored
    pair (where, chosen, rejected, margin, correct, truncated)}."""
    from llmtune.data.reward_pairs import DROPPED_LONG, DROPPED_PROMPT, TRUNCATED, pair_sequences
    from llmtune.data.templates import apply_template
    from llmtune.reward_model import pair_metrics, score_sequences

    try:
        template, added = apply_template(tokenizer, section.template)
    except LlmtuneError as exc:
        raise _repointed(exc) from None
    if added:  # the reward model never saw these tokens: its scores would rest on untrained embeddings
        raise LlmtuneError(
            f"reward.template adds tokens {', '.join(added)} that the reward model's tokenizer lacks; score with "
            "the template it was trained with (leave reward.template out)."
        )
    chosen_ids, rejected_ids, kept, per_file = [], [], [], {}
    for found in pair_files:
        counts = {"pairs": 0, "truncated": 0, "dropped": 0}
        for pair in found.pairs:
            chosen, rejected, status, _ = pair_sequences(tokenizer, pair, section.max_length, "truncate")
            if status in (DROPPED_PROMPT, DROPPED_LONG):
                counts["dropped"] += 1
                continue
            counts["pairs"] += 1
            counts["truncated"] += status == TRUNCATED
            chosen_ids.append(chosen)
            rejected_ids.append(rejected)
            kept.append((str(found.path), pair.where, status == TRUNCATED))
        per_file[str(found.path)] = counts
    if not chosen_ids:
        dropped = sum(c["dropped"] for c in per_file.values())
        raise LlmtuneError(
            f"reward: every one of the {dropped} pair(s) was dropped: each prompt alone fills reward.max_length "
            f"{section.max_length}; raise reward.max_length."
        )

    n = len(chosen_ids)
    scores = score_sequences(
        model, chosen_ids + rejected_ids, pad_token_id=tokenizer.pad_token_id, batch_size=section.batch_size
    )
    chosen_scores, rejected_scores = scores[:n], scores[n:]
    rows = [
        {"where": where, "chosen": c, "rejected": r, "margin": c - r, "correct": c > r, "truncated": cut}
        for (_, where, cut), c, r in zip(kept, chosen_scores, rejected_scores, strict=True)
    ]
    metrics = pair_metrics(chosen_scores, rejected_scores)
    metrics["ties"] = sum(row["margin"] == 0 for row in rows)
    metrics["truncated"] = sum(c["truncated"] for c in per_file.values())
    metrics["dropped"] = sum(c["dropped"] for c in per_file.values())
    metrics["max_length"] = section.max_length
    metrics["template"] = template
    skipped: dict[str, int] = {}
    for found in pair_files:
        for reason, count in found.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    if skipped:
        metrics["skipped"] = skipped
    files = {}
    for found in pair_files:
        path = str(found.path)
        mine = [row for (file, _, _), row in zip(kept, rows, strict=True) if file == path]
        entry = {**per_file[path], "format": found.format}
        if mine:
            entry["accuracy"] = sum(row["correct"] for row in mine) / len(mine)
            entry["mean_margin"] = sum(row["margin"] for row in mine) / len(mine)
        files[path] = entry
    metrics["files"] = files
    return {"metrics": metrics, "rows": rows}
