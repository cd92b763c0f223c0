"""Recipe loading: typed sections, overrides, path rules, and errors that name the key and the file."""

from __future__ import annotations

import pytest

from llmtune.errors import LlmtuneError
from llmtune.recipe import PretrainRecipe, load_recipe
from tests.conftest import GPT2_TOKENIZER, VERDICT, tiny_pretrain_recipe


def load(path, *overrides):
    return load_recipe(path, PretrainRecipe, list(overrides))


def error_of(path, *overrides) -> str:
    with pytest.raises(LlmtuneError) as info:
        load(path, *overrides)
    return info.value.render()


def test_valid_recipe_is_typed(tmp_path, write_recipe):
    recipe = load(write_recipe(tiny_pretrain_recipe(tmp_path)))
    assert recipe.data.block_size == 64
    assert recipe.model.from_config["architecture"] == "llama"
    assert recipe.peft.method == "none"
    assert recipe.train.trainer_kwargs()["learning_rate"] == pytest.approx(3e-3)


def test_yaml_exponent_without_dot_becomes_a_number(tmp_path, write_recipe):
    # PyYAML reads `4e-4` as a string (YAML 1.1 wants 4.0e-4); the train section checker fixes it.
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    path.write_text(path.read_text().replace("learning_rate: 0.003", "learning_rate: 4e-4"))
    assert load(path).train.trainer_kwargs()["learning_rate"] == pytest.approx(4e-4)


def test_unknown_key_names_path_file_and_suggestion(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, peft={"method": "none", "rnak": 4}))
    message = error_of(path)
    assert "peft.rnak: unknown key, did you mean 'r'?" in message
    assert str(path) in message


def test_unknown_section_suggests_the_right_one(tmp_path, write_recipe):
    data = tiny_pretrain_recipe(tmp_path)
    data["trian"] = data.pop("train")
    message = error_of(write_recipe(data))
    assert "trian: unknown section, did you mean 'train'?" in message
    assert "train: missing" in message


def test_wrong_type_names_key_given_and_expected(tmp_path, write_recipe):
    message = error_of(write_recipe(tiny_pretrain_recipe(tmp_path, data={"block_size": "abc"})))
    assert "data.block_size: expected an integer, got 'abc'" in message


def test_choice_error_lists_choices_and_suggests(tmp_path, write_recipe):
    message = error_of(write_recipe(tiny_pretrain_recipe(tmp_path, data={"split_by": "charcter"})))
    assert "data.split_by: expected one of 'document' or 'character', got 'charcter'" in message
    assert "did you mean 'character'?" in message


def test_bounds_are_checked(tmp_path, write_recipe):
    message = error_of(
        write_recipe(tiny_pretrain_recipe(tmp_path, data={"block_size": 0, "validation_split": 1.5}))
    )
    assert "data.block_size: input should be greater than 0, got 0" in message
    assert "data.validation_split: input should be less than 1, got 1.5" in message


def test_train_keys_are_checked_against_training_arguments(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, train={"learning_rat": 1e-3}))
    assert (
        "train.learning_rat: unknown key, did you mean 'learning_rate'? (not a TrainingArguments argument)"
        in error_of(path)
    )


def test_train_value_types_and_choices(tmp_path, write_recipe):
    path = write_recipe(
        tiny_pretrain_recipe(tmp_path, train={"learning_rate": "fast", "lr_scheduler_type": "cosin"})
    )
    message = error_of(path)
    assert "train.learning_rate: expected a number, got 'fast'" in message
    assert "train.lr_scheduler_type: 'cosin' is not one of" in message and "did you mean 'cosine'?" in message


def test_legacy_train_names_are_mapped_with_a_note(tmp_path, write_recipe):
    data = tiny_pretrain_recipe(
        tmp_path, train={"warmup_ratio": 0.05, "evaluation_strategy": "steps", "logging_dir": "x"}
    )
    del data["train"]["eval_strategy"]
    recipe = load(write_recipe(data))
    kwargs = recipe.train.trainer_kwargs()
    assert kwargs["warmup_steps"] == 0.05 and kwargs["eval_strategy"] == "steps"
    assert "warmup_ratio" not in kwargs and "logging_dir" not in kwargs
    notes = " ".join(recipe.notes)
    assert "train.warmup_ratio is called train.warmup_steps in transformers 5" in notes
    assert "train.logging_dir is not a transformers 5 argument" in notes


def test_legacy_and_new_name_together_is_an_error(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, train={"warmup_ratio": 0.05, "warmup_steps": 10}))
    assert "train.warmup_ratio: legacy name of train.warmup_steps, and both are given" in error_of(path)


def test_overrides_are_typed_and_win(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    recipe = load(path, "data.block_size=32", "train.learning_rate=1e-4", "peft.method=none")
    assert recipe.data.block_size == 32
    assert recipe.train.trainer_kwargs()["learning_rate"] == pytest.approx(1e-4)


def test_bad_override_is_blamed_on_the_override(tmp_path, write_recipe):
    message = error_of(write_recipe(tiny_pretrain_recipe(tmp_path)), "data.block_size=abc")
    assert "data.block_size: expected an integer, got 'abc' (from --set data.block_size=abc)" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.block_size", "expected section.key=value"),
        ("=3", "expected section.key=value"),
        ("dat.block_size=3", "unknown section 'dat', did you mean 'data'?"),
    ],
)
def test_malformed_overrides(tmp_path, write_recipe, override, expected):
    assert expected in error_of(write_recipe(tiny_pretrain_recipe(tmp_path)), override)


def test_relative_paths_are_relative_to_the_recipe_file(tmp_path, write_recipe, monkeypatch):
    data_dir = tmp_path / "corpus"
    data_dir.mkdir()
    (data_dir / "a.txt").write_text("hello\n")
    recipe_data = tiny_pretrain_recipe(tmp_path, data={"train_files": "../corpus/a.txt"})
    path = write_recipe(recipe_data, name="recipes/r.yaml")
    monkeypatch.chdir("/")
    recipe = load(path)
    assert recipe.data.train_files == [str(data_dir / "a.txt")]
    assert recipe.describe_path(recipe.data.train_files[0]).startswith("'../corpus/a.txt' (looked for at ")


def test_relative_override_paths_are_relative_to_the_current_folder(tmp_path, write_recipe, monkeypatch):
    path = write_recipe(tiny_pretrain_recipe(tmp_path), name="recipes/r.yaml")
    monkeypatch.chdir(tmp_path)
    recipe = load(path, "data.train_files=mine.txt")
    assert recipe.data.train_files == [str(tmp_path / "mine.txt")]


def test_hub_ids_are_not_taken_for_paths(tmp_path, write_recipe):
    data = tiny_pretrain_recipe(tmp_path, model={"name_or_path": "bigscience/bloomz-560m"})
    del data["model"]["from_config"]
    data["model"]["tokenizer"] = None
    assert load(write_recipe(data)).model.name_or_path == "bigscience/bloomz-560m"


def test_output_dir_stays_relative_to_where_llmtune_runs(tmp_path, write_recipe):
    path = write_recipe(tiny_pretrain_recipe(tmp_path, train={"output_dir": "runs/x"}), name="recipes/r.yaml")
    assert load(path).train.output_dir == "runs/x"


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"model": {"name_or_path": "x/y"}}, "give exactly one of model.name_or_path"),
        (
            {"model": {"from_config": {"hidden_size": 8}, "tokenizer": str(GPT2_TOKENIZER)}},
            "needs an `architecture` key",
        ),
        ({"model": {"from_config": {"architecture": "gpt2"}, "tokenizer": None}}, "give model.tokenizer"),
        ({"peft": {"method": "lora"}}, "an adapter on random weights learns nothing useful"),
        (
            {"data": {"validation_files": [str(VERDICT)]}},
            "give data.validation_files or data.validation_split, not both",
        ),
        ({"data": {"stride": 128}}, "data.stride (128) is larger than data.block_size (64)"),
        (
            {"data": {"clean": {"min_chars": 10, "max_chars": 5}}},
            "data.clean.max_chars (5) is below data.clean.min_chars (10)",
        ),
    ],
)
def test_cross_field_rules(tmp_path, write_recipe, sections, expected):
    assert expected in error_of(write_recipe(tiny_pretrain_recipe(tmp_path, **sections)))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"- a\n- b\n", "must be a YAML mapping of sections"),
        (b"model: [unclosed\n", "line 2, column 1: invalid YAML"),
        (b"model:\n  name: \xff\xfe\n", "is not UTF-8 text"),
    ],
)
def test_unreadable_recipe_files(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    message = error_of(path)
    assert expected in message and str(path) in message


def test_missing_and_folder_recipes(tmp_path):
    assert "recipe file not found" in error_of(tmp_path / "nope.yaml")
    assert "is a folder; give a YAML file" in error_of(tmp_path)


def test_every_problem_is_listed_at_once(tmp_path, write_recipe):
    message = error_of(
        write_recipe(
            tiny_pretrain_recipe(
                tmp_path, data={"block_size": "x", "txt_document": "page"}, train={"seeed": 1}
            )
        )
    )
    assert message.count("\n  ") == 3  # three problems, one line each


def test_recipes_read_yaml_1_2_booleans(tmp_path, write_recipe):
    # YAML 1.1 (PyYAML's default) makes `save_strategy: no` the boolean False: HF configs break on it.
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    path.write_text(path.read_text().replace("save_strategy: 'no'", "save_strategy: no"))
    recipe = load(path, "train.logging_first_step=yes", "data.add_eos=off")
    kwargs = recipe.train.trainer_kwargs()
    assert kwargs["save_strategy"] == "no"
    assert kwargs["logging_first_step"] is True and recipe.data.add_eos is False


# ------------------------------------------------------------------------------------------ train table
def test_the_train_argument_table_is_read_once_then_cached(monkeypatch):
    """--print-config and plan check train: keys without importing trl: the table of SFTConfig's fields is
    read from the class once, kept in $LLMTUNE_HOME, and from then on read from there, unchanged."""
    from llmtune.recipe import train_keys

    first = train_keys.argument_fields("trl.SFTConfig")
    assert first == train_keys._read_fields("trl.SFTConfig")
    assert first["learning_rate"] == "float" and first["max_length"] == {"union": ["int", "none"]}
    assert {"enum": ["no", "steps", "epoch"]} in first["eval_strategy"]["union"]

    def no_import(dotted):
        raise AssertionError("read the class although its table is cached")

    monkeypatch.setattr(train_keys, "_read_fields", no_import)
    assert train_keys.argument_fields("trl.SFTConfig") == first


def test_a_damaged_train_argument_table_is_read_again(llmtune_home):
    from llmtune.recipe import train_keys

    train_keys.argument_fields("transformers.TrainingArguments")
    (cached,) = (llmtune_home / "cache" / "train-arguments").glob("transformers.TrainingArguments-*.json")
    cached.write_text('{"half": ')
    assert "learning_rate" in train_keys.argument_fields("transformers.TrainingArguments")
    assert "learning_rate" in cached.read_text()  # rewritten whole


# ------------------------------------------------------------------------------------------ peft keys
@pytest.mark.parametrize(
    ("peft", "expected"),
    [
        (
            {"method": "ia3", "r": 8},
            "peft.r is not used by peft.method 'ia3' (it applies to lora, dora, qlora)",
        ),
        ({"method": "lora", "feedforward_modules": ["mlp"]}, "peft.feedforward_modules is not used by"),
        ({"method": "prefix_tuning", "encoder_hidden_size": 64}, "it applies to p_tuning"),
        ({"method": "lora", "quant_type": "fp4"}, "peft.quant_type is not used by peft.method 'lora'"),
        ({"method": "none", "lora_alpha": 32}, "--set 'peft={method: none}' replaces the whole section"),
    ],
)
def test_a_peft_key_the_method_does_not_read_is_an_error(tmp_path, write_recipe, peft, expected):
    data = tiny_pretrain_recipe(tmp_path)
    data["model"] = {"name_or_path": str(tmp_path)}
    data["peft"] = peft
    assert expected in error_of(write_recipe(data))


def test_one_value_is_read_as_a_list_of_one(tmp_path, write_recipe):
    recipe = load(write_recipe(tiny_pretrain_recipe(tmp_path, data={"train_files": str(VERDICT)})))
    assert recipe.data.train_files == [str(VERDICT)]
    from llmtune.recipe import PeftSection

    assert PeftSection(method="lora", target_modules="q_proj", modules_to_save="lm_head").modules_to_save == [
        "lm_head"
    ]
    assert PeftSection(method="lora", target_modules="all-linear").target_modules == "all-linear"
    assert PeftSection(method="lora", target_modules="q_proj").target_modules == ["q_proj"]


# ------------------------------------------------------------------------------------------ kinds
def test_commands_that_take_any_training_recipe_tell_its_kind(tmp_path, write_recipe, cli):
    from llmtune.recipe import recipe_kind
    from tests.conftest import REPO

    assert recipe_kind(REPO / "recipes/quickstart.yaml") == "sft"
    assert recipe_kind(REPO / "recipes/dpo/smollm2-135m-dpo-en.yaml") == "dpo"
    assert recipe_kind(REPO / "recipes/pretrain/gpt2-124m-the-verdict.yaml") == "pretrain"
    assert recipe_kind(REPO / "recipes/lora-ner/minilm-conll2003.yaml") == "lora-ner"
    assert recipe_kind(REPO / "recipes/eval/smollm2-mmlu-cmmlu.yaml") == "eval"
    assert recipe_kind(REPO / "recipes/reward/smollm2-135m-reward-en.yaml") == "reward"
    assert recipe_kind(REPO / "recipes/grpo/smollm2-135m-arithmetic.yaml") == "grpo"
    result = cli("data", "check", "--recipe", str(write_recipe(tiny_pretrain_recipe(tmp_path))))
    assert result.exit_code == 2
    assert (
        "is a pretrain recipe (by its sections); this command takes sft, dpo, reward, grpo, rloo"
        in result.stderr
    )


# ------------------------------------------------------------------------------------------ duplicate keys
@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("train:\n  seed: 1\nmodel:\n  name_or_path: x\ntrain:\n  seed: 2\n", "'train'", "on lines 1 and 5"),
        ("train:\n  seed: 1\n  max_steps: 2\n  seed: 3\n", "'train.seed'", "on lines 2 and 4"),
        (
            "model:\n  from_config:\n    architecture: llama\n    sizes: {a: 1, b: 2}\n    sizes: 3\n",
            "'model.from_config.sizes'",
            "on lines 4 and 5",
        ),
        ("data:\n  columns: {q: a, q: b}\n", "'data.columns.q'", "on line 2, columns 13 and 19"),
    ],
)
def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path, text, key, lines):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    message = error_of(path)
    assert f"key {key} is given twice, {lines}" in message and str(path) in message


def test_a_key_given_twice_in_a_set_value_is_blamed_on_the_set(tmp_path, write_recipe):
    message = error_of(write_recipe(tiny_pretrain_recipe(tmp_path)), "train={seed: 1, seed: 2}")
    assert message.startswith("--set train={seed: 1, seed: 2}: key 'seed' is given twice")


def test_merge_keys_are_not_duplicates(tmp_path):
    """`<<: *base` then a key of its own is YAML's way of overriding; only the mapping's own keys count."""
    from llmtune.recipe import load_yaml

    assert load_yaml("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  x: 3\n")["mine"] == {"x": 3, "y": 2}


# ------------------------------------------------------------------------------------------ paths
def test_tilde_is_expanded_in_every_path_from_the_file_or_a_set(tmp_path, write_recipe, monkeypatch):
    import os

    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_recipe(tiny_pretrain_recipe(tmp_path, train={"output_dir": "~/runs/a"}))
    recipe = load(
        path,
        "data.validation_split=0",
        "data.validation_files=~/v.txt",
        "train.resume_from_checkpoint=~/ckpt",
    )
    assert recipe.train.output_dir == os.path.join(str(tmp_path), "runs/a")
    assert recipe.data.validation_files == [os.path.join(str(tmp_path), "v.txt")]
    assert recipe.train.trainer_kwargs()["resume_from_checkpoint"] == os.path.join(str(tmp_path), "ckpt")
    assert load(path, "train.output_dir=~/runs/b").train.output_dir == os.path.join(str(tmp_path), "runs/b")
    assert load("~/recipe.yaml").train.output_dir == os.path.join(str(tmp_path), "runs/a")  # quoted --recipe


def test_input_paths_of_the_wrong_kind_say_what_they_are(tmp_path, write_recipe):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    path = write_recipe(tiny_pretrain_recipe(tmp_path))
    message = error_of(path, f"data.train_files=[{fifo}, /dev/zero, {a_file}/more.txt]")
    assert f"'{fifo}' is not a regular file: it is a named pipe (FIFO)" in message
    assert "'/dev/zero' is not a regular file: it is a character device" in message
    assert f"{a_file} is a file, not a folder" in message
    assert "does not exist" not in message
    message = error_of(path, f"model.tokenizer={a_file}")
    assert f"model.tokenizer: '{a_file}' is a file; give a folder" in message


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/null", "socket"])
def test_a_recipe_that_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path, special):
    import os
    import socket

    if special == "fifo":
        target = tmp_path / "recipe.yaml"
        os.mkfifo(target)  # opening it for reading would wait for a writer forever
    elif special == "socket":
        target = tmp_path / "s"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(target))
    else:
        target = special
    assert "is not a regular file" in error_of(target)


def test_a_file_where_a_folder_is_expected(tmp_path):
    (tmp_path / "recipes").write_text("not a folder")
    message = error_of(tmp_path / "recipes" / "r.yaml")
    assert f"{tmp_path / 'recipes'} is a file, not a folder" in message and "not found" not in message


# ------------------------------------------------------------------------------------------ round trip
def _every_kind(tmp_path) -> dict[str, dict]:
    from tests.conftest import SHARED_DATA

    qa = str(SHARED_DATA / "instruction-en")
    chat_model = {"name_or_path": str(tmp_path), "revision": "1e5"}  # a string YAML 1.2 reads as a number
    chat_train = {
        "output_dir": "runs/x",
        "warmup_ratio": 0.1,  # legacy names: mapped with a note, written back under the new name
        "evaluation_strategy": "no",
        "logging_dir": "tb",
        "save_strategy": "no",  # YAML 1.1 reads a bare `no` as false
        "learning_rate": 4e-4,
    }
    return {
        "pretrain": tiny_pretrain_recipe(tmp_path),
        "sft": {
            "model": chat_model,
            "data": {"train_files": qa, "system": "4e-4", "template": "chatml"},
            "peft": {"method": "lora", "r": 4},
            "train": chat_train,
            "samples": {"prompts": ["Hi"]},
        },
        "dpo": {
            "model": chat_model,
            "data": {"train_files": qa},
            "peft": {"method": "qlora"},
            "dpo": {"beta": 0.2, "loss_type": "ipo"},
            "train": chat_train,
        },
        "lora-ner": {"model": chat_model, "data": {"train_files": qa}, "train": {"output_dir": "~/x"}},
        "reward": {
            "model": chat_model,
            "data": {"train_files": qa, "max_length": 384},
            "peft": {"method": "lora"},
            "reward": {"pad_token": "<pad>"},
            "train": {**chat_train, "center_rewards_coefficient": 0.01},
        },
        "grpo": {
            "model": chat_model,
            "data": {"train_files": qa, "max_prompt_length": 64},
            "rewards": [
                {"type": "numeric_match", "weight": 2},
                {"type": "format", "pattern": "\\d+", "name": "digits"},
                {"type": "python", "function": "my.py:f"},
            ],
            "rl": {"allow_user_code": True},
            "train": {**chat_train, "num_generations": 4, "beta": 0.04},
        },
        "eval": {
            "model": chat_model,
            "eval": {"compare": [str(tmp_path), "org/model"]},
            "perplexity": {"files": qa},
            "mcq": {"files": [qa]},
            "generate": {"prompts": "Hi", "temperature": 0.7},
            "ner": {"files": [qa]},
        },
    }


def _round_trip(recipe, kind, tmp_path):
    from llmtune.recipe import load_recipe as load_any

    again = tmp_path / f"again-{kind}.yaml"
    again.write_text(recipe.to_yaml())
    reloaded = load_any(again, kind)
    assert reloaded.model_dump() == recipe.model_dump()
    assert reloaded.to_yaml() == recipe.to_yaml()
    return reloaded


@pytest.mark.parametrize("kind", ["pretrain", "sft", "dpo", "reward", "grpo", "lora-ner", "eval"])
def test_the_resolved_recipe_loads_back_to_the_same_recipe(tmp_path, kind):
    """A run folder's recipe.yaml (`to_yaml`) is itself a recipe that reproduces the run."""
    from llmtune.recipe import load_recipe as load_any
    from llmtune.recipe.yaml12 import dump_yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(dump_yaml(_every_kind(tmp_path)[kind]))  # quotes "1e5", as a user would have to
    recipe = load_any(path, kind)
    reloaded = _round_trip(recipe, kind, tmp_path)
    if kind in ("sft", "dpo"):
        assert reloaded.model.revision == "1e5" and reloaded.train.trainer_kwargs()["save_strategy"] == "no"
        assert reloaded.train.trainer_kwargs()["warmup_steps"] == 0.1 and not reloaded.notes


def test_the_shipped_recipes_load_back_to_themselves(tmp_path):
    from llmtune.recipe import load_recipe as load_any
    from llmtune.recipe import recipe_kind
    from tests.conftest import REPO

    shipped = sorted((REPO / "recipes").rglob("*.yaml"))
    assert len(shipped) >= 10
    for path in shipped:
        kind = recipe_kind(path)
        _round_trip(load_any(path, kind), kind, tmp_path)
