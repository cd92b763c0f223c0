"""How many of MedicalGPT's reward pairs TRL's RewardTrainer would keep at max_length 384, and what llmtune does.

    python benchmarks/reward_long_pairs.py [N]      (default: the first 240 pairs, as in issue 15)

TRL keeps a pair only when both sides, rendered with the chat template, fit in max_length (its "Filtering
train >384 tokens" step); llmtune keeps every pair, its answers cut (data/reward_pairs.py).
"""

from __future__ import annotations

import sys

from llmtune.data.chat_dataset import load_chat_data
from llmtune.data.reward_pairs import OK, PROMPT_CUT, pair_sequences
from llmtune.models import load_tokenizer, resolve_model_source
from llmtune.recipe import load_recipe

RECIPE = "recipes/reward/smollm2-135m-reward-medical.yaml"


def main(n: int) -> None:
    recipe = load_recipe(RECIPE, "reward", ["data.validation_split=0", f"data.max_samples={n}"])
    tokenizer = load_tokenizer(recipe.model, resolve_model_source(recipe.model))
    examples, _ = load_chat_data(tokenizer, recipe.data, preference=True)
    limit = recipe.data.max_length
    results = [pair_sequences(tokenizer, pair, limit, "truncate") for pair in examples["train"]]
    fits = sum(result[3] <= limit for result in results)
    cut = sum(result[2] != OK for result in results)
    prompt_cut = sum(result[2] == PROMPT_CUT for result in results)
    print(f"{len(results)} pairs of {RECIPE} at max_length {limit}:")
    print(f"  TRL's RewardTrainer keeps {fits} (both sides fit) and drops {len(results) - fits} silently")
    print(
        f"  llmtune keeps all {len(results)}: {cut} with answers cut, {prompt_cut} of them with the prompt's start cut"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 240)
