"""Preference pairs → token sequences for a reward model: each answer after its prompt under the chat template,
and a pair too long for `data.max_length` kept with its answers cut (or dropped), always counted.

TRL's RewardTrainer drops every pair with a side longer than `max_length`, behind a progress bar
("Filtering train >384 tokens"): on MedicalGPT's dpo_zh_500 with SmolLM2's tokenizer at 384 tokens it keeps
36 of the first 240 pairs. Here an overlong answer is cut and the pair kept: the prompt stays whole, the
answer's text is shortened, and the template's closing tokens (end of turn) are put back after the cut,
so that the reward is read at the same place as for any other answer. The answer keeps at least a quarter
of the window: a prompt longer than the rest loses its start (its end, next to the answer, stays). Under
`data.overlong: drop` an overlong pair is dropped instead. Every cut and drop is counted in the report.
TRL is given the token ids, so it tokenises and filters nothing.
"""

from __future__ import annotations

from llmtune.data.chat_dataset import ChatDataReport, _tools, length_stats, render_with_mask
from llmtune.data.chat_formats import Conversation, PreferencePair
from llmtune.errors import LlmtuneError

OK, TRUNCATED, PROMPT_CUT = "ok", "truncated", "prompt_cut"
DROPPED_LONG, DROPPED_PROMPT = "dropped_long", "dropped_prompt"


def answer_sequence(
    tokenizer, prompt: list[dict], answer: str, *, where: str, tools=None, max_length: int, overlong: str
) -> tuple[list[int] | None, str, int]:
    """(token ids or None when dropped, status, untruncated length) of `answer` after `prompt`."""
    conversation = Conversation([*prompt, {"role": "assistant", "content": answer}], where, tools)
    _, _, text, spans = render_with_mask(tokenizer, conversation)
    start, end = spans[-1]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if len(ids) <= max_length:
        return list(ids), OK, len(ids)
    if overlong == "drop":
        return None, DROPPED_LONG, len(ids)
    # The answer's own text ends where its content does; what follows (end of turn) is put back after a cut.
    content = answer.strip()
    found = text.rfind(content, start, end) if content else -1
    body_end = found + len(content) if found >= 0 else len(text)
    prompt_part = [t for t, (b, _) in zip(ids, offsets, strict=True) if b < start]
    body = [t for t, (b, _) in zip(ids, offsets, strict=True) if start <= b < body_end]
    closing = [t for t, (b, _) in zip(ids, offsets, strict=True) if b >= body_end]
    # The answer keeps at least a quarter of the window; a prompt longer than the rest loses its start
    # (the end of the prompt, next to the answer, stays), so that no pair is dropped for its prompt.
    answer_floor = min(len(body), max(1, max_length // 4))
    status = TRUNCATED
    if len(prompt_part) + len(closing) + answer_floor > max_length:
        keep = max_length - len(closing) - answer_floor
        if keep < 1:
            return None, DROPPED_PROMPT, len(ids)
        prompt_part, status = prompt_part[-keep:], PROMPT_CUT
    room = max_length - len(prompt_part) - len(closing)
    return prompt_part + body[:room] + closing, status, len(ids)


def pair_sequences(tokenizer, pair: PreferencePair, max_length: int, overlong: str):
    """(chosen ids, rejected ids, status, longer side's untruncated length) of one pair; the ids are None
    when the pair is dropped."""
    tools = _tools(pair.tools)
    results = [
        answer_sequence(
            tokenizer,
            pair.prompt,
            answer,
            where=pair.where,
            tools=tools,
            max_length=max_length,
            overlong=overlong,
        )
        for answer in (pair.chosen, pair.rejected)
    ]
    statuses = {status for _, status, _ in results}
    longest = max(r[2] for r in results)
    for dropped in (DROPPED_PROMPT, DROPPED_LONG):
        if dropped in statuses:
            return None, None, dropped, longest
    status = PROMPT_CUT if PROMPT_CUT in statuses else TRUNCATED if TRUNCATED in statuses else OK
    return results[0][0], results[1][0], status, longest


def tokenize_pairs(tokenizer, examples: dict[str, list], data, report: ChatDataReport) -> dict[str, dict]:
    """{split: {"chosen_ids", "rejected_ids", "where"}} for every kept pair, with the truncations, drops and
    lengths (the longer side of each pair, before any cut) in `report`."""
    report.max_length = data.max_length
    out: dict[str, dict] = {}
    for name, pairs in examples.items():
        chosen, rejected, where, lengths = [], [], [], []
        truncated = prompt_cut = dropped_long = dropped_prompt = tokens = 0
        for pair in pairs:
            result = pair_sequences(tokenizer, pair, data.max_length, data.overlong)
            status = result[2]
            if status == DROPPED_PROMPT:
                dropped_prompt += 1
                continue
            if status == DROPPED_LONG:
                dropped_long += 1
                continue
            truncated += status in (TRUNCATED, PROMPT_CUT)
            prompt_cut += status == PROMPT_CUT
            chosen.append(result[0])
            rejected.append(result[1])
            where.append(pair.where)
            lengths.append(result[3])
            tokens += len(result[0]) + len(result[1])
        if not chosen:
            raise LlmtuneError(
                f"data ({name}): every pair was dropped ({dropped_long} longer than data.max_length "
                f"{data.max_length} under data.overlong: drop, {dropped_prompt} whose prompt alone fills it); "
                "raise data.max_length."
            )
        out[name] = {"chosen_ids": chosen, "rejected_ids": rejected, "where": where}
        report.examples[name] = len(chosen)
        report.truncated[name] = truncated
        report.dropped_overlong[name] = dropped_long
        report.dropped_long_prompt[name] = dropped_prompt
        report.prompt_cut[name] = prompt_cut
        report.tokens[name] = tokens
        report.trained_tokens[name] = tokens
        report.length_stats[name] = length_stats(lengths)
    return out


def pair_report_lines(report: ChatDataReport) -> list[str]:
    """The lengths of the pairs (the longer side, before cuts) per split, for the console and data check."""
    out = []
    for name, stats in report.length_stats.items():
        out.append(
            f"  {name} tokens per pair (longer side, before cuts): min {stats['min']}, median {stats['median']:g}, "
            f"p95 {stats['p95']}, max {stats['max']}"
        )
    return out
