"""Data inputs on a hostile file system, and JSON-lines content at the edges of the format.

Every data input key of every command (and `lora-ner predict --file`) is given each file-system state a
user can produce by accident: missing, empty, a folder, a FIFO, /dev/zero behind a link, unreadable, a
binary file, a link loop, a dangling link, one huge line. Each must end with exit 2 and a one-paragraph
message that names the path (what it is, never "does not exist" for something that exists), or, where
the content is valid, be accepted: never exit 1, never a hang (an alarm fails the test instead).

Content cases: every character str.splitlines() breaks on inside a JSON string, a BOM, CRLF lines, JSON
nested 100,000 deep, a lone surrogate escape; a `**` glob through link loops; damaged derived files (the
tokenised-text cache, adapter_config.json); a broken Jinja template; lora-ner max_length past the
encoder's positions; MCQ answers that are not exactly one label.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import SHARED_DATA, tiny_pretrain_recipe

QA = Path(__file__).resolve().parents[2] / "recipes" / "data" / "llmtune-qa.jsonl"
CONLL = SHARED_DATA / "conll2003" / "train.txt"
MMLU = SHARED_DATA / "mcq" / "mmlu" / "dev" / "anatomy_dev.csv"
HUGE = (1 << 20) + 17  # past every 64 KB / 128 KB line or field buffer
# Characters str.splitlines() splits on besides \n and \r; all may stand raw inside a JSON-lines string.
SEPARATORS = ["\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c"]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def deadline(seconds: float):
    """Fail (TimeoutError) instead of hanging: a FIFO opened blocking, a loop walked forever."""

    def expired(signum, frame):
        raise TimeoutError(f"no result within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def user_error(result, *names: str) -> str:
    """Exit 2, one paragraph without a traceback that names each of `names`; returns the paragraph."""
    output = result.stderr
    assert result.exit_code == 2, f"exit {result.exit_code}: {output or result.stdout}"
    assert "Traceback" not in output and "llmtune: error: " in output, output
    message = output[output.index("llmtune: error: ") :]
    assert "\n\n" not in message.strip(), message
    for name in names:
        assert name.lower() in message.lower(), f"{name!r} not named in: {message}"
    return message


def write_recipe(folder: Path, recipe: dict, name: str) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def cli_uses(module: str, name: str) -> bool:
    """Whether `module`'s source calls `name` (a fix that lives in a file this suite does not own)."""
    import importlib

    return name in inspect.getsource(importlib.import_module(module))


# ------------------------------------------------------------------------------------------ set-up
@pytest.fixture(scope="module")
def tagger_run(tmp_path_factory, tiny_english_bert):
    """A lora-ner run folder (untrained head on a tiny BERT), written directly: what predict and eval's
    ner task load."""
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    from llmtune.ner.tagger import Tagger, save_tagger_config

    run = tmp_path_factory.mktemp("tagger-run")
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    tagger = Tagger(AutoModel.from_pretrained(tiny_english_bert), labels, use_crf=False, scheme="BIO")
    save_file({k: v.contiguous() for k, v in tagger.state_dict().items()}, str(run / "model.safetensors"))
    AutoTokenizer.from_pretrained(tiny_english_bert).save_pretrained(run)
    save_tagger_config(
        run,
        base=str(tiny_english_bert),
        labels=labels,
        use_crf=False,
        scheme="BIO",
        extra={"unit": "word", "max_length": 64},
    )
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_pretrained, tiny_english_bert, tagger_run):
    """A valid recipe per command on tiny local models and real data."""
    root = tmp_path_factory.mktemp("data-inputs")
    train = {"max_steps": 1, "report_to": "none", "save_strategy": "no", "disable_tqdm": True}
    pretrain = tiny_pretrain_recipe(root)
    pretrain["train"] = {
        **pretrain["train"],
        **train,
        "output_dir": str(root / "out-pretrain"),
        "eval_strategy": "no",
        "eval_on_start": False,
    }
    chat = {"name_or_path": str(tiny_pretrained)}
    sft = {
        "model": chat,
        "data": {"train_files": [str(QA)], "template": "chatml", "max_length": 64},
        "train": {**train, "output_dir": str(root / "out-sft")},
    }
    pairs = root / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."}) + "\n" for i in range(8)
        )
    )
    dpo = {
        "model": chat,
        "data": {"train_files": [str(pairs)], "template": "chatml", "max_length": 64},
        "dpo": {"beta": 0.1},
        "train": {**train, "output_dir": str(root / "out-dpo")},
    }
    conll = root / "conll-head.txt"  # the first sentences of CoNLL-2003: read in milliseconds
    conll.write_text("\n".join(CONLL.read_text(encoding="utf-8").split("\n")[:300]) + "\n", encoding="utf-8")
    ner = {
        "model": {"name_or_path": str(tiny_english_bert)},
        "data": {"train_files": [str(conll)], "max_samples": 20, "max_length": 32},
        "train": {**train, "output_dir": str(root / "out-ner")},
    }
    evaluation = {"model": chat, "eval": {"output_dir": str(root / "out-eval")}}
    bases = {"pretrain": pretrain, "sft": sft, "dpo": dpo, "lora-ner": ner, "eval": evaluation}
    return root, bases


# Every data input key of every command: (command, section, key, suffix of the file).
INPUT_KEYS = [
    ("pretrain", "data", "train_files", ".txt"),
    ("pretrain", "data", "validation_files", ".txt"),
    ("sft", "data", "train_files", ".jsonl"),
    ("sft", "data", "validation_files", ".jsonl"),
    ("dpo", "data", "train_files", ".jsonl"),
    ("dpo", "data", "validation_files", ".jsonl"),
    ("lora-ner", "data", "train_files", ".txt"),
    ("lora-ner", "data", "validation_files", ".txt"),
    ("lora-ner", "data", "test_files", ".txt"),
    ("eval", "perplexity", "files", ".txt"),
    ("eval", "mcq", "files", ".csv"),
    ("eval", "mcq", "shots_files", ".csv"),
    ("eval", "generate", "prompts_file", ".txt"),
    ("eval", "ner", "files", ".txt"),
]
STATES = [
    "missing",
    "empty",
    "directory",
    "fifo",
    "dev-zero",
    "unreadable",
    "binary",
    "link-loop",
    "dangling-link",
    "huge-line",
]
# What the message must say, beyond the path (any one of the words, case-insensitive).
SAYS = {
    "missing": ("does not exist", "not found"),
    "fifo": ("FIFO",),
    "dev-zero": ("character device",),
    "unreadable": ("permission",),
    "binary": ("binary", "UTF-8"),
    "link-loop": ("symbolic link",),
    "dangling-link": ("dangling", "does not exist"),
}
# (section, key) whose huge line is valid content (a long document or prompt) that a model then has to
# process: accepted (or, for a prompt, refused as longer than the model's context), and slow.
FREE_TEXT = {
    ("data", "train_files"),
    ("data", "validation_files"),
    ("perplexity", "files"),
    ("generate", "prompts_file"),
}


def is_free_text(command: str, section: str, key: str) -> bool:
    return command in ("pretrain", "eval") and (section, key) in FREE_TEXT


def make_state(state: str, folder: Path, suffix: str) -> Path:
    """`folder/data<suffix>` (or a folder) in `state`."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ("anatomy_dev" + suffix if suffix == ".csv" else "data" + suffix)
    if state == "empty":
        target.write_text("")
    elif state == "directory":
        target = folder / "a-folder"
        target.mkdir(exist_ok=True)
    elif state == "fifo":
        os.mkfifo(target)
    elif state == "dev-zero":
        target.symlink_to("/dev/zero")
    elif state == "unreadable":
        target.write_text("text\n")
        target.chmod(0)
    elif state == "binary":
        target.write_bytes(bytes(range(256)) * 16)
    elif state == "link-loop":
        target.symlink_to(target.name)
    elif state == "dangling-link":
        target.symlink_to(folder / "gone.txt")
    elif state == "huge-line":
        target.write_text("x" * HUGE)
    return target


def recipe_for(base: dict, command: str, section: str, key: str, target: Path, tagger_run: Path) -> dict:
    recipe = json.loads(json.dumps(base[command]))
    if command != "eval":
        recipe[section][key] = [str(target)]
        if command == "pretrain" and key == "validation_files":
            recipe["data"]["validation_split"] = 0  # validation from files or a split, not both
        return recipe
    if section == "perplexity":
        recipe["perplexity"] = {"files": [str(target)], "max_length": 32, "stride": 32, "batch_size": 64}
    elif section == "mcq" and key == "files":
        recipe["mcq"] = {"files": [str(target)]}
    elif section == "mcq":
        recipe["mcq"] = {"files": [str(MMLU)], "shots": 1, "shots_files": [str(target)]}
    elif section == "generate":
        recipe["generate"] = {"prompts_file": str(target), "max_new_tokens": 2}
    else:  # ner: the model evaluated is the tagger run
        recipe["model"] = {"name_or_path": str(tagger_run)}
        recipe["ner"] = {"files": [str(target)]}
    return recipe


def _cases():
    cases = []
    for command, section, key, suffix in INPUT_KEYS:
        for state in STATES:
            marks = []
            if state == "unreadable":
                marks.append(pytest.mark.skipif(AS_ROOT, reason="root reads a chmod 000 file"))
            if state == "huge-line" and is_free_text(command, section, key):
                marks.append(pytest.mark.slow)
            cases.append(
                pytest.param(
                    command, section, key, suffix, state, marks=marks, id=f"{command}:{section}.{key}:{state}"
                )
            )
    return cases


@pytest.mark.parametrize("command, section, key, suffix, state", _cases())
def test_file_system_states_of_every_data_input(command, section, key, suffix, state, world, tagger_run, cli):
    root, bases = world
    # Short names: the recipe loader cuts paths longer than 80 characters in its messages.
    folder = root / f"k{INPUT_KEYS.index((command, section, key, suffix))}-{state[:6]}"
    target = make_state(state, folder, suffix)
    recipe = recipe_for(bases, command, section, key, target, tagger_run)
    path = write_recipe(folder, recipe, "recipe.yaml")
    free_text = is_free_text(command, section, key)
    with deadline(300 if state == "huge-line" and free_text else 20):
        result = cli(*command.split(), "--recipe", str(path), "--overwrite")
    if state == "huge-line" and result.exit_code == 0:
        assert free_text, "a line of x accepted as structured data"
        return
    message = user_error(result, target.name)
    if state in SAYS:
        assert any(word.lower() in message.lower() for word in SAYS[state]), message
    if state not in ("missing", "dangling-link"):
        assert "does not exist" not in message, message


@pytest.mark.xfail(
    not cli_uses("llmtune.cli", "texts_to_tag"),
    reason="cli.py's predict must read --file with llmtune.ner.predict.texts_to_tag",
    strict=False,
)
@pytest.mark.parametrize("state", [s for s in STATES if s != "unreadable" or not AS_ROOT])
def test_file_system_states_of_predict_file(state, tagger_run, tmp_path, cli):
    target = make_state(state, tmp_path, ".txt")
    with deadline(20):
        result = cli("lora-ner", "predict", "--model", str(tagger_run), "--file", str(target))
    if state == "huge-line":  # one long text: tagged window by window
        assert result.exit_code == 0, result.stderr
        return
    message = user_error(result, target.name)
    if state in SAYS:
        assert any(word.lower() in message.lower() for word in SAYS[state]), message


@pytest.mark.xfail(
    not cli_uses("llmtune.cli", "texts_to_tag"),
    reason="cli.py's predict must read --file with llmtune.ner.predict.texts_to_tag",
    strict=False,
)
def test_predict_file_lines_split_on_newline_only(tagger_run, tmp_path, cli):
    target = tmp_path / "texts.txt"
    target.write_text(
        "Peter\u2028Blackburn visited Brussels\r\n\r\nEU rejects\x0cGerman call\n", encoding="utf-8"
    )
    result = cli("lora-ner", "predict", "--model", str(tagger_run), "--file", str(target), "--json")
    assert result.exit_code == 0, result.stderr
    texts = [json.loads(line)["text"] for line in result.stdout.strip().split("\n")]
    assert texts == ["Peter\u2028Blackburn visited Brussels", "EU rejects\x0cGerman call"]


def test_texts_to_tag_reads_the_file_like_a_data_file(tmp_path):
    from llmtune.errors import LlmtuneError
    from llmtune.ner.predict import texts_to_tag

    binary = tmp_path / "b.txt"
    binary.write_bytes(b"text\n\xff\xfe\x00 more")
    with pytest.raises(LlmtuneError, match=r"b.txt line 2: a binary file, not text \(NUL byte at offset 7\)"):
        texts_to_tag([], str(binary))
    binary.write_bytes(b"text\ncaf\xe9\n")
    with pytest.raises(LlmtuneError, match=r"b.txt line 2: not UTF-8 text \(byte 0xe9 at offset 8\)"):
        texts_to_tag([], str(binary))
    os.mkfifo(tmp_path / "fifo.txt")
    with deadline(5), pytest.raises(LlmtuneError, match=r"fifo.txt' is a named pipe \(FIFO\), not a regular"):
        texts_to_tag(None, str(tmp_path / "fifo.txt"))
    with pytest.raises(LlmtuneError, match=r"--file: '.*' is a folder where a file is expected"):
        texts_to_tag(None, str(tmp_path))
    good = tmp_path / "t.txt"
    good.write_text("a\u2028b\r\nc\n", encoding="utf-8")
    assert texts_to_tag(["x"], str(good)) == ["x", "a\u2028b", "c"]


def test_a_file_where_a_run_folder_is_expected(tagger_run, tmp_path, cli):
    afile = tmp_path / "not-a-run.txt"
    afile.write_text("x")
    with deadline(20):
        result = cli("lora-ner", "predict", "--model", str(afile), "Some text")
    user_error(result, afile.name, "is a file")
    os.mkfifo(tmp_path / "fifo")
    with deadline(20):
        result = cli("lora-ner", "predict", "--model", str(tmp_path / "fifo"), "Some text")
    user_error(result, "fifo")


@pytest.mark.parametrize("name", ["tagger.json", "labels.json"])
def test_a_damaged_tagger_run_names_the_file(name, tagger_run, tmp_path, cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tagger_run, run)
    text = (run / name).read_text()
    (run / name).write_text(text[: len(text) // 2])
    with deadline(20):
        result = cli("lora-ner", "predict", "--model", str(run), "Peter visited Brussels")
    user_error(result, name, "line")


# ------------------------------------------------------------------------------------------ JSON lines
def chat_rows(path: Path, text: str, world, cli, *extra: str, on_bad_rows: str = "error"):
    root, bases = world
    path.write_bytes(text.encode("utf-8"))
    recipe = json.loads(json.dumps(bases["sft"]))
    recipe["data"]["train_files"] = [str(path)]
    recipe["data"]["on_bad_rows"] = on_bad_rows
    recipe_path = write_recipe(path.parent, recipe, f"{path.stem}.yaml")
    with deadline(30):
        return cli("data", "check", "--recipe", str(recipe_path), "--samples", "0", *extra)


def row(content: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]},
        ensure_ascii=False,
    )


def test_line_separators_inside_json_strings_keep_each_row_whole(world, tmp_path, cli):
    # json.dumps escapes \x0b..\x1e; a raw one, as some writers leave it, must not split the row either.
    rows = []
    for separator in SEPARATORS:
        rows.append(row(f"one{separator}two").replace(json.dumps(separator)[1:-1], separator))
        assert separator in rows[-1]
    text = "\n".join([*rows, "not json"]) + "\n"
    bad_line = len(SEPARATORS) + 1  # line numbers count "\n" only
    result = chat_rows(tmp_path / "sep.jsonl", text, world, cli)
    user_error(result, f"sep.jsonl line {bad_line}: not valid JSON")
    result = chat_rows(tmp_path / "sep.jsonl", text, world, cli, on_bad_rows="skip")
    assert result.exit_code == 0, result.stderr
    report = result.stdout + result.stderr
    assert (
        f"{len(SEPARATORS)} rows" in report
        and f": 1, first at {tmp_path / 'sep.jsonl'} line {bad_line}" in report
    )


def test_bom_and_crlf_are_accepted_and_lines_counted(world, tmp_path, cli):
    text = "\ufeff" + "\r\n".join([row("a"), row("b"), '{"broken": ', row("c")]) + "\r\n"
    user_error(chat_rows(tmp_path / "crlf.jsonl", text, world, cli), "crlf.jsonl line 3")
    text = "\ufeff" + "\r\n".join([row("a"), row("b"), row("c")]) + "\r\n"
    result = chat_rows(tmp_path / "crlf.jsonl", text, world, cli)
    assert result.exit_code == 0 and "3 rows" in result.stdout + result.stderr, result.stderr


def test_json_nested_100000_deep_is_a_bad_row(world, tmp_path, cli):
    text = "\n".join([row("a"), "[" * 100_000, row("b")]) + "\n"
    user_error(chat_rows(tmp_path / "deep.jsonl", text, world, cli), "deep.jsonl line 2", "nested too deeply")
    result = chat_rows(tmp_path / "deep.jsonl", text, world, cli, on_bad_rows="skip")
    assert result.exit_code == 0, result.stderr
    assert "first at " + str(tmp_path / "deep.jsonl") + " line 2" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("[" * 100_000, "not valid JSON (nested too deeply)"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "not valid JSON (nested too deeply)"),
        ('{"text": "\\ud800 lone"}', "not valid text (a \\uD800-\\uDFFF escape"),
        ('{"text": "\\udc00\\ud800"}', "not valid text"),
    ],
    ids=["brackets", "objects", "lone-surrogate", "reversed-pair"],
)
def test_hostile_json_rows_are_counted_bad_rows(bad, reason, tmp_path):
    from llmtune.data.sources import BadRows, iter_json_rows
    from llmtune.errors import LlmtuneError

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(['{"text": "a"}', bad, '{"text": "\\ud83d\\ude00 pair"}']) + "\n")
    with pytest.raises(LlmtuneError) as error:
        list(iter_json_rows(path, "error", BadRows()))
    assert f"rows.jsonl line 2: {reason}" in str(error.value), error.value
    bad_rows = BadRows()
    kept = [row for _, row in iter_json_rows(path, "skip", bad_rows)]
    assert kept == [{"text": "a"}, {"text": "\U0001f600 pair"}] and bad_rows.total == 1


def test_deeply_nested_json_file_and_deep_valid_values(tmp_path):
    from llmtune.data.sources import BadRows, iter_json_rows
    from llmtune.errors import LlmtuneError

    whole = tmp_path / "deep.json"
    whole.write_text("[" * 100_000)
    with pytest.raises(LlmtuneError, match=r"deep.json: invalid JSON \(nested too deeply"):
        list(iter_json_rows(whole, "error", BadRows()))
    # Nested just under json's limit: parsed, and then any reader's re-serialisation is bounded too.
    from llmtune.data.chat_formats import read_rows

    deep = tmp_path / "tools.jsonl"
    deep.write_text(
        json.dumps({"prompt": "p", "completion": "c", "tools": None}).replace("null", "[" * 900 + "]" * 900)
        + "\n"
        + json.dumps({"prompt": "p", "completion": "c"})
        + "\n"
    )
    bad = BadRows()
    _, rows = read_rows(deep, fmt="auto", columns={}, preference=False, on_bad_rows="skip", bad=bad)
    assert len(rows) + bad.total == 2


def test_text_and_ner_readers_split_on_newline_only(tmp_path):
    from llmtune.data.ner import read_conll, read_span_json
    from llmtune.data.sources import BadRows, split_lines
    from llmtune.data.text import split_txt

    assert split_lines("a\u2028b\r\nc\x85d\n\ne") == ["a\u2028b", "c\x85d", "", "e"]
    assert split_txt("one\u2029two\r\nthree\x0cfour\n", "line") == ["one\u2029two", "three\x0cfour"]
    spans = tmp_path / "spans.jsonl"
    spans.write_text(
        json.dumps({"text": "北京\u2028很大", "label": {"address": {"北京": [[0, 1]]}}}, ensure_ascii=False)
        + "\n"
        + json.dumps({"text": "上海", "label": {"address": {"上海": [[0, 1]]}}}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    sentences = read_span_json(spans, bad=BadRows())
    assert [len(s.tokens) for s in sentences] == [5, 2] and sentences[1].where.endswith("line 2")
    conll = tmp_path / "nbsp.txt"
    conll.write_text("New\u00a0York B-LOC\nis O\r\n\r\nfine\u2028here O\n", encoding="utf-8")
    sentences = read_conll(conll, bad=BadRows())
    assert [s.tokens for s in sentences] == [["New\u00a0York", "is"], ["fine\u2028here"]]
    assert sentences[1].where.endswith("line 4")


# ------------------------------------------------------------------------------------------ globs, links
def _loop_tree(root: Path) -> Path:
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.jsonl").write_text(row("a") + "\n")
    (data / "sub" / "b.jsonl").write_text(row("b") + "\n")
    (data / "sub" / "up").symlink_to("..")  # a loop through the parent
    (data / "self").symlink_to(".")  # and one through itself: together, exponential for glob.glob
    (data / "again.jsonl").symlink_to("a.jsonl")  # the same file under a second name
    return data


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def llmtune_log():
    handler = _Records()
    logger = logging.getLogger("llmtune")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


@pytest.mark.parametrize("entry", ["data/**/*.jsonl", "data/**", "data"])
def test_link_loops_are_walked_once_and_reported(entry, tmp_path, llmtune_log):
    from llmtune.data.sources import expand_sources

    data = _loop_tree(tmp_path)
    started = time.perf_counter()
    with deadline(10):
        files = expand_sources([str(tmp_path / entry)], "data.train_files", (".jsonl",))
    assert time.perf_counter() - started < 2
    assert sorted(f.resolve() for f in files) == [data / "a.jsonl", data / "sub" / "b.jsonl"]
    warnings = "\n".join(llmtune_log)
    assert "a loop" in warnings and str(data / "self") in warnings and str(data / "sub" / "up") in warnings
    assert "read once" in warnings  # again.jsonl is a.jsonl


def test_link_loops_through_the_command(world, tmp_path, cli):
    root, bases = world
    _loop_tree(tmp_path)
    recipe = json.loads(json.dumps(bases["sft"]))
    recipe["data"]["train_files"] = [str(tmp_path / "data" / "**" / "*.jsonl")]
    with deadline(30):
        result = cli("data", "check", "--recipe", str(write_recipe(tmp_path, recipe, "r.yaml")), "-n", "0")
    assert result.exit_code == 0, result.stderr
    assert "data: 2 file(s)" in result.stdout + result.stderr


def test_special_files_found_in_a_folder_or_glob_are_named(tmp_path):
    from llmtune.data.sources import expand_sources
    from llmtune.errors import LlmtuneError

    (tmp_path / "ok.jsonl").write_text("{}\n")
    os.mkfifo(tmp_path / "pipe.jsonl")
    for entry in (str(tmp_path), str(tmp_path / "*.jsonl")):
        with deadline(5), pytest.raises(LlmtuneError, match=r"pipe.jsonl' is a named pipe \(FIFO\)"):
            expand_sources([entry], "data.train_files", (".jsonl",))
    (tmp_path / "pipe.jsonl").unlink()
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(LlmtuneError, match=r"gone.jsonl' is a symbolic link to .*nowhere.jsonl.*dangling"):
        expand_sources([str(tmp_path)], "data.train_files", (".jsonl",))


def test_a_file_too_large_to_read_is_refused_before_reading(tmp_path, monkeypatch):
    from llmtune.data import sources
    from llmtune.errors import LlmtuneError

    big = tmp_path / "big.jsonl"
    with open(big, "wb") as handle:  # sparse: 1 TB of size, no disk
        handle.truncate(1 << 40)
    with deadline(5), pytest.raises(LlmtuneError, match=r"big.jsonl' is 1.1 TB, more than half"):
        sources.expand_sources([str(big)], "data.train_files")
    monkeypatch.setattr(sources, "max_read_bytes", lambda: 100)
    small = tmp_path / "small.txt"
    small.write_text("x" * 200)
    with pytest.raises(LlmtuneError, match="more than half of this machine's memory"):
        sources.read_text_file(small)


# ------------------------------------------------------------------------------------------ derived files
def test_a_damaged_text_cache_is_rebuilt(gpt2_tokenizer, tmp_path, llmtune_log):
    from llmtune.data.text import build_text_datasets
    from llmtune.recipe import TextDataSection

    text = tmp_path / "t.txt"
    text.write_text("word " * 2000)
    data = TextDataSection(train_files=[str(text)], block_size=16, validation_split=0.1, split_by="character")
    first, report = build_text_datasets(data, gpt2_tokenizer, tmp_path / "cache")
    entry = tmp_path / "cache" / "text" / report.cache_key
    _, again = build_text_datasets(data, gpt2_tokenizer, tmp_path / "cache")
    assert again.from_cache
    damage = [
        lambda: (entry / "report.json").write_text('{"files": {'),
        lambda: (entry / "report.json").write_text(json.dumps({"blocks": {"train": 1}, "block_size": 16})),
        lambda: [f.write_bytes(f.read_bytes()[:100]) for f in (entry / "blocks").rglob("*.arrow")],
        lambda: [f.unlink() for f in (entry / "blocks").rglob("*.arrow")],
    ]
    for index, hurt in enumerate(damage):
        hurt()
        llmtune_log.clear()
        blocks, rebuilt = build_text_datasets(data, gpt2_tokenizer, tmp_path / "cache")
        assert not rebuilt.from_cache, index
        assert blocks["train"].num_rows == first["train"].num_rows
        assert any(
            "cache" in line and "damaged" in line and "tokenising again" in line for line in llmtune_log
        )
        assert build_text_datasets(data, gpt2_tokenizer, tmp_path / "cache")[1].from_cache


def test_a_cache_that_cannot_be_written_is_a_warning(gpt2_tokenizer, tmp_path, llmtune_log):
    from llmtune.data.text import build_text_datasets
    from llmtune.recipe import TextDataSection

    text = tmp_path / "t.jsonl"
    text.write_text(
        "".join(json.dumps({"text": f"doc{sep}{i} " * 50}) + "\n" for i, sep in enumerate(SEPARATORS))
    )
    blocked = tmp_path / "home-is-a-file"
    blocked.write_text("")
    data = TextDataSection(train_files=[str(text)], block_size=16)
    blocks, report = build_text_datasets(data, gpt2_tokenizer, blocked)
    assert report.documents_read == len(SEPARATORS) and blocks["train"].num_rows > 0
    assert any("could not write the tokenised-text cache" in line for line in llmtune_log)


def _damaged_adapter(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(content)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


ADAPTER_CONFIGS = [
    ('{"peft_type": "LORA", "base_model_name_or_pa', "line 1"),
    ("", "empty"),
    ('["not", "a", "config"]', "peft_type"),
]


@pytest.mark.parametrize("content, says", ADAPTER_CONFIGS, ids=["truncated", "empty", "a-list"])
def test_a_damaged_adapter_config_in_eval(content, says, tmp_path, cli):
    adapter = _damaged_adapter(tmp_path / "run", content)
    with deadline(20):
        result = cli("eval", "--model", str(adapter), "--generate", "Hi", "--out", str(tmp_path / "out"))
    user_error(result, "adapter_config.json", says, "copy it again")


@pytest.mark.xfail(
    not cli_uses("llmtune.stages.merge", "read_adapter_config"),
    reason="stages/merge.py must read adapter_config.json with llmtune.adapters.read_adapter_config",
    strict=True,
)
def test_a_damaged_adapter_config_in_merge(tmp_path, cli):
    adapter = _damaged_adapter(tmp_path / "run", ADAPTER_CONFIGS[0][0])
    with deadline(20):
        result = cli("merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged"))
    user_error(result, "adapter_config.json", "line 1")


@pytest.mark.xfail(
    not cli_uses("llmtune.models", "read_adapter_config"),
    reason="models.py (_merged_adapter_model) must read adapter_config.json with read_adapter_config",
    strict=True,
)
def test_a_damaged_adapter_config_as_the_sft_model(world, tmp_path, cli):
    root, bases = world
    adapter = _damaged_adapter(tmp_path / "run", ADAPTER_CONFIGS[0][0])
    recipe = json.loads(json.dumps(bases["sft"]))
    recipe["model"]["name_or_path"] = str(adapter)
    recipe["train"]["output_dir"] = str(tmp_path / "out")
    with deadline(20):
        result = cli("sft", "--recipe", str(write_recipe(tmp_path, recipe, "r.yaml")))
    user_error(result, "adapter_config.json", "line 1")


# ------------------------------------------------------------------------------------------ recipe values
def test_a_broken_jinja_template_stops_before_the_model_loads(world, tmp_path, cli, monkeypatch):
    import llmtune.stages.sft as sft

    root, bases = world
    monkeypatch.setattr(sft, "load_causal_lm", lambda *a, **k: pytest.fail("the model loaded first"))
    recipe = json.loads(json.dumps(bases["sft"]))
    recipe["data"]["template"] = "{% for m in messages %}\n{{ m['content'] }\n{% endfor %}"
    recipe["train"]["output_dir"] = str(tmp_path / "out")
    path = write_recipe(tmp_path, recipe, "r.yaml")
    for command in (["sft"], ["data", "check"]):
        with deadline(20):
            user_error(cli(*command, "--recipe", str(path)), "data.template", "line 2", "does not compile")


@pytest.mark.parametrize(
    "template, line",
    [
        ("{% for m in messages %}{{ m['content'] }}", "line 1"),
        ("{{ messages[0]['content'] ", "line 1"),
        ("{% if x %}\n{% for m in messages %}\n{{ m }}\n{% endif %}", "line 4"),
    ],
    ids=["unclosed-for", "unclosed-print", "crossed-blocks"],
)
def test_jinja_errors_name_the_key_and_line(template, line):
    from llmtune.data.templates import check_jinja
    from llmtune.errors import LlmtuneError

    with pytest.raises(
        LlmtuneError, match=rf"^data.template: the Jinja chat template does not compile at {line}"
    ):
        check_jinja(template)
    check_jinja("{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}")


def test_a_template_that_fails_on_a_row_names_the_row(world, tmp_path, cli):
    root, bases = world
    recipe = json.loads(json.dumps(bases["sft"]))
    recipe["data"]["template"] = "{% for m in messages %}{{ raise_exception('no ' + m['role']) }}{% endfor %}"
    recipe["data"]["train_files"] = [str(tmp_path / "rows.jsonl")]
    (tmp_path / "rows.jsonl").write_text(row("a") + "\n")
    with deadline(20):
        result = cli("data", "check", "--recipe", str(write_recipe(tmp_path, recipe, "r.yaml")))
    user_error(result, "rows.jsonl line 1", "chat template", "no user")


def test_ner_max_length_past_the_encoder_positions(world, tmp_path, cli, monkeypatch):
    import llmtune.stages.lora_ner as stage

    root, bases = world
    monkeypatch.setattr(stage, "build_tagger", lambda *a, **k: pytest.fail("the encoder loaded first"))
    recipe = json.loads(json.dumps(bases["lora-ner"]))
    recipe["data"]["max_length"] = 600  # the tiny BERT has 512 positions
    recipe["train"]["output_dir"] = str(tmp_path / "out")
    with deadline(20):
        result = cli("lora-ner", "--recipe", str(write_recipe(tmp_path, recipe, "r.yaml")))
    user_error(result, "data.max_length 600", "512")


def test_position_limits_of_encoder_families():
    from transformers import BertConfig, DebertaV2Config, RobertaConfig

    from llmtune.ner.tagger import position_limit

    assert position_limit(BertConfig(max_position_embeddings=512)) == 512
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert position_limit(DebertaV2Config(position_biased_input=False)) is None


# ------------------------------------------------------------------------------------------ mcq answers
HEADER = "question,choice0,choice1,choice2,choice3,answer\n"


@pytest.mark.parametrize("answer", ["AB", "BCD", "A B", "", "E", "12", "a"])
def test_an_mcq_answer_must_be_exactly_one_label(answer, tmp_path):
    from llmtune.data.sources import BadRows
    from llmtune.errors import LlmtuneError
    from llmtune.evaluation.mcq import read_questions

    path = tmp_path / "anatomy_dev.csv"
    path.write_text(HEADER + "Q1,a,b,c,d,B\n" + f'Q2,a,b,c,d,"{answer}"\n', encoding="utf-8")
    with pytest.raises(LlmtuneError) as error:
        read_questions(path, "auto", "error", BadRows())
    assert "anatomy_dev.csv line 3: answer" in str(error.value) and "mcq.on_bad_rows: skip" in str(
        error.value
    )
    bad = BadRows()
    assert [q.answer for q in read_questions(path, "auto", "skip", bad).questions] == [1]
    assert bad.total == 1


def test_mcq_cells_keep_line_separators_and_valid_answers(tmp_path):
    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import read_questions

    path = tmp_path / "anatomy_dev.csv"
    path.write_text(HEADER + "Q\u2028one,a\x85,b,c,d, C \r\nQ2,a,b,c,d,3\r\n", encoding="utf-8")
    found = read_questions(path, "auto", "error", BadRows()).questions
    assert [(q.question, q.answer) for q in found] == [("Q\u2028one", 2), ("Q2", 3)]
    assert found[1].where.endswith("line 3")


def test_a_huge_mcq_cell_names_the_line(tmp_path):
    from llmtune.data.sources import BadRows
    from llmtune.errors import LlmtuneError
    from llmtune.evaluation.mcq import read_questions

    path = tmp_path / "anatomy_dev.csv"
    path.write_text(HEADER + "Q1,a,b,c,d,B\n" + "x" * HUGE + ",a,b,c,d,A\n")
    with pytest.raises(LlmtuneError, match=r"anatomy_dev.csv line 3: not valid CSV"):
        read_questions(path, "auto", "error", BadRows())


def test_each_bad_row_hint_names_its_own_section(tagger_run, tmp_path):
    from llmtune.data.sources import BadRows, iter_json_rows
    from llmtune.errors import LlmtuneError
    from llmtune.evaluation.ner import evaluate_ner
    from llmtune.recipe.eval import NerTaskSection

    conll = tmp_path / "dev.txt"
    conll.write_text("EU B-ORG\nrejects X-BAD\n")
    with pytest.raises(LlmtuneError, match=r"set ner.on_bad_rows: skip"):
        evaluate_ner(tagger_run, [conll], NerTaskSection(files=[str(conll)]))
    rows = tmp_path / "p.jsonl"
    rows.write_text("not json\n")
    with pytest.raises(LlmtuneError) as error:  # perplexity/prompts have no skip setting to name
        list(iter_json_rows(rows, "error", BadRows(), key=None))
    assert "on_bad_rows" not in str(error.value) and "Fix the row." in str(error.value)


def test_prompts_remember_their_file_and_line(tmp_path):
    from llmtune.evaluation.generation import read_prompts
    from llmtune.recipe.eval import GenerateTaskSection

    path = tmp_path / "prompts.txt"
    path.write_text("first\u2028still first\r\n\r\nsecond\n", encoding="utf-8")
    prompts = read_prompts(GenerateTaskSection(prompts=["given"], prompts_file=str(path)))
    assert prompts == ["given", "first\u2028still first", "second"]
    assert [getattr(p, "where", "") for p in prompts[1:]] == [f"{path} line 1", f"{path} line 3"]
