"""The second reader (`--verify llama-cpp`): the GGUF loaded by llama.cpp itself, through llama-cpp-python.

transformers' GGUF reader shares nothing with llama.cpp but the file format, so it catches a wrong tensor
or tokenizer; it cannot catch metadata that only llama.cpp reads (the pre-tokenizer name, the rotary layout
llama.cpp's kernels assume, the end-of-generation tokens). This reader can. It is optional: llama-cpp-python
builds llama.cpp from source (minutes) and is never needed for CI.

Compared with the source on the check data: the token ids llama.cpp's tokenizer gives, the next-token
log-probabilities over the source's top 50 tokens at every position, the top-1 agreement, and the greedy
answer (llama.cpp's own argmax, step by step) to each sample prompt.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("llmtune")

TOP = 50


def compare_with_llama_cpp(path: Path, model, tokenizer, data, source_answers, new_tokens: int) -> dict:
    import numpy as np
    import torch
    from llama_cpp import Llama

    longest = max(len(s) for s in [*data.sequences, *data.prompt_ids]) + new_tokens + 8
    llm = Llama(model_path=str(path), n_ctx=max(longest, 64), logits_all=True, verbose=False, seed=0)
    failures = []
    differing = 0
    for text in [*data.texts, *data.prompts]:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if got != expected:
            differing += 1
    if differing:
        failures.append(
            f"llama.cpp tokenizes {differing} of {len(data.texts) + len(data.prompts)} check texts differently"
        )
    worst = 0.0
    agree = positions = 0
    for ids in data.sequences:
        llm.reset()
        llm.eval(ids)
        theirs = torch.log_softmax(torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32)), -1)
        with torch.no_grad():
            mine = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        top = mine.topk(TOP, dim=-1).indices
        worst = max(worst, float((mine.gather(-1, top) - theirs.gather(-1, top)).abs().max()))
        agree += int((mine.argmax(-1) == theirs.argmax(-1)).sum())
        positions += len(ids)
    answers = []
    stop = set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    stop.add(tokenizer.eos_token_id)
    for prompt, ids, expected in zip(data.prompts, data.prompt_ids, source_answers, strict=True):
        llm.reset()
        llm.eval(ids)
        got = []
        for _ in range(new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            got.append(token)
            if token in stop:
                break
            llm.eval([token])
        answers.append(
            {
                "prompt": prompt,
                "source": tokenizer.decode(expected, skip_special_tokens=True),
                "llama_cpp": tokenizer.decode(got, skip_special_tokens=True),
                "identical": got == expected,
            }
        )
    del llm
    result = {
        "tokenizer_differing": differing,
        "max_abs_top50_logprob": worst,
        "top1_agreement": agree / positions,
        "greedy_identical": sum(a["identical"] for a in answers),
        "greedy_checked": len(answers),
        "answers": answers,
        "failures": failures,
    }
    log.info(
        "llama.cpp reader: tokenizer %s, max |d log-prob| over the top %d %.3g, top-1 %.1f%%, greedy %d/%d identical",
        "identical" if not differing else f"differs on {differing} texts",
        TOP,
        worst,
        100 * result["top1_agreement"],
        result["greedy_identical"],
        len(answers),
    )
    return result
