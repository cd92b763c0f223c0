"""Generation helpers shared by commands: stop at the chat template's end of turn, and greedy answers to a
few prompts (sft's before/after samples). The eval command's generation task is evaluation/generation.py."""

from __future__ import annotations


def set_stop_tokens(model, tokenizer, end_of_turn: str | None) -> None:
    """Make generation stop at the template's end-of-turn token as well as EOS (saved with the model)."""
    ids = {tokenizer.eos_token_id}
    if end_of_turn is not None:
        token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    ids.discard(None)
    config = model.generation_config
    current = config.eos_token_id
    current = set(current) if isinstance(current, list) else ({current} if current is not None else set())
    merged = sorted(current | ids)
    config.eos_token_id = merged[0] if len(merged) == 1 else merged
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id


def generate_samples(model, tokenizer, samples) -> list[str]:
    """Greedy answers to `samples.prompts` through the chat template (for the before/after report)."""
    import torch

    was_training = model.training
    model.eval()
    answers = []
    device = next(model.parameters()).device
    for prompt in samples.prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        ids = {k: v.to(device) for k, v in ids.items()}
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=samples.max_new_tokens, do_sample=False)
        answers.append(
            tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        )
    model.train(was_training)
    return answers
