"""The command line: help without torch, exit codes, no tracebacks, every shipped recipe validates."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtune.recipe import (
    DistillRecipe,
    DpoRecipe,
    EvalRecipe,
    ExportRecipe,
    GrpoRecipe,
    NerRecipe,
    PretrainRecipe,
    PruneRecipe,
    RewardRecipe,
    SftRecipe,
    load_recipe,
)
from llmtune.recipe.hub_dataset import parse_reference
from tests.conftest import REPO, tiny_pretrain_recipe

SHIPPED = {
    "pretrain": PretrainRecipe,
    "sft": SftRecipe,
    "dpo": DpoRecipe,
    "reward": RewardRecipe,
    "grpo": GrpoRecipe,
    "lora-ner": NerRecipe,
    "quickstart.yaml": SftRecipe,
    "eval": EvalRecipe,
    "prune": PruneRecipe,
    "distill": DistillRecipe,
    "export": ExportRecipe,
}
# Text the prune/distill recipes read and a script of the project writes (derived from research-only data,
# so never shipped): a recipe naming it must say in its header how to make it.
WRITTEN_DATA = {REPO / "runs" / "data" / "english-news": "scripts/make_english_text.py"}


def run_llmtune(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmtune", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_help_lists_the_commands_with_examples(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("pretrain", "fetch"):
        assert command in result.stdout
    assert "Examples:" in result.stdout and "llmtune pretrain --recipe recipes/pretrain/" in result.stdout
    pretrain_help = cli("pretrain", "--help").stdout
    assert (
        "--recipe" in pretrain_help
        and "--set" in pretrain_help
        and "Example: llmtune pretrain" in pretrain_help
    )


@pytest.mark.slow  # a subprocess
def test_help_does_not_import_torch_or_transformers():
    code = (
        "import sys\nfrom llmtune.cli import app\n"
        "for args in (['--help'], ['pretrain', '--help'], ['fetch', '--help']):\n"
        "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'trl') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow  # a subprocess
def test_print_config_and_plan_with_a_warm_argument_table_import_no_trl_or_peft(tmp_path, write_recipe):
    """The train: key check reads HF's argument tables from $LLMTUNE_HOME once they are there, so that
    --print-config needs neither torch nor trl, and plan (which builds the model on the meta device)
    imports torch and transformers but not trl, and peft only for an adapter."""
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    code = (
        "import sys\nfrom llmtune.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules))"
    )

    def imported(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    imported("pretrain", "--recipe", str(path), "--print-config")  # the first run writes the table
    assert imported("pretrain", "--recipe", str(path), "--print-config") == "[]"
    assert imported("plan", "--recipe", str(path), "--target", "cpu") == "['torch', 'transformers']"


@pytest.mark.slow  # a subprocess
def test_help_is_fast():
    run_llmtune("--help")  # warm the file cache
    start = time.perf_counter()
    assert run_llmtune("--help").returncode == 0
    assert time.perf_counter() - start < 2.0  # README figure: ~0.2 s; generous bound for loaded CI machines


def test_version(cli):
    assert cli("--version").stdout.startswith("llmtune ")


def test_print_config_shows_the_resolved_recipe(tmp_path, write_recipe, cli):
    result = cli(
        "pretrain",
        "--recipe",
        str(write_recipe(tiny_pretrain_recipe(tmp_path))),
        "--print-config",
        "--set",
        "data.block_size=32",
    )
    assert result.exit_code == 0
    assert "block_size: 32" in result.stdout and "split_by: character" in result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a subprocess
def test_user_errors_exit_2_without_traceback(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, peft={"method": "none", "rnak": 4}))
    result = run_llmtune("pretrain", "--recipe", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "llmtune: error: invalid recipe: peft.rnak: unknown key, did you mean 'r'?" in result.stderr


@pytest.mark.slow  # a subprocess
def test_debug_shows_the_traceback(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, peft={"method": "none", "rnak": 4}))
    result = run_llmtune("pretrain", "--recipe", str(path), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_missing_data_file_names_the_path_as_given(tmp_path, write_recipe, cli):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, data={"train_files": "corpus/missing.txt"}))
    result = cli("pretrain", "--recipe", str(path))
    assert result.exit_code == 2
    assert "data.train_files: data file 'corpus/missing.txt' (looked for at" in result.stderr


def test_missing_recipe_option_is_a_usage_error(cli):
    result = cli("pretrain")
    assert result.exit_code == 2 and "--recipe" in result.stderr
    assert "llmtune pretrain needs a recipe: llmtune pretrain RECIPE.yaml" in result.stderr


def test_the_recipe_may_be_the_first_argument(tmp_path, write_recipe, cli):
    """`llmtune sft recipe.yaml`, as LLaMA-Factory and axolotl users type, is `--recipe recipe.yaml`."""
    path = str(write_recipe(tiny_pretrain_recipe(tmp_path)))
    by_option = cli("pretrain", "--recipe", path, "--print-config", "--set", "data.block_size=32")
    by_position = cli("pretrain", path, "--print-config", "--set", "data.block_size=32")
    assert by_position.exit_code == 0 and by_position.stdout == by_option.stdout
    assert "block_size: 32" in by_position.stdout
    assert cli("pretrain", path, "--recipe", path, "--print-config").exit_code == 0  # the same file twice
    both = cli("pretrain", path, "--recipe", str(tmp_path / "other.yaml"))
    assert both.exit_code == 2 and "two recipes given" in both.stderr
    assert cli("plan", path).exit_code == 0
    assert "needs a recipe" in cli("data", "check").stderr
    # lora-ner is a command group: `predict` stays its subcommand, and the group takes --recipe
    assert cli("lora-ner", "predict", "--help").exit_code == 0
    assert "needs --recipe" in cli("lora-ner").stderr


@pytest.mark.parametrize(
    "path", sorted((REPO / "recipes").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_shipped_recipe_validates(path: Path):
    group = path.relative_to(REPO / "recipes").parts[0]
    command = "sft" if group == "quickstart.yaml" else group
    recipe = load_recipe(path, SHIPPED[group])
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(f"# llmtune {command} --recipe recipes/"), (
        "a recipe opens with the command that runs it"
    )
    assert str(path.relative_to(REPO)) in first_line
    for file in getattr(getattr(recipe, "data", None), "train_files", []):
        if parse_reference(file) is not None:
            continue  # a hub dataset: tests/unit/test_hub_datasets.py loads them from a cache
        written = next(
            (script for folder, script in WRITTEN_DATA.items() if Path(file).is_relative_to(folder)), None
        )
        if written is not None:
            assert (REPO / written).is_file() and written in path.read_text(), f"{path.name}: {file}"
            continue
        assert Path(file).exists(), f"{path.name}: {file}"


def test_fetch_of_an_uncached_model_offline_explains(cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("fetch", "someorg/somemodel")
    assert result.exit_code == 2
    assert "not in the HuggingFace cache and HF_HUB_OFFLINE is set" in result.stderr
