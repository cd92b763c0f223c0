"""`llmtune lora-ner`: a BERT-like encoder + linear + optional CRF tagger, LoRA on the encoder.

    llmtune lora-ner --recipe recipes/lora-ner/minilm-conll2003.yaml
    llmtune lora-ner predict --model runs/minilm-conll2003 "Peter Blackburn visited Brussels"

Read top to bottom: run folder checked → sentences (validated, label set from train) → sub-token alignment
→ (run folder opened) encoder + head (+ LoRA; head and CRF trained in full) → HF Trainer (best checkpoint
by dev F1) → test scoring → results (adapter + head + labels.json + tagger.json + tokenizer).
The tagger, its encoding and its metrics are llmtune/ner/.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from llmtune.data.ner import check_labels, label_list
from llmtune.data.sources import BadRows
from llmtune.errors import LlmtuneError
from llmtune.manifest import model_entry
from llmtune.models import resolve_model_source
from llmtune.ner.encoding import TaggingCollator, encode, read_sentences
from llmtune.ner.metrics import metrics_function
from llmtune.ner.tagger import build_tagger, check_max_length, save_tagger_config
from llmtune.recipe import NerRecipe
from llmtune.run_folder import RunFolder
from llmtune.training import (
    TRAINING_PHASES,
    check_saved_weights,
    run_training,
    standard_callbacks,
    training_arguments,
    write_training_metrics,
)

log = logging.getLogger("llmtune")


def run(recipe: NerRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    from transformers import AutoTokenizer, Trainer, set_seed

    folder = RunFolder.for_training(recipe, "lora-ner", overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()

    # ---- inputs
    resolved = resolve_model_source(recipe.model)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.tokenizer or resolved.path)
    if not tokenizer.is_fast:
        raise LlmtuneError(f"{resolved.name}: lora-ner needs a fast tokenizer (for word alignment).")
    datasets, labels, report, lines = _read_data(recipe, tokenizer)
    check_max_length(resolved, recipe.data.max_length, recipe.model.trust_remote_code)
    for line in lines:
        log.info(line)

    data = {"files": report["files"], "sentences": report["sentences"]}
    with folder.open(recipe, data_report=report, data=data, log_lines=lines, phases=TRAINING_PHASES) as run:
        run.phase("model")
        # ---- model
        set_seed(train_kwargs.get("seed", 42))
        model = build_tagger(
            resolved.path,
            labels,
            use_crf=recipe.ner.use_crf,
            scheme=recipe.data.scheme,
            dropout=recipe.ner.dropout,
            peft=recipe.peft,
            trust_remote_code=recipe.model.trust_remote_code,
        )
        entry = model_entry(
            model,
            name=resolved.name,
            source=resolved.source,
            path=str(resolved.path),
            peft=recipe.peft.method,
            head="linear + CRF" if recipe.ner.use_crf else "linear",
        )
        run.set_model(entry)
        log.info(
            "model: %s + %s, trainable parameters: %s of %s (%.2f%%)",
            resolved.name,
            entry["head"],
            f"{entry['trainable_parameters']:,}",
            f"{entry['parameters']:,}",
            100 * entry["trainable_parameters"] / entry["parameters"],
        )

        # ---- trainer
        has_eval = "validation" in datasets
        defaults = {
            "label_names": ["labels"],
            "remove_unused_columns": False,
            "include_num_input_tokens_seen": "no",
        }
        if has_eval:
            defaults.update(
                eval_strategy="epoch",
                save_strategy="epoch",
                load_best_model_at_end=True,
                metric_for_best_model="eval_f1",
                greater_is_better=True,
                save_total_limit=2,
            )
        args, use_tensorboard = training_arguments(
            recipe, run.dir, has_eval=has_eval, bf16_model=False, stage_defaults=defaults
        )
        _, callbacks = standard_callbacks(
            run.dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=datasets["train"],
            eval_dataset=datasets.get("validation"),
            data_collator=TaggingCollator(tokenizer),
            compute_metrics=metrics_function(labels, recipe.data.scheme, recipe.ner.seqeval_mode),
            callbacks=callbacks,
        )
        output = run_training(trainer, recipe, run)

        def save(folder):
            trainer.save_model(str(folder))
            tokenizer.save_pretrained(folder)
            save_tagger_config(
                folder,
                base=str(resolved.path),
                labels=labels,
                use_crf=recipe.ner.use_crf,
                scheme=recipe.data.scheme,
                extra={"unit": report["unit"], "max_length": recipe.data.max_length},
            )

        # the trained tagger first (the best checkpoint's, when loaded at the end): evaluation can be interrupted
        run.save_weights(save, check=check_saved_weights)
        run.phase("final_eval")

        # ---- results
        runtime = output.metrics.get("train_runtime") or 1e-9
        # real sub-tokens (no padding) of the training examples, times the epochs trained
        tokens = sum(map(len, datasets["train"]["input_ids"])) * float(trainer.state.epoch or 0)
        results = {
            "train_loss": output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": runtime,
            "train_tokens": int(tokens),
            "train_tokens_per_second": tokens / runtime,
        }
        if has_eval:
            results.update(_scores(trainer.evaluate(), "eval_"))
        if "test" in datasets:
            results.update(_scores(trainer.evaluate(datasets["test"], metric_key_prefix="test"), "test_"))
        write_training_metrics(trainer, run, title=f"lora-ner: {Path(recipe.source).name}")
        return run.finish(results, quiet=("eval_f1_", "test_f1_"))


def _read_data(recipe: NerRecipe, tokenizer):
    """(datasets by split, labels, data report, report lines): sentences read and checked, labels from the
    training split, every split encoded (long sentences split into windows, counted)."""
    data, describe = recipe.data, recipe.describe_path
    bad = BadRows()
    report: dict = {"files": {}}
    splits = {"train": read_sentences(data, data.train_files, "data.train_files", bad, report, describe)}
    if data.validation_files:
        splits["validation"] = read_sentences(
            data, data.validation_files, "data.validation_files", bad, report, describe
        )
    if data.test_files:
        splits["test"] = read_sentences(data, data.test_files, "data.test_files", bad, report, describe)
    labels = label_list(splits["train"])
    for name in ("validation", "test"):
        if name in splits:
            check_labels(splits[name], labels, name)
    label_ids = {t: i for i, t in enumerate(labels)}
    counts: Counter = Counter()
    datasets = {
        name: encode(
            sentences, tokenizer, label_ids, data, stride=data.stride if name == "train" else 0, counts=counts
        )
        for name, sentences in splits.items()
    }
    report.update(
        sentences={k: len(v) for k, v in splits.items()},
        examples={k: len(v) for k, v in datasets.items()},
        labels=labels,
        skipped_rows=dict(bad.counts),
        skipped_examples=dict(bad.examples),
        long_sentences=dict(counts),
    )
    lines = [
        f"data: {len(report['files'])} file(s), unit: {report['unit']}, scheme {data.scheme}, {len(labels)} labels"
    ]
    lines += [
        f"  {k}: {v:,} sentences → {report['examples'][k]:,} examples" for k, v in report["sentences"].items()
    ]
    lines += [f"  bad rows skipped ({r}): {c:,}, first at {bad.examples[r]}" for r, c in bad.counts.items()]
    lines += [f"  repaired ({r}): {c:,}" for r, c in report.get("repairs", {}).items()]
    lines += [f"  note: {n}" for n in report.get("notes", [])]
    if counts:
        lines.append(f"  split into windows (longer than {data.max_length} sub-tokens): {dict(counts)}")
    return datasets, labels, report, lines


def _scores(metrics: dict, prefix: str) -> dict:
    """An evaluation's metrics without its timings."""
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith(prefix) and "runtime" not in k and "per_second" not in k
    }
