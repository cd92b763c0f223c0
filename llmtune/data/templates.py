"""Chat templates: the model's own, a built-in by name, or a Jinja string from the recipe.

The template used for training is stored with the tokenizer in the run folder (`chat_template`), so
inference renders prompts exactly as training did.
"""

from __future__ import annotations

import logging

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2.5: ChatML with Qwen's default system prompt when the conversation has none.
QWEN = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}" + CHATML
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + ('ipython' if message['role'] == 'tool' else message['role']) + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Stanford Alpaca's prompt (what LLMs-from-scratch ch.7 and many base-model recipes use), multi-turn.
ALPACA = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'tool' %}{{ '### Observation:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

BUILT_IN = {"chatml": CHATML, "qwen": QWEN, "llama3": LLAMA3, "alpaca": ALPACA}
# Tokens a built-in template writes literally; added to a tokenizer that lacks them.
TEMPLATE_TOKENS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "alpaca": [],
}
END_OF_TURN = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>"}


def apply_template(tokenizer, name: str | None) -> tuple[str, list[str]]:
    """Set `tokenizer.chat_template` from the recipe's `data.template`; return (description, added tokens).

    None keeps the model's own template (an error when it has none); a built-in name or a Jinja string
    replaces it. Special tokens a built-in writes and the tokenizer lacks are added (the caller resizes
    the embedding).
    """
    if name is None:
        if not tokenizer.chat_template:
            raise LlmtuneError(
                "the model has no chat template (a base model); set data.template to one of "
                f"{', '.join(BUILT_IN)} or to a Jinja string."
            )
        return "the model's own", []
    if name in BUILT_IN:
        vocab = tokenizer.get_vocab()
        missing = [t for t in TEMPLATE_TOKENS[name] if t not in vocab]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
        tokenizer.chat_template = BUILT_IN[name]
        return f"built-in {name}", missing
    if "{%" in name or "{{" in name:
        check_jinja(name)
        tokenizer.chat_template = name
        return "from the recipe (Jinja)", []
    from llmtune.errors import did_you_mean

    raise LlmtuneError(
        f"data.template: unknown template {name!r}{did_you_mean(name, BUILT_IN)}; use one of "
        f"{', '.join(BUILT_IN)}, a Jinja string, or leave it out to use the model's own."
    )


def check_jinja(template: str, key: str = "data.template") -> None:
    """Compile a Jinja chat template as transformers will, so that a syntax error stops the command while
    the data loads (before any model), naming the key and the template line, not a traceback from the
    first conversation rendered."""
    import jinja2

    try:  # transformers' own environment: its extensions ({% generation %}, loop controls) and globals
        from transformers.utils.chat_template_utils import _compile_jinja_template as compile_template
    except ImportError:  # a private helper that may move: the sandbox every chat template runs in
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        compile_template = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).from_string
    try:
        compile_template(template)
    except jinja2.TemplateSyntaxError as exc:
        lines = template.split("\n")
        source = lines[exc.lineno - 1] if 0 < (exc.lineno or 0) <= len(lines) else ""
        shown = (
            f": {source if len(source) <= 80 else source[:77] + '...'!r}" if len(lines) > 1 and source else ""
        )
        raise LlmtuneError(
            f"{key}: the Jinja chat template does not compile at line {exc.lineno} of the template{shown}: "
            f"{str(exc.message).rstrip('.')}.",
            hint="Close every {% for %}/{% if %} with {% endfor %}/{% endif %} and every {{ with }}, or use a "
            f"built-in template ({', '.join(BUILT_IN)}).",
        ) from None


def end_of_turn_token(tokenizer, name: str | None) -> str | None:
    """The token that ends an assistant turn under template `name` (generation must stop there)."""
    if name in END_OF_TURN:
        return END_OF_TURN[name]
    return tokenizer.eos_token
