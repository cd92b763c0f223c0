"""`llmtune lora-ner`: a BERT-like encoder + linear + optional CRF tagger, LoRA on the encoder.

    llmtune lora-ner --recipe recipes/lora-ner/minilm-conll2003.yaml
    llmtune lora-ner predict --model runs/minilm-conll2003 "Peter Blackburn visited Brussels"

Read top to bottom: run folder → sentences (validated, label set from train) → sub-token alignment →
encoder + head (+ LoRA; head and CRF trained in full) → HF Trainer (best checkpoint by dev F1) →
test scoring → outputs (adapter + head + labels.json + tagger.json + tokenizer).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from llmtune.data.ner import (
    IGNORE_INDEX,
    Sentence,
    align_labels,
    check_labels,
    label_list,
    read_conll,
    read_span_json,
    split_long,
    to_scheme,
)
from llmtune.data.sources import BadRows, expand_sources, file_sha256
from llmtune.errors import LlmtuneError
from llmtune.models import count_parameters, resolve_model_source
from llmtune.outputs import (
    MANIFEST,
    check_run_dir,
    file_log,
    new_manifest,
    open_run_dir,
    record_failure,
    start_run_log,
    stop_run_log,
    write_json,
    write_text,
)
from llmtune.recipe import NerRecipe
from llmtune.tagger import LABELS_FILE, TAGGER_CONFIG, Tagger, save_tagger_config
from llmtune.training import (
    finish_run,
    run_training,
    standard_callbacks,
    training_arguments,
)

log = logging.getLogger("llmtune")
NER_SUFFIXES = (".txt", ".conll", ".bio", ".tsv", ".json", ".jsonl")


# ------------------------------------------------------------------------------------------ data
def read_sentences(
    recipe: NerRecipe, files: list[str], key: str, bad: BadRows, report: dict
) -> list[Sentence]:
    data = recipe.data
    out: list[Sentence] = []
    for path in expand_sources(files, key, NER_SUFFIXES, recipe.describe_path):
        span_json = data.format == "span_json" or (
            data.format == "auto" and path.suffix in (".json", ".jsonl")
        )
        if span_json:
            sentences = read_span_json(path, scheme=data.scheme, on_bad_rows=data.on_bad_rows, bad=bad)
        else:
            repairs: Counter = Counter()
            notes: list[str] = []
            sentences = read_conll(
                path,
                tag_column=data.tag_column,
                scheme="BIO",
                strict=data.strict,
                on_bad_rows=data.on_bad_rows,
                bad=bad,
                repairs=repairs,
                notes=notes,
            )
            if data.scheme == "BIOES":
                sentences = [Sentence(s.tokens, to_scheme(s.tags, "BIOES"), s.where) for s in sentences]
            report.setdefault("repairs", {}).update(repairs)
            report.setdefault("notes", []).extend(notes)
        if data.max_samples:
            sentences = sentences[: data.max_samples]
        report["files"][str(path)] = file_sha256(path)
        report["unit"] = "char" if span_json else "word"
        out.extend(sentences)
    return out


def encode(
    sentences: list[Sentence], tokenizer, label_ids: dict[str, int], data, *, stride: int, counts: Counter
):
    """Sub-token features; a sentence longer than data.max_length is split into word windows (counted)."""
    budget = data.max_length - tokenizer.num_special_tokens_to_add()
    continuation = {
        label_ids[t]: label_ids.get("I-" + t[2:], label_ids[t])
        for t in label_ids
        if t.startswith(("B-", "S-"))
    }
    rows = {"input_ids": [], "attention_mask": [], "labels": [], "word_starts": []}
    has_types = "token_type_ids" in tokenizer.model_input_names
    if has_types:
        rows["token_type_ids"] = []
    for sentence in sentences:
        pieces = [len(tokenizer.tokenize(word)) or 1 for word in sentence.tokens]
        windows = split_long(pieces, budget, stride)
        if len(windows) > 1:
            counts["split sentences"] += 1
            counts["extra windows"] += len(windows) - 1
        for start, end in windows:
            words = sentence.tokens[start:end]
            encoded = tokenizer(words, is_split_into_words=True, truncation=False)
            word_ids = encoded.word_ids()
            tag_ids = [label_ids[t] for t in sentence.tags[start:end]]
            labels = align_labels(word_ids, tag_ids, data.label_all_subtokens, continuation)
            starts = [int(w is not None and (i == 0 or word_ids[i - 1] != w)) for i, w in enumerate(word_ids)]
            rows["input_ids"].append(encoded["input_ids"])
            rows["attention_mask"].append(encoded["attention_mask"])
            rows["labels"].append(labels)
            rows["word_starts"].append(starts)
            if has_types:
                rows["token_type_ids"].append(encoded["token_type_ids"])
    from datasets import Dataset

    return Dataset.from_dict(rows)


class TaggingCollator:
    """Pads a batch: the tokenizer pads its own inputs; labels with -100 and word_starts with 0.
    (transformers' DataCollatorForTokenClassification pads only `labels`.)"""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        inputs = [{k: f[k] for k in f if k not in ("labels", "word_starts")} for f in features]
        batch = self.tokenizer.pad(inputs, padding="longest", return_tensors="pt")
        batch["labels"] = torch.tensor(
            [f["labels"] + [IGNORE_INDEX] * (width - len(f["labels"])) for f in features]
        )
        batch["word_starts"] = torch.tensor(
            [f["word_starts"] + [0] * (width - len(f["word_starts"])) for f in features]
        )
        return batch


# ------------------------------------------------------------------------------------------ metrics
def metrics_function(labels: list[str], scheme: str, mode: str):
    """compute_metrics for the Trainer: entity-level P/R/F1 (micro, macro, per type) with seqeval."""
    import numpy as np
    from seqeval import metrics
    from seqeval.scheme import IOB2, IOBES

    kwargs = {"mode": "strict", "scheme": IOBES if scheme == "BIOES" else IOB2} if mode == "strict" else {}

    def compute(eval_pred):
        predictions, gold = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        pred_tags, gold_tags = [], []
        for pred_row, gold_row in zip(np.asarray(predictions), np.asarray(gold), strict=True):
            keep = (gold_row != IGNORE_INDEX) & (pred_row != IGNORE_INDEX)
            pred_tags.append([labels[i] for i in pred_row[keep]])
            gold_tags.append([labels[i] for i in gold_row[keep]])
        return score_tags(gold_tags, pred_tags, kwargs, metrics)

    return compute


def score_tags(gold_tags, pred_tags, kwargs=None, metrics=None) -> dict:
    if metrics is None:
        from seqeval import metrics
    kwargs = kwargs or {}
    report = metrics.classification_report(gold_tags, pred_tags, output_dict=True, zero_division=0, **kwargs)
    result = {
        "precision": metrics.precision_score(gold_tags, pred_tags, zero_division=0, **kwargs),
        "recall": metrics.recall_score(gold_tags, pred_tags, zero_division=0, **kwargs),
        "f1": metrics.f1_score(gold_tags, pred_tags, zero_division=0, **kwargs),
        "macro_f1": report.get("macro avg", {}).get("f1-score", 0.0),
    }
    for name, row in report.items():
        if "avg" not in name:
            result[f"f1_{name}"] = row["f1-score"]
    return result


# ------------------------------------------------------------------------------------------ model
def build_tagger(recipe: NerRecipe, resolved, labels: list[str]):
    from transformers import AutoModel

    try:
        encoder = AutoModel.from_pretrained(resolved.path, trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LlmtuneError(f"cannot load {resolved.name} as an encoder: {str(exc).splitlines()[0]}") from None
    tagger = Tagger(
        encoder, labels, use_crf=recipe.ner.use_crf, scheme=recipe.data.scheme, dropout=recipe.ner.dropout
    )
    section = recipe.peft
    if section.method == "none":
        return tagger
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=section.r,
        lora_alpha=section.lora_alpha,
        lora_dropout=section.lora_dropout,
        target_modules=section.target_modules or ["query", "value"],
        modules_to_save=["classifier", "crf"] if recipe.ner.use_crf else ["classifier"],
        use_dora=section.method == "dora",
        use_rslora=section.use_rslora,
    )
    return get_peft_model(tagger, config)


def load_tagger(folder: Path):
    """(tagger in eval mode, tokenizer, tagger config) from a lora-ner run folder."""
    import json

    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    if not (folder / TAGGER_CONFIG).is_file():
        raise LlmtuneError(
            f"--model {folder}: no {TAGGER_CONFIG}; give the folder of a finished lora-ner run."
        )
    config = json.loads((folder / TAGGER_CONFIG).read_text())
    labels = json.loads((folder / LABELS_FILE).read_text())
    encoder = AutoModel.from_pretrained(config["base_model"])
    tagger = Tagger(encoder, labels, use_crf=config["use_crf"], scheme=config["scheme"])
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        tagger = PeftModel.from_pretrained(tagger, str(folder))
    else:
        from safetensors.torch import load_file

        tagger.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    return tagger.eval(), AutoTokenizer.from_pretrained(str(folder)), config


def tag_words(tagger, tokenizer, words: list[str], max_length: int) -> list[str]:
    """Tags for one sentence of words (a too-long sentence is tagged window by window, each word once)."""
    import torch

    labels = tagger.labels if hasattr(tagger, "labels") else tagger.get_base_model().labels
    budget = max_length - tokenizer.num_special_tokens_to_add()
    pieces = [len(tokenizer.tokenize(w)) or 1 for w in words]
    tags: list[str] = []
    for start, end in split_long(pieces, budget, 0):
        encoded = tokenizer(words[start:end], is_split_into_words=True, return_tensors="pt")
        word_ids = encoded.word_ids()
        starts = torch.tensor(
            [[int(w is not None and (i == 0 or word_ids[i - 1] != w)) for i, w in enumerate(word_ids)]]
        )
        with torch.no_grad():
            predictions = tagger(**encoded, word_starts=starts)["logits"][0]
        tags += [labels[int(p)] for p in predictions[starts[0].bool()]]
    return tags


def split_text(text: str, unit: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words (whitespace) or characters of raw text, with their character offsets."""
    if unit == "char":
        chars = [(m.group(), m.start()) for m in re.finditer(r"\S", text)]
        return [c for c, _ in chars], [(s, s + 1) for _, s in chars]
    words = list(re.finditer(r"\w+(?:[-'.]\w+)*|[^\w\s]", text))
    return [m.group() for m in words], [(m.start(), m.end()) for m in words]


# ------------------------------------------------------------------------------------------ run
def run(recipe: NerRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    from transformers import AutoTokenizer, Trainer, set_seed

    train_kwargs = recipe.train.trainer_kwargs()
    resume = resume or train_kwargs.get("resume_from_checkpoint") not in (None, False)
    run_dir = check_run_dir(recipe.train.output_dir, overwrite=overwrite, resume=resume)

    # ---- inputs
    resolved = resolve_model_source(recipe.model)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.tokenizer or resolved.path)
    if not tokenizer.is_fast:
        raise LlmtuneError(f"{resolved.name}: lora-ner needs a fast tokenizer (for word alignment).")
    bad = BadRows()
    report: dict = {"files": {}}
    splits = {"train": read_sentences(recipe, recipe.data.train_files, "data.train_files", bad, report)}
    if recipe.data.validation_files:
        splits["validation"] = read_sentences(
            recipe, recipe.data.validation_files, "data.validation_files", bad, report
        )
    if recipe.data.test_files:
        splits["test"] = read_sentences(recipe, recipe.data.test_files, "data.test_files", bad, report)
    labels = label_list(splits["train"])
    for name in ("validation", "test"):
        if name in splits:
            check_labels(splits[name], labels, name)
    label_ids = {t: i for i, t in enumerate(labels)}
    counts: Counter = Counter()
    datasets = {
        name: encode(
            sentences,
            tokenizer,
            label_ids,
            recipe.data,
            stride=recipe.data.stride if name == "train" else 0,
            counts=counts,
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
        f"data: {len(report['files'])} file(s), unit: {report['unit']}, scheme {recipe.data.scheme}, {len(labels)} labels"
    ]
    lines += [
        f"  {k}: {v:,} sentences → {report['examples'][k]:,} examples" for k, v in report["sentences"].items()
    ]
    lines += [f"  bad rows skipped ({r}): {c:,}, first at {bad.examples[r]}" for r, c in bad.counts.items()]
    lines += [f"  repaired ({r}): {c:,}" for r, c in report.get("repairs", {}).items()]
    lines += [f"  note: {n}" for n in report.get("notes", [])]
    if counts:
        lines.append(
            f"  split into windows (longer than {recipe.data.max_length} sub-tokens): {dict(counts)}"
        )
    for line in lines:
        log.info(line)

    open_run_dir(run_dir, overwrite=overwrite, resume=resume)
    handler = start_run_log(run_dir)
    manifest = new_manifest("lora-ner", recipe.source)
    try:
        write_text(run_dir / "recipe.yaml", recipe.to_yaml())
        write_json(run_dir / "data_report.json", report)
        for line in lines:
            file_log.info(line)
        set_seed(train_kwargs.get("seed", 42))
        model = build_tagger(recipe, resolved, labels)
        trainable, total = count_parameters(model)
        log.info(
            "model: %s + linear%s, trainable parameters: %s of %s (%.2f%%)",
            resolved.name,
            " + CRF" if recipe.ner.use_crf else "",
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
        )
        manifest["model"] = {"name": resolved.name, "parameters": total, "trainable_parameters": trainable}
        manifest["data"] = {"files": report["files"], "sentences": report["sentences"]}
        write_json(run_dir / MANIFEST, manifest)

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
            recipe, run_dir, has_eval=has_eval, bf16_model=False, stage_defaults=defaults
        )
        _, callbacks = standard_callbacks(
            run_dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
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
        output = run_training(trainer, recipe, run_dir, resume, manifest, "lora-ner")
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
            final = trainer.evaluate()
            results.update(
                {
                    k: v
                    for k, v in final.items()
                    if k.startswith("eval_") and "runtime" not in k and "per_second" not in k
                }
            )
        if "test" in datasets:
            test = trainer.evaluate(datasets["test"], metric_key_prefix="test")
            results.update({k: v for k, v in test.items() if "runtime" not in k and "per_second" not in k})
        tokenizer.save_pretrained(run_dir)
        save_tagger_config(
            run_dir,
            base=str(resolved.path),
            labels=labels,
            use_crf=recipe.ner.use_crf,
            scheme=recipe.data.scheme,
            extra={"unit": report["unit"], "max_length": recipe.data.max_length},
        )
        finish_run(trainer, run_dir, manifest, title=f"lora-ner: {Path(recipe.source).name}", results=results)
        log.info(
            "done: %s",
            ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in results.items()
                if not k.startswith(("eval_f1_", "test_f1_"))
            ),
        )
        log.info("run folder: %s", run_dir)
        return results
    except BaseException as exc:
        record_failure(run_dir, manifest, exc)
        raise
    finally:
        stop_run_log(handler)
