"""`llmtune eval`: perplexity, multiple choice, generation, NER F1, reward-model accuracy and
lm-evaluation-harness tasks on a model, or on two side by side.

    llmtune eval --recipe recipes/eval/smollm2-mmlu-cmmlu.yaml
    llmtune eval --recipe recipes/eval/quickstart-compare.yaml      (base vs the quickstart adapter)
    llmtune eval --model runs/quickstart --mcq ../shared/data/mcq/mmlu/dev --generate "What is LoRA?"
    llmtune eval --model runs/reward-en --reward pairs.jsonl      (a reward model's pairwise accuracy)
    llmtune eval --model smollm2-135m-instruct --lm-eval mytask --lm-eval-include tasks/   (lm-eval tasks)

Read top to bottom: results folder checked → inputs read and checked (before any model loads) → (results
folder opened, staged) for each model: load (base, GGUF, merged folder, adapter run, lora-ner run, reward
model) → tasks → results.json, per-question, generation, reward-score and lm-eval sample JSONL, report.md;
with two models also compare.json / compare.md. The folder appears under its name only when every model has
been evaluated.
"""

from __future__ import annotations

import gc
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.data.sources import BadRows, expand_sources
from llmtune.errors import LlmtuneError
from llmtune.evaluation import report as reports
from llmtune.recipe import EvalRecipe
from llmtune.reward_model import is_reward_folder
from llmtune.run_folder import RunFolder, recipe_inputs

log = logging.getLogger("llmtune")
LM_TASKS = ("perplexity", "mcq", "generate", "lm_eval")


@dataclass
class Inputs:
    """Everything read from disk before a model loads, so bad data fails in seconds."""

    perplexity_files: list[Path]
    question_files: list
    shots: dict
    prompts: list[str]
    ner_files: list[Path]
    skipped: dict
    reward_pairs: list = field(default_factory=list)  # evaluation.reward.PairFile per file
    lm_eval: object = None  # evaluation.lm_eval_tasks.PreparedTasks: lm-eval's tasks, datasets read


def run(recipe: EvalRecipe, *, overwrite: bool = False) -> dict:
    names = _model_names(recipe)
    default = recipe.eval.output_dir is None  # a timestamped name: made unique, two evals may start together
    output_dir = recipe.eval.output_dir or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    folder = RunFolder.check(
        output_dir,
        command="eval",
        key="eval.output_dir",
        overwrite=overwrite,
        staged=True,
        inputs=[*recipe_inputs(recipe), *names],
        unique=default,
    )
    inputs = _read_inputs(recipe)

    with folder.open(recipe, inputs={"models": names, "tasks": recipe.tasks}) as run:
        all_results: dict[str, dict] = {}
        template = recipe.eval.template
        for name, label in zip(names, _labels(names), strict=True):
            log.info("== %s", name)
            results, template = _evaluate(recipe, name, inputs, template, run.dir, label)
            all_results[name] = results
            run.write_text(f"report-{label}.md", _report_markdown(name, results))
        summary = {"models": names, "results": all_results}
        run.write_json("results.json", summary)
        if len(names) == 2:
            table = reports.comparison(names, [all_results[n] for n in names])
            run.write_json("compare.json", table)
            run.write_text("compare.md", reports.comparison_markdown(table))
            print(reports.comparison_text(table))
        else:
            for task, metric, value in reports.metric_rows(all_results[names[0]]):
                print(f"{task}: {metric:<40} {value:.4f}")
        return run.finish(summary, summary=False)


# ------------------------------------------------------------------------------------------ inputs
def _model_names(recipe: EvalRecipe) -> list[str]:
    if recipe.eval.compare:
        return list(recipe.eval.compare)
    if recipe.model is None or not recipe.model.name_or_path:
        raise LlmtuneError(
            "no model to evaluate: set model.name_or_path in the recipe, or pass --model NAME (or --compare A B)."
        )
    return [recipe.model.name_or_path]


def _read_inputs(recipe: EvalRecipe) -> Inputs:
    from llmtune.data.templates import check_jinja
    from llmtune.evaluation.generation import read_prompts

    template = recipe.eval.template
    if isinstance(template, str) and ("{%" in template or "{{" in template):
        check_jinja(template, "eval.template")  # before any model loads
    from llmtune.evaluation.mcq import read_questions

    describe = recipe.describe_path
    bad = BadRows()
    perplexity_files, question_files, shots, prompts, ner_files = [], [], {}, [], []
    if recipe.perplexity:
        perplexity_files = expand_sources(
            recipe.perplexity.files, "perplexity.files", (".txt", ".md", ".jsonl", ".json"), describe
        )
    if recipe.mcq:
        section = recipe.mcq
        for path in expand_sources(section.files, "mcq.files", (".csv",), describe):
            question_files.append(read_questions(path, section.layout, section.on_bad_rows, bad))
        if section.shots and not section.shots_files:
            raise LlmtuneError(
                f"mcq.shots {section.shots}: set mcq.shots_files to the dev files the worked examples come from."
            )
        for path in expand_sources(section.shots_files, "mcq.shots_files", (".csv",), describe):
            found = read_questions(path, section.layout, section.on_bad_rows, bad)
            shots.setdefault(found.subject, []).extend(found.questions)
        missing = sorted({f.subject for f in question_files} - set(shots)) if section.shots else []
        if missing:
            raise LlmtuneError(
                f"mcq.shots_files has no examples for subject(s) {', '.join(missing)}; "
                "name the dev file of each subject (files are matched by name, e.g. anatomy_dev.csv)."
            )
    if recipe.generate:
        prompts = read_prompts(recipe.generate)
    if recipe.ner:
        ner_files = expand_sources(
            recipe.ner.files, "ner.files", (".txt", ".conll", ".bio", ".tsv", ".json", ".jsonl"), describe
        )
    reward_pairs = []
    if recipe.reward:
        from llmtune.evaluation.reward import read_pair_files

        files = expand_sources(recipe.reward.files, "reward.files", (".jsonl", ".json"), describe)
        reward_pairs = read_pair_files(files, recipe.reward, describe)
        for found in reward_pairs:
            for reason, count in found.skipped.items():
                log.warning("reward: skipped %d row(s) of %s: %s", count, found.path, reason)
    lm_eval = None
    if recipe.lm_eval:
        from llmtune.evaluation.lm_eval_tasks import prepare_tasks

        lm_eval = prepare_tasks(recipe.lm_eval, describe, _model_names(recipe))
    if bad.total:
        for reason, count in bad.counts.items():
            log.warning("skipped %d row(s): %s (first: %s)", count, reason, bad.examples[reason])
    return Inputs(
        perplexity_files, question_files, shots, prompts, ner_files, dict(bad.counts), reward_pairs, lm_eval
    )


def _labels(names: list[str]) -> list[str]:
    labels = []
    for name in names:
        label = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name.rstrip("/")).name or name).strip("-") or "model"
        while label in labels:
            label += "-2"
        labels.append(label)
    return labels


# ------------------------------------------------------------------------------------------ models
def _evaluate(recipe: EvalRecipe, name: str, inputs: Inputs, template, out_dir: Path, label: str):
    """Run every task on model `name`; returns (results, the template to give the next model)."""
    from llmtune.evaluation.generation import generate, write_jsonl
    from llmtune.evaluation.mcq import evaluate_mcq
    from llmtune.evaluation.ner import evaluate_ner
    from llmtune.evaluation.perplexity import evaluate_perplexity

    results: dict = {"model": name}
    if inputs.skipped:
        results["skipped_rows"] = inputs.skipped
    is_tagger = (Path(name) / "tagger.json").is_file()
    is_reward = Path(name).is_dir() and is_reward_folder(name)
    lm_tasks = [t for t in LM_TASKS if getattr(recipe, t) is not None]
    if is_tagger and lm_tasks:
        raise LlmtuneError(
            f"{name} is a lora-ner tagger; tasks {', '.join(lm_tasks)} need a causal language model. "
            "Evaluate the tagger with the ner section only."
        )
    if is_reward and lm_tasks:
        raise LlmtuneError(
            f"{name} is a reward model (a scalar score head, no language-model head); tasks "
            f"{', '.join(lm_tasks)} need a causal language model. Evaluate it with the reward section only "
            "(llmtune eval --model RUN --reward PAIRS.jsonl)."
        )
    if recipe.reward and not is_reward:
        raise LlmtuneError(
            f"reward: {name} is not a reward model (no sequence-classification config, nor an adapter trained "
            "by llmtune reward), so it has no score to rank answers with.",
            hint="Train one with `llmtune reward --recipe recipes/reward/...` and pass its run folder with --model.",
        )
    if lm_tasks:
        model, tokenizer, template, kind = _load_lm(recipe, name, template)
        results["kind"] = kind
        results["template"] = "none" if not tokenizer.chat_template else _template_name(tokenizer, recipe)
        started = time.time()
        if recipe.perplexity:
            results["perplexity"] = evaluate_perplexity(
                model, tokenizer, inputs.perplexity_files, recipe.perplexity
            )
            log.info(
                "perplexity %.3f (%d tokens)",
                results["perplexity"]["perplexity"],
                results["perplexity"]["tokens"],
            )
        if recipe.mcq:
            found = evaluate_mcq(model, tokenizer, inputs.question_files, recipe.mcq, inputs.shots)
            write_jsonl(found["rows"], out_dir / f"mcq-{label}.jsonl")
            results["mcq"] = found["metrics"]
            log.info(
                "mcq accuracy %.4f on %d questions",
                found["metrics"]["accuracy"],
                found["metrics"]["questions"],
            )
        if recipe.generate:
            if not tokenizer.chat_template:
                log.warning("note: %s has no chat template; prompts are given to it as plain text.", name)
            rows = generate(model, tokenizer, inputs.prompts, recipe.generate)
            write_jsonl(rows, out_dir / f"generations-{label}.jsonl")
            results["generate"] = {
                "rows": rows,
                "mean_new_tokens": sum(r["new_tokens"] for r in rows) / len(rows),
                "stopped_share": sum(r["stopped"] == "end" for r in rows) / len(rows),
            }
        if recipe.lm_eval:  # last: lm-eval's HFLM gives the tokenizer a padding token when it has none
            from llmtune.evaluation.lm_eval_tasks import evaluate_lm_eval

            found = evaluate_lm_eval(model, tokenizer, inputs.lm_eval, recipe.lm_eval)
            write_jsonl(found["samples"], out_dir / f"lm_eval-{label}.jsonl")
            results["lm_eval"] = found["metrics"]
            for task, entry in found["metrics"]["tasks"].items():
                shown = [f"{k} {v:.4f}" for k, v in entry["metrics"].items() if v is not None]
                log.info("lm_eval %s: %s", task, ", ".join(shown))
        results["seconds"] = round(time.time() - started, 1)
        del model
        gc.collect()
    if recipe.ner:
        run_dir = Path(name) if is_tagger else (Path(recipe.ner.model) if recipe.ner.model else None)
        if run_dir is None:
            raise LlmtuneError(
                f"ner: {name} is not a lora-ner run; set ner.model to the run folder of the tagger to score."
            )
        results["ner"] = evaluate_ner(run_dir, inputs.ner_files, recipe.ner)
        log.info("ner F1 %.4f on %d sentences", results["ner"]["f1"], results["ner"]["sentences"])
    if recipe.reward:
        results["reward"] = _evaluate_reward(recipe, name, inputs, out_dir, label)
    return results, template


def _evaluate_reward(recipe: EvalRecipe, name: str, inputs: Inputs, out_dir: Path, label: str) -> dict:
    """The reward task on a reward model; its per-pair scores go to reward_scores.jsonl (one file per model,
    suffixed with its label, when comparing)."""
    from llmtune.evaluation.generation import write_jsonl
    from llmtune.evaluation.reward import evaluate_reward
    from llmtune.models import resolve_dtype
    from llmtune.reward_model import load_trained_reward_model

    dtype = str(resolve_dtype(recipe.model.dtype if recipe.model else "float32")).removeprefix("torch.")
    started = time.time()
    model, tokenizer = load_trained_reward_model(name, dtype=dtype)
    found = evaluate_reward(model, tokenizer, inputs.reward_pairs, recipe.reward)
    del model
    gc.collect()
    write_jsonl(
        found["rows"],
        out_dir / ("reward_scores.jsonl" if not recipe.eval.compare else f"reward_scores-{label}.jsonl"),
    )
    metrics = found["metrics"]
    metrics["seconds"] = round(time.time() - started, 1)
    log.info(
        "reward accuracy %.4f, mean margin %.4f on %d pairs (%d truncated to %d tokens, %d dropped)",
        metrics["accuracy"],
        metrics["mean_margin"],
        metrics["pairs"],
        metrics["truncated"],
        metrics["max_length"],
        metrics["dropped"],
    )
    return metrics


def _load_lm(recipe: EvalRecipe, name: str, template):
    """(model in eval mode, tokenizer, template for the next model, kind) for a name, folder or run."""
    from llmtune.data.templates import apply_template, end_of_turn_token
    from llmtune.generation import set_stop_tokens
    from llmtune.inference import load_lm
    from llmtune.recipe import ModelSection

    model, tokenizer, kind = load_lm(recipe.model or ModelSection(name_or_path=name), name)
    if template:  # the recipe's, or (comparing) the first model's, so both see the same prompts
        if tokenizer.chat_template != template:
            if template == recipe.eval.template:
                log.info("note: %s uses the chat template %s.", name, _short(template))
            else:
                log.info(
                    "note: %s uses the first model's chat template, for a like-for-like comparison.", name
                )
            _, added = apply_template(tokenizer, template)
            if added:
                log.warning(
                    "note: the template adds tokens %s that %s lacks; their embeddings are untrained.",
                    ", ".join(added),
                    name,
                )
                model.resize_token_embeddings(len(tokenizer))
    elif tokenizer.chat_template and recipe.eval.compare:
        template = tokenizer.chat_template
    set_stop_tokens(model, tokenizer, end_of_turn_token(tokenizer, recipe.eval.template))
    return model, tokenizer, template, kind


def _short(template: str) -> str:
    return template if "{" not in template else "from the recipe (Jinja)"


def _template_name(tokenizer, recipe: EvalRecipe) -> str:
    if recipe.eval.template and "{" not in recipe.eval.template:
        return recipe.eval.template
    return "the model's own" if not recipe.eval.compare else "shared (the first model's)"


def _report_markdown(name: str, results: dict) -> str:
    lines = [f"# llmtune eval: `{name}`", "", "| task | metric | value |", "|---|---|---:|"]
    for task, metric, value in reports.metric_rows(results):
        lines.append(f"| {task} | {metric} | {value:.4f} |")
    if "reward" in results:
        found = results["reward"]
        lines += [
            "",
            f"reward: {found['pairs']} pairs scored ({found['ties']} ties), {found['truncated']} with an answer cut "
            f"to {found['max_length']} tokens, {found['dropped']} dropped (the prompt alone fills "
            f"max_length); template: {found['template']}.",
        ]
    if "generate" in results:
        lines += ["", "| prompt | output |", "|---|---|"]
        for row in results["generate"]["rows"]:
            cells = [row["prompt"], row["output"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"
