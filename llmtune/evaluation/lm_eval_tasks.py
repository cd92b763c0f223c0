"""EleutherAI's lm-evaluation-harness (lm-eval) tasks on a model llmtune loaded.

    llmtune eval --model runs/quickstart --lm-eval hellaswag
    llmtune eval --model smollm2-135m-instruct --lm-eval mytask --lm-eval-include tasks/

`llmtune eval` loads the model once (a base, a GGUF, a merged folder, an adapter run unmerged) and this
module hands it, with its tokenizer, to lm-eval's HFLM as an already-built model; lm-eval then builds the
prompts and scores them exactly as `lm-eval run --model hf` does. Before any model loads, `prepare_tasks`
checks that lm-eval is installed, that every name is a task, group or tag it knows, and that every task's
dataset can be read (a hub dataset, offline, must already be in the datasets cache).
"""

from __future__ import annotations

import logging
import numbers
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.errors import LlmtuneError, did_you_mean, first_line

log = logging.getLogger("llmtune")
INSTALL = "pip install 'llmtune[lm-eval]'"
# Adapters that put virtual tokens before the input: HFLM reads the continuation's logits by position
# from the start of the sequence, which those tokens shift (prefix tuning adds none to the logits).
VIRTUAL_TOKEN_ADAPTERS = {
    "PROMPT_TUNING": "prompt tuning",
    "P_TUNING": "P-tuning",
    "MULTITASK_PROMPT_TUNING": "multitask prompt tuning",
}


@dataclass
class PreparedTasks:
    """The task manager and the tasks built from it, read before any model loads."""

    names: list[str]  # the requested names, glob patterns expanded
    manager: object  # lm_eval.tasks.TaskManager
    built: list = field(default_factory=list)  # Task / Group objects, used by the first model only
    # Holds links to the task .yaml files named in include_path (lm-eval indexes folders only).
    links: tempfile.TemporaryDirectory | None = None

    def take(self) -> list:
        """The built tasks for the first model; names (built afresh by lm-eval) for the next one, so two
        models never share a task's state."""
        built, self.built = self.built, []
        return built or list(self.names)


def import_lm_eval():
    """The lm_eval module, or an error saying how to install it."""
    try:
        import lm_eval
        import lm_eval.tasks  # noqa: F401  (a broken install fails here rather than mid-run)
    except ImportError as exc:
        raise LlmtuneError(
            f"lm_eval: the lm-evaluation-harness package (lm_eval) cannot be imported ({first_line(exc)}).",
            hint=f"Install it with {INSTALL}, or drop the lm_eval section / --lm-eval.",
        ) from None
    return lm_eval


def prepare_tasks(section, describe, models: list[str]) -> PreparedTasks:
    """Check section (an LmEvalTaskSection) and build its tasks, datasets included, for `models`."""
    import_lm_eval()
    _refuse_virtual_token_adapters(models)
    links, include = _include_folders(section.include_path, describe)
    manager, names = _task_manager(section.tasks, include)
    built = []
    for name in names:
        loaded = _load_task(manager, name)
        if name in loaded["groups"]:
            built.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            built.append(loaded["tasks"][name])
        else:  # a tag: its tasks
            built.extend(loaded["tasks"].values())
    return PreparedTasks(names, manager, built, links)


def _refuse_virtual_token_adapters(models: list[str]) -> None:
    from llmtune.adapters import is_adapter_folder, read_adapter_config

    for name in models:
        if Path(name).is_dir() and is_adapter_folder(name):
            kind = VIRTUAL_TOKEN_ADAPTERS.get(read_adapter_config(name)["peft_type"])
            if kind:
                raise LlmtuneError(
                    f"lm_eval: {name} is a {kind} adapter, whose virtual tokens come before the input; "
                    "lm-eval reads each answer's logits by position from the start of the sequence, so it "
                    "would score the wrong tokens.",
                    hint="Evaluate it with --mcq or --perplexity, which account for the virtual tokens.",
                )


def _include_folders(paths: list[str], describe) -> tuple[tempfile.TemporaryDirectory | None, list[str]]:
    """lm-eval's include_path for the recipe's: folders as they are, and one folder of links standing for
    the .yaml files named (lm-eval indexes folders; it follows the links to the real files, so their
    `include:` and `!function` entries still resolve beside them)."""
    folders, files = [], []
    for path in paths:
        if not os.path.exists(path):
            raise LlmtuneError(
                f"lm_eval.include_path: {describe(path)} does not exist; give a folder of task YAML files "
                "or a task .yaml file."
            )
        if os.path.isdir(path):
            folders.append(path)
        elif path.endswith((".yaml", ".yml")):
            files.append(Path(path).resolve())
        else:
            raise LlmtuneError(
                f"lm_eval.include_path: {describe(path)} is not a folder or a .yaml file; lm-eval tasks are "
                "YAML files (lm-evaluation-harness docs/new_task_guide.md)."
            )
    if not files:
        return None, folders
    links = tempfile.TemporaryDirectory(prefix="llmtune-lm-eval-")
    for number, file in enumerate(files):
        # lm-eval finds *.yaml only; the number keeps two files of one name apart
        os.symlink(file, Path(links.name) / f"{number}-{file.stem}.yaml")
    return links, [*folders, links.name]


def _task_manager(requested: list[str], include: list[str]):
    """(TaskManager, the names with patterns expanded). Local tasks are looked up first: indexing the
    ~15,000 built-in task files takes about 12 s on 2 CPU cores, and a run of local tasks needs none of
    them. A group or tag is looked up with the built-ins too, since its members may be among them."""
    from lm_eval.tasks import TaskManager

    requested = list(dict.fromkeys(requested))  # "a,a" runs a once
    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(name in local.all_subtasks for name in requested):
            return local, list(requested)
    manager = TaskManager(include_path=include or None)
    names, unknown = [], []
    for name in requested:
        found = manager.match_tasks([name])
        if not found:
            unknown.append(name)
        names += [n for n in found if n not in names]
    if unknown:
        close = did_you_mean(unknown[0], manager.all_tasks) if len(unknown) == 1 else ""
        where = f" (searched lm-eval's own tasks and {', '.join(include)})" if include else ""
        raise LlmtuneError(
            f"lm_eval.tasks: {', '.join(repr(n) for n in unknown)} "
            f"{'is not a task, group or tag' if len(unknown) == 1 else 'are not tasks, groups or tags'} "
            f"lm-eval knows{where}{close or '.'}",
            hint="A local task is found through its YAML file: name the file or its folder in "
            "lm_eval.include_path (--lm-eval-include PATH). `lm-eval ls tasks` lists lm-eval's own.",
        )
    return manager, names


def _load_task(manager, name: str) -> dict:
    """lm-eval's TaskManager.load for one name, its dataset read, with the failures a user can fix as
    errors."""
    try:
        return manager.load([name])
    except ConnectionError as exc:
        # What `datasets` raises for a hub dataset it cannot reach, offline or with no network: "Couldn't
        # reach 'cais/mmlu' on the Hub (OfflineModeIsEnabled)" (LocalEntryNotFoundError without a network).
        raise LlmtuneError(
            f"lm_eval.tasks: {name!r} reads its dataset from the HuggingFace Hub, which cannot be reached "
            f"here: {first_line(exc)}.",
            hint="Hub datasets need a connected machine: run the task there once (the dataset is then in "
            "~/.cache/huggingface/datasets, which can be copied here), or write a local task YAML whose "
            "dataset_path is csv or json with dataset_kwargs: {data_files: ...} and name it in "
            "lm_eval.include_path.",
        ) from None
    except FileNotFoundError as exc:
        raise LlmtuneError(
            f"lm_eval.tasks: {name!r}: its dataset cannot be read: {first_line(exc)}.",
            hint="Relative data_files in a task YAML are relative to the folder llmtune runs in, not to "
            "the YAML file; absolute paths avoid the doubt.",
        ) from None
    except ValueError as exc:
        if not str(exc).startswith("Duplicate task"):
            raise
        raise LlmtuneError(
            f"lm_eval.tasks: {first_line(exc)}; name each task once (a group runs all of its tasks)."
        ) from None


# ------------------------------------------------------------------------------------------ running
def evaluate_lm_eval(model, tokenizer, prepared: PreparedTasks, section) -> dict:
    """{"metrics": results["lm_eval"], "samples": lm-eval's per-document logs, one dict per document}.

    metrics = {"version": lm-eval's, "tasks": {name: {"alias", "metrics": {"acc,none": 0.4, ...},
    "stderr": {"acc,none": 0.2, ...}, "higher_is_better": {"acc": true}, "num_fewshot", "samples"} or, for
    a group, "subtasks" instead of the last two}}, in lm-eval's order; metric names are lm-eval's own
    (`metric,filter`), each stderr under the name of its metric."""
    import json

    lm_eval = import_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    if section.apply_chat_template and not tokenizer.chat_template:
        raise LlmtuneError(
            "lm_eval.apply_chat_template: the model's tokenizer has no chat template to put the prompts in.",
            hint="Set eval.template (chatml, qwen, llama3, alpaca, or Jinja) or drop apply_chat_template.",
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=section.batch_size)
    seed = section.seed
    out = simple_evaluate(
        model=lm,
        tasks=prepared.take(),
        task_manager=prepared.manager,
        num_fewshot=section.num_fewshot,
        limit=section.limit,
        apply_chat_template=section.apply_chat_template,
        system_instruction=section.system_instruction,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=True,
    )
    tasks = {}
    for name, found in out["results"].items():
        entry = {"alias": found.get("alias", name), **_split_metrics(found)}
        entry["higher_is_better"] = out.get("higher_is_better", {}).get(name, {})
        if name in out.get("group_subtasks", {}) and out["group_subtasks"][name]:
            entry["subtasks"] = out["group_subtasks"][name]
        else:
            entry["num_fewshot"] = out.get("n-shot", {}).get(name)
            entry["samples"] = out.get("n-samples", {}).get(name, {}).get("effective")
        tasks[name] = entry
    samples = [{"task": name, **sample} for name, rows in out.get("samples", {}).items() for sample in rows]
    # lm-eval's own sample files go through the same converter (numpy numbers, tuples, sets).
    samples = json.loads(json.dumps(samples, default=handle_non_serializable, ensure_ascii=False))
    return {"metrics": {"version": lm_eval.__version__, "tasks": tasks}, "samples": samples}


def _split_metrics(found: dict) -> dict:
    """lm-eval's "acc,none" and "acc_stderr,none" keys → {"metrics": {"acc,none"}, "stderr": {"acc,none"}};
    a value that is not a number ("N/A" for a stderr lm-eval could not compute) becomes None."""
    metrics, stderr = {}, {}
    for key, value in found.items():
        if "," not in key:  # name, alias, sample_len, sample_count
            continue
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
        metric, _, filter_name = key.partition(",")
        if metric.endswith("_stderr"):
            stderr[f"{metric.removesuffix('_stderr')},{filter_name}"] = number
        else:
            metrics[key] = number
    return {"metrics": metrics, "stderr": stderr}
