#!/usr/bin/env bash
# The README's eval and merge figures. Needs the runs of recipes/quickstart.yaml and
# recipes/pretrain/smollm2-135m-continued-lora.yaml in runs/ (about 10 minutes together on 2 CPU cores).
#   bash benchmarks/eval_figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LLMTUNE=${LLMTUNE:-.venv/bin/llmtune}
PY=${PY:-.venv/bin/python}
mkdir -p runs/eval

# The paragraphs the continued-pretraining run held out: its own reader, cleaning and seeded split.
$PY - <<'PY'
from pathlib import Path
from llmtune.data.sources import BadRows, expand_sources
from llmtune.data.text import TextDataReport, clean_documents, read_documents, split_documents
from llmtune.recipe import PretrainRecipe, load_recipe

recipe = load_recipe("recipes/pretrain/smollm2-135m-continued-lora.yaml", PretrainRecipe)
data = recipe.data
docs = read_documents(expand_sources(data.train_files, "data.train_files"), data, BadRows(), TextDataReport())
docs, _ = clean_documents(docs, data.clean)
_, held_out = split_documents(docs, data.validation_split, data.split_by, data.seed)
Path("runs/eval/continued-heldout.txt").write_text("\n\n".join(held_out), encoding="utf-8")
print(f"held-out paragraphs: {len(held_out)}")
PY

$LLMTUNE eval --recipe recipes/eval/smollm2-mmlu-cmmlu.yaml --overwrite
$LLMTUNE eval --recipe recipes/eval/smollm2-continued-perplexity.yaml --overwrite
$LLMTUNE eval --recipe recipes/eval/quickstart-compare.yaml --overwrite
rm -rf runs/merged/quickstart
/usr/bin/time -f "merge: %e s wall, %M KB peak RSS" $LLMTUNE merge --adapter runs/quickstart --out runs/merged/quickstart
