"""Typed recipe sections: load a YAML recipe, apply `--set` overrides, validate, report problems.

A recipe is plain YAML with one section per concern:

    model:  what to load (hub id, local folder, demo alias, GGUF, or an architecture built from config)
    data:   what to train on (the shape depends on the command)
    peft:   adapter method and its settings, or `method: none` for full training
    train:  HuggingFace TrainingArguments keys under their own names, checked against the dataclass

Each command has its own recipe class (e.g. `PretrainRecipe`) made of these sections; later commands
add their own sections beside them. Unknown keys are errors with a "did you mean", wrong types name
`section.key`, what was given and what is expected, and every message names the recipe file.

Relative input paths written in a recipe file are relative to the recipe file's folder (a recipe means
the same thing from wherever it is run); relative paths given with `--set` are relative to the current
folder. `train.output_dir` is an output, and relative to the current folder in both cases, so that a
recipe on a read-only mount (a Kaggle input, say) still writes its run where the user is.

Reading is bounded (yaml12.py): a regular file of at most 1 MiB, at most 10,000 values with aliases
expanded, 100 levels deep, each key once; numbers are finite and within the bounds each key needs, checked
at load for every section and for the trainer's own `train:` keys (train_keys.py); `~` is expanded in every
input and output path; and each problem is blamed on the recipe line or the `--set` that gave the value.
`Recipe.to_yaml()` (a run folder's recipe.yaml) loads back to the same recipe.

The package, one concern a module: yaml12.py (reading the file, bounded), base.py (Section, OneOrMany, input
paths, the Recipe base), model.py / peft.py / data.py / training.py (the shared sections), recipes.py
(each training command's recipe and the sections only it has), eval.py (llmtune eval's recipe),
legacy.py (names from other tools and older transformers), train_keys.py (train: checked against HF's
dataclasses), messages.py (validation errors as messages) and loading.py (file + --set → recipe).
"""

from llmtune.recipe.alignment import (
    GrpoRecipe,
    RewardFunctionSection,
    RewardRecipe,
    RewardSection,
    RlooRecipe,
    RlSection,
)
from llmtune.recipe.base import INPUT_PATH, InputPath, OneOrMany, Recipe, Section
from llmtune.recipe.compression import (
    ChatDistillRecipe,
    DepthPruneSection,
    DistillRecipe,
    DistillSection,
    OnPolicyDistillRecipe,
    PruneRecipe,
    PruneSection,
    UnstructuredPruneSection,
    WidthPruneSection,
)
from llmtune.recipe.data import (
    ChatDataSection,
    CleaningSection,
    NerDataSection,
    PromptDataSection,
    TextDataSection,
)
from llmtune.recipe.eval import (
    EvalRecipe,
    EvalSection,
    GenerateTaskSection,
    LmEvalTaskSection,
    McqTaskSection,
    NerTaskSection,
    PerplexityTaskSection,
    RewardTaskSection,
)
from llmtune.recipe.export import ExportRecipe, ExportSection
from llmtune.recipe.legacy import DROPPED_TRAIN_KEYS, RENAMED_TRAIN_KEYS
from llmtune.recipe.loading import RECIPES, load_recipe, recipe_from_mapping, recipe_kind
from llmtune.recipe.model import ModelSection
from llmtune.recipe.peft import PeftSection
from llmtune.recipe.recipes import (
    DpoRecipe,
    DpoSection,
    NerRecipe,
    NerSection,
    PretrainRecipe,
    SamplesSection,
    SftRecipe,
)
from llmtune.recipe.training import EarlyStoppingSection, LaunchSection, TrainSection
from llmtune.recipe.yaml12 import load_yaml, load_yaml_file

__all__ = [
    "DROPPED_TRAIN_KEYS",
    "INPUT_PATH",
    "RECIPES",
    "RENAMED_TRAIN_KEYS",
    "ChatDataSection",
    "ChatDistillRecipe",
    "DepthPruneSection",
    "DistillRecipe",
    "DistillSection",
    "OnPolicyDistillRecipe",
    "PruneRecipe",
    "PruneSection",
    "UnstructuredPruneSection",
    "WidthPruneSection",
    "CleaningSection",
    "DpoRecipe",
    "DpoSection",
    "EarlyStoppingSection",
    "EvalRecipe",
    "ExportRecipe",
    "ExportSection",
    "EvalSection",
    "GenerateTaskSection",
    "GrpoRecipe",
    "InputPath",
    "LaunchSection",
    "LmEvalTaskSection",
    "McqTaskSection",
    "ModelSection",
    "NerDataSection",
    "NerRecipe",
    "NerSection",
    "NerTaskSection",
    "OneOrMany",
    "PeftSection",
    "PerplexityTaskSection",
    "PromptDataSection",
    "PretrainRecipe",
    "Recipe",
    "RewardFunctionSection",
    "RewardRecipe",
    "RewardSection",
    "RewardTaskSection",
    "RlSection",
    "RlooRecipe",
    "SamplesSection",
    "Section",
    "SftRecipe",
    "TextDataSection",
    "TrainSection",
    "load_recipe",
    "load_yaml",
    "load_yaml_file",
    "recipe_from_mapping",
    "recipe_kind",
]
