"""The pretraining text pipeline: reading, cleaning, splitting, tokenising, packing, caching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmtune.data.sources import BadRows, expand_sources
from llmtune.data.text import (
    build_text_datasets,
    clean_documents,
    collate_blocks,
    pack_into_blocks,
    split_documents,
    split_txt,
    tokenize_documents,
)
from llmtune.errors import LlmtuneError
from llmtune.recipe import CleaningSection, TextDataSection
from tests.conftest import VERDICT


def section(files, **kw) -> TextDataSection:
    return TextDataSection(train_files=[str(f) for f in files], **kw)


def test_txt_documents_by_line_paragraph_and_file():
    text = "one\ntwo\n\n  \nthree\nfour\n"
    assert split_txt(text, "line") == ["one", "two", "three", "four"]
    assert split_txt(text, "paragraph") == ["one\ntwo", "three\nfour\n"]
    assert split_txt(text, "file") == [text]


def test_cleaning_steps_report_exact_counts():
    docs = [
        "Caf\u0065\u0301  au   lait",
        "Café au lait",
        "short",
        "tiny",
        "ok document here",
        "ok document here",
    ]
    clean = CleaningSection(
        unicode_normalization="NFC", collapse_whitespace=True, deduplicate=True, min_chars=6
    )
    out, steps = clean_documents(docs, clean)
    assert out == ["Café au lait", "ok document here"]
    assert steps == [
        {"step": "unicode NFC", "changed": 1},
        {"step": "collapse whitespace", "changed": 1},
        {"step": "length 6..∞ chars", "removed": 2},
        {"step": "exact de-duplication", "removed": 2},
    ]


def test_character_split_is_the_books_split():
    text = VERDICT.read_text(encoding="utf-8")
    train, val = split_documents([text], 0.1, "character", seed=0)
    cut = int(0.9 * len(text))  # ch05.ipynb: split_idx = int(train_ratio * len(text_data))
    assert train == [text[:cut]] and val == [text[cut:]]


def test_character_split_across_documents_cuts_one_document():
    train, val = split_documents(["aaaa", "bbbb", "cccc"], 0.25, "character", seed=0)
    assert train == ["aaaa", "bbbb", "c"] and val == ["ccc"]


def test_document_split_is_seeded_and_disjoint():
    docs = [f"doc {i}" for i in range(100)]
    a = split_documents(docs, 0.1, "document", seed=7)
    assert a == split_documents(docs, 0.1, "document", seed=7)
    assert a != split_documents(docs, 0.1, "document", seed=8)
    train, val = a
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)


def test_document_split_of_a_single_document_explains_what_to_do():
    with pytest.raises(LlmtuneError, match="split_by: character"):
        split_documents(["only one"], 0.1, "document", seed=0)


def test_pack_into_blocks_exact_contents():
    ids = np.arange(10, dtype=np.int32)
    blocks, dropped = pack_into_blocks(ids, 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and dropped == 2
    blocks, dropped = pack_into_blocks(ids, 4, stride=2)
    assert blocks.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]] and dropped == 0
    blocks, dropped = pack_into_blocks(ids[:3], 4)
    assert blocks.tolist() == [[0, 1, 2]] and dropped == 0  # a short validation text is kept whole


def test_documents_are_joined_with_eos(gpt2_tokenizer):
    ids = tokenize_documents(["Hello world", "Hi"], gpt2_tokenizer, add_eos=True, desc="t")
    assert ids.tolist() == [15496, 995, 50256, 17250, 50256]
    assert tokenize_documents(["Hello world"], gpt2_tokenizer, add_eos=False, desc="t").tolist() == [
        15496,
        995,
    ]


def test_collator_keeps_eos_in_the_loss_even_when_pad_is_eos(gpt2_tokenizer):
    assert gpt2_tokenizer.pad_token_id == gpt2_tokenizer.eos_token_id  # the trap this guards against
    batch = collate_blocks([{"input_ids": [1, 50256, 3]}, {"input_ids": [4, 5, 50256]}])
    assert batch["labels"].tolist() == [[1, 50256, 3], [4, 5, 50256]]
    assert batch["attention_mask"].sum().item() == 6


def test_the_verdict_gives_the_books_batches(gpt2_tokenizer, tmp_path):
    # REFERENCE.md: 5,145 tokens; 9 train batches of [2, 256] (4,608 tokens) and 1 validation batch of 512.
    data = section(
        [VERDICT],
        txt_document="file",
        validation_split=0.1,
        split_by="character",
        block_size=256,
        add_eos=False,
    )
    dataset, report = build_text_datasets(data, gpt2_tokenizer, tmp_path)
    assert report.tokens["train"] + report.tokens["validation"] in (
        5145,
        5146,
    )  # BPE may merge across the cut
    assert len(dataset["train"]) == 18 and len(dataset["validation"]) == 2
    assert report.dropped_tail_tokens == {
        "train": report.tokens["train"] - 4608,
        "validation": report.tokens["validation"] - 512,
    }


def test_cache_is_reused_and_keyed_on_options(gpt2_tokenizer, tmp_path):
    data = section([VERDICT], txt_document="paragraph", block_size=32)
    first, report = build_text_datasets(data, gpt2_tokenizer, tmp_path)
    again, cached = build_text_datasets(data, gpt2_tokenizer, tmp_path)
    assert not report.from_cache and cached.from_cache
    assert again["train"]["input_ids"] == first["train"]["input_ids"]
    other = section([VERDICT], txt_document="paragraph", block_size=16)
    _, changed = build_text_datasets(other, gpt2_tokenizer, tmp_path)
    assert not changed.from_cache and changed.cache_key != report.cache_key


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_jsonl_row_is_an_error_naming_file_and_line(gpt2_tokenizer, tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl", [json.dumps({"text": "fine"}), "{broken", json.dumps({"text": "also fine"})]
    )
    with pytest.raises(LlmtuneError, match=r"c.jsonl line 2: not valid JSON .*data.on_bad_rows: skip"):
        build_text_datasets(section([path], block_size=4), gpt2_tokenizer, tmp_path)


def test_bad_rows_are_skipped_and_counted_by_reason(gpt2_tokenizer, tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            json.dumps({"text": "a fine first row of text"}),
            "{broken",
            json.dumps({"body": "x"}),
            json.dumps({"text": 3}),
            "[1]",
            json.dumps({"text": "a fine last row of text"}),
        ],
    )
    _, report = build_text_datasets(
        section([path], block_size=4, on_bad_rows="skip"), gpt2_tokenizer, tmp_path
    )
    assert report.documents_read == 2
    assert report.skipped_rows == {
        "not valid JSON": 1,
        "missing text field 'text'": 1,
        "text field is not a string 'text'": 1,
        "not a JSON object": 1,
    }
    assert report.skipped_examples["not valid JSON"].endswith("c.jsonl line 2")
    assert any("bad rows skipped (not valid JSON): 1, first at" in line for line in report.lines())


def test_json_list_and_json_lines_in_a_json_file(gpt2_tokenizer, tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"content": "one two"}, {"content": "three"}]))
    lines = write_jsonl(
        tmp_path / "lines.json", [json.dumps({"content": "four"}), json.dumps({"content": "five"})]
    )
    _, report = build_text_datasets(
        section([listed, lines], text_field="content", block_size=2), gpt2_tokenizer, tmp_path
    )
    assert report.documents_read == 4


def test_non_utf8_file_names_the_line(gpt2_tokenizer, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond caf\xe9\n".encode("latin-1"))
    with pytest.raises(LlmtuneError, match=r"latin1.txt line 2: not UTF-8 text"):
        build_text_datasets(section([path], block_size=2), gpt2_tokenizer, tmp_path)


def test_sources_from_folders_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.txt", "skip.csv"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in expand_sources([str(tmp_path)], "k")] == ["a.jsonl", "b.txt", "c.txt"]
    assert [p.name for p in expand_sources([str(tmp_path / "*.txt")], "k")] == ["b.txt"]
    with pytest.raises(LlmtuneError, match=r"k: no file matches the pattern"):
        expand_sources([str(tmp_path / "*.md")], "k")
    with pytest.raises(LlmtuneError, match=r"k: data file '.*nope.txt' does not exist"):
        expand_sources([str(tmp_path / "nope.txt")], "k")
    with pytest.raises(LlmtuneError, match=r"unsupported extension"):
        expand_sources([str(tmp_path / "skip.csv")], "k")


def test_too_little_text_for_one_block_is_explained(gpt2_tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Hi\n")
    with pytest.raises(LlmtuneError, match="too few for one block; add data or lower data.block_size"):
        build_text_datasets(section([path], block_size=64), gpt2_tokenizer, tmp_path)


def test_bad_rows_counter():
    bad = BadRows()
    bad.add("x", "f line 1")
    bad.add("x", "f line 9")
    assert bad.total == 2 and bad.examples == {"x": "f line 1"}
