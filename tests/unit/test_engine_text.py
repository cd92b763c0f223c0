"""The engine's streamed text (serving/engine.py `Text`): whatever the pieces and stop strings, the deltas
concatenate exactly to the final answer, which is the whole decode cut before the first stop string."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmtune.serving.engine import Text

PIECES = [" ", "\n", "a", "b", " the", "END", "E", "ND", "\ufffd", "x y", " E"]


class Pieces:
    """A tokenizer whose token i decodes to PIECES[i], except that two "\ufffd" tokens in a row are the two
    halves of "é" (as a byte-level BPE decodes a UTF-8 character split across tokens)."""

    def decode(self, ids, skip_special_tokens=True):
        out, i = [], 0
        while i < len(ids):
            if PIECES[ids[i]] == "\ufffd" and i + 1 < len(ids) and PIECES[ids[i + 1]] == "\ufffd":
                out.append("é")
                i += 2
            else:
                out.append(PIECES[ids[i]])
                i += 1
        return "".join(out)


def stream(ids, stop=(), strip=True):
    text = Text(Pieces(), tuple(stop), strip)
    deltas = []
    for n in range(1, len(ids) + 1):
        deltas.append(text.add(ids[:n]))
        if text.stopped:
            break
    deltas.append(text.finish(ids))
    return deltas, text


def expected(ids, stop, strip):
    full = "".join(PIECES[i] for i in ids)
    full = full.lstrip() if strip else full
    cuts = [full.find(s) for s in stop if s and full.find(s) >= 0]
    cut = full[: min(cuts)] if cuts else full
    return cut.rstrip() if strip else cut


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.sampled_from([i for i, p in enumerate(PIECES) if p != "\ufffd"]), max_size=12),
    st.lists(st.sampled_from(["END", "b a", "x", "the", "\n\n", "a\n"]), min_size=1, max_size=2),
    st.booleans(),
)
def test_deltas_concatenate_to_the_answer_cut_before_the_first_stop(ids, stop, strip):
    deltas, text = stream(ids, stop, strip)
    assert "".join(deltas) == text.final == expected(ids, stop, strip)


def test_whitespace_and_a_stop_string_prefix_are_held_back_until_decided():
    ids = [PIECES.index(p) for p in [" ", "a", " ", "E", "ND", "b"]]
    deltas, text = stream(ids, ["END"])
    assert deltas == ["", "a", "", "", "", ""] and text.final == "a" and text.stopped
    ids = [PIECES.index(p) for p in ["a", "E", "a"]]  # "E" began "END" but did not go on
    deltas, text = stream(ids, ["END"])
    assert deltas == ["a", "", "Ea", ""] and not text.stopped


def test_a_split_character_is_shown_only_when_whole():
    half = PIECES.index("\ufffd")
    deltas, text = stream([PIECES.index("a"), half, half])
    assert deltas == ["a", "", "\u00e9", ""] and text.final == "a\u00e9"


def test_a_raw_completion_keeps_its_spaces():
    ids = [PIECES.index(p) for p in [" the", " ", "a", "\n"]]
    deltas, text = stream(ids, strip=False)
    assert "".join(deltas) == text.final == " the a\n"
