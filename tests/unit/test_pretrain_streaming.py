"""`data.streaming: true` for `llmtune pretrain`: the stream's blocks are map-style's blocks, held-out
documents are never trained on, hub entries are streamed, bad input is explained, and --resume continues
the stream exactly."""

from __future__ import annotations

import itertools
import json
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtune.data.text import build_text_datasets
from llmtune.data.text_stream import STATE_FILE, StreamPosition, build_streaming_datasets
from llmtune.errors import LlmtuneError
from llmtune.recipe import PretrainRecipe, TextDataSection, load_recipe
from tests.conftest import VERDICT, tiny_pretrain_recipe

ARTICLE = VERDICT.parents[1] / "medicalgpt" / "pretrain" / "en_article_tail500.txt"


def read_json(path):
    return json.loads(path.read_text())


def stream_blocks(stream, count, start=StreamPosition()):
    """The first `count` (block, position after it) of a stream, with counts of their own."""
    return list(itertools.islice(stream.blocks(start, stream.new_counts()), count))


def streaming_recipe(tmp_path, **sections):
    """tiny_pretrain_recipe on The Verdict's 82 lines as documents, streamed, 8 held out for validation."""
    data = {
        "txt_document": "line",
        "validation_split": 0.0,
        "streaming": True,
        "validation_documents": 8,
        **sections.pop("data", {}),
    }
    return tiny_pretrain_recipe(tmp_path, data=data, **sections)


def write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


# ------------------------------------------------------------------------------------------ blocks
@pytest.mark.parametrize("stride", [None, 40])
def test_stream_blocks_are_map_style_blocks_in_order(gpt2_tokenizer, tmp_path, stride):
    """With no validation and no shuffling, pass 1 of the stream is exactly the array map-style builds
    (over a .txt and a .jsonl, with every cleaning step on), and pass 2 starts it again."""
    rows = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"text": "A  row   of text that is long enough."},
            {"text": "short"},
            {"text": "Caf\u0065\u0301 au lait " * 9},
        ],
    )
    options = dict(
        train_files=[str(ARTICLE), str(rows)],
        txt_document="paragraph",
        block_size=64,
        stride=stride,
        clean={
            "unicode_normalization": "NFC",
            "collapse_whitespace": True,
            "deduplicate": True,
            "min_chars": 20,
        },
    )
    mapped, report = build_text_datasets(TextDataSection(**options, cache=False), gpt2_tokenizer, tmp_path)
    expected = np.asarray(mapped["train"]["input_ids"])
    datasets, _, _ = build_streaming_datasets(TextDataSection(**options, streaming=True), gpt2_tokenizer)
    stream = datasets["train"]
    counts = stream.new_counts()
    got = list(itertools.islice(stream.blocks(StreamPosition(), counts), 2 * len(expected)))
    assert len(expected) > 90
    np.testing.assert_array_equal(np.stack([b for b, _ in got[: len(expected)]]), expected)
    np.testing.assert_array_equal(np.stack([b for b, _ in got[len(expected) :]]), expected)  # pass 2
    assert [p.passes for _, p in got[len(expected) - 1 : len(expected) + 1]] == [0, 1]
    # the counts are map-style's, once per pass (the corpus is read whole before its first block here)
    assert counts.passes == 2 and report.cleaning[0] == {"step": "unicode NFC", "changed": 1}
    assert counts.cleaner.steps() == [
        {k: v if k == "step" else 2 * v for k, v in s.items()} for s in report.cleaning
    ]
    assert counts.dropped_tail_tokens == report.dropped_tail_tokens["train"]


def test_a_stream_started_at_a_saved_position_gives_the_blocks_that_followed(gpt2_tokenizer):
    data = TextDataSection(
        train_files=[str(ARTICLE)], txt_document="paragraph", block_size=48, streaming=True
    )
    stream = build_streaming_datasets(data, gpt2_tokenizer)[0]["train"]
    run = stream_blocks(stream, 130)  # into the second pass
    for k in (0, 7, 60, 95, 110):
        after = run[k][1]
        resumed = stream_blocks(stream, 15, start=after)
        for (expected, _), (block, _) in zip(run[k + 1 : k + 16], resumed, strict=True):
            np.testing.assert_array_equal(block, expected)
    assert any(p.offset > 0 for _, p in run)  # positions inside documents, not only at their starts


def test_validation_documents_are_held_out_of_every_pass(gpt2_tokenizer, tmp_path):
    docs = [f"held out {i}: zebra quartz marker." for i in range(3)] + [
        f"Training document {i} about ordinary things." for i in range(40)
    ]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n")
    data = TextDataSection(train_files=[str(path)], block_size=64, streaming=True, validation_documents=3)
    datasets, report, _ = build_streaming_datasets(data, gpt2_tokenizer)
    shown = gpt2_tokenizer.decode(np.concatenate(datasets["validation"]["input_ids"]))
    assert shown == "".join(d + "<|endoftext|>" for d in docs[:3])
    assert report.validation["documents"] == 3 and "first 3 documents" in report.split
    trained = gpt2_tokenizer.decode(
        np.concatenate([b for b, _ in stream_blocks(datasets["train"], 40)])
    )  # 8 passes
    assert "zebra" not in trained and "Training document 0 " in trained and "Training document 39" in trained


# ------------------------------------------------------------------------------------------ inputs
def test_hub_entries_are_streamed_through_hub_iterable_in_order(gpt2_tokenizer, tmp_path, monkeypatch):
    from datasets import IterableDataset

    from llmtune.recipe.hub_dataset import HubReference

    asked = []

    def hub_iterable(ref, key):
        asked.append((ref, key))

        def rows():
            yield {"text": "A row from the hub, long enough to count."}
            yield {"title": "no text field"}
            yield {"text": "Another hub row with its own words."}

        return IterableDataset.from_generator(rows)

    def materialise(*args, **kwargs):
        raise AssertionError("a hub entry must be streamed, not materialised")

    fake = types.ModuleType("llmtune.data.hub_datasets")
    fake.hub_iterable, fake.materialise = hub_iterable, materialise
    fake.is_saved_dataset = lambda folder: False
    monkeypatch.setitem(sys.modules, "llmtune.data.hub_datasets", fake)
    local = tmp_path / "local.txt"
    local.write_text("A local line of text first.\n")
    data = TextDataSection(
        train_files=[str(local), "hf:someone/corpus?split=train[:500]#500"],
        block_size=4,
        streaming=True,
        on_bad_rows="skip",
        clean={"min_chars": 20},
    )
    datasets, report, _ = build_streaming_datasets(data, gpt2_tokenizer)
    assert asked[0] == (
        HubReference(hub="hf", name="someone/corpus", split="train[:500]", limit=500),
        "data.train_files",
    )
    assert report.sources == [str(local), "hf:someone/corpus?split=train[:500]#500"]
    stream = datasets["train"]
    counts = stream.new_counts()
    text = gpt2_tokenizer.decode(
        np.concatenate([b for b, _ in itertools.islice(stream.blocks(StreamPosition(), counts), 20)])
    )
    assert text.startswith("A local line of text first.<|endoftext|>A row from the hub")
    assert "Another hub row" in text
    assert counts.passes > 1 and counts.bad.counts == {
        "missing text field 'text'": counts.passes
    }  # once a pass
    assert counts.bad.examples["missing text field 'text'"] == "hf:someone/corpus?split=train[:500]#500 row 2"
    assert "1 file(s) and 1 hub dataset(s)" in report.lines()[0]


def test_a_bad_row_stops_the_stream_naming_file_and_line_before_training(gpt2_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "fine text here"}, "{broken", {"text": "more"}])
    data = TextDataSection(train_files=[str(path)], block_size=4, streaming=True)
    with pytest.raises(LlmtuneError, match=r"c.jsonl line 2: not valid JSON .*data.on_bad_rows: skip"):
        build_streaming_datasets(data, gpt2_tokenizer)


def test_too_little_text_and_nothing_left_after_holding_out_are_explained(gpt2_tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Hi\nthere\n")
    with pytest.raises(LlmtuneError, match="too few for one block; add data or lower data.block_size"):
        build_streaming_datasets(
            TextDataSection(train_files=[str(path)], block_size=64, streaming=True), gpt2_tokenizer
        )
    with pytest.raises(
        LlmtuneError, match="data.validation_documents holds out 2: nothing is left to train on"
    ):
        build_streaming_datasets(
            TextDataSection(train_files=[str(path)], block_size=2, streaming=True, validation_documents=2),
            gpt2_tokenizer,
        )


def test_prune_and_distill_refuse_a_streaming_data_section(gpt2_tokenizer, tmp_path):
    data = TextDataSection(train_files=[str(VERDICT)], streaming=True)
    with pytest.raises(LlmtuneError, match="data.streaming is read by llmtune pretrain only"):
        build_text_datasets(data, gpt2_tokenizer, tmp_path)


# ------------------------------------------------------------------------------------------ recipe rules
@pytest.mark.parametrize(
    ("data", "train", "message"),
    [
        (
            {},
            {"max_steps": None, "num_train_epochs": 2},
            r"data.streaming needs train.max_steps > 0.*instead of train.num_train_epochs",
        ),
        ({}, {"max_steps": -1}, r"data.streaming needs train.max_steps > 0 \(got -1\)"),
        (
            {"validation_documents": 0, "validation_split": 0.1},
            {},
            r"with data.streaming use data.validation_documents",
        ),
        ({"streaming": False}, {}, r"data.validation_documents holds out the start of a stream"),
        ({}, {"eval_strategy": "epoch"}, r"train.eval_strategy is 'epoch'.*use train.eval_strategy: steps"),
        ({}, {"dataloader_num_workers": 2}, r"train.dataloader_num_workers > 0 with data.streaming"),
    ],
)
def test_streaming_recipe_rules(tmp_path, write_recipe, data, train, message):
    recipe = streaming_recipe(tmp_path, data=data)
    for key, value in train.items():
        if value is None:
            recipe["train"].pop(key)
        else:
            recipe["train"][key] = value
    with pytest.raises(LlmtuneError, match=message):
        load_recipe(write_recipe(recipe), PretrainRecipe, [])


# ------------------------------------------------------------------------------------------ end to end
def test_streaming_pretrain_learns_reports_and_never_trains_on_held_out_documents(
    tmp_path, write_recipe, cli, monkeypatch, gpt2_tokenizer
):
    from transformers import Trainer

    trained = []
    step = Trainer.training_step

    def recording_step(self, model, inputs, *args, **kwargs):
        trained.append(inputs["input_ids"].clone())
        return step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", recording_step)
    recipe = streaming_recipe(tmp_path, train={"max_steps": 14, "eval_steps": 7})  # 56 of 65 blocks: 1 pass
    result = cli("pretrain", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    metrics = read_json(run / "metrics.json")
    losses = [row["loss"] for row in metrics["train"]]
    evals = [row["eval_loss"] for row in metrics["eval"]]
    assert losses[0] > losses[-1] + 1 and evals[0] > evals[-1] + 1  # evaluated while streaming
    assert len(evals) == 3  # before training, at step 7 and at step 14
    # exactly the stream's first 56 blocks, in order, none from the 8 held-out lines
    data = TextDataSection(train_files=[str(VERDICT)], block_size=64, streaming=True, validation_documents=8)
    stream = build_streaming_datasets(data, gpt2_tokenizer)[0]["train"]
    expected = np.stack([b for b, _ in stream_blocks(stream, 56)])
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t in trained]), expected)
    held_out = [line for line in VERDICT.read_text().splitlines() if line.strip()][:8]
    text = gpt2_tokenizer.decode(expected.ravel())
    assert not any(line[:60] in text for line in held_out) and held_out[-1][:60] in VERDICT.read_text()
    report = read_json(run / "data_report.json")
    assert report["streaming"] is True and report["counted"] is True
    assert report["validation"]["documents"] == 8 and report["blocks_trained"] == 56
    assert report["blocks_read"] >= 56 and report["passes"] == 1 and report["held_out_documents"] == 8
    manifest = read_json(run / "manifest.json")
    assert manifest["data"]["streaming"] is True and manifest["results"]["train_tokens"] == 56 * 64
    assert (
        "data: streaming from 1 file(s)" in result.stderr
        and "(56 trained, the rest read ahead)" in result.stderr
    )


@pytest.mark.slow  # two runs through a few hundred blocks
def test_a_bad_row_met_while_training_stops_the_run_naming_file_and_line(tmp_path, write_recipe, cli):
    """Only the rows up to the first block are read before training: a bad row further on is met while
    training, and stops the run as map-style's up-front read would (exit 2, file and line, no traceback)."""
    lines = [line for line in VERDICT.read_text().splitlines() if line.strip()]
    rows = [
        {"text": line} for line in lines
    ] * 4  # 328 rows: the first tokeniser batch (256) is read up front
    path = write_jsonl(tmp_path / "verdict.jsonl", [*rows, {"body": "x"}])
    recipe = streaming_recipe(tmp_path, data={"train_files": str(path), "validation_documents": 2})
    recipe["train"] |= {
        "max_steps": 30,
        "per_device_train_batch_size": 16,
        "eval_steps": 30,
        "eval_on_start": False,
    }
    result = cli("pretrain", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "model: llama from config" in result.stderr  # met while training, not before
    assert f"{path} line {len(rows) + 1}: missing text field 'text'" in result.stderr
    skipped = cli(
        "pretrain", "--recipe", str(write_recipe(recipe)), "--overwrite", "--set", "data.on_bad_rows=skip"
    )
    assert skipped.exit_code == 0, skipped.stderr
    assert "bad rows skipped (missing text field 'text'): 1, first at" in skipped.stderr


@pytest.mark.slow  # three runs of the tiny model
def test_resume_of_a_streaming_run_gives_the_uninterrupted_losses(tmp_path, write_recipe, cli):
    train = {
        "max_steps": 34,  # 136 blocks: into the stream's second pass over the 107 blocks of The Verdict
        "save_strategy": "steps",
        "save_steps": 28,
        "logging_steps": 1,
        "eval_strategy": "no",
        "eval_on_start": False,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
    }
    data = {"validation_documents": 0, "stride": 48}
    full = streaming_recipe(tmp_path / "a", data=data, train={**train, "output_dir": str(tmp_path / "full")})
    assert cli("pretrain", "--recipe", str(write_recipe(full, "full.yaml"))).exit_code == 0
    part = streaming_recipe(tmp_path / "b", data=data, train={**train, "output_dir": str(tmp_path / "part")})
    path = write_recipe(part, "part.yaml")
    assert cli("pretrain", "--recipe", str(path), "--set", "train.max_steps=28").exit_code == 0
    state = read_json(tmp_path / "part" / "checkpoint-28" / STATE_FILE)
    assert state["step"] == 28 and state["blocks"] == 28 * 4 and state["position"]["passes"] == 1
    changed = cli("pretrain", "--recipe", str(path), "--resume", "--set", "data.stride=32")
    assert changed.exit_code == 2 and "the data section or the tokenizer changed" in changed.stderr
    result = cli("pretrain", "--recipe", str(path), "--resume")
    assert result.exit_code == 0, result.stderr
    assert "resumed at pass 2, document" in result.stderr
    losses = lambda run: [row["loss"] for row in read_json(tmp_path / run / "metrics.json")["train"]]  # noqa: E731
    assert len(losses("part")) == 34
    assert losses("part") == pytest.approx(losses("full"), abs=1e-6)


# ------------------------------------------------------------------------------------------ files of any size
# The streaming path reads .jsonl rows and .txt lines or paragraphs in chunks, so a file larger than memory
# streams; what it reads must be exactly what map-style's whole-file readers read.
_TEXT = st.text(alphabet=st.sampled_from(list("ab \t\n\r\n\né中🙂")), max_size=200)


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, cuts=st.lists(st.integers(0, 200), max_size=8))
def test_paragraphs_read_in_chunks_are_the_whole_text_paragraphs(text, cuts):
    from llmtune.data.text import split_txt, stream_paragraphs

    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert list(stream_paragraphs(chunks)) == split_txt(text, "paragraph")


@settings(max_examples=100, deadline=None)
@given(text=_TEXT, chunk_bytes=st.integers(1, 9))
def test_text_and_lines_read_in_chunks_are_the_whole_file_read(tmp_path_factory, text, chunk_bytes):
    from llmtune.data.sources import iter_lines, iter_text_chunks, read_text_file, split_lines

    path = tmp_path_factory.mktemp("chunks") / "t.txt"
    path.write_bytes(("\ufeff" + text).encode("utf-8"))  # a BOM too, and characters split across chunks
    assert "".join(iter_text_chunks(path, chunk_bytes=chunk_bytes)) == read_text_file(path) == text
    assert [line for _, line in iter_lines(path, chunk_bytes=chunk_bytes)] == split_lines(text)


def test_a_bad_byte_deep_in_a_streamed_file_is_named_as_the_whole_file_reader_names_it(tmp_path):
    from llmtune.data.sources import iter_lines, read_text_file

    path = tmp_path / "bad.txt"
    path.write_bytes(("line\n" * 5000).encode() + b"caf\xe9\n" + b"more\n")
    with pytest.raises(LlmtuneError) as whole:
        read_text_file(path)
    with pytest.raises(LlmtuneError) as streamed:
        list(iter_lines(path, chunk_bytes=1000))
    assert streamed.value.message == whole.value.message
    assert "line 5001: not UTF-8 text (byte 0xe9 at offset 25003)" in streamed.value.message


def test_a_file_larger_than_map_style_can_read_streams(gpt2_tokenizer, tmp_path, monkeypatch):
    """map-style refuses a file over half the memory (it reads files whole); the stream reads it in chunks
    and packs the same blocks map-style builds when it may read it."""
    import llmtune.data.sources as sources

    rows = write_jsonl(
        tmp_path / "big.jsonl", [{"text": f"Row {i} of a corpus that is large."} for i in range(300)]
    )
    options = dict(train_files=[str(ARTICLE), str(rows)], txt_document="paragraph", block_size=32)
    mapped, _ = build_text_datasets(TextDataSection(**options, cache=False), gpt2_tokenizer, tmp_path)
    expected = np.asarray(mapped["train"]["input_ids"])
    monkeypatch.setattr(sources, "max_read_bytes", lambda: 4096)  # both files are larger than this now
    with pytest.raises(LlmtuneError, match="more than half of this machine's memory"):
        build_text_datasets(TextDataSection(**options, cache=False), gpt2_tokenizer, tmp_path)
    datasets, _, _ = build_streaming_datasets(TextDataSection(**options, streaming=True), gpt2_tokenizer)
    got = stream_blocks(datasets["train"], len(expected))
    np.testing.assert_array_equal(np.stack([b for b, _ in got]), expected)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 1 << 20])
def test_a_binary_file_is_refused_by_the_streamed_reader_as_by_the_whole_one(tmp_path, chunk_bytes):
    from llmtune.data.sources import iter_lines, read_text_file

    path = tmp_path / "utf16.txt"
    path.write_bytes("line one\nline two\n".encode("utf-16-le"))
    with pytest.raises(LlmtuneError) as whole:
        read_text_file(path)
    with pytest.raises(LlmtuneError) as streamed:
        list(iter_lines(path, chunk_bytes=chunk_bytes))
    assert streamed.value.message == whole.value.message and "a binary file, not text" in whole.value.message
