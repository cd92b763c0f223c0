"""Hundreds of generated bad inputs thrown at the command line. Each must end with exit code 2 and a message
that names the key, file or line (no Python traceback), or — when the recipe asks for skips — with the
row skipped and counted; and an existing output folder, passed with --overwrite, must be left untouched.

The recipe cases are generated from the recipe schema itself (every key of every section of every
command: an unknown neighbour key, a value of the wrong type, each numeric bound crossed, a choice that
does not exist), so a key added later is fuzzed without editing this file. Data cases break every reader's
format row by row; hypothesis adds random bytes and random non-mapping YAML.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtune import recipe as recipes
from tests.conftest import SHARED_DATA, tiny_pretrain_recipe

QA = Path(__file__).resolve().parents[2] / "recipes" / "data" / "llmtune-qa.jsonl"
CONLL = SHARED_DATA / "conll2003" / "train.txt"
MMLU = SHARED_DATA / "mcq" / "mmlu" / "dev" / "anatomy_dev.csv"
COMMANDS = {
    "pretrain": recipes.PretrainRecipe,
    "sft": recipes.SftRecipe,
    "dpo": recipes.DpoRecipe,
    "lora-ner": recipes.NerRecipe,
    "eval": recipes.EvalRecipe,
}


# ------------------------------------------------------------------------------------------ set-up
@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_pretrained):
    """A valid recipe per command (tiny local models, real data) and an output folder holding a 'run'."""
    root = tmp_path_factory.mktemp("fuzz")
    out = root / "existing-run"
    out.mkdir()
    (out / "manifest.json").write_text('{"status": "completed"}')
    (out / "model.safetensors").write_bytes(b"weights that must survive")
    train = {"output_dir": str(out), "max_steps": 1, "report_to": "none", "save_strategy": "no"}
    pretrain = tiny_pretrain_recipe(root)
    pretrain["train"] = {**pretrain["train"], **train}
    chat = {"name_or_path": str(tiny_pretrained)}
    sft = {
        "model": chat,
        "data": {"train_files": str(QA), "template": "chatml", "max_length": 64},
        "train": train,
    }
    pairs = root / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."}) + "\n" for i in range(8)
        )
    )
    dpo = {
        **sft,
        "data": {"train_files": str(pairs), "template": "chatml", "max_length": 64},
        "dpo": {"beta": 0.1},
    }
    ner = {"model": chat, "data": {"train_files": str(CONLL), "max_samples": 20}, "train": train}
    evaluation = {"model": chat, "eval": {"output_dir": str(out)}, "mcq": {"files": [str(MMLU)]}}
    return root, out, {"pretrain": pretrain, "sft": sft, "dpo": dpo, "lora-ner": ner, "eval": evaluation}


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def run_case(cli, root: Path, out: Path, command: str, recipe: Any, *extra: str, raw: bytes | None = None):
    """Write the recipe, run the command with --overwrite, and return the result (folder checked)."""
    path = root / f"case-{hashlib.sha1(repr((command, recipe, extra, raw)).encode()).hexdigest()[:12]}.yaml"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    before = snapshot(out)
    args = command.split() + ["--recipe", str(path), "--overwrite", *extra]
    result = cli(*args)
    assert snapshot(out) == before, f"{command}: the existing output folder changed"
    return result


def assert_user_error(result, *names: str) -> None:
    """Exit 2, no traceback, and the error paragraph (log lines may come before it) names each of `names`."""
    output = result.stderr
    assert result.exit_code == 2, f"exit {result.exit_code}: {output or result.stdout}"
    assert "Traceback" not in output and "llmtune: error: " in output, output
    message = output[output.index("llmtune: error: ") :]
    assert "\n\n" not in message.strip(), message
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"


# ------------------------------------------------------------------------------------------ recipe cases
@dataclass
class Case:
    command: str
    section: str
    key: str
    value: Any
    expect: str
    kind: str
    ids: str = field(init=False)

    def __post_init__(self):
        self.ids = f"{self.command}:{self.kind}:{self.section}.{self.key}"


def _section_class(annotation):
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, recipes.Section):
            return candidate
    return None


def _wrong_type(annotation) -> Any | None:
    """A value no member of the annotation accepts."""
    members = set()
    for member in get_args(annotation) or (annotation,):
        origin = get_origin(member)
        if origin is Literal:
            members.add("literal")
        elif member is type(None):
            continue
        else:
            members.add(getattr(origin or member, "__name__", str(member)))
    if members & {"dict"}:
        return [1, 2]
    if members & {"list"}:
        return {"not": "a list"}
    if members & {"bool"}:
        return "perhaps"
    if members & {"int", "float"}:
        return "lots"
    if members & {"str", "Annotated", "literal"}:
        return [1, 2]
    return None


def _bound_violations(info) -> list[Any]:
    found = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Gt):
            found.append(item.gt if not isinstance(item.gt, float) else item.gt - 1.0)
        elif isinstance(item, annotated_types.Ge):
            found.append(item.ge - 1)
        elif isinstance(item, annotated_types.Lt):
            found.append(item.lt)
        elif isinstance(item, annotated_types.Le):
            found.append(item.le + 1)
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            found.append([])
    return found


def _literal_choices(annotation) -> bool:
    """Only a closed set of choices (a Literal, or Literal | None) can be given a wrong one."""
    members = [m for m in (get_args(annotation) or (annotation,)) if m is not type(None)]
    if get_origin(annotation) is Literal:
        return True
    return bool(members) and all(get_origin(m) is Literal for m in members)


def recipe_cases() -> list[Case]:
    cases = []
    for command, recipe_class in COMMANDS.items():
        for section, info in recipe_class.model_fields.items():
            section_class = _section_class(info.annotation)
            if section_class is None or section_class is recipes.TrainSection:
                continue
            cases.append(Case(command, section, "colour", "blue", f"{section}.colour", "unknown-key"))
            for key, field_info in section_class.model_fields.items():
                path = f"{section}.{key}"
                cases.append(Case(command, section, key + "_x", 1, f"{section}.{key}_x", "unknown-key"))
                wrong = _wrong_type(field_info.annotation)
                if wrong is not None:
                    cases.append(Case(command, section, key, wrong, path, "wrong-type"))
                for value in _bound_violations(field_info):
                    cases.append(Case(command, section, key, value, path, f"bound-{value!r}"))
                if _literal_choices(field_info.annotation):
                    cases.append(Case(command, section, key, "no-such-choice", path, "choice"))
    return cases


RECIPE_CASES = recipe_cases()


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c.ids for c in RECIPE_CASES])
def test_bad_recipe_value(case, bases, cli):
    root, out, base = bases
    recipe = json.loads(json.dumps(base[case.command]))
    recipe.setdefault(case.section, {})[case.key] = case.value
    assert_user_error(run_case(cli, root, out, case.command, recipe), case.expect)


def test_enough_inputs_are_fuzzed():
    assert len(RECIPE_CASES) + len(FILE_CASES) + len(ROW_CASES) + len(OTHER_CASES) >= 200


# ------------------------------------------------------------------------------------------ conflicts
OTHER_CASES = [
    ("sft", {"peft": {"method": "prompt_tuning"}, "data": {"packing": True}}, (), "data.packing"),
    ("sft", {"peft": {"method": "lora", "quant_type": "fp4"}}, (), "peft.quant_type"),
    ("sft", {"peft": {"method": "none", "double_quant": False}}, (), "peft.double_quant"),
    ("sft", {"train": {"max_length": 128}}, (), "train.max_length"),
    ("sft", {"train": {"eval_strategy": "steps"}}, (), "train.eval_strategy"),
    ("sft", {"early_stopping": {"patience": 2}}, (), "early_stopping"),
    ("sft", {"model": {"from_config": {"architecture": "llama"}}}, (), "model.from_config"),
    ("dpo", {"train": {"beta": 0.2}}, (), "dpo.beta"),
    ("pretrain", {"peft": {"method": "lora"}}, (), "peft.method"),
    ("pretrain", {"train": {"warmup_ratio": 2.0}}, (), "train"),
    ("pretrain", {"train": {"learning_rate": "fast"}}, (), "train.learning_rate"),
    ("pretrain", {"train": {"no_such_argument": 1}}, (), "train.no_such_argument"),
    (
        "pretrain",
        {"model": {"from_config": {"architecture": "llama", "n_layers": 2}}},
        (),
        "model.from_config.n_layers",
    ),
    ("pretrain", {"model": {"from_config": {"architecture": "lama"}}}, (), "model.from_config.architecture"),
    ("pretrain", {}, ("--resume",), "--resume"),
    ("pretrain", {}, ("--set", "train.learning_rate"), "--set"),
    ("pretrain", {}, ("--set", "trian.seed=1"), "trian"),
    ("pretrain", {}, ("--strategy", "zero9"), "launch.strategy"),
    ("pretrain", {}, ("--nproc", "0"), "launch.nproc"),
    ("sft", {"model": {"name_or_path": "./no/such/model"}}, (), "no/such/model"),
    ("sft", {"model": {"name_or_path": "not a hub id"}}, (), "model.name_or_path"),
    ("sft", {"data": {"template": "chatmll"}}, (), "data.template"),
    ("sft", {"data": {"weights": [1, 2]}}, (), "data.weights"),
    ("eval", {"perplexity": {"files": [str(QA)], "stride": 9999, "max_length": 8}}, (), "perplexity.stride"),
    ("eval", {"mcq": {"files": [str(MMLU)], "shots": 2}}, (), "mcq.shots_files"),
    ("lora-ner", {"peft": {"method": "qlora"}}, (), "peft.method"),
    ("lora-ner", {"data": {"train_files": [str(QA)]}}, (), str(QA.name)),
]


@pytest.mark.parametrize(
    "command, change, extra, expect", OTHER_CASES, ids=[f"{c[0]}:{c[3]}" for c in OTHER_CASES]
)
def test_conflicting_or_wrong_options(command, change, extra, expect, bases, cli):
    root, out, base = bases
    recipe = json.loads(json.dumps(base[command]))
    for section, values in change.items():
        recipe[section] = (
            {**recipe.get(section, {}), **values} if isinstance(recipe.get(section), dict) else values
        )
    assert_user_error(run_case(cli, root, out, command, recipe, *extra), expect)


# ------------------------------------------------------------------------------------------ files
def _file_cases():
    cases = []
    for command, section, key in (
        ("pretrain", "data", "train_files"),
        ("sft", "data", "train_files"),
        ("dpo", "data", "train_files"),
        ("lora-ner", "data", "train_files"),
        ("eval", "mcq", "files"),
    ):
        for problem in ("missing", "empty-folder", "empty-file", "not-utf8", "wrong-extension"):
            cases.append((command, section, key, problem))
    return cases


FILE_CASES = _file_cases()
SUFFIX = {"pretrain": ".txt", "sft": ".jsonl", "dpo": ".jsonl", "lora-ner": ".txt", "eval": ".csv"}


@pytest.mark.parametrize(
    "command, section, key, problem", FILE_CASES, ids=[f"{c[0]}:{c[3]}" for c in FILE_CASES]
)
def test_bad_input_file(command, section, key, problem, bases, cli):
    root, out, base = bases
    folder = root / f"files-{command}-{problem}"
    folder.mkdir(exist_ok=True)
    target = folder / f"data{SUFFIX[command]}"
    if problem == "missing":
        expect = str(target)
    elif problem == "empty-folder":
        target = folder / "empty"
        target.mkdir(exist_ok=True)
        expect = "empty"
    elif problem == "empty-file":
        target.write_text("")
        expect = target.name
    elif problem == "not-utf8":
        target.write_bytes(b"caf\xe9 \xff\xfe text\n")
        expect = target.name
    else:
        target = folder / "data.docx"
        target.write_bytes(b"PK\x03\x04")
        expect = "data.docx"
    recipe = json.loads(json.dumps(base[command]))
    recipe[section][key] = [str(target)]
    if command == "pretrain":
        recipe["data"]["validation_files"] = []
    assert_user_error(run_case(cli, root, out, command, recipe), expect)


def test_recipe_files_that_are_not_recipes(bases, cli, tmp_path):
    root, out, base = bases
    for raw, expect in (
        (b"", "is empty"),
        (b"- a\n- list\n", "must be a YAML mapping"),
        (b"just a string\n", "must be a YAML mapping"),
        (b"model: {name_or_path: x\n", "invalid YAML"),
        (b"model:\n\tname_or_path: x\n", "invalid YAML"),
        (b"\xff\xfe\x00m\x00o", "not UTF-8"),
    ):
        assert_user_error(run_case(cli, root, out, "sft", None, raw=raw), expect)
    for target, expect in ((tmp_path, "is a folder"), (tmp_path / "none.yaml", "recipe file not found")):
        result = cli("sft", "--recipe", str(target))
        assert_user_error(result, expect)


# ------------------------------------------------------------------------------------------ data rows
ALPACA_OK = {"instruction": "Say hi.", "input": "", "output": "Hi."}
SHAREGPT_OK = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
MESSAGES_OK = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
PAIR_OK = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
ROW_CASES = [
    # (command, good row, bad line, words the message must hold)
    ("sft", ALPACA_OK, '{"instruction": "x", "output": ', "line 3"),
    ("sft", ALPACA_OK, '["not", "an", "object"]', "line 3"),
    ("sft", ALPACA_OK, '{"instruction": 5, "output": "x"}', "line 3"),
    ("sft", ALPACA_OK, '{"instruction": "x", "output": ""}', "line 3"),
    ("sft", ALPACA_OK, '{"instruction": "x"}', "line 3"),
    ("sft", SHAREGPT_OK, '{"conversations": "hello"}', "line 3"),
    ("sft", SHAREGPT_OK, '{"conversations": [{"from": "human", "value": "only a question"}]}', "line 3"),
    (
        "sft",
        SHAREGPT_OK,
        '{"conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "y"}]}',
        "line 3",
    ),
    ("sft", SHAREGPT_OK, '{"conversations": [{"value": "x"}, {"from": "gpt", "value": "y"}]}', "line 3"),
    ("sft", SHAREGPT_OK, '{"conversations": []}', "line 3"),
    (
        "sft",
        MESSAGES_OK,
        '{"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "y"}]}',
        "line 3",
    ),
    (
        "sft",
        MESSAGES_OK,
        '{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        "line 3",
    ),
    (
        "sft",
        MESSAGES_OK,
        '{"messages": [{"role": "assistant", "content": "y"}, {"role": "user", "content": "x"}]}',
        "line 3",
    ),
    ("sft", MESSAGES_OK, '{"messages": {"role": "user"}}', "line 3"),
    ("dpo", PAIR_OK, '{"prompt": "x", "chosen": "y"}', "line 3"),
    ("dpo", PAIR_OK, '{"prompt": "x", "chosen": 1, "rejected": "z"}', "line 3"),
    ("dpo", PAIR_OK, '{"prompt": "", "chosen": "y", "rejected": "z"}', "line 3"),
    ("dpo", PAIR_OK, '{"prompt": "x", "chosen": "", "rejected": "z"}', "line 3"),
    ("dpo", PAIR_OK, "not json at all", "line 3"),
]


@pytest.mark.parametrize(
    "command, good, bad, expect", ROW_CASES, ids=[f"{c[0]}:{c[2][:40]}" for c in ROW_CASES]
)
def test_broken_rows_are_errors_or_counted_skips(command, good, bad, expect, bases, cli):
    root, out, base = bases
    path = root / f"rows-{hashlib.sha1(bad.encode()).hexdigest()[:10]}.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + bad + "\n" + json.dumps(good) + "\n")
    recipe = json.loads(json.dumps(base[command]))
    recipe["data"]["train_files"] = [str(path)]
    assert_user_error(run_case(cli, root, out, command, recipe), path.name, expect)
    # The same file with skips asked for: the row is counted with its reason, nothing is silently lost.
    recipe["data"]["on_bad_rows"] = "skip"
    recipe_path = root / f"skip-{path.stem}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    checked = cli("data", "check", "--recipe", str(recipe_path))
    assert checked.exit_code == 0, checked.stderr
    report = checked.stdout + checked.stderr
    assert "bad rows skipped (" in report and f": 1, first at {path} line 3" in report, report


NER_ROWS = [
    ("EU B-ORG\nrejects\nGerman B-MISC\n", "line 2"),  # a token without its tag
    ("EU B-ORG\nrejects O\nGerman X-MISC\n", "line 3"),
    ("EU B-ORG\nrejects O\nGerman I-MISC\n", "line 3"),  # I- after O, strict
]


@pytest.mark.parametrize("text, expect", NER_ROWS, ids=[t[1] + ":" + t[0].splitlines()[-1] for t in NER_ROWS])
def test_broken_conll_rows(text, expect, bases, cli):
    root, out, base = bases
    path = root / f"ner-{hashlib.sha1(text.encode()).hexdigest()[:10]}.txt"
    path.write_text(text + "\nPeter B-PER\nvisited O\n")
    recipe = json.loads(json.dumps(base["lora-ner"]))
    recipe["data"]["train_files"] = [str(path)]
    assert_user_error(run_case(cli, root, out, "lora-ner", recipe), path.name, expect)


SPAN_ROWS = [
    ({"text": "北京很大", "label": {"address": {"北京": [[0, 9]]}}}, "line 1"),
    ({"text": "北京很大", "label": {"address": {"上海": [[0, 1]]}}}, "line 1"),
    ({"text": "北京很大", "label": {"address": {"北京": [[0, 1]]}, "name": {"京很": [[1, 2]]}}}, "line 1"),
    ({"text": 5, "label": {}}, "line 1"),
]


@pytest.mark.parametrize("row, expect", SPAN_ROWS, ids=[str(i) for i in range(len(SPAN_ROWS))])
def test_broken_span_rows(row, expect, bases, cli):
    root, out, base = bases
    path = root / f"span-{hashlib.sha1(json.dumps(row).encode()).hexdigest()[:10]}.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n")
    recipe = json.loads(json.dumps(base["lora-ner"]))
    recipe["data"]["train_files"] = [str(path)]
    assert_user_error(run_case(cli, root, out, "lora-ner", recipe), path.name, expect)


MCQ_ROWS = ["Q,a,b,c,d,E", "Q,a,b", ",a,b,c,d,1"]


@pytest.mark.parametrize("row", MCQ_ROWS)
def test_broken_mcq_rows(row, bases, cli):
    root, out, base = bases
    path = root / f"mcq-{hashlib.sha1(row.encode()).hexdigest()[:10]}_dev.csv"
    path.write_text("question,choice0,choice1,choice2,choice3,answer\nQ0,a,b,c,d,0\n" + row + "\n")
    recipe = json.loads(json.dumps(base["eval"]))
    recipe["mcq"]["files"] = [str(path)]
    assert_user_error(run_case(cli, root, out, "eval", recipe), path.name, "line 3")


# ------------------------------------------------------------------------------------------ hypothesis
@pytest.mark.slow  # 25 data checks
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=64))
def test_random_bytes_as_a_chat_data_file(bases, cli, data):
    """Whatever the bytes, the result is a user error that names the file: no 64 random bytes make a
    valid chat row (a JSON object with the fields of one format), and on_bad_rows is error."""
    root, out, base = bases
    path = root / f"bytes-{hashlib.sha1(data).hexdigest()[:10]}.jsonl"
    path.write_bytes(data)
    recipe = json.loads(json.dumps(base["sft"]))
    recipe["data"]["train_files"] = [str(path)]
    recipe_path = root / f"bytes-{path.stem}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    assert_user_error(cli("data", "check", "--recipe", str(recipe_path)), path.name)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    )
)
def test_random_yaml_documents_as_recipes(bases, cli, document):
    root, out, _ = bases
    raw = yaml.safe_dump(document, allow_unicode=True).encode()
    result = run_case(cli, root, out, "pretrain", None, raw=raw)
    assert_user_error(result)
