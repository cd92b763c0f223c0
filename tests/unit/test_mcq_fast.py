"""The multiple-choice scorer that encodes each prompt once, against the scorer it replaced.

`reference` below is llmtune/evaluation/mcq.py's `continuation_log_likelihoods` before issue 14, kept
verbatim: one forward over prompt + option for every option. The new scorer must give the same
log-likelihoods (to float tolerance) and the same answers, on a tiny random Llama (rotary positions) and
a tiny random GPT-2 (learned positions, so a wrong position id after padding or after the cache shows).
"""

import pytest
import torch

from tests.conftest import SHARED_DATA

MMLU_DEV = SHARED_DATA / "mcq" / "mmlu" / "dev"
CMMLU_DEV = SHARED_DATA / "mcq" / "cmmlu" / "dev"


def reference(model, tokenizer, pairs, *, batch_size, add_special_tokens=True):
    import torch

    encoded = []
    for context, continuation in pairs:
        context_ids = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
        whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
        if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
            continuation_ids = whole[len(context_ids) :]
        else:
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        encoded.append((context_ids, continuation_ids))

    single = {}
    for context_ids, continuation_ids in encoded:
        key = tuple(context_ids)
        single[key] = single.get(key, True) and len(continuation_ids) == 1
    sequences: dict[tuple, list[int]] = {}
    for context_ids, continuation_ids in encoded:
        if single[tuple(context_ids)]:
            sequences.setdefault(tuple(context_ids), context_ids)
        else:
            sequences.setdefault(tuple(context_ids + continuation_ids), context_ids + continuation_ids)
    wanted: dict[tuple, set] = {key: set() for key in sequences}
    for context_ids, continuation_ids in encoded:
        if single[tuple(context_ids)]:
            wanted[tuple(context_ids)].add((len(context_ids) - 1, continuation_ids[0]))
        else:
            first = len(context_ids)
            key = tuple(context_ids + continuation_ids)
            wanted[key].update((first + i - 1, token) for i, token in enumerate(continuation_ids))
    keys = list(sequences)
    device = next(model.parameters()).device
    found: dict[tuple, dict] = {}
    order = sorted(range(len(keys)), key=lambda i: -len(keys[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        chunk = [keys[i] for i in order[start : start + batch_size]]
        width = max(len(k) for k in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, key in enumerate(chunk):
            input_ids[row, : len(key)] = torch.tensor(key)
            attention[row, : len(key)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for row, key in enumerate(chunk):
            pairs_here = sorted(wanted[key])
            positions = sorted({p for p, _ in pairs_here})
            table = torch.log_softmax(logits[row, positions].float(), dim=-1)
            index = {p: i for i, p in enumerate(positions)}
            found[key] = {(p, t): float(table[index[p], t]) for p, t in pairs_here}
    scores = []
    for context_ids, continuation_ids in encoded:
        if single[tuple(context_ids)]:
            scores.append(found[tuple(context_ids)][(len(context_ids) - 1, continuation_ids[0])])
            continue
        values = found[tuple(context_ids + continuation_ids)]
        first = len(context_ids)
        scores.append(sum(values[(first + i - 1, token)] for i, token in enumerate(continuation_ids)))
    return scores


def reference_per_question(model, tokenizer, pairs, *, batch_size, add_special_tokens=True):
    """The reference as evaluate_mcq used to call it: once per question (a run of pairs sharing a prompt)."""
    scores, start = [], 0
    while start < len(pairs):
        end = start
        while end < len(pairs) and pairs[end][0] == pairs[start][0]:
            end += 1
        scores += reference(
            model, tokenizer, pairs[start:end], batch_size=batch_size, add_special_tokens=add_special_tokens
        )
        start = end
    return scores


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    # A wide initialisation makes the random model's choices clear-cut: answers then compare exactly.
    if request.param == "llama":
        config = LlamaConfig(
            vocab_size=len(gpt2_tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            initializer_range=0.2,
        )
    else:
        config = GPT2Config(
            vocab_size=len(gpt2_tokenizer),
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=1024,
            initializer_range=0.2,
        )
    return AutoModelForCausalLM.from_config(config).eval()


def mmlu_questions(count_per_file=1):
    from llmtune.data.sources import BadRows
    from llmtune.evaluation.mcq import read_questions

    files = [read_questions(p, "auto", "error", BadRows()) for p in sorted(MMLU_DEV.glob("*.csv"))]
    return [q for f in files for q in f.questions[:count_per_file]]


def option_pairs(tokenizer):
    """Letters and options of real questions, plus one question whose options are 0 to many tokens long,
    one of which (":)" after "Answer:") merges with the prompt's last token when tokenised whole."""
    from llmtune.evaluation.mcq import Question, build_prompt

    pairs = []
    for q in mmlu_questions():  # one per subject: prompts of 60 to 300 tokens
        prompt = build_prompt("mmlu", q, [])
        pairs += [(prompt, " " + letter) for letter in "ABCD"] + [(prompt, " " + o) for o in q.options]
    odd = Question("machine_learning", "Which?", ["x", "a b c d e f g h", ":)", ""], 0, "-")
    prompt = build_prompt("mmlu", odd, [])
    pairs += [(prompt, " " + letter) for letter in "ABCD"] + [(prompt, option) for option in odd.options]
    return pairs


def best(scores, size):
    return [max(range(size), key=scores[i : i + size].__getitem__) for i in range(0, len(scores), size)]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_option_scores_match_the_reference(model, gpt2_tokenizer, batch_size):
    from llmtune.evaluation.mcq import continuation_log_likelihoods, encode_pairs

    pairs = option_pairs(gpt2_tokenizer)
    encoded = encode_pairs(gpt2_tokenizer, pairs)
    # The set covers what the cache path must get right: options of many token lengths, an empty one,
    # and one scored from its own tokens because tokenising prompt + option whole merges at the seam.
    assert {len(c) for _, c in encoded} >= {0, 1, 2, 3, 8}
    context, continuation = pairs[-2]
    assert continuation == ":)"
    whole = gpt2_tokenizer(context + continuation)["input_ids"]
    assert whole[: len(encoded[-2][0])] != encoded[-2][0]
    expected = reference_per_question(model, gpt2_tokenizer, pairs, batch_size=batch_size)
    found = continuation_log_likelihoods(model, gpt2_tokenizer, pairs, batch_size=batch_size)
    assert found == pytest.approx(expected, abs=1e-4)
    assert best(found, 4) == best(expected, 4)  # the letters, then the options, of each question


@pytest.mark.parametrize("batch_size", [1, 4])
def test_letter_scores_batched_across_questions_match_the_reference(model, gpt2_tokenizer, batch_size):
    """Prompts of different lengths share a left-padded forward: each must read as if it ran alone."""
    from llmtune.evaluation.mcq import build_prompt, continuation_log_likelihoods

    questions = mmlu_questions(count_per_file=2)
    pairs = [(build_prompt("mmlu", q, []), " " + letter) for q in questions for letter in "ABCD"]
    lengths = {len(gpt2_tokenizer(p)["input_ids"]) for p, _ in pairs}
    assert max(lengths) - min(lengths) > 50  # real padding
    expected = reference_per_question(model, gpt2_tokenizer, pairs, batch_size=8)
    found = continuation_log_likelihoods(model, gpt2_tokenizer, pairs, batch_size=batch_size)
    assert found == pytest.approx(expected, abs=1e-4)
    assert best(found, 4) == best(expected, 4)


def test_each_prompt_is_encoded_once(model, gpt2_tokenizer):
    """In text mode the model sees each prompt's tokens once, then only the options' tokens."""
    from llmtune.evaluation.mcq import continuation_log_likelihoods, encode_pairs

    pairs = option_pairs(gpt2_tokenizer)
    seen = []  # per forward: (runs on a cache, real prompt tokens or option input width)

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if kwargs.get("cache") is not None:
            seen.append((True, ids.shape[1]))
        else:  # a prompt forward: padding (letters-only prompts share one) is not encoding
            seen.append((False, int(mask.sum()) if mask is not None else ids.numel()))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        continuation_log_likelihoods(model, gpt2_tokenizer, pairs, batch_size=8)
    finally:
        hook.remove()
    encoded = encode_pairs(gpt2_tokenizer, pairs)
    prompts = {tuple(context) for context, _ in encoded}
    assert sum(tokens for cached, tokens in seen if not cached) == sum(len(p) for p in prompts)
    longest = max(len(continuation) for _, continuation in encoded)
    assert all(width < longest for cached, width in seen if cached)
    with_options = {tuple(context) for context, continuation in encoded if len(continuation) > 1}
    assert sum(cached for cached, _ in seen) == len(with_options)  # one forward for a question's options


@pytest.mark.parametrize("score", ["letter", "both"])  # "text" scores as "both" does
def test_evaluate_mcq_gives_the_reference_rows(model, gpt2_tokenizer, monkeypatch, score):
    """Whole runs over MMLU and CMMLU files with shots: the same rows, answers and accuracies."""
    from llmtune.data.sources import BadRows
    from llmtune.evaluation import mcq
    from llmtune.recipe import McqTaskSection

    files = [
        mcq.read_questions(MMLU_DEV / "anatomy_dev.csv", "auto", "error", BadRows()),
        mcq.read_questions(CMMLU_DEV / "anatomy.csv", "auto", "error", BadRows()),
    ]
    shots = {"anatomy": files[0].questions}
    section = McqTaskSection(files=["x"], score=score, shots=1, max_questions=3, batch_size=3)
    found = mcq.evaluate_mcq(model, gpt2_tokenizer, files, section, shots)
    monkeypatch.setattr(mcq, "continuation_log_likelihoods", reference_per_question)
    expected = mcq.evaluate_mcq(model, gpt2_tokenizer, files, section, shots)
    assert found["metrics"] == expected["metrics"]
    for new, old in zip(found["rows"], expected["rows"], strict=True):
        for key in ("predicted", "predicted_text", "predicted_text_norm", "where", "shots"):
            assert new.get(key) == old.get(key)
        for key in ("letter_log_likelihoods", "text_log_likelihoods"):
            assert new.get(key, []) == pytest.approx(old.get(key, []), abs=1e-4)


def test_prompt_tuning_adapter_is_scored_after_its_virtual_tokens(gpt2_tokenizer):
    """A prompt-tuning adapter puts virtual tokens before the input, logits included. The reference
    read its logits from the front (off by the virtual tokens); the scorer counts from the end."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmtune.evaluation.mcq import continuation_log_likelihoods

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(gpt2_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    base = AutoModelForCausalLM.from_config(config).eval()
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    pairs = [("Q: which?\nAnswer:", c) for c in [" A", " B", " yes it is", " no"]]
    found = continuation_log_likelihoods(model, gpt2_tokenizer, pairs, batch_size=2)
    for (context, continuation), score in zip(pairs, found, strict=True):
        ids = gpt2_tokenizer(context + continuation)["input_ids"]
        first = len(gpt2_tokenizer(context)["input_ids"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, 4:]  # the input's own positions
        log_probs = torch.log_softmax(logits, -1)
        assert score == pytest.approx(
            sum(float(log_probs[i - 1, ids[i]]) for i in range(first, len(ids))), abs=1e-4
        )
