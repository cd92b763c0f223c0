"""The pieces of `llmtune merge`'s self-check that other commands reuse (`llmtune export` merges an adapter
run in memory and checks it the same way): the check prompts a run gives, float32 noise measured against
float64, the float64 merge, and the noise-based bound with its error.

They live below the stages so that a stage's helpers (export/) can use them without importing a stage;
`stages/merge.py` reads top to bottom with them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

# Used when the run's training data cannot be read (a hub adapter, a moved data file, a pretrain run).
FIXED_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "Explain in one sentence why the sky is blue.",
    "List three prime numbers.",
]


# The merged model passes when max |merged - adapter| logit (both float32) <= max(--tolerance,
# NOISE_MULTIPLE * noise), noise = max |adapter float32 - adapter float64| on the same prompts: how far
# float32 arithmetic alone moves this model's logits. Why 4: merged - adapter = (merged32 - merged64) +
# (merged64 - adapter64) + (adapter64 - adapter32). The outer two are two independent float32 roundings of
# the same computation, each about `noise` at its largest; the middle one is the rounding of the merged
# weights to float32 (0.3x noise on SmolLM2), plus any real merge error. A correct merge therefore lands at
# 1-2.3x noise (measured: 1.1-1.6x on SmolLM2-135M with four random r16 LoRAs, 0.7-1.0x on the tests'
# tiny models), and 4x leaves 1.7x headroom over the worst case. A real merge error is orders of magnitude above it: on
# SmolLM2 a LoRA delta scaled by 1.001 lands at 30x noise, by 1.01 at 300x, one layer's o_proj delta
# dropped at 1100-9500x; alpha/r applied twice is a factor of 2, not 1.001. 8x would do too; 4x keeps the
# check sensitive to the smallest scale errors.
NOISE_MULTIPLE = 4.0


class MergeCheckFailed(LlmtuneError):
    """The merged model does not reproduce the adapter: a failure, not bad input (exit 1)."""

    exit_code = 1


def merge_bound(noise: float, tolerance: float) -> float:
    """The largest max |merged - adapter| logit (both float32) a correct merge may show: NOISE_MULTIPLE
    times the measured float32 noise (see NOISE_MULTIPLE for why 4), but never below `tolerance`, the
    absolute floor (--tolerance, 1e-4 by default: the old fixed bound, so every merge it passed still
    passes; it decides on small models, whose noise is far below it). A noise that could not be measured
    (not finite) leaves the floor alone."""
    if not math.isfinite(noise) or noise < 0:
        return tolerance
    return max(tolerance, NOISE_MULTIPLE * noise)


def check_difference(diff: float, noise: float, tolerance: float, *, effect: float, what: str) -> float:
    """The bound for `diff`; raises MergeCheckFailed, with the three numbers and what they mean, when
    `diff` (max |merged - adapter| logit, float32) is above it or not a number."""
    bound = merge_bound(noise, tolerance)
    if diff <= bound:
        return bound
    if math.isfinite(noise) and noise > 0:
        scale = (
            f"the bound is the larger of --tolerance {tolerance:g} and {NOISE_MULTIPLE:g} x the float32 noise "
            f"{noise:.3g}, which is how far float32 arithmetic alone moves this adapter model's logits on "
            f"the check prompts (measured against float64). A correct merge differs from the adapter by "
            f"that rounding only, up to about 2x the noise; this one is {diff / noise:.3g}x"
        )
    else:
        scale = f"the bound is --tolerance {tolerance:g} (the float32 noise could not be measured: {noise})"
    raise MergeCheckFailed(
        f"the {what} logits differ from the adapter model's by up to {diff:.3g}, above the bound "
        f"{bound:.3g}; nothing was written to --out. {scale[0].upper()}{scale[1:]}, so the merged weights "
        f"compute a different function: part of the adapter was lost or scaled wrongly in the merge (for "
        f"scale, the adapter moves the base's logits by up to {effect:.3g}).",
        hint="Check that --base is the model the adapter was trained on. --tolerance raises the bound's "
        "absolute floor, at the risk of writing a model that answers differently from the adapter.",
    )


def check_prompts(folder: Path, tokenizer) -> tuple[list[str], list[str], str]:
    """(full texts for the logit check, prompts for the greedy check, where they came from): up to 4
    training conversations rendered with the run's template (what the adapter was trained on), else
    fixed prompts."""
    full, prompts = [], []
    try:
        from llmtune.data.chat_dataset import load_examples
        from llmtune.recipe import ChatDataSection, load_yaml_file

        raw = load_yaml_file(folder / "recipe.yaml").get("data", {})
        if "train_files" in raw and "block_size" not in raw:  # a chat run (sft/dpo), not pretrain
            data = ChatDataSection.model_validate(
                {
                    **raw,
                    "max_samples": 4,
                    "on_bad_rows": "skip",
                    "validation_files": [],
                    "validation_split": 0,
                }
            )
            examples, _ = load_examples(data, preference=False)
            for example in examples["train"][:4]:
                full.append(tokenizer.apply_chat_template(example.messages, tokenize=False))
                prompts.append(
                    tokenizer.apply_chat_template(
                        example.messages[:-1], tokenize=False, add_generation_prompt=True
                    )
                )
    except Exception as exc:  # no recipe, moved or preference data: the fixed prompts still check the merge
        log.debug("check prompts from the training data unavailable: %s", exc)
        full, prompts = [], []
    if full:
        return full, prompts, "the first training conversations"
    if tokenizer.chat_template:
        rendered = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in FIXED_PROMPTS
        ]
        return rendered, rendered, "fixed prompts through the chat template"
    return list(FIXED_PROMPTS), list(FIXED_PROMPTS), "fixed prompts"


def token_ids(tokenizer, text: str):
    # The rendered template already holds any BOS it wants; add_special_tokens would double it.
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def max_diff(a, b) -> float:
    """max |a - b| over lists of logit tensors (computed in the wider of the two dtypes)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def logits_in_float64(model, inputs) -> list:
    """The model's logits on `inputs` computed in float64, without a float64 copy of the model.

    Each layer is upcast just before it runs and put back right after (float32 -> float64 -> float32 is
    exact, so the model is unchanged to the bit): memory is the float32 model plus one layer in float64,
    the time one more forward pass. A "layer" is an adapter layer (PEFT's LoRA/DoRA/IA3 module with its base
    weight, as PEFT casts its input to the adapter weights' dtype) or any other module holding weights.
    Elementwise ops promote float32 weights to float64 by themselves; matmuls do not, so a weight read
    outside its module's own call raises a dtype error, and then the whole model is upcast at once for the
    pass instead (twice the model's memory for that moment). Norm and rotary code that computes in float32
    on purpose (Llama's RMSNorm, RoPE) stays float32 here: the noise measured is that of the rest.
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    def floating(owner, recurse):
        """(module, "_parameters"/"_buffers", name, dtype) of the floating tensors `owner` holds."""
        modules = owner.modules() if recurse else [owner]
        return [
            (m, kind, name, t.dtype)
            for m in modules
            for kind in ("_parameters", "_buffers")
            for name, t in getattr(m, kind).items()
            if t is not None and t.is_floating_point()
        ]

    def cast(tensors, to=None):
        for module, kind, name, dtype in tensors:
            tensor = getattr(module, kind)[name]
            target = to or dtype
            if tensor.dtype != target:
                if kind == "_parameters":
                    tensor.data = tensor.data.to(target)  # the same Parameter: tied weights stay tied
                else:
                    module._buffers[name] = tensor.to(target)

    everything = floating(model, recurse=True)
    units, inside = [], set()
    for module in model.modules():  # parents before children
        if id(module) in inside:
            continue
        if isinstance(module, BaseTunerLayer):
            units.append((module, floating(module, recurse=True)))
            inside.update(id(m) for m in module.modules())
        elif any(t is not None for t in module._parameters.values()):
            units.append((module, floating(module, recurse=False)))

    def run():
        with torch.no_grad():
            return [model(ids).logits[0].to(torch.float64) for ids in inputs]

    handles = []
    try:
        for module, tensors in units:
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args, tensors=tensors: cast(tensors, torch.float64)
                )
            )
            handles.append(module.register_forward_hook(lambda m, args, out, tensors=tensors: cast(tensors)))
        try:
            return run()
        except (RuntimeError, TypeError) as exc:  # a weight used outside its module: upcast it all
            log.debug("layer-by-layer float64 pass failed (%s); upcasting the whole model", exc)
        for handle in handles:
            handle.remove()
        handles = []
        cast(everything)
        cast(everything, torch.float64)
        return run()
    finally:
        for handle in handles:
            handle.remove()
        cast(everything)


def merge_in_float64(model):
    """merge_and_unload, with each layer's W + scale * B @ A summed in float64 and rounded once.

    PEFT sums in the weight dtype; in float32 that adds a rounding of B @ A to the rounding of the sum.
    The gain is within the float32 noise either way (benchmarks/merge_noise.py: 1.39e-4 here, 1.25e-4
    with PEFT's sum, noise 9e-5), which is why the check's bound is set by the measured noise, not by
    this; the one rounding keeps the merged weights closest to the exact sum. One layer is upcast at a
    time, so memory stays at one copy.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            dtype = module.get_base_layer().weight.dtype
            module.double()
            module.merge()
            module.to(dtype)
    return model.unload()
