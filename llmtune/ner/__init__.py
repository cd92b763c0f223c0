"""The named-entity tagger of `llmtune lora-ner`: encoding sentences for it (encoding.py), the model and
its adapter (tagger.py), seqeval scores (metrics.py) and tagging raw text (predict.py). File readers are
data/ner.py; the command itself is stages/lora_ner.py."""
