"""`llmtune prune`: make a model smaller by removing what matters least on calibration text.

    llmtune prune --recipe recipes/prune/smollm2-135m-depth-20.yaml
    llmtune prune --recipe recipes/prune/smollm2-135m-width.yaml --set prune.width.intermediate_size=1024

Read top to bottom: output folder checked → tokenizer → calibration and held-out blocks (the pretrain
pipeline) → (folder opened, staged) model → held-out loss before → depth (layers ranked by block influence
or perplexity increase, the lowest removed) → width (MLP channels and attention heads ranked by activation
magnitude, Minitron; grouped-query groups kept whole) → unstructured (magnitude or Wanda) → held-out loss
after → save with the tokenizer, chat template and generation config → load back with plain
`from_pretrained` (no warning allowed) and compare logits with the pruned model in memory → prune_report.json
→ the folder appears under its name. A failure at any point leaves no folder behind.

Supported: the Llama family (Llama, SmolLM2, Mistral, Qwen2) and GPT-2 (see pruning/architecture.py).
"""

from __future__ import annotations

import logging
import math
import time

from llmtune.errors import LlmtuneError
from llmtune.home import llmtune_home
from llmtune.manifest import model_entry
from llmtune.models import load_causal_lm, load_tokenizer, resolve_model_source
from llmtune.recipe import PruneRecipe
from llmtune.run_folder import RunFolder, recipe_inputs

log = logging.getLogger("llmtune")

REPORT = "prune_report.json"
PHASES = ("model", "score", "prune", "evaluate", "save", "check")
# The reloaded folder must compute what the pruned model in memory computes: the same weights in the same
# dtype through the same code, so the logits agree to float rounding (measured: exactly 0 in float32).
RELOAD_TOLERANCE = 1e-4


class PruneCheckFailed(LlmtuneError):
    """The saved folder does not reproduce the pruned model: a failure, not bad input (exit 1)."""

    exit_code = 1


def run(recipe: PruneRecipe, *, overwrite: bool = False) -> dict:

    from llmtune import pruning
    from llmtune.data.text import build_text_datasets

    settings = recipe.prune
    folder = RunFolder.check(
        settings.output_dir,
        command="prune",
        key="prune.output_dir",
        overwrite=overwrite,
        staged=True,
        inputs=recipe_inputs(recipe),
    )
    # ---- inputs: the architecture (from its config, before any weights load), tokenizer, blocks
    resolved = resolve_model_source(recipe.model)
    _check_early(resolved, settings)
    tokenizer = load_tokenizer(recipe.model, resolved)
    datasets, report = build_text_datasets(
        recipe.data, tokenizer, llmtune_home() / "cache", describe=recipe.describe_path
    )
    for line in report.lines():
        log.info(line)
    calibration = _batches(datasets["train"], settings.calibration_blocks, settings.batch_size)
    heldout = _batches(datasets["validation"], settings.eval_blocks, settings.batch_size)
    log.info(
        "calibration: %d blocks of %d tokens; held-out: %d blocks",
        sum(len(b["input_ids"]) for b in calibration),
        recipe.data.block_size,
        sum(len(b["input_ids"]) for b in heldout),
    )

    data = {"files": report.files, "cache_key": report.cache_key, "tokens": report.tokens}
    with folder.open(recipe, data_report=report.to_dict(), data=data, phases=PHASES) as run:
        started = time.time()
        run.phase("model")
        section = recipe.model.model_copy(update={"dtype": settings.dtype})
        model = load_causal_lm(section, resolved, tokenizer).eval()
        pruning.family(model.config)
        _check_targets(model.config, settings)  # again: a GGUF's config is known only now
        before = _shape(model)
        log.info("model: %s, %s", resolved.name, _describe(before))
        loss_before = pruning.mean_loss(model, heldout)
        log.info("held-out loss before: %.4f (perplexity %.2f)", loss_before, math.exp(loss_before))
        result: dict = {"model": resolved.name, "before": before, "heldout_loss_before": loss_before}

        # ---- depth
        if settings.depth is not None:
            run.phase("score")
            depth = settings.depth
            if depth.method == "perplexity":
                base, scores = pruning.perplexity_increase(model, calibration)
            else:
                scores = pruning.block_influence(model, calibration)
            if depth.remove_layers is not None:
                remove = sorted(depth.remove_layers)
            else:
                remove = pruning.layers_to_remove(scores, keep=depth.keep_layers)
            run.phase("prune")
            model = pruning.drop_layers(model, remove)
            result["depth"] = {
                "method": depth.method,
                "scores": [round(float(s), 6) for s in scores],
                "removed": remove,
                "kept": [i for i in range(before["layers"]) if i not in remove],
            }
            log.info(
                "depth (%s): removed layers %s; scores %s",
                depth.method,
                remove,
                " ".join(f"{i}:{s:.3g}" for i, s in enumerate(scores)),
            )

        # ---- width: every score from one pass over the calibration text, before anything is cut
        if settings.width is not None:
            run.phase("score")
            width = settings.width
            stats = pruning.activation_statistics(
                model,
                calibration,
                mlp=width.intermediate_size is not None,
                heads=width.attention_heads is not None,
            )
            run.phase("prune")
            result["width"] = {}
            if width.attention_heads is not None:
                keep = pruning.heads_to_keep(
                    stats.heads, model.config, attention_heads=width.attention_heads, kv_heads=width.kv_heads
                )
                model = pruning.prune_heads(model, keep)
                result["width"]["heads_kept"] = [k.tolist() for k in keep]
                result["width"]["head_scores"] = [[round(float(v), 6) for v in s] for s in stats.heads]
            if width.intermediate_size is not None:
                keep = pruning.channels_to_keep(stats.mlp_channels, width.intermediate_size)
                model = pruning.prune_mlp(model, keep)
                result["width"]["intermediate_size"] = width.intermediate_size
                result["width"]["mlp_channel_score_mean"] = [
                    round(float(s.mean()), 6) for s in stats.mlp_channels
                ]
            log.info("width: %s", _describe(_shape(model)))

        # ---- unstructured
        if settings.unstructured is not None:
            run.phase("score")
            sparse = settings.unstructured
            norms = None
            if sparse.method == "wanda":
                norms = pruning.activation_statistics(
                    model, calibration, mlp=False, heads=False, input_norms=True
                ).input_norms
            run.phase("prune")
            measured = pruning.sparsify(model, sparse.sparsity, method=sparse.method, input_norms=norms)
            result["unstructured"] = {
                "method": sparse.method,
                "target": sparse.sparsity,
                "sparsity": measured,
            }
            log.info(
                "unstructured (%s): measured sparsity %.4f of the decoder layers' weights",
                sparse.method,
                measured["total"],
            )

        # ---- held-out loss after, then save and check
        run.phase("evaluate")
        after = _shape(model)
        loss_after = pruning.mean_loss(model, heldout)
        log.info(
            "held-out loss after: %.4f (perplexity %.2f; before %.2f); %s",
            loss_after,
            math.exp(loss_after),
            math.exp(loss_before),
            _describe(after),
        )
        run.phase("save")
        model.save_pretrained(run.dir)
        tokenizer.save_pretrained(run.dir)
        run.phase("check")
        difference = _check_reloaded(run.dir, model, heldout[0]["input_ids"][:1], settings.dtype)
        result.update(
            after=after,
            heldout_loss_after=loss_after,
            heldout_perplexity_before=math.exp(loss_before),
            heldout_perplexity_after=math.exp(loss_after),
            parameters_kept=after["parameters"] / before["parameters"],
            reload_max_abs_logit_difference=difference,
            seconds=round(time.time() - started, 1),
        )
        run.write_json(REPORT, result)
        run.set_model(
            model_entry(
                model, name=f"{resolved.name} pruned", source="prune", path=str(folder.path), peft="none"
            )
        )
        return run.finish(
            {
                "parameters_before": before["parameters"],
                "parameters_after": after["parameters"],
                "layers_after": after["layers"],
                "heldout_perplexity_before": math.exp(loss_before),
                "heldout_perplexity_after": math.exp(loss_after),
            }
        )


# ------------------------------------------------------------------------------------------ helpers
def _check_early(resolved, settings) -> None:
    """Refuse an unsupported architecture or a target the model cannot take from its config.json, before
    the weights load: the choosers run on all-zero scores of the model's own sizes (a GGUF's config is only
    known once it is read, and is checked after loading)."""
    from llmtune import pruning

    if resolved is None or resolved.gguf_file or not (resolved.path / "config.json").is_file():
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolved.path)
    pruning.family(config)
    _check_targets(config, settings)


def _check_targets(config, settings) -> None:
    import torch

    from llmtune import pruning

    shape = pruning.sizes(config)
    layers = shape["layers"]
    if settings.depth is not None:
        depth = settings.depth
        if depth.keep_layers is not None and depth.keep_layers > layers:
            raise LlmtuneError(
                f"prune.depth.keep_layers {depth.keep_layers}: the model has only {layers} layers."
            )
        if depth.remove_layers is not None:
            outside = [i for i in depth.remove_layers if not 0 <= i < layers]
            if outside or len(depth.remove_layers) >= layers:
                raise LlmtuneError(
                    f"prune.depth.remove_layers {depth.remove_layers}: the model has {layers} layers, numbered "
                    f"0..{layers - 1}"
                    + (f"; {outside} do not exist." if outside else ", and at least one must stay.")
                )
        layers -= (layers - depth.keep_layers) if depth.keep_layers else len(depth.remove_layers)
    width = settings.width
    if width is not None:
        if width.intermediate_size is not None and width.intermediate_size > shape["intermediate_size"]:
            raise LlmtuneError(
                f"prune.width.intermediate_size {width.intermediate_size} is larger than the model's "
                f"{shape['intermediate_size']}."
            )
        if width.attention_heads is not None:
            zeros = [torch.zeros(shape["attention_heads"]) for _ in range(layers)]
            pruning.heads_to_keep(
                zeros, config, attention_heads=width.attention_heads, kv_heads=width.kv_heads
            )


def _batches(dataset, limit: int | None, batch_size: int) -> list[dict]:
    import torch

    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise LlmtuneError("prune: no blocks of data; give more text or a smaller data.block_size.")
    ids = torch.tensor([dataset[i]["input_ids"] for i in range(count)], dtype=torch.long)
    return [{"input_ids": ids[i : i + batch_size]} for i in range(0, count, batch_size)]


def _shape(model) -> dict:
    from llmtune import pruning

    sizes = pruning.sizes(model.config)
    return {"parameters": pruning.count_parameters(model), **sizes}


def _describe(shape: dict) -> str:
    return (
        f"{shape['parameters'] / 1e6:.1f}M parameters, {shape['layers']} layers, MLP {shape['intermediate_size']}, "
        f"{shape['attention_heads']} heads / {shape['kv_heads']} kv"
    )


def _check_reloaded(folder, model, input_ids, dtype: str) -> float:
    """Load the saved folder as a user will and require no loading warning and the same logits."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from llmtune.models import resolve_dtype

    records: list[str] = []
    handler = _Collect(records)
    library = transformers.logging.get_logger("transformers")
    library.addHandler(handler)
    try:
        reloaded, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=resolve_dtype(dtype), output_loading_info=True
        )
    finally:
        library.removeHandler(handler)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"} | (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {}
    )
    if problems or records:
        raise PruneCheckFailed(
            f"the saved pruned model does not load cleanly with from_pretrained: {problems or records[0]}; "
            "the folder was not written."
        )
    with torch.no_grad():
        mine = model(input_ids).logits
        theirs = reloaded.eval()(input_ids).logits
    difference = float((mine.float() - theirs.float()).abs().max())
    if not math.isfinite(difference) or difference > RELOAD_TOLERANCE:
        raise PruneCheckFailed(
            f"the saved pruned model computes different logits from the pruned model (max |difference| "
            f"{difference:.3g} > {RELOAD_TOLERANCE}); the folder was not written."
        )
    log.info("saved-model check: loads with no warning; max |reloaded - pruned| logit = %.3g", difference)
    return difference


class _Collect(logging.Handler):
    def __init__(self, records: list[str]):
        super().__init__(level=logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())
