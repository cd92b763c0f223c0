"""Generated hostile recipes aimed at the reader and the number checks, thrown at the real command line.

Like test_bad_inputs.py, the cases come from the schema: every numeric key of every section of every
command, and every numeric argument of the trainer dataclass a command checks `train:` against, gets the
edge values (nan, ±inf, 0, -1, 2**64, 1e308, -0.0), from the file and through `--set`. Each must end with
exit 2 and a one-paragraph message naming the key, or be accepted (exit 0) when the value is valid, in
which case the printed recipe must load back to itself; never exit 1, never a traceback. Parser bombs
(alias bombs of several shapes, deep nesting, huge scalars, duplicate keys at several depths) and special
files as the recipe path must be answered with exit 2 within a few seconds.

Commands run with --print-config: everything a recipe is checked for happens when it loads, before any
model, so the few thousand invocations take seconds.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import tempfile
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
import yaml

from llmtune import recipe as recipes
from llmtune.recipe.base import INT_LIMIT
from llmtune.recipe.peft import METHOD_KEYS
from llmtune.recipe.train_keys import NUMBER_RULES, _read_fields
from llmtune.recipe.yaml12 import MAX_DEPTH, MAX_VALUES, dump_yaml
from tests.conftest import GPT2_TOKENIZER, SHARED_DATA, TINY_LLAMA, VERDICT

COMMANDS = {
    "pretrain": recipes.PretrainRecipe,
    "sft": recipes.SftRecipe,
    "dpo": recipes.DpoRecipe,
    "lora-ner": recipes.NerRecipe,
    "eval": recipes.EvalRecipe,
}
EDGE_VALUES = [math.nan, math.inf, -math.inf, 0, -1, 2**64, 1e308, -0.0]
QA = str(Path(__file__).resolve().parents[2] / "recipes" / "data" / "llmtune-qa.jsonl")
CONLL = str(SHARED_DATA / "conll2003" / "train.txt")
MMLU = str(SHARED_DATA / "mcq" / "mmlu" / "dev" / "anatomy_dev.csv")


# ------------------------------------------------------------------------------------------ set-up
def base_recipes(model_folder: str) -> dict[str, dict]:
    """A valid recipe per command, every optional section present, that loads without reading a model."""
    train = {"output_dir": "runs/fuzz", "max_steps": 1, "report_to": "none", "save_strategy": "no"}
    chat = {"name_or_path": model_folder}
    early = {"patience": 2}
    return {
        "pretrain": {  # a pretrained model: peft keys apply (from_config allows no adapter)
            "model": chat,
            "data": {"train_files": str(VERDICT), "validation_split": 0.1},
            "train": train,
            "early_stopping": early,
        },
        "sft": {
            "model": chat,
            "data": {"train_files": QA},
            "train": train,
            "early_stopping": early,
            "samples": {"prompts": ["Hi"]},
        },
        "dpo": {"model": chat, "data": {"train_files": QA}, "train": train, "dpo": {"beta": 0.1}},
        "lora-ner": {"model": chat, "data": {"train_files": CONLL}, "train": train, "early_stopping": early},
        "eval": {
            "model": chat,
            "perplexity": {"files": [QA]},
            "mcq": {"files": [MMLU]},
            "generate": {"prompts": ["Hi"]},
            "ner": {"files": [CONLL]},
        },
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("parsing")
    (root / "model").mkdir()
    return root


@pytest.fixture
def bases(workdir):
    return json.loads(json.dumps(base_recipes(str(workdir / "model"))))


def write(root: Path, recipe: Any = None, raw: bytes | str | None = None, name: str = "case.yaml") -> Path:
    path = root / name
    if raw is not None:
        path.write_bytes(raw.encode() if isinstance(raw, str) else raw)
    else:
        path.write_text(dump_yaml(recipe))
    return path


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the command blocks, e.g. on opening a FIFO."""

    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def invoke(cli, command: str, path: Path | str, *extra: str, seconds: int = 10):
    with deadline(seconds):
        return cli(*command.split(), "--recipe", str(path), "--print-config", *extra)


def assert_user_error(result, *names: str, max_len: int = 3000) -> str:
    """Exit 2, no traceback, one paragraph (of a readable length) that names each of `names`."""
    output = result.stderr
    assert result.exit_code == 2, f"exit {result.exit_code}: {output or result.stdout[:500]}"
    assert "Traceback" not in output and "llmtune: error: " in output, output[:2000]
    assert "not a recipe problem" not in output, output[:2000]
    message = output[output.index("llmtune: error: ") :]
    assert "\n\n" not in message.strip(), message[:2000]
    assert len(message) < max_len, f"a {len(message):,}-character message: {message[:300]}"
    for name in names:
        assert name in message, f"{name!r} not named in: {message[:2000]}"
    return message


# ------------------------------------------------------------------------------------------ numeric cases
def _members(annotation) -> list:
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    if get_origin(annotation) is Literal:
        return []
    if hasattr(annotation, "__metadata__"):  # Annotated[int, ...]
        return _members(get_args(annotation)[0])
    return [annotation]


def _number_type(annotation) -> type | None:
    """int or float when the field takes a number (alone; not inside a list), else None."""
    members = _members(annotation)
    if float in members:
        return float
    if int in members and bool not in members:
        return int
    return None


def _section_classes(recipe_class):
    """(dotted section path, section class) of every section, nested ones (data.clean) included."""
    found = []

    def walk(prefix, model_class):
        for name, info in model_class.model_fields.items():
            sub = recipes.base.submodel(info.annotation)
            if sub is not None and issubclass(sub, recipes.Section):
                found.append((f"{prefix}{name}", sub))
                walk(f"{prefix}{name}.", sub)

    walk("", recipe_class)
    return found


def _bounds_break(info, number: type, value) -> bool:
    """Whether `value` is outside what the field declares (its bounds, its type, the integer limit)."""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if number is int and isinstance(value, float) and value != int(value):
        return True
    as_number = int(value) if number is int else value
    own_upper = False
    for item in info.metadata:
        if isinstance(item, annotated_types.Gt) and not as_number > item.gt:
            return True
        if isinstance(item, annotated_types.Ge) and not as_number >= item.ge:
            return True
        if isinstance(item, annotated_types.Lt):
            own_upper = True
            if not as_number < item.lt:
                return True
        if isinstance(item, annotated_types.Le):
            own_upper = True
            if not as_number <= item.le:
                return True
    return number is int and not own_upper and abs(as_number) > INT_LIMIT


def section_number_cases() -> list[tuple]:
    """(command, section path, key, field info, int|float): each section class's keys once."""
    cases, seen = [], set()
    for command, recipe_class in COMMANDS.items():
        for section, section_class in _section_classes(recipe_class):
            if section_class is recipes.TrainSection:
                continue
            for key, info in section_class.model_fields.items():
                number = _number_type(info.annotation)
                if number is None or (section_class, key) in seen:
                    continue
                seen.add((section_class, key))
                cases.append((command, section, key, info, number))
    return cases


def train_number_cases() -> list[tuple]:
    """(command, key, spec): each numeric trainer argument once, with the first command that checks it."""
    cases, seen = [], set()
    for command, recipe_class in COMMANDS.items():
        if "train" not in recipe_class.model_fields:
            continue
        # Straight from the dataclass (argument_fields would cache the table in the real $LLMTUNE_HOME,
        # which at collection time is not yet the test's own).
        for key, spec in _read_fields(recipe_class.train_arguments).items():
            text = json.dumps(spec)
            if key in seen or key == "output_dir" or ('"int"' not in text and '"float"' not in text):
                continue
            if "list" in text:  # a list of numbers (loss_weights): its items are not a number field
                continue
            seen.add(key)
            cases.append((command, key, spec))
    return cases


SECTION_CASES = section_number_cases()
TRAIN_CASES = train_number_cases()


def _place(recipe: dict, section: str, key: str, value: Any) -> None:
    node = recipe
    for part in section.split("."):
        node = node.setdefault(part, {})
    if section == "peft":  # a method that reads the key (any other method rejects it as unused)
        node["method"] = next(m for m, keys in METHOD_KEYS.items() if key in keys)
    node[key] = value


def check_outcome(cli, root: Path, command: str, result, name: str, must_reject: bool) -> None:
    if must_reject or result.exit_code != 0:
        assert_user_error(result, name.split(".")[0] if not must_reject else name)
        return
    # Accepted: what --print-config printed is a recipe that prints the same again.
    printed = write(root, raw=result.stdout, name="printed.yaml")
    again = invoke(cli, command, printed)
    assert again.exit_code == 0 and again.stdout == result.stdout, again.stderr[:1000]


def test_enough_numbers_are_fuzzed():
    assert len(SECTION_CASES) >= 30 and len(TRAIN_CASES) >= 30
    assert (len(SECTION_CASES) + len(TRAIN_CASES)) * len(EDGE_VALUES) >= 500


@pytest.mark.parametrize(
    "command, section, key, info, number", SECTION_CASES, ids=[f"{c[0]}:{c[1]}.{c[2]}" for c in SECTION_CASES]
)
def test_edge_numbers_in_sections(command, section, key, info, number, bases, workdir, cli):
    for value in EDGE_VALUES:
        recipe = json.loads(json.dumps(bases[command]))
        _place(recipe, section, key, value)
        result = invoke(cli, command, write(workdir, recipe))
        name = f"{section}.{key}"
        check_outcome(cli, workdir, command, result, name, _bounds_break(info, number, value))


@pytest.mark.parametrize("command, key, spec", TRAIN_CASES, ids=[f"{c[0]}:train.{c[1]}" for c in TRAIN_CASES])
def test_edge_numbers_in_trainer_arguments(command, key, spec, bases, workdir, cli):
    takes_float = '"float"' in json.dumps(spec)
    for value in EDGE_VALUES:
        recipe = json.loads(json.dumps(bases[command]))
        recipe["train"][key] = value
        result = invoke(cli, command, write(workdir, recipe))
        coerced = float(value) if takes_float else value
        rule = NUMBER_RULES.get(key)
        must_reject = (
            (isinstance(value, float) and not math.isfinite(value))
            or (not takes_float and isinstance(value, float) and value != int(value))
            or (rule is not None and not rule[1](coerced))
            or (not takes_float and key not in ("seed", "data_seed") and abs(int(value)) > INT_LIMIT)
        )
        check_outcome(cli, workdir, command, result, f"train.{key}", must_reject)


def test_edge_numbers_through_set_are_blamed_on_the_set(bases, workdir, cli):
    """The same values from the command line: the message names the --set, never the recipe file."""
    path = write(workdir, bases["sft"], name="sft.yaml")
    keys = [
        f"{s}.{k}" for c, s, k, _, _ in SECTION_CASES if c == "sft" and s not in ("peft", "early_stopping")
    ]
    keys += [f"train.{k}" for c, k, _ in TRAIN_CASES if c in ("pretrain", "sft")][:20]
    for key in keys:
        for text in (".nan", "nan", "-.inf", "1e999"):
            result = invoke(cli, "sft", path, "--set", f"{key}={text}")
            message = assert_user_error(result, key, f"(from --set {key}={text})")
            assert str(path) not in message, message


@pytest.mark.parametrize("where", ["model.from_config", "train.lr_scheduler_kwargs", "data.columns"])
def test_non_finite_numbers_in_free_form_mappings(where, bases, workdir, cli):
    command = "pretrain" if where.startswith("model") else "sft"
    recipe = bases[command]
    section, key = where.split(".")
    recipe[section].setdefault(key, {}).update({"deep": {"er": [1.0, math.nan]}})
    assert_user_error(invoke(cli, command, write(workdir, recipe)), f"{where}.deep.er.1")


# ------------------------------------------------------------------------------------------ parser bombs
def _laughs(levels: int, width: int, shape: str) -> str:
    """The billion laughs: each level `width` aliases of the one before."""
    lines = [
        "l0: &l0 "
        + ("[lol, lol, lol, lol, lol, lol, lol, lol, lol]" if shape == "list" else "{a: lol, b: lol}")
    ]
    for level in range(1, levels + 1):
        refs = [f"*l{level - 1}"] * width
        body = (
            "[" + ", ".join(refs) + "]"
            if shape == "list"
            else "{" + ", ".join(f"k{i}: {r}" for i, r in enumerate(refs)) + "}"
        )
        lines.append(f"l{level}: &l{level} {body}")
    return "\n".join(lines) + "\n"


BOMBS = {
    "laughs-list-9x9": _laughs(9, 9, "list"),
    "laughs-map-9x9": _laughs(9, 9, "map"),
    "laughs-wide-2x30": _laughs(30, 2, "list"),
    "laughs-in-a-section": "model:\n  from_config:\n    "
    + _laughs(6, 10, "list").replace("\n", "\n    ").rstrip()
    + "\n",
    "merge-key-laughs": "a: &a {x: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n"
    + "".join(
        f"b{i}: &b{i} {{<<: *{'a' if i == 0 else f'b{i - 1}'}, y{i}: [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]}}\n"
        for i in range(25)
    ),
    "recursive-list": "a: &a [1, *a]\n",
    "recursive-map": "a: &a {self: *a}\n",
    "recursive-merge": "a: &a\n  <<: *a\n",
    "deep-flow-lists-10000": "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "deep-flow-maps": "a: " + "{a: " * 2_000 + "1" + "}" * 2_000 + "\n",
    "deep-json": '{"a": ' * 2_000 + "1" + "}" * 2_000 + "\n",
    "deep-block-maps": "".join("  " * i + f"k{i}:\n" for i in range(500)) + "  " * 500 + "v\n",
    "deep-block-lists": "a:\n" + "".join("  " * i + "-\n" for i in range(1, 400)),
    "deep-through-aliases": "a: &a "
    + "[" * 60
    + "1"
    + "]" * 60
    + "\nb: &b "
    + "[" * 60
    + "*a"
    + "]" * 60
    + "\n",
    "many-values": "a: [" + "1, " * (MAX_VALUES + 10) + "]\n",
    "many-keys": "".join(f"k{i}: {i}\n" for i in range(MAX_VALUES)),
    "many-anchors": "".join(f"k{i}: &a{i} {i}\n" for i in range(MAX_VALUES)),
    "huge-integer": "train: {seed: " + "9" * 6_000 + "}\n",
    "too-big-file": "model: {name_or_path: x}\n# " + "x" * (1 << 20) + "\n",
    "huge-key": "model:\n  ? " + "k" * 500_000 + "\n  : 1\n",  # `?`: a plain key is at most 1024 chars
    "huge-float-overflow": "train: {learning_rate: 1e99999}\n",
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_parser_bombs_end_fast_with_a_message(name, workdir, cli):
    path = write(workdir, raw=BOMBS[name], name=f"bomb-{name}.yaml")
    start = time.monotonic()
    result = invoke(cli, "pretrain", path, seconds=20)
    assert_user_error(result, str(path))
    assert time.monotonic() - start < 5, f"{name}: {time.monotonic() - start:.1f} s"


SET_BOMBS = {
    "laughs": "{" + _laughs(6, 9, "list").strip().replace("\n", ", ") + "}",
    "recursive": "&a [1, *a]",
    "deep": "[" * 10_000 + "]" * 10_000,
    "many-values": "[" + "1, " * MAX_VALUES + "]",
}


@pytest.mark.parametrize("name", list(SET_BOMBS))
def test_parser_bombs_in_a_set_value(name, bases, workdir, cli):
    path = write(workdir, bases["sft"], name="sft.yaml")
    result = invoke(cli, "sft", path, "--set", f"model.from_config={SET_BOMBS[name]}")
    message = assert_user_error(result, "--set model.from_config=")
    assert str(path) not in message


def test_nesting_within_the_limit_is_accepted(bases, workdir, cli):
    recipe = bases["pretrain"]
    deep: Any = 1
    for _ in range(MAX_DEPTH - 10):
        deep = {"x": deep}
    recipe["model"] = {"from_config": {**TINY_LLAMA, "nested": deep}, "tokenizer": str(GPT2_TOKENIZER)}
    result = invoke(cli, "pretrain", write(workdir, recipe))
    assert result.exit_code == 0, result.stderr[:1000]


def test_a_long_value_within_the_size_limit_is_accepted_and_never_echoed_whole(bases, workdir, cli):
    recipe = bases["sft"]
    recipe["data"]["system"] = "s" * 600_000
    assert invoke(cli, "sft", write(workdir, recipe)).exit_code == 0
    recipe["data"]["system"] = None
    recipe["data"]["max_length"] = "x" * 600_000  # wrong type: the message shows the start of it
    assert_user_error(invoke(cli, "sft", write(workdir, recipe)), "data.max_length", max_len=600)


@pytest.mark.parametrize(
    "text", ["data: {seed: 2024-13-45}\n", "data: {seed: !!timestamp x}\n", "data: {seed: !!float abc}\n"]
)
def test_values_yaml_cannot_build(text, workdir, cli):
    """PyYAML's constructors raise plain ValueError / AttributeError on these."""
    assert_user_error(invoke(cli, "sft", write(workdir, raw=text)), "a value cannot be read")


DUPLICATES = [
    ("model:\n  name_or_path: x\ntrain: {seed: 1}\ndata: {}\ntrain: {seed: 2}\n", "'train'", "lines 3 and 5"),
    ("train:\n  seed: 1\n  learning_rate: 0.1\n  seed: 2\n", "'train.seed'", "lines 2 and 4"),
    ("model:\n  from_config:\n    a:\n      b: 1\n      b: 2\n", "'model.from_config.a.b'", "lines 4 and 5"),
    ("eval:\n  compare:\n    - {x: 1, x: 2}\n", "'eval.compare.0.x'", "columns 8 and 14"),
    ('{"model": {"tokenizer": "a", "tokenizer": "b"}}\n', "'model.tokenizer'", "columns 12 and 30"),
    ("1: a\n0x1: b\n", "'1'", "lines 1 and 2"),  # one key for YAML (both are the integer 1)
]


@pytest.mark.parametrize("text, key, where", DUPLICATES, ids=[d[1] for d in DUPLICATES])
def test_duplicate_keys_at_every_depth(text, key, where, workdir, cli):
    path = write(workdir, raw=text, name="dup.yaml")
    assert_user_error(invoke(cli, "pretrain", path), f"key {key} is given twice", where)


def test_duplicate_keys_in_a_set_value(bases, workdir, cli):
    path = write(workdir, bases["sft"], name="sft.yaml")
    result = invoke(cli, "sft", path, "--set", "train={seed: 1, learning_rate: 0.1, seed: 2}")
    assert_user_error(result, "--set train=", "key 'seed' is given twice")


# ------------------------------------------------------------------------------------------ special files
@pytest.fixture(scope="module")
def special_files():
    """Paths that are not regular files, in a short folder (a socket's path is at most 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="llmtune-special-"))
    os.mkfifo(folder / "fifo")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock"))
    (folder / "a-file").write_text("model: {}\n")
    (folder / "a-folder").mkdir()
    os.symlink(folder / "fifo", folder / "link-to-fifo")
    os.symlink(folder / "loop", folder / "loop")
    yield folder
    server.close()
    for child in folder.iterdir():
        child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
    folder.rmdir()


SPECIAL = [
    ("/dev/zero", "is not a regular file: it is a character device"),
    ("/dev/null", "is not a regular file: it is a character device"),
    ("fifo", "is not a regular file: it is a named pipe (FIFO)"),
    ("link-to-fifo", "is not a regular file: it is a named pipe (FIFO)"),
    ("sock", "is not a regular file: it is a socket"),
    ("a-folder", "is a folder"),
    ("a-file/recipe.yaml", "a-file is a file, not a folder"),
    ("loop", "cannot read recipe"),
    ("missing.yaml", "not found"),
]


@pytest.mark.parametrize("target, expected", SPECIAL, ids=[s[0] for s in SPECIAL])
@pytest.mark.parametrize("command", ["sft", "plan", "data check"])
def test_special_files_as_the_recipe(target, expected, command, special_files, cli):
    path = target if target.startswith("/") else str(special_files / target)
    with deadline(5):
        result = cli(*command.split(), "--recipe", path)
    message = assert_user_error(result, expected)
    if target != "missing.yaml":
        assert "does not exist" not in message and "not found" not in message


@pytest.mark.parametrize(
    "command, key, target, expected",
    [
        ("sft", "data.train_files", "fifo", "named pipe (FIFO)"),
        ("sft", "data.train_files", "/dev/zero", "character device"),
        ("sft", "data.validation_files", "a-file/x.jsonl", "a-file is a file, not a folder"),
        ("pretrain", "data.train_files", "sock", "a socket"),
        ("sft", "model.name_or_path", "a-file", "is a file, not a model folder"),
        ("sft", "model.name_or_path", "fifo", "named pipe (FIFO)"),
        ("pretrain", "model.tokenizer", "a-file", "is a file; give a folder"),
        ("eval", "generate.prompts_file", "a-folder", "is a folder; give a file"),
        ("eval", "generate.prompts_file", "/dev/zero", "character device"),
        ("eval", "ner.model", "a-file", "is a file; give a folder"),
        ("sft", "launch.accelerate_config", "fifo", "named pipe (FIFO)"),
    ],
)
def test_special_files_as_input_paths(command, key, target, expected, special_files, bases, workdir, cli):
    value = target if target.startswith("/") else str(special_files / target)
    path = write(workdir, bases[command], name=f"{command}.yaml")
    message = assert_user_error(invoke(cli, command, path, "--set", f"{key}={value}"), key, expected)
    assert "does not exist" not in message


def test_plan_reads_a_model_config_bounded(workdir, bases, cli):
    """A model folder's config.json that is nested too deep, or is a FIFO, is a message, not a hang."""
    model = workdir / "deep-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    recipe = bases["sft"]
    recipe["model"]["name_or_path"] = str(model)
    path = write(workdir, recipe, name="plan.yaml")
    with deadline(20):
        assert_user_error(cli("plan", "--recipe", str(path)), "nested too deeply")
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    with deadline(20):
        assert_user_error(cli("plan", "--recipe", str(path)), "named pipe (FIFO)")


def test_the_fuzzed_recipes_really_are_yaml(bases):
    """The generator writes what the reader reads (a bare 4e-4 in YAML 1.1 would be a string)."""
    for recipe in bases.values():
        assert yaml.safe_load(dump_yaml(recipe)) == recipe
