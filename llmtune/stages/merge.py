"""`llmtune merge`: fold a LoRA/DoRA/IA3 adapter into its base and prove the result equals the adapter.

    llmtune merge --adapter runs/quickstart --out models/smollm2-quickstart
    llmtune merge --adapter runs/qlora-8b --base meta-llama/Meta-Llama-3-8B --dtype bfloat16 --out merged

Read top to bottom: adapter folder → base (embedding resized to the run's tokenizer, de-quantised when the
adapter is QLoRA) → the adapter model's logits and greedy answers on fixed prompts → merge → save into a
staging folder → load it back with plain `AutoModelForCausalLM.from_pretrained` → compare → rename the
staging folder to --out. A failed check removes only the staging folder; --out is untouched.

Peers merge and report success; their users find out later that the merged model answers differently
(a dropped LoRA, a lost resized embedding, a wrong dtype). Hence the comparison is part of the command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

from llmtune.adapters import UNMERGEABLE_ADAPTERS, is_adapter_folder, load_adapter_model
from llmtune.errors import LlmtuneError
from llmtune.manifest import model_entry
from llmtune.models import resolve_dtype
from llmtune.run_folder import RunFolder

log = logging.getLogger("llmtune")

REPORT = "merge_report.json"
# Used when the run's training data cannot be read (a hub adapter, a moved data file, a pretrain run).
FIXED_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "Explain in one sentence why the sky is blue.",
    "List three prime numbers.",
]
GENERATION_TOKENS = 16


class MergeCheckFailed(LlmtuneError):
    """The merged model does not reproduce the adapter: a failure, not bad input (exit 1)."""

    exit_code = 1


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
    if not tolerance > 0:
        raise LlmtuneError(f"--tolerance {tolerance}: must be a positive number.")
    if hub not in ("auto", "hf", "modelscope"):
        raise LlmtuneError(f"--hub {hub!r}: expected auto, hf or modelscope.")
    folder = RunFolder.check(out, command="merge", key="--out", overwrite=overwrite, staged=True)
    adapter_dir = _adapter_folder(adapter, hub)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
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
    notes = []
    if method == "qlora":
        notes.append(
            f"QLoRA adapter: the base is loaded de-quantised in {dtype} (not 4-bit) and the adapter merged "
            "into it; the check compares against the adapter on that same base. Answers can differ slightly "
            "from the 4-bit model used in training."
        )

    about = {"adapter": str(adapter_dir), "base": base_name, "method": method, "dtype": dtype}
    with folder.open(inputs=about) as run:
        # ---- the adapter model, in float32, and what it says on the check prompts
        started = time.time()
        model, tokenizer, load_notes = load_adapter_model(adapter_dir, base=base, dtype="float32", hub=hub)
        notes += load_notes
        for note in notes:
            log.info("note: %s", note)
        texts, prompts, prompt_source = _check_prompts(adapter_dir, tokenizer)
        inputs = [_ids(tokenizer, text) for text in texts]
        generation_inputs = [_ids(tokenizer, text) for text in prompts]
        log.info("Checking on %d prompts (%s)", len(prompts), prompt_source)
        with torch.no_grad():
            adapter_logits = [model(ids).logits[0] for ids in inputs]
            with model.disable_adapter():
                base_logits = [model(ids).logits[0] for ids in inputs]
            adapter_answers = [_greedy(model, tokenizer, ids) for ids in generation_inputs]
        effect = max(float((a - b).abs().max()) for a, b in zip(adapter_logits, base_logits, strict=True))
        del base_logits
        if effect == 0.0:
            raise MergeCheckFailed(
                f"the adapter in {adapter_dir} changes no logit of the base model (max |adapter - base| = 0): "
                "it is untrained, or its weights did not load into this base; a merge would write the base "
                "unchanged.",
                hint="Check --base and that adapter_model.safetensors is the trained one.",
            )

        # ---- merge in float32 and compare in memory
        merged = _merge_in_float64(model)
        with torch.no_grad():
            merged_diff = max(
                float((merged(ids).logits[0] - ref).abs().max())
                for ids, ref in zip(inputs, adapter_logits, strict=True)
            )
        log.info("merge check (float32, in memory): max |merged - adapter| logit = %.3g", merged_diff)
        if not merged_diff <= tolerance:
            raise MergeCheckFailed(
                f"the merged model's logits differ from the adapter model's by up to {merged_diff:.3g} "
                f"(tolerance {tolerance:g}); nothing was written. For scale: the adapter moves the base's "
                f"logits by up to {effect:.3g}.",
                hint="A difference far below that on a large model is float32 rounding (pass --tolerance "
                f"{10 ** math.ceil(math.log10(merged_diff)):g}); one near it means the merge lost part of the "
                "adapter.",
            )

        # ---- save into the staging folder, load it back as a user would, compare
        merged = merged.to(resolve_dtype(dtype))
        _set_generation_config(merged, tokenizer, adapter_dir)
        digests = {name: _digest(tensor) for name, tensor in merged.state_dict().items()}
        run.set_model(
            model_entry(
                merged, name=f"{base_name} + {adapter_dir.name}", source="merge", path=str(out), peft="none"
            )
        )
        merged.save_pretrained(run.dir, max_shard_size=max_shard_size)
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
            tolerance,
        )
        report.update(
            adapter=str(adapter_dir),
            peft_type=peft_type,
            method=method,
            base=base_name,
            dtype=dtype,
            adapter_effect_max_abs_logit=effect,
            merged_vs_adapter_max_abs_logit_fp32=merged_diff,
            tolerance=tolerance,
            prompts=prompt_source,
            notes=notes,
            seconds=round(time.time() - started, 1),
        )
        run.write_json(REPORT, report)
        log.info(
            "merged %s into %s: logits within %.3g of the adapter, %d/%d greedy answers identical",
            adapter_dir,
            report["base"],
            report["saved_vs_adapter_max_abs_logit"],
            report["greedy_identical"],
            len(prompts),
        )
        return run.finish(report, summary=False)


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


def _check_prompts(folder: Path, tokenizer) -> tuple[list[str], list[str], str]:
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


def _ids(tokenizer, text: str):
    # The rendered template already holds any BOS it wants; add_special_tokens would double it.
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _greedy(model, tokenizer, ids) -> list[int]:
    out = model.generate(
        input_ids=ids,
        attention_mask=ids.new_ones(ids.shape),
        max_new_tokens=GENERATION_TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def _merge_in_float64(model):
    """merge_and_unload, with each layer's W + scale * B @ A summed in float64 and rounded once.

    PEFT sums in the weight dtype; in float32 that adds a rounding of B @ A to the rounding of the sum.
    On two SmolLM2 adapters the merged logits then landed 1.1e-4 and 9.3e-5 from the adapter's, against
    8.6e-5 and 7.1e-5 when the sum is rounded once (the adapter model's own float32 error, measured
    against float64, is 8.2e-5 and 7.8e-5). One layer is upcast at a time, so memory stays at one copy.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            dtype = module.get_base_layer().weight.dtype
            module.double()
            module.merge()
            module.to(dtype)
    return model.unload()


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
    staging, digests, inputs, adapter_logits, generation_inputs, adapter_answers, tokenizer, dtype, tolerance
) -> dict:
    """Load the saved folder the way a user will, and compare it with the adapter model."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=resolve_dtype(dtype)).eval()
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
        saved_diff = max(
            float((reloaded(ids).logits[0] - ref).abs().max())
            for ids, ref in zip(inputs, adapter_logits, strict=True)
        )
        answers = [_greedy(reloaded, tokenizer, ids) for ids in generation_inputs]
    identical = sum(a == b for a, b in zip(answers, adapter_answers, strict=True))
    log.info(
        "saved-model check (%s, loaded with from_pretrained): max |saved - adapter| logit = %.3g, "
        "greedy answers identical %d/%d",
        dtype,
        saved_diff,
        identical,
        len(answers),
    )
    if dtype == "float32":
        if not saved_diff <= tolerance:
            raise MergeCheckFailed(
                f"the saved merged model's logits differ from the adapter model's by up to {saved_diff:.3g} "
                f"(tolerance {tolerance:g}); --out was not written."
            )
        if identical != len(answers):
            raise MergeCheckFailed(
                f"the saved merged model's greedy answers differ from the adapter model's on "
                f"{len(answers) - identical} of {len(answers)} check prompts; --out was not written."
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
        "greedy_checked": len(answers),
        "tensors_checked": len(digests),
        "files": sorted(p.name for p in Path(staging).iterdir()),
    }
