"""`llmtune eval --lm-eval TASK` and the recipe's lm_eval section: EleutherAI's lm-evaluation-harness run on
the model llmtune loaded, on local task YAML files over local data (the hubs are unreachable in tests).

The anchor is an equivalence: a local lm-eval task that writes llmtune's MMLU prompt word for word gives the
same prompts, the same log-likelihoods, the same answers and the same accuracy as `llmtune eval --mcq` on
the same questions. Errors a user can fix (an unknown task, lm-eval not installed, a hub dataset offline)
end before any model loads, as one paragraph with exit 2.
"""

import json

import pytest
import yaml

from tests.conftest import SHARED_DATA

MMLU_DEV = SHARED_DATA / "mcq" / "mmlu" / "dev"
LETTERS = ["A", "B", "C", "D"]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """lm-eval reads task data through `datasets`, which caches it under ~/.cache/huggingface: keep each
    test's cache in its own folder (the setting is read once, at import, hence the attribute)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def mirror_mmlu_tasks(folder):
    """One lm-eval task per MMLU dev file, with llmtune's prompt: hendrycks' header (two spaces after
    "about"), the question unstripped, " A".." D" scored after "Answer:". Returns the task names by file."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for path in sorted(MMLU_DEV.glob("*.csv")):
        subject = path.stem.removesuffix("_dev")
        words = "".join(" " + word for word in subject.split("_"))
        task = {
            "task": f"mirror_{subject}",
            "dataset_path": "csv",
            # keep_default_na: an option such as "None" stays text (pandas would read it as a missing value)
            "dataset_kwargs": {"data_files": {"test": str(path)}, "keep_default_na": False},
            "test_split": "test",
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about {words}.\n\n",
            "doc_to_text": "{{question}}\nA. {{choice0}}\nB. {{choice1}}\nC. {{choice2}}\nD. {{choice3}}\nAnswer:",
            "doc_to_choice": LETTERS,
            "doc_to_target": "answer",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        (folder / f"mirror_{subject}.yaml").write_text(yaml.safe_dump(task, allow_unicode=True))
        names[path] = task["task"]
    return names


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def no_model_load(monkeypatch):
    from llmtune.stages import eval as stage

    monkeypatch.setattr(stage, "_load_lm", lambda *a, **k: pytest.fail("a model was loaded"))


# ------------------------------------------------------------------------------------------ the anchor
def test_lm_eval_on_llmtunes_prompt_equals_mcq_question_by_question(tmp_path, tiny_pretrained_long, cli):
    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import build_prompt, read_questions

    names = mirror_mmlu_tasks(tmp_path / "tasks")
    out = tmp_path / "eval"
    result = cli(
        "eval",
        "--model",
        str(tiny_pretrained_long),
        "--mcq",
        str(MMLU_DEV),
        "--lm-eval",
        ",".join(names.values()),
        "--lm-eval-include",
        str(tmp_path / "tasks"),
        "--out",
        str(out),
        "--set",
        "lm_eval.batch_size=4",
    )
    assert result.exit_code == 0, result.stderr
    found = json.loads((out / "results.json").read_text())["results"][str(tiny_pretrained_long)]
    tasks = found["lm_eval"]["tasks"]
    assert list(tasks) == sorted(names.values())
    mcq_rows = read_jsonl(out / f"mcq-{tiny_pretrained_long.name}.jsonl")
    samples = read_jsonl(out / f"lm_eval-{tiny_pretrained_long.name}.jsonl")
    assert len(mcq_rows) == len(samples) == 30

    predicted = {}  # (task, doc_id) -> lm-eval's letter
    for path, task in names.items():
        questions = read_questions(path, "auto", "error", BadRows()).questions
        rows = [r for r in mcq_rows if r["where"].startswith(f"{path} line")]
        docs = sorted((s for s in samples if s["task"] == task), key=lambda s: s["doc_id"])
        assert len(questions) == len(rows) == len(docs) == 5
        for q, row, doc in zip(questions, rows, docs, strict=True):
            # the same prompt and the same four continuations ...
            assert [tuple(a) for a in doc["arguments"]] == [
                (build_prompt("mmlu", q, []), " " + x) for x in LETTERS
            ]
            # ... scored alike (llmtune left-pads with position ids, lm-eval right-pads: float noise only)
            lm_eval_scores = [resp[0] for resp in doc["filtered_resps"]]
            assert lm_eval_scores == pytest.approx(row["letter_log_likelihoods"], abs=1e-4)
            letter = LETTERS[max(range(4), key=lm_eval_scores.__getitem__)]
            assert letter == row["predicted"]
            assert doc["target"] == LETTERS.index(row["answer"])
            predicted[task, doc["doc_id"]] = letter
        subject = f"mmlu/{path.stem.removesuffix('_dev')}"
        assert tasks[task]["metrics"]["acc,none"] == pytest.approx(
            found["mcq"]["subjects"][subject]["accuracy"]
        )
        assert tasks[task]["samples"] == 5 and tasks[task]["num_fewshot"] == 0
    overall = sum(tasks[t]["metrics"]["acc,none"] * 5 for t in names.values()) / 30
    assert overall == pytest.approx(found["mcq"]["accuracy"])
    # The tiny random model must not answer one letter everywhere, or the agreement would prove little.
    assert len(set(predicted.values())) > 1


@pytest.mark.parametrize("prompt", ["llmtune", "lm_eval"])
def test_the_benchmark_task_files_write_the_prompts_the_readme_compares(prompt, monkeypatch):
    """benchmarks/lm_eval_tasks: the llmtune_prompt tasks write llmtune's MMLU prompt exactly; the
    lm_eval_prompt tasks write it with lm-eval's two changes only (one space after "about", the question
    stripped)."""
    from lm_eval.tasks import TaskManager

    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import build_prompt, read_questions
    from tests.conftest import REPO

    if SHARED_DATA != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("the task files name the data as ../shared/data, relative to the repository")
    monkeypatch.chdir(REPO)  # where the benchmark runs: data_files are relative to it
    folder, prefix = {
        "llmtune": ("llmtune_prompt", "mmlu_dev_llmtune"),
        "lm_eval": ("lm_eval_prompt", "mmlu_dev_lmeval"),
    }[prompt]
    manager = TaskManager(
        include_path=str(REPO / "benchmarks" / "lm_eval_tasks" / folder), include_defaults=False
    )
    assert manager.all_groups == [prefix]
    tasks = manager.load([prefix])["tasks"]
    paths = sorted(MMLU_DEV.glob("*.csv"))
    assert sorted(tasks) == [f"{prefix}_{p.stem.removesuffix('_dev')}" for p in paths]
    for path in paths:
        task = tasks[f"{prefix}_{path.stem.removesuffix('_dev')}"]
        questions = read_questions(path, "auto", "error", BadRows()).questions
        docs = list(task.test_docs())
        assert len(docs) == len(questions) == 5
        for q, doc in zip(questions, docs, strict=True):
            expected = build_prompt("mmlu", q, [])
            if prompt == "lm_eval":
                expected = expected.replace("about  ", "about ").replace(q.question, q.question.strip(), 1)
            assert task.fewshot_context(doc, 0) == expected
            assert task.doc_to_target(doc) == q.answer


# ------------------------------------------------------------------------------------------ a local task
def write_qa_task(folder):
    """A JSON-lines task of 6 questions with 2 training examples for the shots."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"q": f"What is {a} + {b}?", "options": [str(a + b), str(a + b + 1), str(a * b + 7)], "label": 0}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4)]
    ]
    train = [{"q": "What is 2 + 2?", "options": ["5", "4", "3"], "label": 1}] * 2
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    task = {
        "task": "arith",
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(folder / "test.jsonl"), "train": str(folder / "train.jsonl")}
        },
        "test_split": "test",
        "fewshot_split": "train",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{q}}\nAnswer:",
        "doc_to_choice": "{{options}}",
        "doc_to_target": "label",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    (folder / "arith.yaml").write_text(yaml.safe_dump(task))
    return rows


def test_a_recipe_lm_eval_section_runs_a_local_task(tmp_path, tiny_pretrained, write_recipe, cli):
    """include_path (a .yaml file) relative to the recipe; limit and num_fewshot reach lm-eval; the task's acc
    is in results.json, report.md and the printed table, and the samples in lm_eval-<model>.jsonl."""
    rows = write_qa_task(tmp_path / "tasks" / "arith")
    recipe = {
        "model": {"name_or_path": str(tiny_pretrained)},
        "eval": {"output_dir": str(tmp_path / "eval")},
        "lm_eval": {
            "tasks": "arith",
            "include_path": ["tasks/arith/arith.yaml"],
            "limit": 4,
            "num_fewshot": 1,
        },
    }
    result = cli("eval", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "eval"
    saved = json.loads((out / "results.json").read_text())["results"][str(tiny_pretrained)]["lm_eval"]
    entry = saved["tasks"]["arith"]
    assert entry["samples"] == 4 and entry["num_fewshot"] == 1
    assert set(entry["metrics"]) == {"acc,none", "acc_norm,none"} and set(entry["stderr"]) == set(
        entry["metrics"]
    )
    assert entry["higher_is_better"] == {"acc": True, "acc_norm": True}
    samples = read_jsonl(out / f"lm_eval-{tiny_pretrained.name}.jsonl")
    assert [s["doc"]["q"] for s in samples] == [r["q"] for r in rows[:4]]
    for sample in samples:
        context, continuation = sample["arguments"][0]
        # one worked example (the first training row, first_n) before the question, with its answer
        assert context == f"Question: What is 2 + 2?\nAnswer: 4\n\nQuestion: {sample['doc']['q']}\nAnswer:"
        assert continuation == " " + sample["doc"]["options"][0]
    # acc is the share of documents whose best-scored option is the target
    best = [max(range(3), key=lambda i, s=s: s["filtered_resps"][i][0]) for s in samples]
    assert entry["metrics"]["acc,none"] == pytest.approx(
        sum(b == s["target"] for b, s in zip(best, samples, strict=True)) / 4
    )
    assert (
        f"| lm_eval:arith | acc,none | {entry['metrics']['acc,none']:.4f} |"
        in (out / f"report-{tiny_pretrained.name}.md").read_text()
    )
    assert "lm_eval:arith: acc_norm,none" in result.stdout
    # the task file was found beside the recipe
    saved_recipe = yaml.safe_load((out / "recipe.yaml").read_text())["lm_eval"]
    assert saved_recipe["include_path"] == [str(tmp_path / "tasks" / "arith" / "arith.yaml")]


def test_compare_runs_the_tasks_on_both_models(tmp_path, tiny_pretrained, tiny_pretrained_long, cli):
    """The second model gets the tasks built afresh (the first used the ones read before loading)."""
    write_qa_task(tmp_path / "tasks")
    out = tmp_path / "cmp"
    models = [str(tiny_pretrained), str(tiny_pretrained_long)]
    result = cli(
        "eval",
        "--compare",
        *models,
        "--lm-eval",
        "arith",
        "--lm-eval-include",
        str(tmp_path / "tasks"),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())["results"]
    table = json.loads((out / "compare.json").read_text())
    row = next(r for r in table["rows"] if (r["task"], r["metric"]) == ("lm_eval:arith", "acc,none"))
    for model, side in zip(models, ("a", "b"), strict=True):
        samples = read_jsonl(out / f"lm_eval-{model.rsplit('/', 1)[-1]}.jsonl")
        assert [s["doc_id"] for s in samples] == list(range(6))
        right = sum(
            max(range(3), key=lambda i, s=s: s["filtered_resps"][i][0]) == s["target"] for s in samples
        )
        assert results[model]["lm_eval"]["tasks"]["arith"]["metrics"]["acc,none"] == pytest.approx(right / 6)
        assert row[side] == pytest.approx(right / 6)
    # the two random models score the options differently: the second's results are its own
    first, second = (read_jsonl(out / f"lm_eval-{m.rsplit('/', 1)[-1]}.jsonl") for m in models)
    assert [s["filtered_resps"] for s in first] != [s["filtered_resps"] for s in second]


def test_the_lm_eval_flags_become_the_recipe_section(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(
        "eval",
        "--model",
        "m",
        "--lm-eval",
        "a,b",
        "--lm-eval",
        " c ",
        "--lm-eval-include",
        "tasks",
        "--print-config",
    )
    assert result.exit_code == 0, result.stderr
    section = yaml.safe_load(result.stdout)["lm_eval"]
    assert section["tasks"] == ["a", "b", "c"] and section["include_path"] == [str(tmp_path / "tasks")]
    assert section["batch_size"] == 8 and section["seed"] == 0 and section["apply_chat_template"] is False


# ------------------------------------------------------------------------------------------ errors
def write_hub_task(folder):
    folder.mkdir(parents=True, exist_ok=True)
    task = {
        "task": "hub_mmlu",
        "dataset_path": "cais/mmlu",
        "dataset_name": "anatomy",
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}\nAnswer:",
        "doc_to_choice": LETTERS,
        "doc_to_target": "answer",
    }
    (folder / "hub.yaml").write_text(yaml.safe_dump(task))


@pytest.mark.parametrize(
    "args, messages",
    [
        (
            ["--lm-eval", "arithm", "--lm-eval-include", "tasks"],
            ["lm_eval.tasks: 'arithm' is not a task, group or tag lm-eval knows", "did you mean 'arith'?"],
        ),
        (
            ["--lm-eval", "hub_mmlu", "--lm-eval-include", "hub"],
            [
                "lm_eval.tasks: 'hub_mmlu' reads its dataset from the HuggingFace Hub, which cannot be reached",
                "Couldn't reach 'cais/mmlu' on the Hub",
                "Hub datasets need a connected machine",
            ],
        ),
        (
            ["--lm-eval", "arith", "--lm-eval-include", "nowhere"],
            ["lm_eval.include_path: 'nowhere' (looked for at", "does not exist"],
        ),
        (["--lm-eval", "arith", "--set", "lm_eval.limit=2.5"], ["lm_eval.limit", "neither a count"]),
    ],
    ids=["unknown-task", "hub-dataset-offline", "missing-include", "fractional-limit"],
)
def test_lm_eval_input_errors_exit_2_before_a_model_loads(
    args, messages, tmp_path, tiny_pretrained, cli, monkeypatch
):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import; conftest sets the variable
    monkeypatch.chdir(tmp_path)
    write_qa_task(tmp_path / "tasks")
    write_hub_task(tmp_path / "hub")
    no_model_load(monkeypatch)
    result = cli("eval", "--model", str(tiny_pretrained), "--out", str(tmp_path / "eval"), *args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("llmtune: error:") == 1
    for message in messages:
        assert message in result.stderr
    assert not (tmp_path / "eval").exists()


def test_lm_eval_not_installed_says_how_to_install_it(tmp_path, tiny_pretrained, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    no_model_load(monkeypatch)
    result = cli(
        "eval", "--model", str(tiny_pretrained), "--lm-eval", "mmlu", "--out", str(tmp_path / "eval")
    )
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "lm_eval: the lm-evaluation-harness package (lm_eval) cannot be imported" in result.stderr
    assert "pip install 'llmtune[lm-eval]'" in result.stderr


def test_a_prompt_tuning_adapter_is_refused_for_lm_eval(tmp_path, tiny_pretrained, cli, monkeypatch):
    """Its virtual tokens come before the input, and HFLM reads the answer's logits by position."""
    adapter = tmp_path / "run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    write_qa_task(tmp_path / "tasks")
    no_model_load(monkeypatch)
    result = cli(
        "eval", "--model", str(adapter), "--lm-eval", "arith", "--lm-eval-include", str(tmp_path / "tasks")
    )
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"lm_eval: {adapter} is a prompt tuning adapter" in result.stderr


# ------------------------------------------------------------------------------------------ reports
def test_lm_eval_metrics_are_report_rows_and_compared_in_lm_evals_direction():
    from llmtune.evaluation.report import comparison, comparison_markdown, comparison_text, metric_rows

    def results(acc, word_perplexity):
        return {
            "lm_eval": {
                "tasks": {
                    "arith": {"metrics": {"acc,none": acc}, "higher_is_better": {"acc": True}},
                    "wikitext": {
                        "metrics": {"word_perplexity,none": word_perplexity, "bits_per_byte,none": None},
                        "higher_is_better": {"word_perplexity": False},
                    },
                }
            }
        }

    assert metric_rows(results(0.5, 30.0)) == [
        ("lm_eval:arith", "acc,none", 0.5),
        ("lm_eval:wikitext", "word_perplexity,none", 30.0),  # a metric lm-eval could not compute is left out
    ]
    table = comparison(["a", "b"], [results(0.5, 30.0), results(0.75, 20.0)])
    assert [(r["task"], r["metric"], r["delta"], r["better"]) for r in table["rows"]] == [
        ("lm_eval:arith", "acc,none", 0.25, "b"),
        ("lm_eval:wikitext", "word_perplexity,none", -10.0, "b"),  # lower is better, as lm-eval says
    ]
    assert "| lm_eval:arith | acc,none | 0.5000 | 0.7500 | +0.2500 (B better) |" in comparison_markdown(table)
    assert "lm_eval:wikitext: word_perplexity,none" in comparison_text(table)
