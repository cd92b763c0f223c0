"""Reward functions of grpo/rloo: the built-ins a recipe's `rewards:` names, a user's own function, and the
dry run that makes a broken one fail before any model loads.

TRL calls every reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)`, one
value per completion, and logs `rewards/<f.__name__>/mean`. Each recipe entry becomes a `RewardFunction`:
it carries the recipe label as `__name__`, hands the built-ins plain completion texts (conversational or
not), and turns anything a function does wrong (raises, returns the wrong length, a string, a NaN) into
an `LlmtuneError` that names the reward and the fix, instead of a tensor error deep inside TRL.

The built-ins, each checkable by hand:

    exact_match    1.0 when the extracted answer equals the reference (normalised: see normalize_answer)
    numeric_match  1.0 when |extracted number - reference number| <= tolerance (see extract_number)
    format         1.0 when the stripped completion fully matches a regex or a preset (format_reward)
    length_penalty DAPO's soft overlong punishment on the completion's token count (TRL's own)
    reward_model   the score of an `llmtune reward` run (llmtune.reward_model.load_reward_scorer)
    python         your function, `module:function` or `path/to/file.py:function`, called like TRL calls it

A reference may also be a list of acceptable answers; a completion matching any of them scores 1.0.

Usage (a stage): `functions = build_reward_functions(recipe.rewards, base_dir=recipe_dir,
max_completion_length=...)`, `check_reward_functions(functions, rows)`, then
`GRPOTrainer(reward_funcs=functions, args=GRPOConfig(reward_weights=weights(functions), ...))`.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError, did_you_mean, first_line

# Keywords TRL adds to every call beside the dataset's columns; not columns a user can point a reward at.
TRL_KEYWORDS = ("trainer_state", "log_extra", "log_metric", "environments")

# --- numbers --------------------------------------------------------------------------------------------

# A number: an optional minus (ASCII or U+2212), digits with optional thousands commas ("1,234"),
# optional decimals ("2.5", ".5"), or a fraction "1/2". No exponents ("1e5" holds 1), no leading "+".
# Nothing glued to a letter, digit or dot starts a number, so "5-3" holds 5 and 3 (a binary minus),
# "v2" and "H2O" hold none, while "$1,234.50", "50%" and "x = -3" do.
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_NUMBER = re.compile(rf"(?<![\w.])[-\u2212]?(?:{_INT}/\d+(?!\d|\.\d)|{_INT}(?:\.\d+)?|\.\d+)")


def _value(number: str) -> float | None:
    number = number.replace(",", "").replace("\u2212", "-")
    if "/" in number:
        top, bottom = number.split("/")
        return float(top) / float(bottom) if float(bottom) != 0 else None
    return float(number)


def parse_number(text: str) -> float | None:
    """The value of `text` when the whole of it (stripped) is one number, else None.

    `"85"` → 85.0, `"-3"` → -3.0, `"1,234"` → 1234.0, `"2.5"` → 2.5, `"1/2"` → 0.5, `"85."` → None."""
    match = _NUMBER.fullmatch(text.strip())
    return _value(match.group()) if match else None


def last_number(text: str) -> float | None:
    """The value of the last number in `text`, or None when it holds none (the grammar: see `_NUMBER`).

    `"47 + 38 = 85."` → 85.0, `"It fell to -3"` → -3.0, `"5-3"` → 3.0 (a minus after a digit is an operator),
    `"1,234 apples"` → 1234.0, `"half: 1/2"` → 0.5, `"no idea"` → None."""
    for match in reversed(list(_NUMBER.finditer(text))):
        value = _value(match.group())
        if value is not None:  # a fraction over zero is not a number; an earlier one may be
            return value
    return None


# --- extracting the answer ------------------------------------------------------------------------------

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _last_answer_tag(text: str) -> str | None:
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def _last_boxed(text: str) -> str | None:
    found = None
    for start in (m.end() for m in re.finditer(r"\\boxed\{", text)):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found = text[start:i].strip()
                break
    return found


def extract_answer(text: str, how: str) -> str | None:
    """The part of a completion that is its answer, or None when that part is absent.

    how: `answer_tag` = the content of the last `<answer>...</answer>` (stripped); `boxed` = the content of
    the last `\\boxed{...}` with balanced braces (`\\boxed{\\frac{1}{2}}` → `\\frac{1}{2}`); `last_number` =
    the last number as written (`"1,234"` stays `"1,234"`; see `last_number` for the grammar); `all` = the
    stripped text; `auto` = answer_tag when there is one, else boxed when there is one, else all."""
    if how == "answer_tag":
        return _last_answer_tag(text)
    if how == "boxed":
        return _last_boxed(text)
    if how == "last_number":
        found = _NUMBER.findall(text)
        return found[-1] if found else None
    if how == "all":
        return text.strip()
    if how == "auto":
        for part in (_last_answer_tag(text), _last_boxed(text)):
            if part is not None:
                return part
        return text.strip()
    raise ValueError(f"extract {how!r}: expected auto, answer_tag, boxed, last_number or all")


def extract_number(text: str, how: str) -> float | None:
    """The number numeric_match reads from a completion, or None.

    how: `auto` = the last number inside the last <answer> tag when there is one, else inside the last
    \\boxed{} when there is one, else in the whole text; `answer_tag` / `boxed` = the last number inside
    that part (None without one); `last_number` = the last number in the text; `all` = the whole stripped
    completion must be one number (`"85"` → 85.0, `"85 apples"` → None)."""
    if how == "all":
        return parse_number(text)
    part = text if how == "last_number" else extract_answer(text, how)
    return None if part is None else last_number(part)


# --- scoring one completion -----------------------------------------------------------------------------

_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def normalize_answer(text: str) -> str:
    """`text` casefolded, with whitespace runs collapsed to one space, and surrounding whitespace, trailing
    `.,;:!?` and a pair of surrounding quotes removed (repeatedly): `' "Paris." '` → `paris`."""
    text = " ".join(text.split()).casefold()
    while True:
        before = text
        text = text.strip().rstrip(".,;:!?").strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1]
        if text == before:
            return text


_EMPTY = "the reference answer is empty (None)."


def _references(reference: Any) -> list[Any]:
    return list(reference) if isinstance(reference, list | tuple) else [reference]


def exact_match(text: str, reference: Any, *, extract: str = "auto", normalize: bool = True) -> float:
    """1.0 when `extract_answer(text, extract)` equals `str(reference)` (both through `normalize_answer`
    when `normalize`), else 0.0 (also when the answer is absent). A list reference matches any item."""
    answer = extract_answer(text, extract)
    if answer is None:
        return 0.0
    for ref in _references(reference):
        if ref is None:
            raise LlmtuneError(_EMPTY, hint="Fill it in or drop the row.")
        ref = str(ref)
        if (normalize_answer(answer) == normalize_answer(ref)) if normalize else (answer == ref.strip()):
            return 1.0
    return 0.0


def reference_number(reference: Any) -> float:
    """The number a reference answer holds: an int/float, a string that is one number (`"1,234"`), or a
    string ending in GSM8K's `#### 72` (the number after the last `####`). Anything else raises
    LlmtuneError naming the value."""
    value = None
    if isinstance(reference, int | float) and not isinstance(reference, bool):
        value = float(reference)
    elif isinstance(reference, str):
        value = parse_number(reference)
        if value is None and "####" in reference:
            value = parse_number(reference.rsplit("####", 1)[1])
    if value is None or not math.isfinite(value):
        shown = repr(reference) if len(repr(reference)) <= 60 else repr(reference)[:57] + "..."
        raise LlmtuneError(
            f"the reference answer {shown} is not a number.",
            hint="numeric_match needs a number (e.g. '85', '-3', '1,234', '1/2', or text ending in '#### 85') "
            "in its answer column: point answer_column at such a column, or use exact_match.",
        )
    return value


def numeric_match(text: str, reference: Any, *, extract: str = "auto", tolerance: float = 1e-6) -> float:
    """1.0 when `extract_number(text, extract)` is within `tolerance` of `reference_number(reference)`, else
    0.0 (also when the completion holds no number). A list reference matches any item."""
    answer = extract_number(text, extract)
    refs = [reference_number(ref) for ref in _references(reference)]
    if answer is None:
        return 0.0
    return 1.0 if any(abs(answer - ref) <= tolerance for ref in refs) else 0.0


# A think block then an answer block, nothing around them, neither tag repeated inside its own block.
THINK_ANSWER = r"<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>"


def format_reward(text: str, pattern: re.Pattern[str]) -> float:
    """1.0 when `pattern.fullmatch(text.strip())` matches (compile it with re.DOTALL), else 0.0."""
    return 1.0 if pattern.fullmatch(text.strip()) else 0.0


def answer_only_number(text: str) -> float:
    """1.0 when the stripped completion is one number (`parse_number`), else 0.0: `"85"` → 1.0,
    `"85."` → 0.0, `"The answer is 85"` → 0.0."""
    return 1.0 if parse_number(text) is not None else 0.0


def think_format(prompts, completions: list[str], **kwargs) -> list[float]:
    """TRL's `think_format_reward` on plain texts: 1.0 when a line opens with `<think>` that a `</think>`
    closes and no second `<think>` follows (its regex, re.MULTILINE | re.DOTALL), else 0.0."""
    from trl.rewards import think_format_reward

    return think_format_reward([[{"role": "assistant", "content": text}] for text in completions])


# --- batch adapters (classes, not closures, so that a reward stays picklable) ---------------------------


def _columns(kwargs: dict) -> list[str]:
    return sorted(key for key in kwargs if key not in TRL_KEYWORDS)


def _missing_column(column: str, columns: list[str], where: str = "") -> LlmtuneError:
    return LlmtuneError(
        f"it reads column {column!r}, which the data does not have{where}; the columns are: "
        f"{', '.join(columns) or '(none besides the prompt)'}.",
        hint="Set answer_column to one of them, or map the file's column to it with data.columns.",
    )


class _EachCompletion:
    """Scores each completion text alone with `score(text, **options)`, or `score(text, reference, ...)`
    when `column` names the reference answer's column."""

    def __init__(self, score, column: str | None = None, **options):
        self.score, self.column, self.options = score, column, options

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        if self.column is None:
            return [self.score(text, **self.options) for text in completions]
        if self.column not in kwargs:
            raise _missing_column(self.column, _columns(kwargs))
        references = kwargs[self.column]
        return [
            self.score(text, ref, **self.options) for text, ref in zip(completions, references, strict=True)
        ]


class _RewardModel:
    """An llmtune reward run's scorer: prompts as message lists, completions as texts."""

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        messages = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
        return self.scorer(messages, list(completions))


def completion_text(completion) -> str:
    """A completion as text: a string as it is; a conversational one (a list of messages) as the text of
    its messages' contents joined by newlines (text parts of multimodal contents included)."""
    if isinstance(completion, str):
        return completion
    messages = [completion] if isinstance(completion, dict) else completion
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
    return "\n".join(parts)


def _shorten(prompt, limit: int = 80) -> str:
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else completion_text(prompt)
    text = " ".join(str(prompt).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# --- the wrapper TRL calls ------------------------------------------------------------------------------


class RewardFunction:
    """One recipe reward as TRL calls it: `name` (the label, also `__name__`, so TRL logs
    rewards/<name>/mean), `weight` (its share of the total), `type` (the recipe's type), and
    `answer_column` (the column it reads the reference from, or None)."""

    def __init__(
        self,
        name: str,
        function,
        *,
        weight: float = 1.0,
        type: str = "python",
        answer_column: str | None = None,
        texts: bool = True,
    ):
        self.name = self.__name__ = name
        self.function = function
        self.weight = weight
        self.type = type
        self.answer_column = answer_column
        # The built-ins take plain texts; a user's function gets exactly what TRL passes.
        self.texts = texts

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r}, type={self.type!r}, weight={self.weight})"

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        given = [completion_text(c) for c in completions] if self.texts else completions
        try:
            result = self.function(
                prompts=prompts, completions=given, completion_ids=completion_ids, **kwargs
            )
        except LlmtuneError as exc:
            raise LlmtuneError(f"reward {self.name}: {exc.message}", hint=exc.hint) from exc
        except Exception as exc:
            first = f" (first prompt: {_shorten(prompts[0])})" if len(prompts) else ""
            raise LlmtuneError(
                f"reward {self.name} raised {type(exc).__name__}: {first_line(exc)}{first}.",
                hint="Fix the function; --debug shows the traceback.",
            ) from exc
        return self._checked(result, len(completions))

    def _checked(self, result, expected: int) -> list[float | None]:
        fix = f"Return one number per completion, a list of {expected} (None = not applicable)."
        if isinstance(result, list | tuple):
            values = list(result)
        elif getattr(result, "ndim", None) == 1 and hasattr(result, "tolist"):  # numpy / torch
            values = result.tolist()
        else:
            shape = f" of shape {tuple(result.shape)}" if hasattr(result, "shape") else ""
            raise LlmtuneError(
                f"reward {self.name} returned {type(result).__name__}{shape} {_brief(result)}.", hint=fix
            )
        if len(values) != expected:
            raise LlmtuneError(
                f"reward {self.name} returned a {type(result).__name__} of length {len(values)} for {expected} "
                "completions.",
                hint=fix,
            )
        checked: list[float | None] = []
        for i, value in enumerate(values):
            if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy / torch scalar
                value = value.item()
            if value is None:
                checked.append(None)
            elif not isinstance(value, numbers.Real):
                raise LlmtuneError(
                    f"reward {self.name} returned {_brief(value)} ({type(value).__name__}) for completion {i}.",
                    hint=fix,
                )
            elif not math.isfinite(float(value)):
                raise LlmtuneError(
                    f"reward {self.name} returned {value} for completion {i}.",
                    hint=f"{fix[:-1]}, never NaN or infinity.",
                )
            else:
                checked.append(float(value))
        return checked


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def weights(functions: list[RewardFunction]) -> list[float]:
    """The functions' weights in order, for TRL's `reward_weights`."""
    return [f.weight for f in functions]


# --- building from the recipe ---------------------------------------------------------------------------


def build_reward_functions(
    sections, *, base_dir, max_completion_length: int | None = None
) -> list[RewardFunction]:
    """One `RewardFunction` per `RewardFunctionSection` of a recipe's `rewards:`, in order.

    base_dir: the recipe's folder; a relative `path/to/file.py` of a python reward, or a relative reward
    model folder that exists there, is read from it. max_completion_length: the trainer's, used as L_max
    by a length_penalty without its own. Raises LlmtuneError for a bad regex, a function that cannot be
    imported, or a length_penalty without L_max."""
    return [_build(section, Path(base_dir), max_completion_length) for section in sections]


def _build(section, base_dir: Path, max_completion_length: int | None) -> RewardFunction:
    label, kind = section.label, section.type
    texts, column = True, None
    if kind == "exact_match":
        column = section.answer_column
        function = _EachCompletion(exact_match, column, extract=section.extract, normalize=section.normalize)
    elif kind == "numeric_match":
        column = section.answer_column
        function = _EachCompletion(
            numeric_match, column, extract=section.extract, tolerance=section.tolerance
        )
    elif kind == "format":
        function = _format_function(section)
    elif kind == "length_penalty":
        function = _length_penalty(section, max_completion_length)
    elif kind == "reward_model":
        from llmtune.reward_model import load_reward_scorer

        model = Path(section.model).expanduser()
        if not model.is_absolute() and (base_dir / model).exists():
            model = base_dir / model
        function = _RewardModel(load_reward_scorer(str(model) if model.exists() else section.model))
    elif kind == "python":
        function, texts = load_user_function(section.function, label=label, base_dir=base_dir), False
    else:
        raise LlmtuneError(f"reward {label}: unknown type {kind!r}.")
    return RewardFunction(
        label, function, weight=section.weight, type=kind, answer_column=column, texts=texts
    )


def _format_function(section):
    if section.preset == "think":
        return think_format
    if section.preset == "answer_only_number":
        return _EachCompletion(answer_only_number)
    source = THINK_ANSWER if section.preset == "think_answer" else section.pattern
    try:
        pattern = re.compile(source, re.DOTALL)
    except re.error as exc:
        raise LlmtuneError(
            f"reward {section.label}: pattern {source!r} is not a valid regular expression ({exc}).",
            hint="Fix the regex (in YAML, single-quote it so that backslashes stay as written).",
        ) from exc
    return _EachCompletion(format_reward, pattern=pattern)


def _length_penalty(section, max_completion_length: int | None):
    from trl.rewards import get_soft_overlong_punishment

    limit = section.max_completion_length or max_completion_length
    if limit is None:
        raise LlmtuneError(
            f"reward {section.label}: length_penalty needs L_max.",
            hint="Set its max_completion_length, or train.max_completion_length.",
        )
    if section.soft_punish_cache > limit:
        raise LlmtuneError(
            f"reward {section.label}: soft_punish_cache {section.soft_punish_cache} is larger than "
            f"max_completion_length {limit}.",
            hint="The penalty ramps over the last soft_punish_cache tokens before L_max; make it smaller.",
        )
    return get_soft_overlong_punishment(limit, section.soft_punish_cache)


def load_user_function(spec: str, *, label: str, base_dir) -> Any:
    """The callable named by `module:function` (imported) or `path/to/file.py:function` (loaded from the
    file; a relative path is relative to `base_dir`). Raises LlmtuneError naming the reward and the fix."""
    import importlib
    import importlib.util
    import inspect
    import sys

    target, _, name = spec.rpartition(":")
    where = f"reward {label}: function {spec!r}"
    if not target or not name.isidentifier():
        raise LlmtuneError(f"{where}: write it as module:function or path/to/file.py:function.")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.is_file():
            raise LlmtuneError(
                f"{where}: the file {path} does not exist.",
                hint=f"A relative path is relative to the recipe's folder ({base_dir}).",
            )
        module_name = "llmtune_user_reward_" + re.sub(r"\W", "_", label)
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # so that its functions and classes pickle and introspect
        source = str(path)
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(module_name, None)
            raise LlmtuneError(
                f"{where}: {path} line {exc.lineno}: SyntaxError: {exc.msg}.", hint="Fix the file."
            ) from exc
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise LlmtuneError(
                f"{where}: loading {path} raised {type(exc).__name__}: {first_line(exc)}.",
                hint="Fix the file; --debug shows the traceback.",
            ) from exc
    else:
        source = f"module {target}"
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
                raise LlmtuneError(
                    f"{where}: there is no module named {target!r}.",
                    hint="Install it or put its folder on PYTHONPATH; for a file beside the recipe, write "
                    f"{target.replace('.', '/')}.py:{name}.",
                ) from exc
            raise LlmtuneError(
                f"{where}: importing {target} failed: {first_line(exc)} (a module it imports).",
                hint="Install that module.",
            ) from exc
        except SyntaxError as exc:
            raise LlmtuneError(
                f"{where}: {exc.filename} line {exc.lineno}: SyntaxError: {exc.msg}.", hint="Fix the file."
            ) from exc
        except Exception as exc:
            raise LlmtuneError(
                f"{where}: importing {target} raised {type(exc).__name__}: {first_line(exc)}.",
                hint="Fix the module; --debug shows the traceback.",
            ) from exc
    if not hasattr(module, name):
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise LlmtuneError(
            f"{where}: {source} has no {name!r}{did_you_mean(name, public) or '.'}",
            hint=f"Its functions are: {', '.join(sorted(public)) or '(none)'}.",
        )
    function = getattr(module, name)
    if not callable(function):
        raise LlmtuneError(
            f"{where}: {name!r} in {source} is a {type(function).__name__}, not a function.",
            hint="Point it at a function f(prompts, completions, **kwargs) -> list[float].",
        )
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__):
        raise LlmtuneError(
            f"{where}: {name!r} is async; llmtune calls reward functions synchronously.",
            hint="Make it a plain def (run the async work inside it with asyncio.run).",
        )
    return function


# --- the dry run ----------------------------------------------------------------------------------------


def check_reward_functions(
    functions: list[RewardFunction], rows: list[dict], *, dry_run_rows: int = 4, trainer_state=None
) -> dict:
    """Call each function once before any model loads, so that a broken one fails in seconds.

    rows: training rows as the trainer will see them, dicts with `prompt` (a messages list or a string)
    and the other columns (e.g. `answer`). Every row given is checked for the answer column of
    exact_match/numeric_match and a reference in it (a number, for numeric_match; pass all rows to check
    them all, it is cheap); the first `dry_run_rows` are then scored with their own reference answer as
    the completion (the string "test" where the reward reads no answer column and the row has no `answer`),
    with completion_ids of one token and `trainer_state` (default: a fresh transformers.TrainerState, which
    imports transformers). Returns {name: the rewards of that dry run}; raises LlmtuneError."""
    if not rows:
        return {}
    columns = sorted({key for row in rows for key in row if key != "prompt"})
    for function in functions:
        column = function.answer_column
        if column is None:
            continue
        lacking = next((i for i, row in enumerate(rows) if column not in row), None)
        if lacking is not None:
            error = _missing_column(column, columns, "" if lacking == 0 else f" in row {lacking}")
            raise LlmtuneError(f"reward {function.name}: {error.message}", hint=error.hint)
        for i, row in enumerate(rows):
            try:
                for ref in _references(row[column]):
                    if function.type == "numeric_match":
                        reference_number(ref)
                    elif ref is None:
                        raise LlmtuneError(_EMPTY, hint="Fill it in or drop the row.")
            except LlmtuneError as exc:
                raise LlmtuneError(
                    f"reward {function.name}: row {i}, column {column!r}: {exc.message}", hint=exc.hint
                ) from None

    state = trainer_state if trainer_state is not None else _trainer_state()
    sample = rows[:dry_run_rows]
    prompts = [row["prompt"] for row in sample]
    extra = {key: [row.get(key) for row in sample] for key in columns}
    results = {}
    for function in functions:
        column = function.answer_column or "answer"
        texts = [_first(row[column]) if row.get(column) is not None else "test" for row in sample]
        completions = [
            [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
            for prompt, text in zip(prompts, texts, strict=True)
        ]
        results[function.name] = function(
            prompts=prompts,
            completions=completions,
            completion_ids=[[0] for _ in sample],
            trainer_state=state,
            log_extra=_ignore,
            log_metric=_ignore,
            **extra,
        )
    return results


def _first(reference) -> str:
    references = _references(reference)
    return str(references[0]) if references else "test"


def _ignore(*args, **kwargs) -> None:
    """Stands in for TRL's log_extra / log_metric during the dry run."""


def _trainer_state():
    from transformers import TrainerState

    return TrainerState()
