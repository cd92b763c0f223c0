"""`llmtune data check`: the dataset doctor. Everything sft/dpo would do to the data, without a model.

    llmtune data check --recipe recipes/sft/smollm2-135m-lora-medical.yaml --samples 2

Reports the detected format of each file, rows read/kept/skipped by reason, truncations, token length
stats (min/median/p95/max), the padding share with and without packing, and renders samples as the model
will see them with the trained (loss) tokens marked: [[in brackets]], or green in a terminal.
"""

from __future__ import annotations

from llmtune.data.chat_dataset import (
    IGNORE_INDEX,
    length_stats,
    load_chat_data,
    padding_shares,
    render_with_mask,
    tokenize_examples,
)
from llmtune.errors import LlmtuneError
from llmtune.models import load_tokenizer, resolve_model_source
from llmtune.recipe import (
    ChatDistillRecipe,
    DistillRecipe,
    DpoRecipe,
    GrpoRecipe,
    OnPolicyDistillRecipe,
    RewardRecipe,
    SftRecipe,
)

GREEN, RESET = "\033[32m", "\033[0m"


def run(
    recipe: SftRecipe | DpoRecipe | RewardRecipe | GrpoRecipe, *, samples: int = 2, color: bool = False
) -> str:
    """The report as text."""
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    if isinstance(recipe, (GrpoRecipe, OnPolicyDistillRecipe)):
        return _prompts_report(recipe, tokenizer, samples)
    if isinstance(recipe, DistillRecipe) and not isinstance(recipe, ChatDistillRecipe):
        raise LlmtuneError(
            f"{recipe.source} distils on raw text; data check reads conversations, pairs and prompts. A text "
            "run reports its documents, blocks and dropped tokens when it starts (and in data_report.json)."
        )
    if isinstance(recipe, RewardRecipe):
        return _reward_report(recipe, tokenizer, samples)
    preference = isinstance(recipe, DpoRecipe)
    examples, report = load_chat_data(
        tokenizer, recipe.data, preference=preference, describe=recipe.describe_path
    )
    command = "dpo" if preference else "distill" if isinstance(recipe, DistillRecipe) else "sft"
    out = [f"recipe: {recipe.source} ({command})"]
    if preference:
        out += report.lines()
        out += _preference_lengths(tokenizer, examples, recipe.data.max_length)
        out += _preference_samples(tokenizer, examples["train"][:samples])
        return "\n".join(out)

    datasets = tokenize_examples(tokenizer, examples, recipe.data, report)
    out += report.lines()
    batch = recipe.train.trainer_kwargs().get("per_device_train_batch_size", 8)
    for name, stats in report.length_stats.items():
        out.append(
            f"  {name} tokens per example: min {stats['min']}, median {stats['median']:g}, "
            f"p95 {stats['p95']}, max {stats['max']}"
        )
    lengths = [len(ids) for ids in datasets["train"]["input_ids"]]
    shares = padding_shares(lengths, batch, recipe.data.max_length)
    out.append(
        f"  padding (train, batch {batch}): {shares['unpacked_padding_share']:.1%} of processed tokens without "
        f"packing; with data.packing: {shares['packed_bins']:,} rows of {recipe.data.max_length} "
        f"({shares['packed_bin_fill']:.1%} full), no pad tokens (padding-free)"
    )
    out.append(
        "  packing is "
        + ("on" if recipe.data.packing else "off")
        + " in this recipe"
        + ("" if recipe.data.packing else "; --set data.packing=true to turn it on")
    )
    for index, conversation in enumerate(examples["train"][:samples]):
        _, labels, text, spans = render_with_mask(tokenizer, conversation, recipe.data.train_on_prompt)
        trained = sum(label != IGNORE_INDEX for label in labels)
        over = len(labels) > recipe.data.max_length
        verb = "truncated" if recipe.data.overlong == "truncate" else "dropped"
        cut = f"; {verb} at {recipe.data.max_length} in training" if over else ""
        out.append(
            f"\n--- sample {index + 1} ({conversation.where}; {len(labels)} tokens, {trained} trained{cut})"
        )
        out.append(mark_spans(text, spans, color))
    return "\n".join(out)


def mark_spans(text: str, spans: list[tuple[int, int]], color: bool) -> str:
    """`text` with the trained character spans marked: green in a terminal, [[...]] otherwise."""
    start_mark, end_mark = (GREEN, RESET) if color else ("[[", "]]")
    pieces, cursor = [], 0
    for start, end in spans:
        pieces += [text[cursor:start], start_mark, text[start:end], end_mark]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _preference_lengths(tokenizer, examples, max_length: int) -> list[str]:
    out = []
    for name, pairs in examples.items():
        lengths, over = [], 0
        for pair in pairs:
            prompt = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            for answer in (pair.chosen, pair.rejected):
                total = n_prompt + len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
                lengths.append(total)
                over += total > max_length
        stats = length_stats(lengths)
        out.append(
            f"  {name} prompt+answer tokens: min {stats['min']}, median {stats['median']:g}, p95 {stats['p95']}, "
            f"max {stats['max']}; {over:,} of {len(lengths):,} answers longer than data.max_length {max_length} "
            "(TRL truncates them)"
        )
    return out


def _preference_samples(tokenizer, pairs) -> list[str]:
    out = []
    for index, pair in enumerate(pairs):
        prompt = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
        out.append(f"\n--- sample {index + 1} ({pair.where})")
        out.append(f"{prompt}[[chosen: {pair.chosen}]]\n[[rejected: {pair.rejected}]]")
    return out


def _reward_report(recipe: RewardRecipe, tokenizer, samples: int) -> str:
    """What `llmtune reward` will train on: pairs read, cut to data.max_length (prompt kept) or dropped,
    counted; the padding token; samples as the reward model will read them."""
    from llmtune.data.reward_pairs import pair_report_lines, tokenize_pairs
    from llmtune.reward_model import choose_pad_token

    examples, report = load_chat_data(tokenizer, recipe.data, preference=True, describe=recipe.describe_path)
    splits = tokenize_pairs(tokenizer, examples, recipe.data, report)
    sequences = [
        ids for split in splits.values() for side in ("chosen_ids", "rejected_ids") for ids in split[side]
    ]
    pad, why = choose_pad_token(tokenizer, sequences, recipe.reward.pad_token)
    out = [f"recipe: {recipe.source} (reward)", *report.lines(), *pair_report_lines(report)]
    out.append(f"  padding token: {pad!r} ({why}); the reward is read at each sequence's last token")
    out.append(
        f"  pairs longer than data.max_length {recipe.data.max_length}: "
        + (
            "their answers are cut and the prompt kept (data.overlong: truncate)"
            if recipe.data.overlong == "truncate"
            else "dropped (data.overlong: drop)"
        )
        + "; TRL's RewardTrainer alone would drop them silently"
    )
    train = splits["train"]
    for index in range(min(samples, len(train["chosen_ids"]))):
        out.append(f"\n--- sample {index + 1} ({train['where'][index]})")
        for side in ("chosen", "rejected"):
            ids = train[f"{side}_ids"][index]
            out.append(f"[[{side}: {len(ids)} tokens]] {tokenizer.decode(ids)}")
    return "\n".join(out)


def _prompts_report(recipe: GrpoRecipe, tokenizer, samples: int) -> str:
    """What `llmtune grpo/rloo` will train on: prompts read and measured, the columns the reward functions
    get, and each reward function tried on the reference answers."""
    from pathlib import Path

    from llmtune.data.prompts import load_prompts
    from llmtune.rl.rewards import build_reward_functions, check_reward_functions

    rows, report = load_prompts(tokenizer, recipe.data, describe=recipe.describe_path)
    out = [f"recipe: {recipe.source} ({getattr(recipe, 'algorithm', 'distill, on-policy')})", *report.lines()]
    rewards = getattr(recipe, "rewards", [])  # on-policy distill has none: the teacher is the signal
    functions = build_reward_functions(rewards, base_dir=Path(recipe.source).resolve().parent)
    checked = check_reward_functions(functions, rows["train"] + rows.get("validation", []))
    if functions:
        out.append("  rewards (tried on the first rows, the reference answer as the completion):")
    for function in functions:
        found = checked.get(function.__name__)
        shown = f": {found}" if found is not None else ""
        out.append(f"    {function.__name__} ({function.type}, weight {function.weight:g}){shown}")
    for index, row in enumerate(rows["train"][:samples]):
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        answer = f"\n[[reference: {row['answer']}]]" if "answer" in row else ""
        out.append(f"\n--- sample {index + 1} ({row['where']})\n{text}{answer}")
    return "\n".join(out)
