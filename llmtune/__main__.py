"""`python -m llmtune` (also what `accelerate launch -m llmtune ...` runs)."""

from llmtune.cli import main

main()
