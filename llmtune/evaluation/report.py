"""The numbers of an eval run as rows, and the side-by-side table of `--compare A B`."""

from __future__ import annotations

# (metric, higher is better) per task; the rows every report and comparison shows.
HEADLINE = {
    "perplexity": [("perplexity", False), ("nll", False)],
    "mcq": [
        ("accuracy", True),
        ("macro_accuracy", True),
        ("accuracy_text", True),
        ("accuracy_text_norm", True),
    ],
    "ner": [("f1", True), ("precision", True), ("recall", True), ("macro_f1", True)],
    "reward": [("accuracy", True), ("mean_margin", True)],
}


def metric_rows(results: dict) -> list[tuple[str, str, float]]:
    """(task, metric, value) for the headline numbers, per file / per subject included."""
    rows = []
    for task, metrics in HEADLINE.items():
        if task not in results:
            continue
        found = results[task]
        for name, _ in metrics:
            if name in found:
                rows.append((task, name, found[name]))
        if task == "perplexity" and len(found["files"]) > 1:
            for path, values in found["files"].items():
                rows.append((task, f"perplexity {path.rsplit('/', 1)[-1]}", values["perplexity"]))
        if task == "mcq":
            for benchmark, values in found.get("benchmarks", {}).items():
                rows.append((task, f"accuracy {benchmark}", values["accuracy"]))
            for subject, values in found["subjects"].items():
                rows.append((task, f"accuracy {subject}", values["accuracy"]))
        if task == "reward":
            rows.append((task, "chosen mean", found["chosen"]["mean"]))
            rows.append((task, "rejected mean", found["rejected"]["mean"]))
            if len(found["files"]) > 1:
                for path, values in found["files"].items():
                    if "accuracy" in values:
                        rows.append((task, f"accuracy {path.rsplit('/', 1)[-1]}", values["accuracy"]))
    if "generate" in results:
        rows.append(("generate", "mean new tokens", results["generate"]["mean_new_tokens"]))
        rows.append(("generate", "stopped at end of turn", results["generate"]["stopped_share"]))
    # lm-eval's tasks and groups under its own metric names ("acc,none"), every metric it reported.
    for name, found in results.get("lm_eval", {}).get("tasks", {}).items():
        for metric, value in found["metrics"].items():
            if value is not None:
                rows.append((f"{LM_EVAL}{name}", metric, value))
    return rows


LM_EVAL = "lm_eval:"  # the task column of an lm-eval task's rows: lm_eval:<task>


def _better(task: str, metric: str, results: dict) -> bool | None:
    if task.startswith(LM_EVAL):  # lm-eval says, per task and metric
        found = results.get("lm_eval", {}).get("tasks", {}).get(task.removeprefix(LM_EVAL), {})
        return found.get("higher_is_better", {}).get(metric.split(",")[0])
    for name, higher in HEADLINE.get(task, []):
        if metric == name or metric.startswith(name.split("_")[0] + " "):
            return higher
    return None


def comparison(names: list[str], results: list[dict]) -> dict:
    """{"models": names, "rows": [{task, metric, a, b, delta, better}], "generations": [...]}"""
    first = {(t, m): v for t, m, v in metric_rows(results[0])}
    second = {(t, m): v for t, m, v in metric_rows(results[1])}
    rows = []
    for key in first:
        if key not in second:
            continue
        a, b = first[key], second[key]
        higher = _better(*key, results[0])
        better = None if higher is None or a == b else ("b" if (b > a) == higher else "a")
        rows.append({"task": key[0], "metric": key[1], "a": a, "b": b, "delta": b - a, "better": better})
    generations = []
    if "generate" in results[0] and "generate" in results[1]:
        for x, y in zip(results[0]["generate"]["rows"], results[1]["generate"]["rows"], strict=True):
            generations.append({"prompt": x["prompt"], "a": x["output"], "b": y["output"]})
    return {"models": names, "rows": rows, "generations": generations}


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def comparison_markdown(table: dict) -> str:
    a, b = table["models"]
    lines = [
        f"A = `{a}`  \nB = `{b}`",
        "",
        "| task | metric | A | B | B − A |",
        "|---|---|---:|---:|---:|",
    ]
    for row in table["rows"]:
        mark = {"a": " (A better)", "b": " (B better)"}.get(row["better"], "")
        lines.append(
            f"| {row['task']} | {row['metric']} | {_number(row['a'])} | {_number(row['b'])} | "
            f"{row['delta']:+.4f}{mark} |"
        )
    if table["generations"]:
        lines += ["", "| prompt | A | B |", "|---|---|---|"]
        for row in table["generations"]:
            cells = [row["prompt"], row["a"], row["b"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_text(table: dict) -> str:
    """The table for the terminal (fixed-width)."""
    a, b = table["models"]
    width = max([len(r["task"]) + len(r["metric"]) + 3 for r in table["rows"]] + [20])
    lines = [f"A = {a}", f"B = {b}", f"{'metric':<{width}} {'A':>10} {'B':>10} {'B - A':>10}"]
    for row in table["rows"]:
        mark = {"a": "  A better", "b": "  B better"}.get(row["better"], "")
        name = f"{row['task']}: {row['metric']}"
        lines.append(
            f"{name:<{width}} {_number(row['a']):>10} {_number(row['b']):>10} {row['delta']:>+10.4f}{mark}"
        )
    for row in table["generations"]:
        lines += ["", f"prompt: {row['prompt']}", f"  A: {row['a']}", f"  B: {row['b']}"]
    return "\n".join(lines)
