"""`llmtune merge`: fold a LoRA/DoRA/IA3 adapter into its base and prove the result equals the adapter.

    llmtune merge --adapter runs/quickstart --out models/smollm2-quickstart
    llmtune merge --adapter runs/qlora-8b --base meta-llama/Meta-Llama-3-8B --dtype bfloat16 --out merged

Read top to bottom: adapter folder → base (embedding resized to the run's tokenizer, de-quantised when the
adapter is QLoRA) → the adapter model's logits and greedy answers on fixed prompts → merge → save into a
staging folder → load it back with plain `AutoModelForCausalLM.from_pretrained` → compare → rename the
staging folder to --out. A failed check removes only the staging folder; --out is untouched.

A reward-model adapter (`llmtune reward`, task_type SEQ_CLS) merges the same way into its sequence-
classification model (the trained score head kept), saved to load with plain
`AutoModelForSequenceClassification.from_pretrained`; the check compares its scores (its "logits") on the
first training pairs, and there are no greedy answers to compare, since a reward model does not generate.

Peers merge and report success; their users find out later that the merged model answers differently
(a dropped LoRA, a lost resized embedding, a wrong dtype). Hence the comparison is part of the command.

How close is close enough: a correct merge computes the same function as the adapter with the weights
summed in a different order, so the two differ by float32 rounding only, and how much rounding moves the
logits depends on the model (depth, width, logit scale) and the prompts. A fixed bound cannot fit every
model: 1e-4 sat at SmolLM2-135M's noise floor, and a correct quickstart merge failed it by chance (1.2e-4).
So the check measures that noise on the spot (the adapter model run once more in float64 on the same
prompts) and accepts a difference up to NOISE_MULTIPLE times it, or up to --tolerance, whichever is larger;
see merge_bound.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path

from llmtune.adapter_merge import (
    FIXED_PROMPTS,
    NOISE_MULTIPLE,
    MergeCheckFailed,
    check_difference,
    merge_bound,
)
from llmtune.adapter_merge import check_prompts as _check_prompts
from llmtune.adapter_merge import logits_in_float64 as _logits_in_float64
from llmtune.adapter_merge import max_diff as _max_diff
from llmtune.adapter_merge import merge_in_float64 as _merge_in_float64
from llmtune.adapter_merge import token_ids as _ids
from llmtune.adapters import UNMERGEABLE_ADAPTERS, is_adapter_folder, load_adapter_model, read_adapter_config
from llmtune.errors import LlmtuneError
from llmtune.manifest import model_entry
from llmtune.models import resolve_dtype
from llmtune.run_folder import RunFolder

log = logging.getLogger("llmtune")

REPORT = "merge_report.json"
GENERATION_TOKENS = 16


def run(
    adapter: str,
    out: str,
    *,
    base: str | None = None,
    dtype: str = "float32",
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    tolerance: float = 1e-4,
    hub: str = "auto",
) -> dict:
    import torch

    if dtype not in ("float32", "bfloat16", "float16"):
        raise LlmtuneError(f"--dtype {dtype!r}: expected float32, bfloat16 or float16.")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise LlmtuneError(f"--tolerance {tolerance}: must be a positive number.")
    if hub not in ("auto", "hf", "modelscope"):
        raise LlmtuneError(f"--hub {hub!r}: expected auto, hf or modelscope.")
    shard_bytes = parse_shard_size(max_shard_size)  # a typo fails here, not after the merge
    folder = RunFolder.check(
        out, command="merge", key="--out", overwrite=overwrite, staged=True, inputs=[adapter]
    )
    adapter_dir = _adapter_folder(adapter, hub)
    adapter_config = read_adapter_config(adapter_dir)
    peft_type = adapter_config.get("peft_type", "?")
    if peft_type in UNMERGEABLE_ADAPTERS:
        raise LlmtuneError(
            f"{adapter_dir} holds a {UNMERGEABLE_ADAPTERS[peft_type]} adapter ({peft_type}): it adds virtual "
            "tokens in front of the input instead of changing weights, so there is nothing to merge.",
            hint="Serve it with the adapter (llmtune eval --model RUN works on it), or retrain with "
            "peft.method lora/dora.",
        )
    if peft_type not in ("LORA", "IA3"):
        raise LlmtuneError(
            f"{adapter_dir}: merging a {peft_type} adapter is not supported (LoRA, DoRA, IA3 are)."
        )
    method = _training_method(adapter_dir, adapter_config)
    base_name = base or adapter_config.get("base_model_name_or_path")
    reward = adapter_config.get("task_type") == "SEQ_CLS"
    notes = []
    if reward:
        notes.append(
            "reward-model adapter (task_type SEQ_CLS): merged into the sequence-classification model with its "
            "trained score head; checked on scores only (a reward model does not generate, so no greedy answers)."
        )
    if method == "qlora":
        notes.append(
            f"QLoRA adapter: the base is loaded de-quantised in {dtype} (not 4-bit) and the adapter merged "
            "into it; the check compares against the adapter on that same base. Answers can differ slightly "
            "from the 4-bit model used in training."
        )

    about = {"adapter": str(adapter_dir), "base": base_name, "method": method, "dtype": dtype}
    if reward:
        about["task"] = "reward"
    with folder.open(inputs=about) as run:
        # ---- the adapter model, in float32, and what it says on the check prompts
        started = time.time()
        model, tokenizer, load_notes = load_adapter_model(
            adapter_dir, base=base, dtype="float32", hub=hub, reward=reward
        )
        notes += load_notes
        for note in notes:
            log.info("note: %s", note)
        if reward:
            texts, prompts, prompt_source = _reward_check_texts(adapter_dir, tokenizer)
        else:
            texts, prompts, prompt_source = _check_prompts(adapter_dir, tokenizer)
        inputs = [_ids(tokenizer, text) for text in texts]
        generation_inputs = [_ids(tokenizer, text) for text in prompts]
        log.info("Checking on %d prompts (%s)", len(texts), prompt_source)
        with torch.no_grad():
            adapter_logits = [model(ids).logits[0] for ids in inputs]
            with model.disable_adapter():
                base_logits = [model(ids).logits[0] for ids in inputs]
            adapter_answers = [_greedy(model, tokenizer, ids) for ids in generation_inputs]
        effect = _max_diff(adapter_logits, base_logits)
        del base_logits
        if effect == 0.0:
            raise MergeCheckFailed(
                f"the adapter in {adapter_dir} changes no logit of the base model (max |adapter - base| = 0): "
                "it is untrained, or its weights did not load into this base; a merge would write the base "
                "unchanged.",
                hint="Check --base and that adapter_model.safetensors is the trained one.",
            )

        # ---- the float32 noise: the same adapter model computed in float64 (one layer upcast at a time)
        try:
            exact_logits = _logits_in_float64(model, inputs)
            noise = _max_diff(adapter_logits, exact_logits)
        except (RuntimeError, TypeError) as exc:  # no float64 kernel for some layer on this device
            log.warning("note: float32 noise not measured (%s); the bound is --tolerance alone", exc)
            exact_logits, noise = None, math.nan
        bound = merge_bound(noise, tolerance)
        log.info(
            "float32 noise of the adapter model (max |float32 - float64| logit) = %.3g: merge bound %.3g",
            noise,
            bound,
        )

        # ---- merge in float32 and compare in memory
        merged = _merge_in_float64(model)
        with torch.no_grad():
            merged_logits = [merged(ids).logits[0] for ids in inputs]
        merged_diff = _max_diff(merged_logits, adapter_logits)
        merged_vs_exact = _max_diff(merged_logits, exact_logits) if exact_logits is not None else math.nan
        del merged_logits, exact_logits
        log.info(
            "merge check (float32, in memory): max |merged - adapter| logit = %.3g (bound %.3g; merged vs "
            "the float64 adapter %.3g)",
            merged_diff,
            bound,
            merged_vs_exact,
        )
        check_difference(merged_diff, noise, tolerance, effect=effect, what="merged model's")

        # ---- save into the staging folder, load it back as a user would, compare
        merged = merged.to(resolve_dtype(dtype))
        if not reward:
            _set_generation_config(merged, tokenizer, adapter_dir)
        digests = {name: _digest(tensor) for name, tensor in merged.state_dict().items()}
        run.set_model(
            model_entry(
                merged,
                name=f"{base_name} + {adapter_dir.name}",
                source="merge",
                path=str(out),
                peft="none",
                **({"task": "reward"} if reward else {}),
            )
        )
        merged.save_pretrained(run.dir, max_shard_size=shard_bytes)
        tokenizer.save_pretrained(run.dir)
        del merged, model
        report = _check_saved(
            run.dir,
            digests,
            inputs,
            adapter_logits,
            generation_inputs,
            adapter_answers,
            tokenizer,
            dtype,
            noise=noise,
            tolerance=tolerance,
            effect=effect,
            reward=reward,
        )
        report.update(
            adapter=str(adapter_dir),
            task="reward" if reward else "causal_lm",
            peft_type=peft_type,
            method=method,
            base=base_name,
            dtype=dtype,
            adapter_effect_max_abs_logit=effect,
            merged_vs_adapter_max_abs_logit_fp32=merged_diff,
            # the check's scale: float32 noise (adapter model, float32 vs float64, same prompts) and the
            # bound it gives, max(tolerance, noise_multiple * noise); see merge_bound
            fp32_noise_max_abs_logit=_number(noise),
            noise_multiple=NOISE_MULTIPLE,
            tolerance=tolerance,
            bound_max_abs_logit=bound,
            merged_vs_float64_adapter_max_abs_logit=_number(merged_vs_exact),
            prompts=prompt_source,
            notes=notes,
            seconds=round(time.time() - started, 1),
        )
        run.write_json(REPORT, report)
        if reward:
            log.info(
                "merged reward model %s into %s: scores within %.3g of the adapter's on %d sequences",
                adapter_dir,
                report["base"],
                report["saved_vs_adapter_max_abs_logit"],
                len(texts),
            )
        else:
            log.info(
                "merged %s into %s: logits within %.3g of the adapter, %d/%d greedy answers identical",
                adapter_dir,
                report["base"],
                report["saved_vs_adapter_max_abs_logit"],
                report["greedy_identical"],
                len(prompts),
            )
        return run.finish(report, summary=False)


# ------------------------------------------------------------------------------------------ the rule


def parse_shard_size(size: str | int) -> int:
    """--max-shard-size in bytes, read as save_pretrained reads it (transformers'
    convert_file_size_to_int): an integer followed by KB/MB/GB (powers of 10) or KiB/MiB/GiB (powers of
    2), case-insensitive but for a lowercase final b, which transformers reads as bits ("5Gb" = 5e9 / 8
    bytes); plain integers are bytes."""
    import re

    if isinstance(size, int) and not isinstance(size, bool):
        number, unit = size, ""
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B)?\s*", str(size), flags=re.IGNORECASE)
        if not match:
            raise LlmtuneError(
                f"--max-shard-size {size!r}: expected a size such as 2GB, 500MB, 5GiB or a number of bytes."
            )
        number, unit = int(match.group(1)), match.group(2) or ""
    if number <= 0:
        raise LlmtuneError(f"--max-shard-size {size!r}: must be larger than zero.")
    if unit[1:2].lower() == "i":
        return number * 2 ** {"k": 10, "m": 20, "g": 30}[unit[0].lower()]
    if unit:
        total = number * 10 ** {"k": 3, "m": 6, "g": 9}[unit[0].lower()]
        return total // 8 if unit.endswith("b") else total
    return number


# ------------------------------------------------------------------------------------------ inputs
def _adapter_folder(adapter: str, hub: str) -> Path:
    path = Path(adapter).expanduser()
    if path.is_dir():
        if not is_adapter_folder(path):
            raise LlmtuneError(
                f"--adapter {adapter}: no adapter_config.json in this folder; give the folder of an sft/dpo/"
                "pretrain run trained with peft.method lora, dora, qlora or ia3 (a full fine-tune needs no merge)."
            )
        return path
    if path.exists():
        raise LlmtuneError(f"--adapter {adapter} is a file; give the adapter's folder.")
    from llmtune.hub import resolve_model

    resolved = resolve_model(adapter, hub=hub, key="--adapter")
    if not is_adapter_folder(resolved.path):
        raise LlmtuneError(f"--adapter {adapter}: {resolved.path} holds no adapter_config.json.")
    return Path(resolved.path)


def _training_method(folder: Path, adapter_config: dict) -> str:
    """lora / dora / qlora / ia3, from the run's recipe when there is one."""
    from llmtune.recipe import load_yaml_file

    try:
        method = load_yaml_file(folder / "recipe.yaml").get("peft", {}).get("method")
    except Exception:
        method = None
    if method:
        return str(method)
    if adapter_config.get("peft_type") == "IA3":
        return "ia3"
    return "dora" if adapter_config.get("use_dora") else "lora"


def _reward_check_texts(folder: Path, tokenizer) -> tuple[list[str], list[str], str]:
    """(texts to score, no greedy prompts, where they came from) for a reward model: the chosen and the
    rejected answer of the first training pairs, rendered with the run's template as in training; else the
    fixed prompts, each with a short answer."""
    texts = []
    try:
        from llmtune.data.chat_dataset import load_examples
        from llmtune.recipe import ChatDataSection, load_yaml_file

        raw = load_yaml_file(folder / "recipe.yaml").get("data", {})
        data = ChatDataSection.model_validate(
            {**raw, "max_samples": 4, "on_bad_rows": "skip", "validation_files": [], "validation_split": 0}
        )
        examples, _ = load_examples(data, preference=True)
        for pair in examples["train"][:4]:
            for answer in (pair.chosen, pair.rejected):
                messages = [*pair.prompt, {"role": "assistant", "content": answer}]
                texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    except Exception as exc:  # no recipe, moved data: the fixed prompts still check the merge
        log.debug("check pairs from the training data unavailable: %s", exc)
        texts = []
    if texts:
        return texts, [], "the first training pairs, chosen and rejected"
    answered = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": "I do not know."}]
        for p in FIXED_PROMPTS
    ]
    if tokenizer.chat_template:
        rendered = [tokenizer.apply_chat_template(m, tokenize=False) for m in answered]
        return rendered, [], "fixed prompts with an answer, through the chat template"
    return [f"{m[0]['content']}\n{m[1]['content']}" for m in answered], [], "fixed prompts with an answer"


def _greedy(model, tokenizer, ids) -> list[int]:
    out = model.generate(
        input_ids=ids,
        attention_mask=ids.new_ones(ids.shape),
        max_new_tokens=GENERATION_TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def _number(value: float) -> float | None:
    """None (JSON null) for a number that was not measured."""
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------ outputs
def _set_generation_config(model, tokenizer, folder: Path) -> None:
    """Stop at the training template's end-of-turn token, as the run did."""
    from llmtune.data.templates import end_of_turn_token
    from llmtune.generation import set_stop_tokens
    from llmtune.recipe import load_yaml_file

    try:
        template = load_yaml_file(folder / "recipe.yaml").get("data", {}).get("template")
    except Exception:
        template = None
    set_stop_tokens(
        model, tokenizer, end_of_turn_token(tokenizer, template if isinstance(template, str) else None)
    )


def _digest(tensor) -> str:
    """Hash of the tensor's bytes (any dtype: bfloat16 has no numpy type, its bytes do)."""
    import torch

    return hashlib.sha256(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()


def _check_saved(
    staging,
    digests,
    inputs,
    adapter_logits,
    generation_inputs,
    adapter_answers,
    tokenizer,
    dtype,
    *,
    noise: float,
    tolerance: float,
    effect: float,
    reward: bool = False,
) -> dict:
    """Load the saved folder the way a user will, and compare it with the adapter model (a reward model:
    its scores, with no greedy answers to compare)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    loader = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    reloaded = loader.from_pretrained(staging, dtype=resolve_dtype(dtype)).eval()
    state = reloaded.state_dict()
    leftovers = [name for name in state if "lora_" in name or "base_layer" in name or "ia3_" in name]
    if leftovers:
        raise MergeCheckFailed(f"the saved model still holds adapter layers ({leftovers[0]}, ...).")
    missing = sorted(set(digests) - set(state))
    changed = [name for name in digests if name in state and _digest(state[name]) != digests[name]]
    if missing or changed:
        raise MergeCheckFailed(
            "the saved model does not hold the merged weights: "
            + (f"missing {missing[:3]}" if missing else f"tensors differ after saving: {changed[:3]}")
        )
    # Compute in float32 whatever the saved dtype, so that the comparison measures only the rounding of
    # the weights to `dtype`, not low-precision arithmetic.
    reloaded = reloaded.float()
    with torch.no_grad():
        saved_diff = _max_diff([reloaded(ids).logits[0] for ids in inputs], adapter_logits)
        answers = [_greedy(reloaded, tokenizer, ids) for ids in generation_inputs]
    identical = sum(a == b for a, b in zip(answers, adapter_answers, strict=True))
    log.info(
        "saved-model check (%s, loaded with from_pretrained): max |saved - adapter| %s = %.3g%s",
        dtype,
        "score" if reward else "logit",
        saved_diff,
        "" if reward else f", greedy answers identical {identical}/{len(answers)}",
    )
    ties = 0
    if not math.isfinite(saved_diff):
        raise MergeCheckFailed(
            f"the saved merged model ({dtype}) gives non-finite logits (inf or NaN); --out was not written."
            + (" float16 holds values up to 65504 only." if dtype == "float16" else ""),
            hint="Save in bfloat16 or float32 (--dtype).",
        )
    if dtype == "float32":
        # The same float32 weights as the merged model checked in memory, so the same bound.
        bound = check_difference(saved_diff, noise, tolerance, effect=effect, what="saved merged model's")
        differing = [i for i, (a, b) in enumerate(zip(answers, adapter_answers, strict=True)) if a != b]
        ties = sum(
            _near_tie(reloaded, generation_inputs[i], adapter_answers[i], answers[i], bound)
            for i in differing
        )
        if ties < len(differing):
            raise MergeCheckFailed(
                f"the saved merged model's greedy answers differ from the adapter model's on "
                f"{len(differing) - ties} of {len(answers)} check prompts where the two choices were not "
                "within float32 noise of each other; --out was not written."
            )
        if ties:
            log.warning(
                "note: %d of %d greedy answers differ from the adapter model's at a near tie (two tokens "
                "within %.3g logit, the merge bound: float32 rounding decides between them)",
                ties,
                len(answers),
                bound,
            )
    elif identical != len(answers):
        log.warning(
            "note: in %s, %d of %d greedy answers differ from the float32 adapter model (rounding the weights "
            "to %s changes close calls); save in float32 for identical answers.",
            dtype,
            len(answers) - identical,
            len(answers),
            dtype,
        )
    return {
        "saved_vs_adapter_max_abs_logit": saved_diff,
        "greedy_identical": identical,
        "greedy_near_ties": ties,
        "greedy_checked": len(answers),
        "tensors_checked": len(digests),
        "files": sorted(p.name for p in Path(staging).iterdir()),
    }


def _near_tie(model, ids, expected: list[int], got: list[int], bound: float) -> bool:
    """Whether `got` leaves `expected` (the adapter's greedy answer) at a token that `model` scores within
    2 x bound of the adapter's token: both models' logits are within `bound` of each other, so a gap that
    small is float32 rounding deciding a near tie, not a different model."""
    import torch

    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
    if at is None:  # one answer is the start of the other: not a choice between two tokens
        return False
    prefix = torch.cat([ids, ids.new_tensor([got[:at]])], dim=1)
    with torch.no_grad():
        logits = model(prefix).logits[0, -1]
    return abs(float(logits[got[at]] - logits[expected[at]])) <= 2 * bound
