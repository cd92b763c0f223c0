"""`llmtune import-recipe`: LLaMA-Factory YAMLs (tests/fixtures/llamafactory, laid out like its repository)
become llmtune recipes that load as the right command, with the values mapped and every other key a comment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from llmtune.errors import LlmtuneError
from llmtune.recipe import load_recipe
from llmtune.recipe.llamafactory import Conversion, DatasetCatalog, dataset_source, relative_or_absolute
from llmtune.recipe.yaml12 import load_yaml
from tests.conftest import REPO

LF = REPO / "tests" / "fixtures" / "llamafactory"
FIXTURES = {
    "train_lora/llama3_lora_sft.yaml": "sft",
    "train_lora/llama3_lora_dpo.yaml": "dpo",
    "train_lora/llama3_lora_pretrain.yaml": "pretrain",
    "train_lora/llama3_lora_reward.yaml": "reward",
    "train_lora/llama3_lora_kto.yaml": "dpo",
    "train_lora/qwen3_lora_sft_hub.yaml": "sft",
    "train_full/llama3_full_sft.yaml": "sft",
    "train_qlora/llama3_lora_sft_otfq.yaml": "sft",
}


@pytest.fixture
def lf_repo(tmp_path, monkeypatch):
    """A copy of the fixture tree as the working folder (LLaMA-Factory's examples run from its root)."""
    root = tmp_path / "LLaMA-Factory"
    shutil.copytree(LF, root)
    monkeypatch.chdir(root)
    return root


def imported(cli, source, out) -> dict:
    result = cli("import-recipe", str(source), "--out", str(out))
    assert result.exit_code == 0, result.output
    return load_yaml(Path(out).read_text(encoding="utf-8"))


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_each_fixture_converts_and_loads_as_its_command(fixture, lf_repo, cli):
    command = FIXTURES[fixture]
    out = lf_repo / "recipe.yaml"
    result = cli("import-recipe", f"examples/{fixture}", "--out", "recipe.yaml")
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first == f"# llmtune {command} recipe.yaml"
    assert f"from the LLaMA-Factory recipe examples/{fixture}" in text
    assert f"llmtune {command} recipe.yaml" in result.stdout
    load_recipe(out, command)
    shown = cli(command, str(out), "--print-config")  # the positional recipe
    assert shown.exit_code == 0, shown.output
    assert load_yaml(shown.stdout)["train"]["output_dir"].startswith("saves/")


def test_sft_values_are_mapped(lf_repo, cli):
    recipe = imported(cli, "examples/train_lora/llama3_lora_sft.yaml", "recipe.yaml")
    assert recipe["model"] == {
        "name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
        "trust_remote_code": True,
    }
    # paths inside the output file's folder are written relative to it, so the recipe travels with the data
    assert recipe["data"]["train_files"] == ["data/identity.json", "data/alpaca_en_demo.json"]
    assert recipe["data"]["format"] == "alpaca"
    assert recipe["data"]["template"] == "llama3"
    assert recipe["data"]["max_length"] == 2048
    assert recipe["data"]["max_samples"] == 1000
    assert recipe["peft"] == {
        "method": "lora",
        "r": 8,
        "lora_alpha": 16,  # LLaMA-Factory's default: 2 x rank (llmtune's own default differs)
        "lora_dropout": 0.0,
        "target_modules": "all-linear",
    }
    train = recipe["train"]
    assert train["output_dir"] == "saves/llama3-8b/lora/sft"
    assert train["learning_rate"] == 1e-4
    assert train["per_device_train_batch_size"] == 1
    assert train["gradient_accumulation_steps"] == 8
    assert train["warmup_steps"] == 0.1 and "warmup_ratio" not in train
    assert train["gradient_checkpointing"] is True
    assert train["ddp_timeout"] == 180000000
    loaded = load_recipe(lf_repo / "recipe.yaml", "sft")
    assert loaded.data.train_files == [
        str(lf_repo / "data/identity.json"),
        str(lf_repo / "data/alpaca_en_demo.json"),
    ]


def test_unmapped_keys_are_comments_saying_why(lf_repo, cli):
    cli("import-recipe", "examples/train_lora/llama3_lora_sft.yaml", "--out", "recipe.yaml")
    text = (lf_repo / "recipe.yaml").read_text(encoding="utf-8")
    comments = [line for line in text.splitlines() if line.startswith("#   ")]
    assert "#   plot_loss: true — llmtune always writes loss.png in the run folder" in comments
    assert any(
        line.startswith("#   overwrite_cache: true — ") and "keyed by content" in line for line in comments
    )
    assert any(
        line.startswith("#   overwrite_output_dir: true — ") and "--overwrite" in line for line in comments
    )
    assert any(line.startswith("#   do_train: true — ") for line in comments)
    body = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any(key in "\n".join(body) for key in ("plot_loss", "overwrite_cache", "stage", "do_train"))


def test_paths_outside_the_output_folder_are_absolute(lf_repo, cli, tmp_path):
    out = tmp_path / "elsewhere" / "recipe.yaml"
    out.parent.mkdir()
    recipe = imported(cli, "examples/train_lora/llama3_lora_sft.yaml", out)
    assert recipe["data"]["train_files"] == [
        str(lf_repo / "data/identity.json"),
        str(lf_repo / "data/alpaca_en_demo.json"),
    ]
    load_recipe(out, "sft")


def test_dataset_info_is_found_above_the_yaml_from_any_folder(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # no data/ here: found by walking up from the YAML
    recipe = imported(cli, LF / "examples/train_lora/llama3_lora_sft.yaml", "recipe.yaml")
    assert recipe["data"]["train_files"] == [
        str(LF / "data/identity.json"),
        str(LF / "data/alpaca_en_demo.json"),
    ]


def test_dpo_maps_sharegpt_pairs_and_the_loss(lf_repo, cli):
    recipe = imported(cli, "examples/train_lora/llama3_lora_dpo.yaml", "recipe.yaml")
    assert recipe["data"]["format"] == "sharegpt_preference"
    assert "columns" not in recipe["data"]  # conversations / chosen / rejected are llmtune's names too
    assert recipe["dpo"] == {"algorithm": "dpo", "beta": 0.1, "loss_type": "sigmoid"}
    assert recipe["train"]["learning_rate"] == 5e-6


def test_dpo_reads_llamafactory_pairs_whose_answers_are_messages(lf_repo):
    """LLaMA-Factory's sharegpt pairs hold chosen/rejected as one {from: gpt, value} message each."""
    from llmtune.data.chat_formats import BadRow, parse_row

    row = {
        "conversations": [{"from": "human", "value": "Capital of France?"}],
        "chosen": {"from": "gpt", "value": "Paris."},
        "rejected": {"role": "assistant", "content": "Berlin."},
    }
    pair = parse_row(row, "sharegpt_preference", {}, "row 1")
    assert (pair.chosen, pair.rejected) == ("Paris.", "Berlin.")
    with pytest.raises(BadRow, match="not from the assistant"):
        parse_row({**row, "chosen": {"from": "human", "value": "x"}}, "sharegpt_preference", {}, "row 1")


@pytest.mark.parametrize(
    ("extra", "dpo"),
    [
        ({"pref_loss": "orpo"}, {"algorithm": "orpo"}),
        ({"pref_loss": "simpo", "simpo_gamma": 0.7}, {"algorithm": "simpo", "simpo_gamma": 0.7}),
        ({"pref_loss": "ipo", "pref_ftx": 0.5}, {"loss_type": ["ipo", "sft"], "loss_weights": [1.0, 0.5]}),
        ({"stage": "orpo"}, {"algorithm": "orpo"}),
    ],
)
def test_preference_losses(extra, dpo, lf_repo, cli):
    source = lf_repo / "examples/train_lora/llama3_lora_dpo.yaml"
    recipe = {**load_yaml(source.read_text(encoding="utf-8")), **extra}
    source.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    recipe = imported(cli, source, "recipe.yaml")
    assert dpo.items() <= recipe["dpo"].items()
    load_recipe(lf_repo / "recipe.yaml", "dpo")


def test_kto_maps_the_algorithm_and_warns_about_unpaired_rows(lf_repo, cli):
    result = cli("import-recipe", "examples/train_lora/llama3_lora_kto.yaml", "--out", "recipe.yaml")
    assert result.exit_code == 0
    assert "is KTO data" in result.output
    text = (lf_repo / "recipe.yaml").read_text(encoding="utf-8")
    assert "# !!! dataset 'kto_en_demo' holds unpaired KTO rows" in text
    recipe = load_yaml(text)
    assert recipe["dpo"] == {"algorithm": "kto", "beta": 0.1}
    assert recipe["data"]["validation_split"] == 0.1


def test_pretrain_maps_cutoff_to_block_size(lf_repo, cli):
    recipe = imported(cli, "examples/train_lora/llama3_lora_pretrain.yaml", "recipe.yaml")
    assert recipe["data"]["block_size"] == 2048
    assert recipe["data"]["train_files"] == ["data/c4_demo.jsonl"]
    assert "text_field" not in recipe["data"]  # c4_demo's column is `text`, llmtune's default
    assert recipe["data"]["num_proc"] == 16
    assert "#   max_samples: 1000 — " in (lf_repo / "recipe.yaml").read_text(encoding="utf-8")


def test_a_streaming_pretrain_recipe_streams(lf_repo, cli):
    """LLaMA-Factory's `streaming: true` (with max_steps, and val_size as a number of examples) becomes
    data.streaming with data.validation_documents."""
    source = lf_repo / "examples" / "train_lora" / "llama3_lora_pretrain.yaml"
    text = source.read_text(encoding="utf-8").replace("num_train_epochs: 3.0", "max_steps: 1000")
    (lf_repo / "streamed.yaml").write_text(text + "streaming: true\nbuffer_size: 16384\nval_size: 50\n")
    recipe = imported(cli, "streamed.yaml", "recipe.yaml")
    assert recipe["data"]["streaming"] is True and recipe["data"]["validation_documents"] == 50
    assert recipe["train"]["max_steps"] == 1000
    written = (lf_repo / "recipe.yaml").read_text(encoding="utf-8")
    assert "#   buffer_size: 16384 — llmtune's stream keeps file order" in written
    load_recipe(lf_repo / "recipe.yaml", "pretrain")


def test_full_sft_with_deepspeed_and_sharegpt_tools(lf_repo, cli):
    recipe = imported(cli, "examples/train_full/llama3_full_sft.yaml", "recipe.yaml")
    assert recipe["peft"] == {"method": "none"}
    assert recipe["launch"] == {"strategy": "zero3"}
    assert recipe["data"]["format"] == "sharegpt"
    assert recipe["data"]["train_files"] == ["data/glaive_toolcall_en_demo.json"]


def test_quantization_bit_4_is_qlora(lf_repo, cli):
    recipe = imported(cli, "examples/train_qlora/llama3_lora_sft_otfq.yaml", "recipe.yaml")
    assert recipe["peft"]["method"] == "qlora"
    assert recipe["data"]["validation_split"] == 0.1
    assert recipe["train"]["eval_strategy"] == "steps"


def test_hub_datasets_targets_and_template_comment(lf_repo, cli):
    result = cli("import-recipe", "examples/train_lora/qwen3_lora_sft_hub.yaml", "--out", "recipe.yaml")
    assert result.exit_code == 0, result.output
    text = (lf_repo / "recipe.yaml").read_text(encoding="utf-8")
    recipe = load_yaml(text)
    assert recipe["data"]["train_files"] == ["hf:llamafactory/alpaca_en", "hf:llamafactory/alpaca_gpt4_en"]
    assert recipe["data"]["packing"] is True
    assert recipe["data"]["max_length"] == 1024
    assert "template" not in recipe["data"]  # qwen3_nothink: the model's own template
    assert "#   template: qwen3_nothink — " in text
    assert "#   interleave_probs: 0.3,0.7 — " in text
    assert recipe["peft"]["target_modules"] == ["q_proj", "v_proj"]
    assert (recipe["peft"]["r"], recipe["peft"]["lora_alpha"], recipe["peft"]["lora_dropout"]) == (
        16,
        32,
        0.05,
    )
    assert recipe["train"]["report_to"] == "none"
    assert "resume_from_checkpoint" not in recipe["train"]  # null: the trainer's default


def test_hub_entries_use_the_canonical_reference(tmp_path):
    catalog = DatasetCatalog(info=load_yaml((LF / "data/dataset_info.json").read_text()), folder=LF / "data")
    place = relative_or_absolute(tmp_path)
    conversion = Conversion(command="dpo")
    mix = dataset_source("dpo_mix_en", catalog, "dpo", conversion, place)
    assert mix.entry == "hf:llamafactory/DPO-En-Zh-20k?subset=en"
    assert mix.format == "sharegpt_preference"
    ms = dataset_source("alpaca_en", catalog, "sft", conversion, place, use_modelscope=True)
    assert ms.entry == "ms:llamafactory/alpaca_en"
    orca = dataset_source("openorca_like", catalog, "sft", conversion, place)
    assert orca.columns == {"instruction": "question", "output": "response", "system": "system_prompt"}


def test_a_missing_dataset_is_a_loud_placeholder(lf_repo, cli):
    source = lf_repo / "examples/train_lora/llama3_lora_sft.yaml"
    source.write_text(
        source.read_text(encoding="utf-8").replace("identity,alpaca_en_demo", "identity,my_data")
    )
    result = cli("import-recipe", str(source), "--out", "recipe.yaml")
    assert result.exit_code == 0, result.output
    assert "dataset 'my_data': not defined in" in result.output
    assert "replace the TODO entries in recipe.yaml" in result.stdout
    text = (lf_repo / "recipe.yaml").read_text(encoding="utf-8")
    assert "# !!! dataset 'my_data': not defined in" in text
    assert load_yaml(text)["data"]["train_files"] == ["data/identity.json", "TODO-dataset-my_data"]
    load_recipe(lf_repo / "recipe.yaml", "sft")


def test_ppo_is_refused_pointing_at_grpo(lf_repo, cli):
    result = cli("import-recipe", "examples/train_lora/llama3_lora_ppo.yaml", "--out", "recipe.yaml")
    assert result.exit_code == 2
    assert "stage: ppo has no llmtune equivalent" in result.output and "llmtune grpo" in result.output
    assert not (lf_repo / "recipe.yaml").exists()


def test_an_existing_out_file_is_never_replaced(lf_repo, cli):
    out = lf_repo / "recipe.yaml"
    out.write_text("mine\n", encoding="utf-8")
    result = cli("import-recipe", "examples/train_lora/llama3_lora_sft.yaml", "--out", "recipe.yaml")
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert out.read_text(encoding="utf-8") == "mine\n"
    assert [p.name for p in lf_repo.iterdir() if p.name.startswith(".recipe.yaml")] == []


def test_write_new_file_refuses_a_file_created_after_the_check(tmp_path):
    from llmtune.files import write_new_file

    path = tmp_path / "recipe.yaml"
    path.write_text("theirs\n", encoding="utf-8")
    with pytest.raises(FileExistsError):
        write_new_file(path, "ours\n")
    assert path.read_text(encoding="utf-8") == "theirs\n"


def test_out_dash_prints_the_recipe(lf_repo, cli):
    result = cli("import-recipe", "examples/train_lora/llama3_lora_sft.yaml", "--out", "-")
    assert result.exit_code == 0
    assert result.stdout.startswith("# llmtune sft recipe.yaml\n")
    assert str(lf_repo / "data/identity.json") in result.stdout  # absolute: the file may be saved anywhere
    assert not (lf_repo / "recipe.yaml").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("stage: [unclosed\n", "invalid YAML"),
        ("- stage: sft\n", "is a list"),
        ("", "is empty"),
        ("model_name_or_path: x\ndataset: identity\n", "no `stage` key"),
        (
            "stage: sft\nmodel_name_or_path: x\nlora_rank: eight\n",
            "line 3: lora_rank: expected a whole number",
        ),
        (
            "stage: sft\nmodel_name_or_path: x\ntrust_remote_code: 1\n",
            "trust_remote_code: expected true or false",
        ),
        (
            "stage: sft\nmodel_name_or_path: x\nfinetuning_type: oft\n",
            "finetuning_type: 'oft' has no llmtune",
        ),
        ("stage: grpo\nmodel_name_or_path: x\n", "stage 'grpo' is not one of"),
    ],
)
def test_bad_input_is_exit_2_naming_file_and_key(content, message, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lf.yaml").write_text(content, encoding="utf-8")
    result = cli("import-recipe", "lf.yaml", "--out", "recipe.yaml")
    assert result.exit_code == 2, result.output
    assert "lf.yaml" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "recipe.yaml").exists()


def test_a_flat_llamafactory_recipe_points_at_import_recipe(cli):
    source = LF / "examples/train_lora/llama3_lora_sft.yaml"
    result = cli("sft", "--recipe", str(source))
    assert result.exit_code == 2
    assert "looks like a LLaMA-Factory recipe" in result.output
    assert f"llmtune import-recipe {source} --out recipe.yaml" in result.output
    assert "unknown section" not in result.output
    with pytest.raises(LlmtuneError, match="import-recipe"):
        load_recipe(source, "dpo")


def test_help(cli):
    result = cli("import-recipe", "--help")
    assert result.exit_code == 0
    assert "--out" in result.stdout and "--dataset-dir" in result.stdout
