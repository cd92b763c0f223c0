"""The reward functions of grpo/rloo (llmtune/rl/rewards.py): each built-in against a hand computation, the
wrapper TRL calls (names, conversational and plain completions, result checks), users' own functions, and
every way a broken function must fail with an LlmtuneError that says what to fix. No model loads."""

from __future__ import annotations

import math
import pickle
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from llmtune.errors import LlmtuneError
from llmtune.recipe import RewardFunctionSection
from llmtune.rl.rewards import (
    RewardFunction,
    build_reward_functions,
    check_reward_functions,
    extract_answer,
    extract_number,
    last_number,
    normalize_answer,
    parse_number,
    reference_number,
    weights,
)

STATE = SimpleNamespace(global_step=0)  # stands in for TrainerState (importing transformers takes seconds)


def build(tmp_path, *entries, max_completion_length=None):
    sections = [RewardFunctionSection.model_validate(entry) for entry in entries]
    return build_reward_functions(sections, base_dir=tmp_path, max_completion_length=max_completion_length)


def one(tmp_path, entry, **kwargs):
    return build(tmp_path, entry, **kwargs)[0]


def chat(text):
    return [{"role": "assistant", "content": text}]


def rows_of(*pairs):
    return [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in pairs]


# --- numbers and extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("47 + 38 = 85.", 85.0),
        ("It fell to -3", -3.0),
        ("The answer is -3.", -3.0),
        ("x = \u22124", -4.0),  # the Unicode minus sign
        ("5-3", 3.0),  # a minus glued to a digit is an operator
        ("1,234 apples", 1234.0),
        ("costs $1,234.50 in total", 1234.5),
        ("1,2,3", 3.0),  # not a thousands separator
        ("half: 1/2.", 0.5),
        ("0.5 then .25", 0.25),
        ("3 and 4 and 12", 12.0),
        ("no idea", None),
        ("H2O v2", None),  # digits glued to letters are not numbers
        ("", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("85", 85.0),
        (" -3 ", -3.0),
        ("1,234", 1234.0),
        ("2.5", 2.5),
        ("1/2", 0.5),
        ("85.", None),
        ("85 cats", None),
    ],
)
def test_parse_number_is_the_whole_text(text, expected):
    assert parse_number(text) == expected


def test_extract_answer_tag_takes_the_last_and_none_when_absent():
    text = "<answer>12</answer> wait, no: <answer> 13 </answer>"
    assert extract_answer(text, "answer_tag") == "13"
    assert extract_answer("the answer is 13", "answer_tag") is None
    assert extract_answer("<answer>13", "answer_tag") is None  # never closed


def test_extract_boxed_balances_braces_and_takes_the_last():
    assert extract_answer(r"so \boxed{\frac{1}{2}}", "boxed") == r"\frac{1}{2}"
    assert extract_answer(r"\boxed{1} then \boxed{2}", "boxed") == "2"
    assert extract_answer(r"\boxed{1} then \boxed{2", "boxed") == "1"  # the unclosed one is skipped
    assert extract_answer("no box", "boxed") is None


def test_extract_all_last_number_and_auto():
    assert extract_answer("  Paris \n", "all") == "Paris"
    assert extract_answer("it is 1,234.", "last_number") == "1,234"
    assert extract_answer("no digits", "last_number") is None
    assert extract_answer(r"<answer>7</answer> \boxed{8}", "auto") == "7"  # the tag wins
    assert extract_answer(r"so \boxed{8}.", "auto") == "8"
    assert extract_answer(" just text ", "auto") == "just text"


def test_extract_number():
    assert extract_number("<answer>It is 42</answer> and 7", "auto") == 42.0  # inside the tag
    assert extract_number("47 + 38 = 85", "auto") == 85.0  # no tag: the last number of the text
    assert extract_number("<answer>x</answer> 9", "answer_tag") is None
    assert extract_number("no tag 9", "answer_tag") is None
    assert extract_number("85", "all") == 85.0
    assert extract_number("85 apples", "all") is None  # all: the whole completion must be the number
    assert extract_number("<answer>1</answer> 9", "last_number") == 9.0


@pytest.mark.parametrize(
    "text, expected",
    [
        (' "Paris." ', "paris"),
        ("  New   YORK!! ", "new york"),
        ("'Yes'", "yes"),
        ("\u201cOK\u201d;", "ok"),
        ("A.B", "a.b"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "reference, expected",
    [(85, 85.0), (2.5, 2.5), ("-3", -3.0), ("1,234", 1234.0), ("Nat sold 48. #### 72", 72.0)],
)
def test_reference_number(reference, expected):
    assert reference_number(reference) == expected


@pytest.mark.parametrize("reference", ["eighty-five", "85 apples", None, True, "", float("nan")])
def test_reference_that_is_not_a_number(reference):
    with pytest.raises(LlmtuneError, match="is not a number"):
        reference_number(reference)


# --- the built-ins as TRL calls them --------------------------------------------------------------------


def test_exact_match_normalised_and_not(tmp_path):
    completions = [
        "Paris.",
        "  Paris ",
        "PARIS",
        "<answer>paris</answer>",
        "Lyon",
        "<answer>Lyon</answer> Paris",
    ]
    reference = ["Paris"] * 6
    loose = one(tmp_path, {"type": "exact_match"})
    assert loose(prompts=["q"] * 6, completions=completions, answer=reference) == [
        1.0,
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
    ]
    # Without normalising, only the surrounding whitespace goes.
    strict = one(tmp_path, {"type": "exact_match", "normalize": False})
    assert strict(prompts=["q"] * 6, completions=completions, answer=reference) == [
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]
    tagged = one(tmp_path, {"type": "exact_match", "extract": "answer_tag"})
    assert tagged(
        prompts=["q"] * 2, completions=["Paris", "<answer>Paris</answer>"], answer=["Paris"] * 2
    ) == [
        0.0,
        1.0,
    ]


def test_exact_match_list_reference_and_other_column(tmp_path):
    reward = one(tmp_path, {"type": "exact_match", "answer_column": "gold"})
    got = reward(prompts=["q", "q"], completions=["NYC", "Boston"], gold=[["New York", "NYC"], ["New York"]])
    assert got == [1.0, 0.0]


def test_numeric_match(tmp_path):
    reward = one(tmp_path, {"type": "numeric_match"})
    completions = [
        "47 + 38 = 85",
        "85.0000001",
        "It is 1,234.",
        "-3",
        "I don't know",
        "<answer>84</answer> 85",
    ]
    answers = ["85", "85", "1234", "-3", "7", "85"]
    assert reward(prompts=["q"] * 6, completions=completions, answer=answers) == [
        1.0,
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
    ]
    loose = one(tmp_path, {"type": "numeric_match", "tolerance": 0.5})
    assert loose(prompts=["q"] * 3, completions=["85.4", "85.6", "84.5"], answer=[85] * 3) == [1.0, 0.0, 1.0]


def test_format_pattern_and_presets(tmp_path):
    pattern = one(tmp_path, {"type": "format", "pattern": r"Answer: \d+"})
    assert pattern(prompts=["q"] * 3, completions=[" Answer: 85\n", "Answer: 85 ok", "answer: 85"]) == [
        1.0,
        0.0,
        0.0,
    ]

    think_answer = one(tmp_path, {"type": "format", "preset": "think_answer"})
    completions = [
        "<think>\n47+38\n</think>\n<answer>85</answer>",
        "<think>x</think><answer>85</answer> trailing",
        "<answer>85</answer>",
        "<think>a</think><answer>1</answer><answer>2</answer>",
    ]
    assert think_answer(prompts=["q"] * 4, completions=completions) == [1.0, 0.0, 0.0, 0.0]

    think = one(tmp_path, {"type": "format", "preset": "think"})  # TRL's think_format_reward
    assert think(
        prompts=["q"] * 3, completions=["<think>r</think>85", "85", "<think>r</think><think>s</think>"]
    ) == [
        1.0,
        0.0,
        0.0,
    ]

    number = one(tmp_path, {"type": "format", "preset": "answer_only_number"})
    assert number(prompts=["q"] * 4, completions=[" 85\n", "-3", "85.", "It is 85"]) == [1.0, 1.0, 0.0, 0.0]


def test_length_penalty_is_dapo_soft_overlong_punishment(tmp_path):
    # L_max 10, cache 4: 0 up to 6 tokens, then (6 - n) / 4 down to -1 at 10, and -1 beyond.
    reward = one(tmp_path, {"type": "length_penalty", "max_completion_length": 10, "soft_punish_cache": 4})
    lengths = [1, 6, 7, 8, 10, 11, 50]
    got = reward(prompts=["q"] * 7, completions=["x"] * 7, completion_ids=[[0] * n for n in lengths])
    assert got == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]


def test_length_penalty_takes_l_max_from_the_trainer(tmp_path):
    reward = one(tmp_path, {"type": "length_penalty", "soft_punish_cache": 2}, max_completion_length=4)
    assert reward(prompts=["q"] * 3, completions=["x"] * 3, completion_ids=[[0] * 2, [0] * 3, [0] * 5]) == [
        0.0,
        -0.5,
        -1.0,
    ]
    with pytest.raises(LlmtuneError, match="length_penalty needs L_max.*max_completion_length"):
        one(tmp_path, {"type": "length_penalty"})
    with pytest.raises(LlmtuneError, match="soft_punish_cache 16 is larger than max_completion_length 8"):
        one(tmp_path, {"type": "length_penalty", "max_completion_length": 8})


def test_conversational_and_plain_completions_score_alike(tmp_path):
    reward = one(tmp_path, {"type": "numeric_match"})
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}]] * 2
    assert reward(prompts=prompts, completions=[chat("4"), chat("5")], answer=["4", "4"]) == [1.0, 0.0]
    assert reward(prompts=["What is 2 + 2?"] * 2, completions=["4", "5"], answer=["4", "4"]) == [1.0, 0.0]


def test_names_weights_and_trl_keywords(tmp_path):
    functions = build(
        tmp_path,
        {"type": "numeric_match", "weight": 2.0},
        {"type": "format", "preset": "answer_only_number", "name": "just_number", "weight": 0.5},
    )
    assert [f.__name__ for f in functions] == ["numeric_match", "just_number"]
    assert weights(functions) == [2.0, 0.5]
    # TRL adds trainer_state, log_extra, log_metric (and maybe more) to every call.
    got = functions[0](
        prompts=["q"],
        completions=["1"],
        completion_ids=[[1]],
        answer=["1"],
        trainer_state=STATE,
        log_metric=print,
    )
    assert got == [1.0]


def test_builtins_pickle(tmp_path):
    functions = build(
        tmp_path,
        {"type": "exact_match"},
        {"type": "numeric_match"},
        {"type": "format", "pattern": r"\d+"},
        {"type": "length_penalty", "max_completion_length": 8, "soft_punish_cache": 2},
    )
    copies = pickle.loads(pickle.dumps(functions))
    assert [f.__name__ for f in copies] == ["exact_match", "numeric_match", "format", "length_penalty"]
    assert copies[2](prompts=["q"], completions=["12"]) == [1.0]


def test_reward_model_gets_message_prompts_and_texts(tmp_path, monkeypatch):
    calls = []

    def load_reward_scorer(path):
        calls.append(("load", path))

        def score(prompts, completions):
            calls.append((prompts, completions))
            return [float(len(c)) for c in completions]

        return score

    try:
        import llmtune.reward_model as module
    except ImportError:  # written in parallel; stand in for it
        module = types.ModuleType("llmtune.reward_model")
        monkeypatch.setitem(sys.modules, "llmtune.reward_model", module)
    monkeypatch.setattr(module, "load_reward_scorer", load_reward_scorer, raising=False)
    (tmp_path / "rm-run").mkdir()

    reward = one(tmp_path, {"type": "reward_model", "model": "rm-run", "name": "rm"})
    assert calls == [("load", str(tmp_path / "rm-run"))]  # relative to the recipe's folder
    assert reward(prompts=["hi", "hey"], completions=["abc", chat("abcde")]) == [3.0, 5.0]
    assert calls[1] == (
        [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "hey"}]],
        ["abc", "abcde"],
    )


# --- users' own functions -------------------------------------------------------------------------------

USER_CODE = """
def reward(prompts, completions, completion_ids, answer, **kwargs):
    # sees what TRL passes: raw completions and every column
    return [1.0 if c[0]["content"] == a else 0.0 for c, a in zip(completions, answer)]

def boom(prompts, completions, **kwargs):
    raise ValueError("bad input\\nsecond line")

def too_few(prompts, completions, **kwargs):
    return [1.0]

def text(prompts, completions, **kwargs):
    return "1.0"

def nan(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)

def word(prompts, completions, **kwargs):
    return ["high"] * len(completions)

def array(prompts, completions, **kwargs):
    import numpy
    return numpy.array([0.5] * len(completions), dtype=numpy.float32)

def maybe(prompts, completions, **kwargs):
    return [None, 1]

NOT_A_FUNCTION = 3

async def later(prompts, completions, **kwargs):
    return [1.0]
"""

PROMPTS = [[{"role": "user", "content": "What is 2 + 2? Answer with just the number."}]] * 2


def user(tmp_path, function, **more):
    return one(tmp_path, {"type": "python", "function": function, **more})


def test_user_function_from_a_file_relative_to_the_recipe(tmp_path):
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "mine.py").write_text(USER_CODE)
    reward = user(tmp_path, "rewards/mine.py:reward", name="mine")
    assert reward.__name__ == "mine"
    assert reward(
        prompts=PROMPTS, completions=[chat("4"), chat("5")], completion_ids=[[1], [2]], answer=["4", "4"]
    ) == [
        1.0,
        0.0,
    ]


def test_user_function_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards_mod", raising=False)
    reward = user(tmp_path, "my_rewards_mod:reward")
    assert reward.__name__ == "python"
    assert reward(prompts=PROMPTS, completions=[chat("4"), chat("4")], answer=["4", "3"]) == [1.0, 0.0]
    assert user(tmp_path, "my_rewards_mod:array", name="a")(prompts=PROMPTS, completions=["x", "y"]) == [
        0.5,
        0.5,
    ]
    assert user(tmp_path, "my_rewards_mod:maybe", name="m")(prompts=PROMPTS, completions=["x", "y"]) == [
        None,
        1.0,
    ]


@pytest.fixture
def mine(tmp_path):
    (tmp_path / "mine.py").write_text(USER_CODE)
    return lambda name: user(tmp_path, f"mine.py:{name}", name=name)


def test_a_function_that_raises(mine):
    with pytest.raises(LlmtuneError) as caught:
        mine("boom")(prompts=PROMPTS, completions=["x", "y"])
    message = str(caught.value)
    assert "reward boom raised ValueError: bad input" in message
    assert "second line" not in message
    assert "'What is 2 + 2? Answer with just the number.'" in message
    assert "--debug" in message
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "too_few",
            "reward too_few returned a list of length 1 for 2 completions. Return one number per completion, a list of 2",
        ),
        ("text", "reward text returned str '1.0'. Return one number per completion"),
        ("nan", "reward nan returned nan for completion 0. .*never NaN or infinity"),
        ("word", r"reward word returned 'high' \(str\) for completion 0. Return one number per completion"),
    ],
)
def test_a_function_that_returns_the_wrong_thing(mine, name, expected):
    with pytest.raises(LlmtuneError, match=expected):
        mine(name)(prompts=PROMPTS, completions=["x", "y"])


def test_bad_arrays_and_values_from_the_wrapper():
    two_d = RewardFunction("grid", lambda **kw: np.zeros((2, 1)))
    with pytest.raises(LlmtuneError, match=r"reward grid returned ndarray of shape \(2, 1\)"):
        two_d(prompts=["a", "b"], completions=["x", "y"])
    inf = RewardFunction("inf", lambda **kw: [1.0, math.inf])
    with pytest.raises(LlmtuneError, match="returned inf for completion 1"):
        inf(prompts=["a", "b"], completions=["x", "y"])


@pytest.mark.parametrize(
    "function, expected",
    [
        (
            "no_such_module_xyz:reward",
            "there is no module named 'no_such_module_xyz'.*no_such_module_xyz.py:reward",
        ),
        ("missing.py:reward", "the file .*missing.py does not exist.*relative to the recipe's folder"),
        ("mine.py:rewrad", "has no 'rewrad', did you mean 'reward'"),
        ("mine.py:NOT_A_FUNCTION", "'NOT_A_FUNCTION' in .* is a int, not a function"),
        ("mine.py:later", "'later' is async"),
        ("json:no_such_function", "module json has no 'no_such_function'"),
    ],
)
def test_a_function_that_cannot_be_loaded(tmp_path, function, expected):
    (tmp_path / "mine.py").write_text(USER_CODE)
    with pytest.raises(LlmtuneError, match=expected) as caught:
        user(tmp_path, function, name="mine")
    assert str(caught.value).startswith(f"reward mine: function '{function}'")


def test_a_file_with_a_syntax_error_or_a_failing_import(tmp_path):
    (tmp_path / "broken.py").write_text("def reward(:\n    pass\n")
    with pytest.raises(LlmtuneError, match=r"broken.py line 1: SyntaxError"):
        user(tmp_path, "broken.py:reward")
    (tmp_path / "needs.py").write_text("import not_installed_pkg_xyz\n")
    with pytest.raises(LlmtuneError, match="loading .*needs.py raised ModuleNotFoundError: No module named"):
        user(tmp_path, "needs.py:reward")


def test_a_bad_regex(tmp_path):
    with pytest.raises(
        LlmtuneError, match=r"reward format: pattern '\(\\\\d\+' is not a valid regular expression"
    ):
        one(tmp_path, {"type": "format", "pattern": r"(\d+"})


# --- the dry run ----------------------------------------------------------------------------------------


def test_dry_run_scores_the_references_themselves(tmp_path):
    functions = build(
        tmp_path,
        {"type": "exact_match"},
        {"type": "numeric_match"},
        {"type": "format", "preset": "answer_only_number"},
        {"type": "length_penalty", "max_completion_length": 8, "soft_punish_cache": 2},
    )
    rows = rows_of(("What is 2 + 2?", "4"), ("What is 1,000 + 234?", "1,234"), ("What is 3 - 5?", "-2"))
    got = check_reward_functions(functions, rows, trainer_state=STATE)
    assert got == {
        "exact_match": [1.0, 1.0, 1.0],
        "numeric_match": [1.0, 1.0, 1.0],
        "format": [1.0, 1.0, 1.0],
        "length_penalty": [0.0, 0.0, 0.0],
    }


def test_dry_run_calls_user_functions_with_the_columns(tmp_path):
    (tmp_path / "spy.py").write_text(
        "seen = []\n"
        "def reward(prompts, completions, completion_ids, trainer_state, **kwargs):\n"
        "    seen.append((completions, completion_ids, sorted(kwargs)))\n"
        "    return [0.0] * len(completions)\n"
    )
    reward = user(tmp_path, "spy.py:reward")
    rows = [{"prompt": "p", "answer": "4", "level": 1}] * 6
    assert check_reward_functions([reward], rows, dry_run_rows=2, trainer_state=STATE) == {
        "python": [0.0, 0.0]
    }
    seen = sys.modules["llmtune_user_reward_python"].seen
    assert seen == [(["4", "4"], [[0], [0]], ["answer", "level", "log_extra", "log_metric"])]


def test_dry_run_finds_a_missing_answer_column(tmp_path):
    functions = build(tmp_path, {"type": "exact_match"})
    rows = [{"prompt": [{"role": "user", "content": "q"}], "solution": "4", "source": "x"}]
    with pytest.raises(LlmtuneError) as caught:
        check_reward_functions(functions, rows, trainer_state=STATE)
    message = str(caught.value)
    assert "reward exact_match: it reads column 'answer', which the data does not have" in message
    assert "the columns are: solution, source" in message
    assert "Set answer_column" in message and "data.columns" in message


def test_a_missing_column_at_train_time_says_the_same(tmp_path):
    reward = one(tmp_path, {"type": "numeric_match", "answer_column": "gold"})
    with pytest.raises(
        LlmtuneError, match="reward numeric_match: it reads column 'gold'.*columns are: answer"
    ):
        reward(prompts=["q"], completions=["1"], answer=["1"], trainer_state=STATE)


def test_dry_run_finds_a_non_numeric_reference_in_any_row(tmp_path):
    functions = build(tmp_path, {"type": "numeric_match", "name": "acc"})
    rows = rows_of(("a", "4"), ("b", "5"), ("c", "6"), ("d", "7"), ("e", "seven"))
    with pytest.raises(LlmtuneError) as caught:
        check_reward_functions(functions, rows, trainer_state=STATE)
    message = str(caught.value)
    assert "reward acc: row 4, column 'answer': the reference answer 'seven' is not a number" in message
    assert "use exact_match" in message


def test_dry_run_reports_a_broken_user_function(tmp_path):
    (tmp_path / "mine.py").write_text(USER_CODE)
    with pytest.raises(LlmtuneError, match="reward too_few returned a list of length 1 for 2 completions"):
        check_reward_functions(
            [user(tmp_path, "mine.py:too_few", name="too_few")],
            rows_of(("a", "1"), ("b", "2")),
            trainer_state=STATE,
        )


def test_dry_run_finds_an_empty_reference(tmp_path):
    functions = build(tmp_path, {"type": "exact_match"})
    rows = rows_of(("a", "x"), ("b", None))
    with pytest.raises(
        LlmtuneError, match=r"reward exact_match: row 1, column 'answer': the reference answer is empty"
    ):
        check_reward_functions(functions, rows, trainer_state=STATE)
