"""Entity-level precision, recall and F1 with seqeval (micro, macro and per type), for training's
evaluations and for `llmtune eval --ner`."""

from __future__ import annotations

from llmtune.data.ner import IGNORE_INDEX


def seqeval_options(scheme: str, mode: str) -> dict:
    """seqeval's matching: default (conlleval, lenient) or strict (the scheme's exact rules)."""
    if mode != "strict":
        return {}
    from seqeval.scheme import IOB2, IOBES

    return {"mode": "strict", "scheme": IOBES if scheme == "BIOES" else IOB2}


def metrics_function(labels: list[str], scheme: str, mode: str):
    """compute_metrics for the Trainer: scores of the predicted word tags against the gold ones."""
    import numpy as np

    options = seqeval_options(scheme, mode)

    def compute(eval_pred):
        predictions, gold = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        pred_tags, gold_tags = [], []
        for pred_row, gold_row in zip(np.asarray(predictions), np.asarray(gold), strict=True):
            keep = (gold_row != IGNORE_INDEX) & (pred_row != IGNORE_INDEX)
            pred_tags.append([labels[i] for i in pred_row[keep]])
            gold_tags.append([labels[i] for i in gold_row[keep]])
        return score_tags(gold_tags, pred_tags, options)

    return compute


def score_tags(gold_tags: list[list[str]], pred_tags: list[list[str]], options: dict | None = None) -> dict:
    """precision, recall, f1 (micro), macro_f1 and f1_<type> for each entity type."""
    from seqeval import metrics

    options = options or {}
    report = metrics.classification_report(gold_tags, pred_tags, output_dict=True, zero_division=0, **options)
    result = {
        "precision": metrics.precision_score(gold_tags, pred_tags, zero_division=0, **options),
        "recall": metrics.recall_score(gold_tags, pred_tags, zero_division=0, **options),
        "f1": metrics.f1_score(gold_tags, pred_tags, zero_division=0, **options),
        "macro_f1": report.get("macro avg", {}).get("f1-score", 0.0),
    }
    for name, row in report.items():
        if "avg" not in name:
            result[f"f1_{name}"] = row["f1-score"]
    return result
