"""The export's check: the written file, read back by an independent reader, against the source model.

What is compared, on the same token ids (the source tokenizer's):
- the tokenizer: the reader's ids and decoded text equal the source's on every check text and prompt, and
  its chat template, BOS/EOS ids are the source's;
- the logits: max |export - source| over every position of every check sequence, the perplexity of both,
  and the fraction of positions whose top-1 token agrees;
- the greedy answers to the sample prompts through the chat template.

How close is close enough depends on the type (bounds measured on SmolLM2-135M-Instruct and the quickstart
run, see the README's export section): the float types round each weight once, so their logit difference
has a bound; the quantised types change the model, so their perplexity ratio has one, and their answers are
shown side by side rather than required to match.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

# max |export - source| logit (both computed in float32) a correct export may show. f32 stores the same
# weights: the reader computes the same function, measured 0. f16/bf16 round each weight once (2^-11 and
# 2^-8 relative); the bounds are ~3x the largest difference measured (README, "export").
LOGIT_BOUNDS = {"f32": 1e-4, "f16": 0.1, "bf16": 0.75}
# export perplexity / source perplexity a correct export may show (the quantised types and bnb); ~1.5x
# the largest excess measured on the two SmolLM2 models, so that a real defect (a swapped or misread
# tensor sends the ratio to 10-1000x) cannot pass.
PERPLEXITY_BOUNDS = {
    "f32": 1.001,
    "f16": 1.005,
    "bf16": 1.03,
    "q8_0": 1.02,
    "q5_1": 1.15,
    "q5_0": 1.15,
    "q4_1": 1.35,
    "q4_0": 1.35,
    "bnb-8bit": 1.05,
    "bnb-4bit": 1.35,
}
# Types whose greedy answers must equal the source's (a difference only at a near tie, see is_near_tie).
ANSWERS_MUST_MATCH = ("f32", "f16", "bf16", "q8_0")

BUILT_IN_TEXT = [
    "The history of the bicycle begins in the early nineteenth century, when inventors in Germany and France "
    "built wooden machines that riders pushed along with their feet. Pedals came later, attached to the front "
    "wheel, and the high-wheeled designs of the 1870s made riding fast but dangerous. The safety bicycle, with "
    "two wheels of equal size and a chain driving the rear one, settled the shape that is still used today.",
    "To make bread, mix 500 grams of flour with 10 grams of salt, 7 grams of dried yeast and 320 millilitres "
    "of warm water. Knead the dough for ten minutes until it is smooth, then leave it covered for an hour. "
    "Shape it, let it rise again for 45 minutes, and bake it at 220 degrees Celsius for about 30 minutes.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells, water is "
    "split and oxygen released, while carbon dioxide is fixed into sugars in the Calvin cycle. The overall "
    "reaction is 6 CO2 + 6 H2O -> C6H12O6 + 6 O2, powered by roughly 8 to 10 photons per oxygen molecule.",
]


class ExportCheckFailed(LlmtuneError):
    """The export does not answer like the source: a failure, not bad input (exit 1)."""

    exit_code = 1


@dataclass
class CheckData:
    """Token ids the comparison runs on, with the texts they came from and where those came from."""

    texts: list[str]
    sequences: list[list[int]]
    source: str
    prompts: list[str] = field(default_factory=list)  # rendered through the chat template
    prompt_ids: list[list[int]] = field(default_factory=list)


# ------------------------------------------------------------------------------------ the check's inputs
def check_data(tokenizer, settings, facts, prompts: list[str], system: str | None) -> CheckData:
    texts, add_special, source = _check_texts(tokenizer, settings, facts)
    sequences = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        for start in range(0, max(len(ids) - 1, 1), settings.check_tokens):
            chunk = ids[start : start + settings.check_tokens]
            if len(chunk) >= 2:
                sequences.append(chunk)
    sequences = sequences[: settings.check_samples]
    if not sequences:
        raise LlmtuneError(f"the check text ({source}) gives no sequence of two or more tokens.")
    rendered = [_render_prompt(tokenizer, p, system) for p in prompts]
    prompt_ids = [tokenizer(r, add_special_tokens=not tokenizer.chat_template)["input_ids"] for r in rendered]
    return CheckData(texts, sequences, source, rendered, prompt_ids)


def _check_texts(tokenizer, settings, facts) -> tuple[list[str], bool, str]:
    """(texts, whether the tokenizer adds its special tokens to them, where they came from)."""
    from pathlib import Path

    if settings.check_text:
        text = Path(settings.check_text).read_text(encoding="utf-8")
        if not text.strip():
            raise LlmtuneError(f"--check-text {settings.check_text} is empty.")
        return [text], True, f"--check-text {settings.check_text}"
    if facts.chat_validation and tokenizer.chat_template:
        texts = _conversations(facts.chat_validation, tokenizer, settings.check_samples, facts.system)
        if texts:
            return texts, False, f"the run's validation conversations ({', '.join(facts.chat_validation)})"
    if facts.text_validation:
        texts = [
            Path(f).read_text(encoding="utf-8")
            for f in facts.text_validation
            if Path(f).is_file() and Path(f).suffix in (".txt", ".md")
        ]
        if texts:
            return texts, True, f"the run's validation text ({', '.join(facts.text_validation)})"
    return (
        list(BUILT_IN_TEXT),
        True,
        "built-in English paragraphs (no --check-text and no run validation data)",
    )


def _conversations(files: list[str], tokenizer, limit: int, system: str | None) -> list[str]:
    from llmtune.data.chat_dataset import load_examples
    from llmtune.recipe import ChatDataSection

    try:
        data = ChatDataSection.model_validate(
            {
                "train_files": files,
                "max_samples": limit,
                "on_bad_rows": "skip",
                "validation_files": [],
                "validation_split": 0,
                "system": system,
            }
        )
        examples, _ = load_examples(data, preference=False)
    except Exception as exc:  # moved or unreadable data: the built-in text still checks the export
        log.info("note: the run's validation data could not be read (%s); using built-in text", exc)
        return []
    return [tokenizer.apply_chat_template(e.messages, tokenize=False) for e in examples["train"][:limit]]


def _render_prompt(tokenizer, prompt: str, system: str | None) -> str:
    if not tokenizer.chat_template:
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------ tokenizer
def compare_tokenizers(source, reader, data: CheckData) -> dict:
    """The reader's tokenizer against the source's: ids and decoded text on every check text and
    prompt, the chat template and the special-token ids."""
    problems = []
    strings = [*data.texts, *data.prompts]
    differing = 0
    for text in strings:
        a = source(text, add_special_tokens=False)["input_ids"]
        b = reader(text, add_special_tokens=False)["input_ids"]
        if a != b:
            differing += 1
            if len(problems) < 3:
                at = next(
                    (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
                )
                problems.append(
                    f"ids differ from token {at}: source {a[at : at + 4]} "
                    f"({source.decode(a[at : at + 4])!r}) vs export {b[at : at + 4]} ({reader.decode(b[at : at + 4])!r})"
                )
        elif reader.decode(b) != source.decode(a):
            differing += 1
            problems.append(f"the same ids decode differently: {reader.decode(b)[:60]!r}")
    if (reader.chat_template or None) != (source.chat_template or None):
        problems.append("the chat template differs from the source's")
    for key in ("bos_token_id", "eos_token_id"):
        if getattr(source, key) is not None and getattr(reader, key) != getattr(source, key):
            problems.append(
                f"{key} is {getattr(reader, key)} in the export, {getattr(source, key)} in the source"
            )
    return {"texts": len(strings), "differing": differing, "problems": problems}


# ------------------------------------------------------------------------------------ logits
def compare_logits(source_model, export_model, sequences: list[list[int]]) -> dict:
    """max |Δ logit|, perplexities and top-1 agreement over every position of every sequence."""
    import torch

    max_abs = 0.0
    shifts = []  # |export - source| at the source's two best tokens, every position: what decides a tie
    nll = {"source": 0.0, "export": 0.0}
    agree = tokens = scored = 0
    with torch.no_grad():
        for ids in sequences:
            batch = torch.tensor([ids])
            a = source_model(batch).logits[0].float()
            b = export_model(batch).logits[0].float()
            if not torch.isfinite(b).all():
                raise ExportCheckFailed(
                    "the export gives non-finite logits (inf or NaN) on the check text; --out was not written."
                )
            max_abs = max(max_abs, float((a - b).abs().max()))
            top = a.topk(2, dim=-1).indices
            shifts.append((a.gather(-1, top) - b.gather(-1, top)).abs().flatten())
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            tokens += len(ids)
            target = batch[0, 1:]
            for name, logits in (("source", a), ("export", b)):
                nll[name] += float(torch.nn.functional.cross_entropy(logits[:-1], target, reduction="sum"))
            scored += len(ids) - 1
    ppl = {k: math.exp(v / scored) for k, v in nll.items()}
    return {
        "max_abs_logit": max_abs,
        "top2_logit_shift_max": float(torch.cat(shifts).max()),
        "perplexity_source": ppl["source"],
        "perplexity_export": ppl["export"],
        "perplexity_ratio": ppl["export"] / ppl["source"],
        "top1_agreement": agree / tokens,
        "positions": tokens,
        "sequences": len(sequences),
    }


# ------------------------------------------------------------------------------------ answers
def greedy(model, ids: list[int], max_new_tokens: int, stop_ids: list[int], pad_id) -> list[int]:
    import torch

    batch = torch.tensor([ids])
    out = model.generate(
        input_ids=batch,
        attention_mask=torch.ones_like(batch),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )
    return out[0, len(ids) :].tolist()


def divergence_gap(model, ids: list[int], expected: list[int], got: list[int]) -> float | None:
    """Where the export's answer `got` leaves the source's `expected`: how far the source itself prefers
    its own token there (logit gap). None when one answer is the start of the other (it stopped earlier)."""
    import torch

    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
    if at is None:
        return None
    with torch.no_grad():
        logits = model(torch.tensor([ids + expected[:at]])).logits[0, -1]
    return float(logits[expected[at]] - logits[got[at]])


def is_near_tie(gap: float | None, shift: float) -> bool:
    """A divergence the export's rounding explains: the source's own margin between the two tokens is no
    larger than the export moves the source's two best logits anywhere on the check text (`shift`).

    Why this scale: an export picking b over a has moved the two logits apart by at least the source's
    margin, so bounding by the largest |Δ| over the whole vocabulary would pass every divergence; the
    shift at the two best tokens of held-out text is what decides greedy choices, and it is what rounding
    does to them. Measured on SmolLM2 q8_0: shift 0.55-0.80, margins where the answers parted 0.07-0.10. A
    real export defect fails the logit and perplexity bounds first (ratios of 10-1000x).
    A quantile instead of the maximum fails correct exports of random test models, whose near-flat
    distributions hold many near ties along 4 x 32 generated tokens."""
    return gap is not None and gap <= shift


# ------------------------------------------------------------------------------------ the verdict
def verdict(
    kind: str,
    logits: dict,
    tokenizer_report: dict,
    answers: list[dict],
    template: list[dict],
    logit_bound: float | None = None,
) -> list[str]:
    """The reasons the export fails its check ([] = it passes)."""
    failures = []
    if tokenizer_report["differing"] or tokenizer_report["problems"]:
        failures.append(
            f"the export's tokenizer differs from the source's on {tokenizer_report['differing']} of "
            f"{tokenizer_report['texts']} texts: " + "; ".join(tokenizer_report["problems"][:3])
        )
    bound = logit_bound if logit_bound is not None else LOGIT_BOUNDS.get(kind)
    if bound is not None and logits["max_abs_logit"] > bound:
        failures.append(
            f"max |export - source| logit {logits['max_abs_logit']:.3g} is above the {kind} bound {bound:g} "
            "(measured on SmolLM2-135M; a larger model with larger logits may need export.logit_bound)"
        )
    ratio_bound = PERPLEXITY_BOUNDS.get(kind)
    if ratio_bound is not None and logits["perplexity_ratio"] > ratio_bound:
        failures.append(
            f"perplexity {logits['perplexity_source']:.4g} -> {logits['perplexity_export']:.4g} "
            f"(x{logits['perplexity_ratio']:.4f}) is above the {kind} bound x{ratio_bound:g}"
        )
    if kind in ANSWERS_MUST_MATCH:
        wrong = [a for a in answers if not a["identical"] and not a["near_tie"]]
        if wrong:
            failures.append(
                f"{len(wrong)} of {len(answers)} greedy answers differ from the source's beyond a near tie "
                f"(first: {wrong[0]['prompt'][:50]!r}: source {wrong[0]['source'][:50]!r}, export "
                f"{wrong[0]['export'][:50]!r})"
            )
    bad = [t for t in template if not t["identical"]]
    if bad:
        failures.append(
            f"the Modelfile TEMPLATE renders {len(bad)} of {len(template)} probe conversations differently "
            f"from the chat template (first: {bad[0]['conversation']})"
        )
    return failures
