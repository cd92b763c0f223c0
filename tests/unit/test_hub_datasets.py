"""Hub datasets in data sections: the `hf:`/`ms:` reference and its `dataset:` mapping, loading from the hub's
snapshot cache offline, save_to_disk folders and dataset repository folders, split slices and row limits,
the same readers and reports as local files, `llmtune fetch --dataset`, and the offline message.

The network is never reached (conftest sets HF_HUB_OFFLINE): datasets are placed in a temporary
HuggingFace cache as `llmtune fetch --dataset` leaves them, and the download itself
(`huggingface_hub.snapshot_download` / `modelscope.snapshot_download`) is the boundary that is mocked."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from llmtune.errors import LlmtuneError
from llmtune.recipe.hub_dataset import BadReference, HubReference, parse_reference
from tests.unit.test_sft import sft_recipe

ALPACA = [{"instruction": f"What is {i} plus {i}?", "input": "", "output": f"{2 * i}"} for i in range(40)]


def hub_snapshot(cache: Path, repo: str, files: dict[str, str], revision: str = "main") -> Path:
    """A dataset repository as huggingface_hub's cache holds it after a download."""
    root = cache / f"datasets--{repo.replace('/', '--')}"
    commit = (repo.replace("/", "") + "0" * 40)[:40]
    snapshot = root / "snapshots" / commit
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text, encoding="utf-8")
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return snapshot


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HuggingFace hub cache for this test (huggingface_hub reads the constant at call time)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


# ------------------------------------------------------------------------------------------ references
@pytest.mark.parametrize(
    "entry, expected",
    [
        ("hf:tatsu-lab/alpaca", HubReference("hf", "tatsu-lab/alpaca")),
        ("hf:tatsu-lab/alpaca#500", HubReference("hf", "tatsu-lab/alpaca", limit=500)),
        (
            "hf:openai/gsm8k?subset=main&split=test[:200]",
            HubReference("hf", "openai/gsm8k", subset="main", split="test[:200]"),
        ),
        (
            "ms:AI-ModelScope/alpaca-gpt4-data-en?revision=master&split=train[10%:]+validation#7",
            HubReference(
                "modelscope",
                "AI-ModelScope/alpaca-gpt4-data-en",
                split="train[10%:]+validation",
                revision="master",
                limit=7,
            ),
        ),
        ("modelscope:a/b?name=x", HubReference("modelscope", "a/b", subset="x")),
        ("hf:a/b?revision=v1%26v2", HubReference("hf", "a/b", revision="v1&v2")),
    ],
)
def test_references_parse_and_round_trip(entry, expected):
    assert parse_reference(entry) == expected
    assert parse_reference(expected.canonical()) == expected


@pytest.mark.parametrize(
    "entry, message",
    [
        ("hf:tatsu-lab/alpaca#0", "row limit after '#' must be a whole number of at least 1"),
        ("hf:tatsu-lab/alpaca#ten", "row limit"),
        ("hf:tatsu-lab/alpaca?splt=test", "unknown option 'splt'"),
        ("hf:tatsu-lab/alpaca?split=", "has no value"),
        ("hf:tatsu-lab/alpaca?split=train[:five]", "not datasets' split syntax"),
        ("hf:", "no dataset id"),
        ("hf:a/b/c", "not a hub dataset id"),
    ],
)
def test_bad_references_say_what_is_wrong(entry, message):
    with pytest.raises(BadReference, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_reference(entry)


def test_plain_paths_are_not_references():
    for entry in ["tatsu-lab/alpaca", "data/train.jsonl", "/abs/hf:x", "C:/data.jsonl", "http://x/y"]:
        assert parse_reference(entry) is None


def test_the_recipe_writes_every_form_canonically(tmp_path, write_recipe):
    from llmtune.recipe import load_recipe

    (tmp_path / "saved").mkdir()
    recipe = sft_recipe(tmp_path, tmp_path / "model")
    recipe["data"]["train_files"] = [
        "hf:tatsu-lab/alpaca#5",
        {"dataset": "openai/gsm8k", "subset": "main", "split": "test[:20]", "limit": 3},
        {"dataset": "AI-ModelScope/alpaca-gpt4-data-en", "hub": "modelscope", "revision": "master"},
        {"dataset": "./saved", "split": "test"},
        "hf:./saved?split=train[:2]",
    ]
    recipe["data"]["validation_files"] = {"dataset": "tatsu-lab/alpaca", "split": "train[-5:]"}
    loaded = load_recipe(write_recipe(recipe), "sft")
    saved = str(tmp_path / "saved")
    assert loaded.data.train_files == [
        "hf:tatsu-lab/alpaca#5",
        "hf:openai/gsm8k?subset=main&split=test[:20]#3",
        "ms:AI-ModelScope/alpaca-gpt4-data-en?revision=master",
        f"hf:{saved}?split=test",
        f"hf:{saved}?split=train[:2]",
    ]
    assert loaded.data.validation_files == ["hf:tatsu-lab/alpaca?split=train[-5:]"]
    # the run folder's recipe.yaml loads back to the same entries
    again = load_recipe(
        write_recipe(json.loads(json.dumps(loaded.model_dump(mode="json"))), "again.yaml"), "sft"
    )
    assert again.data.train_files == loaded.data.train_files


def test_recipe_problems_name_the_key(tmp_path, write_recipe, cli):
    recipe = sft_recipe(tmp_path, tmp_path / "model")
    recipe["data"]["train_files"] = ["hf:tatsu-lab/alpaca#0", {"dataset": "a/b", "splt": "test"}]
    result = cli("sft", str(write_recipe(recipe)))
    assert result.exit_code == 2
    assert "data.train_files.0: 'hf:tatsu-lab/alpaca#0': the row limit" in result.stderr
    assert "data.train_files.1: {'dataset': 'a/b', 'splt': 'test'}: unknown key(s) 'splt'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_local_file_called_like_a_reference_is_ambiguous(tmp_path, write_recipe, cli):
    (tmp_path / "hf:tatsu-lab").mkdir()
    (tmp_path / "hf:tatsu-lab" / "alpaca").write_text("{}\n")
    recipe = sft_recipe(tmp_path, tmp_path / "model")
    recipe["data"]["train_files"] = "hf:tatsu-lab/alpaca"
    result = cli("sft", str(write_recipe(recipe)))
    assert result.exit_code == 2
    assert "names a hub dataset, and a local file of that name exists too" in result.stderr
    assert "write './hf:tatsu-lab/alpaca' for the file" in result.stderr


# ------------------------------------------------------------------------------------------ loading
def test_a_cached_hub_dataset_loads_offline_with_a_slice_and_a_limit(hf_cache, tmp_path):
    from llmtune.data.chat_dataset import load_examples  # noqa: F401 - the reader sft uses
    from llmtune.data.sources import expand_sources

    hub_snapshot(hf_cache, "tatsu-lab/alpaca", {"data/train.jsonl": jsonl(ALPACA), "README.md": "# alpaca\n"})
    [path] = expand_sources(["hf:tatsu-lab/alpaca?split=train[10:30]#5"], "data.train_files", (".jsonl",))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == ALPACA[10:15]
    # written once: the same reference reuses the file
    assert expand_sources(["hf:tatsu-lab/alpaca?split=train[10:30]#5"], "k", (".jsonl",)) == [path]
    [other] = expand_sources(["hf:tatsu-lab/alpaca?split=train[-3:]"], "k", (".jsonl",))
    assert [json.loads(line) for line in other.read_text().splitlines()] == ALPACA[-3:]


def test_subsets_and_splits_of_a_dataset_repository(hf_cache):
    from llmtune.data.sources import expand_sources

    card = (
        "---\nconfigs:\n- config_name: easy\n  data_files:\n  - split: train\n    path: easy/train.jsonl\n"
        "  - split: test\n    path: easy/test.jsonl\n- config_name: hard\n  data_files:\n  - split: train\n"
        "    path: hard/train.jsonl\n---\n"
    )
    hub_snapshot(
        hf_cache,
        "math/arith",
        {
            "README.md": card,
            "easy/train.jsonl": jsonl(ALPACA[:4]),
            "easy/test.jsonl": jsonl(ALPACA[4:6]),
            "hard/train.jsonl": jsonl(ALPACA[6:9]),
        },
    )
    [easy_test] = expand_sources(["hf:math/arith?subset=easy&split=test"], "k", (".jsonl",))
    assert [json.loads(x) for x in easy_test.read_text().splitlines()] == ALPACA[4:6]
    [hard] = expand_sources(["hf:math/arith?subset=hard"], "k", (".jsonl",))
    assert [json.loads(x) for x in hard.read_text().splitlines()] == ALPACA[6:9]
    with pytest.raises(LlmtuneError, match="cannot select subset 'easy', split 'validation'"):
        expand_sources(["hf:math/arith?subset=easy&split=validation"], "data.train_files", (".jsonl",))


def test_save_to_disk_folders_by_name_or_as_a_plain_folder(tmp_path):
    import datasets

    from llmtune.data.sources import expand_sources

    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ALPACA[:10]), "test": datasets.Dataset.from_list(ALPACA[10:14])}
    ).save_to_disk(str(folder))
    [test] = expand_sources([f"hf:{folder}?split=test[:50%]"], "k", (".jsonl",))
    assert [json.loads(x) for x in test.read_text().splitlines()] == ALPACA[10:12]
    # A plain folder entry: its train split, not its dataset_dict.json / state.json read as data rows.
    [train] = expand_sources([str(folder)], "k", (".jsonl", ".json"))
    assert [json.loads(x) for x in train.read_text().splitlines()] == ALPACA[:10]
    with pytest.raises(LlmtuneError, match=r"Splits there: train, test"):
        expand_sources([f"hf:{folder}?split=validation"], "data.train_files", (".jsonl",))
    single = tmp_path / "one"
    datasets.Dataset.from_list(ALPACA[:3]).save_to_disk(str(single))
    [one] = expand_sources([f"hf:{single}#2"], "k", (".jsonl",))
    assert [json.loads(x) for x in one.read_text().splitlines()] == ALPACA[:2]


def test_a_missing_dataset_offline_says_how_to_fetch_it(
    hf_cache, tmp_path, tiny_pretrained, write_recipe, cli
):
    recipe = sft_recipe(tmp_path, tiny_pretrained)
    recipe["data"]["train_files"] = "hf:yahma/alpaca-cleaned?split=train[:100]"
    result = cli("sft", str(write_recipe(recipe)))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert (
        "data.train_files: dataset hf:yahma/alpaca-cleaned?split=train[:100] is not in the local HuggingFace cache"
        in message
    )
    assert "offline mode is set" in message
    assert "`llmtune fetch --dataset hf:yahma/alpaca-cleaned?split=train[:100]`" in message
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_fetch_downloads_into_the_cache_and_later_runs_need_no_network(hf_cache, monkeypatch, cli):
    import huggingface_hub

    calls = []

    def download(repo_id, *, repo_type=None, revision=None, local_files_only=False, **_):
        calls.append((repo_id, repo_type, revision, local_files_only))
        if local_files_only:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not cached")
        return str(hub_snapshot(hf_cache, repo_id, {"train.jsonl": jsonl(ALPACA[:7])}))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    result = cli("fetch", "--dataset", "hf:someone/arith?split=train[:5]")
    assert result.exit_code == 0, result.stderr
    assert calls == [("someone/arith", "dataset", None, False)]
    assert "hf:someone/arith?split=train[:5]: " in result.stdout and "5 rows" in result.stderr
    # afterwards, offline: the real huggingface_hub finds the snapshot in the cache
    monkeypatch.undo()
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from llmtune.data.sources import expand_sources

    [path] = expand_sources(["hf:someone/arith?split=train[:5]"], "k", (".jsonl",))
    assert len(path.read_text().splitlines()) == 5
    assert cli("fetch", "--dataset", "hf:someone/arith").exit_code == 2  # offline: says it cannot fetch


def test_modelscope_datasets_go_through_modelscope(tmp_path, monkeypatch):
    import modelscope

    from llmtune.data.sources import expand_sources

    repo = tmp_path / "ms-repo"
    repo.mkdir()
    (repo / "train.jsonl").write_text(jsonl(ALPACA[:6]))
    calls = []

    def download(repo_id=None, *, repo_type=None, revision=None, local_files_only=False, **_):
        calls.append((repo_id, repo_type, revision, local_files_only))
        return str(repo)

    monkeypatch.setattr(modelscope, "snapshot_download", download)
    [path] = expand_sources(["ms:AI-ModelScope/arith?revision=master#4"], "k", (".jsonl",))
    assert [json.loads(x) for x in path.read_text().splitlines()] == ALPACA[:4]
    assert calls == [("AI-ModelScope/arith", "dataset", "master", True)]  # the cache first


def test_a_conll_shaped_dataset_is_read_by_lora_ner(tmp_path):
    import datasets

    from llmtune.data.ner import NER_SUFFIXES
    from llmtune.data.sources import expand_sources

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC"])),
        }
    )
    rows = {"tokens": [["Ada", "Lovelace", "visited", "Paris"], ["Hi"]], "ner_tags": [[1, 2, 0, 3], [0]]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "conll"))
    [path] = expand_sources([f"hf:{tmp_path / 'conll'}"], "data.train_files", NER_SUFFIXES)
    assert path.suffix == ".conll"
    assert path.read_text() == "Ada B-PER\nLovelace I-PER\nvisited O\nParis B-LOC\n\nHi O\n\n"


def test_pretraining_text_from_a_hub_dataset(hf_cache, tmp_path, gpt2_tokenizer):
    from llmtune.data.text import build_text_datasets
    from llmtune.recipe import TextDataSection

    docs = [{"text": f"Document number {i} talks about the weather in town {i}."} for i in range(30)]
    hub_snapshot(hf_cache, "corpus/small", {"train.jsonl": jsonl(docs)})
    tokenizer = gpt2_tokenizer
    data = TextDataSection(train_files=["hf:corpus/small#20"], block_size=16, validation_split=0.1)
    built, report = build_text_datasets(data, tokenizer, tmp_path / "cache")
    assert report.documents["train"] + report.documents["validation"] == 20


# ------------------------------------------------------------------------------------------ training
def test_sft_trains_offline_on_a_cached_hub_dataset_slice(
    hf_cache, tmp_path, tiny_pretrained, write_recipe, cli
):
    hub_snapshot(hf_cache, "tatsu-lab/alpaca", {"data/train.jsonl": jsonl(ALPACA), "README.md": "# alpaca\n"})
    recipe = sft_recipe(tmp_path, tiny_pretrained, peft={"method": "lora", "r": 4})
    recipe["data"]["train_files"] = "hf:tatsu-lab/alpaca?split=train[:24]"
    recipe["data"]["validation_files"] = {"dataset": "tatsu-lab/alpaca", "split": "train[-8:]"}
    path = write_recipe(recipe)
    result = cli("sft", str(path))  # the positional recipe, as LLaMA-Factory users type it
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    report = json.loads((run / "data_report.json").read_text())
    assert report["examples"]["train"] == 24 and report["examples"]["validation"] == 8
    assert set(report["formats"].values()) == {"alpaca"}
    losses = [row["loss"] for row in json.loads((run / "metrics.json").read_text())["train"]]
    assert losses[-1] < losses[0]
    assert "hf:tatsu-lab/alpaca?split=train[:24] from the HuggingFace cache: 24 rows" in result.stderr
    assert "- hf:tatsu-lab/alpaca?split=train[:24]" in (run / "recipe.yaml").read_text()


def test_preference_pairs_and_rl_prompts_from_saved_datasets(tmp_path, gpt2_tokenizer):
    """dpo/reward and grpo/rloo read hub rows through their own readers and detection, as for files."""
    import datasets

    from llmtune.data.chat_dataset import load_examples
    from llmtune.data.prompts import load_prompts
    from llmtune.recipe import ChatDataSection, PromptDataSection

    pairs = [
        {"prompt": f"Add {i} and {i}.", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"} for i in range(9)
    ]
    datasets.Dataset.from_list(pairs).save_to_disk(str(tmp_path / "pairs"))
    examples, report = load_examples(
        ChatDataSection(train_files=[f"hf:{tmp_path / 'pairs'}?split=train[:6]"]), preference=True
    )
    assert len(examples["train"]) == 6 and set(report.formats.values()) == {"preference"}

    problems = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
    datasets.Dataset.from_list(problems).save_to_disk(str(tmp_path / "problems"))
    data = PromptDataSection(train_files=[f"hf:{tmp_path / 'problems'}#4"], template="chatml")
    prompts, report = load_prompts(copy.deepcopy(gpt2_tokenizer), data)  # the template is set on it
    assert [row["answer"] for row in prompts["train"]] == ["0", "2", "4", "6"]


def test_a_streamed_hub_dataset_gives_map_style_blocks_of_the_same_rows(
    hf_cache, tmp_path, gpt2_tokenizer, llmtune_home
):
    """Streaming pretraining reads a cached hub dataset lazily (a slice applied with skip/take) and packs
    exactly the blocks map-style builds from the same rows."""
    import itertools

    from llmtune.data.text import build_text_datasets
    from llmtune.data.text_stream import StreamPosition, build_streaming_datasets
    from llmtune.recipe import TextDataSection

    docs = [
        {"text": f"Document {i} says the river in town {i} rose by {i % 7} feet overnight."}
        for i in range(60)
    ]
    hub_snapshot(hf_cache, "corpus/rivers", {"train.jsonl": jsonl(docs)})
    entry = "hf:corpus/rivers?split=train[5:45]#30"  # rows 5..34
    mapped, _ = build_text_datasets(
        TextDataSection(train_files=[entry], block_size=16, cache=False), gpt2_tokenizer, tmp_path
    )
    expected = np.asarray(mapped["train"]["input_ids"])
    written = sorted(llmtune_home.glob("cache/hub-datasets/**/*.jsonl"))
    assert len(written) == 1  # map-style's file
    streamed, _, _ = build_streaming_datasets(
        TextDataSection(train_files=[entry], block_size=16, streaming=True), gpt2_tokenizer
    )
    stream = streamed["train"]
    blocks = [
        block
        for block, _ in itertools.islice(stream.blocks(StreamPosition(), stream.new_counts()), len(expected))
    ]
    assert np.array_equal(np.stack(blocks), expected)
    assert sorted(llmtune_home.glob("cache/hub-datasets/**/*.jsonl")) == written  # the stream wrote nothing
    with pytest.raises(LlmtuneError, match="a streamed split takes absolute row ranges"):
        build_streaming_datasets(
            TextDataSection(
                train_files=["hf:corpus/rivers?split=train[-10:]"], block_size=16, streaming=True
            ),
            gpt2_tokenizer,
        )
