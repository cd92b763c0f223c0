"""Batched NER tagging (tag_sentences) gives the tags of the one-sentence-at-a-time tagger it replaced,
for every sentence: short and long (cut into windows), words of many sub-words, one word, no words, any
batch size; and the same seqeval scores. `reference_tag_words` below is that old implementation, kept
here only as the reference."""

import pytest
import torch

from llmtune.data.ner import BadRows, read_ner_file
from llmtune.errors import LlmtuneError
from llmtune.ner.encoding import split_long, word_starts
from llmtune.ner.metrics import score_tags
from llmtune.ner.predict import tag_sentences, tag_words
from llmtune.ner.tagger import Tagger
from tests.conftest import SHARED_DATA, minilm_folder

CONLL_VALID = SHARED_DATA / "conll2003" / "valid.txt"
CONLL_TAGS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
MANY_PIECES = "floccinaucinihilipilification"  # 9 sub-tokens
TOO_MANY_PIECES = "Pneumonoultramicroscopicsilicovolcanoconiosis"  # 17


def reference_tag_words(tagger, tokenizer, words: list[str], max_length: int) -> list[str]:
    """The old llmtune.ner.predict.tag_words, verbatim: one sentence, each word tokenised twice."""
    labels = tagger.labels if hasattr(tagger, "labels") else tagger.get_base_model().labels
    budget = max_length - tokenizer.num_special_tokens_to_add()
    pieces = [len(tokenizer.tokenize(w)) or 1 for w in words]
    tags: list[str] = []
    for start, end in split_long(pieces, budget, 0):
        encoded = tokenizer(words[start:end], is_split_into_words=True, return_tensors="pt")
        starts = torch.tensor([word_starts(encoded.word_ids())])
        with torch.no_grad():
            predictions = tagger(**encoded, word_starts=starts)["logits"][0]
        tags += [labels[int(p)] for p in predictions[starts[0].bool()]]
    return tags


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; more spin and wait on a busy machine (8x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_folder())


def random_tagger(tokenizer, use_crf: bool) -> Tagger:
    """A tiny random BERT + head (+ CRF with random transitions, so the Viterbi path matters), in eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    tagger = Tagger(BertModel(config), CONLL_TAGS, use_crf=use_crf, scheme="BIO")
    with torch.no_grad():
        tagger.classifier.weight.normal_(0, 1)  # spread the emissions: no near-ties between tags
        if use_crf:
            tagger.crf.transitions.normal_(0, 1)
            tagger.crf.start_transitions.normal_(0, 1)
            tagger.crf.end_transitions.normal_(0, 1)
    return tagger.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["softmax", "crf"])
def tagger(request, tokenizer):
    return random_tagger(tokenizer, request.param)


@pytest.fixture(scope="module")
def reference(tagger, tokenizer):
    """reference(sentences, max_length): the old tagger's tags, each computed once per tagger."""
    cache: dict = {}

    def tags(sentences: list[list[str]], max_length: int) -> list[list[str]]:
        for words in sentences:
            if (tuple(words), max_length) not in cache:
                cache[tuple(words), max_length] = reference_tag_words(tagger, tokenizer, words, max_length)
        return [cache[tuple(words), max_length] for words in sentences]

    return tags


@pytest.fixture(scope="module")
def conll():
    """The first 120 CoNLL-2003 validation sentences (lengths 1 to 40+ words)."""
    sentences, _ = read_ner_file(CONLL_VALID, bad=BadRows())
    return sentences[:120]


def varied_sentences(conll) -> list[list[str]]:
    """Real sentences, then the edge cases: one word, no word, a word of many sub-words, sentences around
    and far over the window budget of max_length 16 (14 sub-tokens), punctuation that splits a word."""
    made = [
        ["Peter"],
        [],
        [MANY_PIECES],
        ["EU", MANY_PIECES, "call", MANY_PIECES, ".", MANY_PIECES],  # windows of one such word
        ["word"] * 14,  # exactly the budget at max_length 16
        ["word"] * 15,  # one over
        [f"w{i}" for i in range(60)],  # many windows
        ["U.S.-based", "Grand-Prix", "1996-08-22", "(", "AP", ")", "--"],
        ["Zürich", "naïve", "Ελλάδα", "北京", "ﬁnance"],
    ]
    return [list(s.tokens) for s in conll] + made


@pytest.mark.parametrize("max_length", [16, 64])
@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_batched_tags_equal_one_sentence_at_a_time(
    tagger, tokenizer, reference, conll, max_length, batch_size
):
    sentences = varied_sentences(conll)
    expected = reference(sentences, max_length)
    got = tag_sentences(tagger, tokenizer, sentences, max_length, batch_size=batch_size)
    assert [len(t) for t in got] == [len(s) for s in sentences]
    mismatched = [i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b]
    assert not mismatched, (
        f"sentences {mismatched[:5]} differ, e.g. {expected[mismatched[0]]} vs {got[mismatched[0]]}"
    )
    # the cases are what they claim: windows happen at 16, and some tags are entities
    assert max_length == 64 or len(split_long([1] * 60, max_length - 2, 0)) > 1
    assert any(tag != "O" for tags in got for tag in tags)


def test_tag_words_is_the_batched_tagger_on_one_sentence(tagger, tokenizer, reference):
    words = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert [tag_words(tagger, tokenizer, words, 16)] == reference([words], 16)
    assert tag_words(tagger, tokenizer, [], 16) == []


def test_seqeval_scores_equal(tagger, tokenizer, reference, conll):
    gold = [list(s.tags) for s in conll]
    sentences = [list(s.tokens) for s in conll]
    expected = reference(sentences, 16)
    got = tag_sentences(tagger, tokenizer, sentences, 16, batch_size=16)
    assert score_tags(gold, got) == score_tags(gold, expected)


def test_the_comparison_catches_an_off_by_one_alignment(tokenizer, conll, monkeypatch):
    """The equality above can fail: tag_sentences reading each word's tag one sub-token to the right (its
    second piece, or the next word's first) no longer matches the reference."""
    import llmtune.ner.predict as predict

    tagger = random_tagger(tokenizer, use_crf=False)

    def shifted(word_ids):
        return [0, *word_starts(word_ids)[:-1]]

    monkeypatch.setattr(predict, "word_starts", shifted)
    sentences = varied_sentences(conll)[:40]
    expected = [reference_tag_words(tagger, tokenizer, words, 64) for words in sentences]
    got = tag_sentences(tagger, tokenizer, sentences, 64, batch_size=8)
    assert sum(a != b for a, b in zip(expected, got, strict=True)) > len(sentences) // 2


def test_results_come_back_in_the_order_given(tagger, tokenizer, conll):
    """Windows run shortest first; the tags are put back where their sentences were."""
    sentences = varied_sentences(conll)
    forward = tag_sentences(tagger, tokenizer, sentences, 16, batch_size=5)
    backward = tag_sentences(tagger, tokenizer, sentences[::-1], 16, batch_size=5)
    assert backward[::-1] == forward


def test_a_word_without_sub_tokens_is_tagged_o(tagger, tokenizer, reference):
    """A word the tokenizer drops entirely (a zero-width space) has no sub-token to tag: it gets "O" and
    the other words keep their tags. (The old tagger returned one tag fewer, shifting every later tag.)"""
    words = ["EU", "rejects", "\u200b", "German", "call"]
    assert tokenizer.tokenize("\u200b") == []
    got = tag_sentences(tagger, tokenizer, [words], 64)[0]
    (without,) = reference([[w for w in words if w != "\u200b"]], 64)
    assert got == [*without[:2], "O", *without[2:]]


def test_a_word_longer_than_a_window_is_an_error_as_before(tagger, tokenizer):
    with pytest.raises(LlmtuneError, match="sub-tokens, more than the"):
        reference_tag_words(tagger, tokenizer, ["a", TOO_MANY_PIECES], 16)
    with pytest.raises(LlmtuneError, match="sub-tokens, more than the"):
        tag_sentences(tagger, tokenizer, [["fine"], ["a", TOO_MANY_PIECES]], 16)
