"""The model being exported, as `eval` loads it: a demo alias, a hub id, a folder, a GGUF, or an adapter run
merged in memory with merge's own check; plus what its run folder says (held-out data, sample prompts,
system prompt) for the export's check."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")


@dataclass
class RunFacts:
    """What the training run's recipe.yaml says that the export uses (all optional)."""

    folder: Path | None = None
    chat_validation: list[str] = field(default_factory=list)  # data files of an sft/dpo run
    text_validation: list[str] = field(default_factory=list)  # data files of a pretrain run
    template: str | None = None
    system: str | None = None
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int | None = None


def run_folder_of(name: str) -> Path | None:
    """The folder holding the source's recipe.yaml, when the source is an llmtune run or output."""
    path = Path(name).expanduser()
    if path.is_file():
        path = path.parent
    return path if (path / "recipe.yaml").is_file() else None


def run_facts(name: str) -> RunFacts:
    from llmtune.recipe import load_yaml_file

    folder = run_folder_of(name)
    facts = RunFacts(folder=folder)
    if folder is None:
        return facts
    try:
        raw = load_yaml_file(folder / "recipe.yaml")
    except Exception as exc:  # an edited recipe.yaml only loses the defaults it would give
        log.debug("recipe.yaml of %s unreadable: %s", folder, exc)
        return facts
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    files = data.get("validation_files") or []
    files = [files] if isinstance(files, str) else list(files)
    files = [f if Path(f).is_absolute() else str(folder / f) for f in files]
    if "block_size" in data:
        facts.text_validation = files
    else:
        facts.chat_validation = files
    facts.template = data.get("template") if isinstance(data.get("template"), str) else None
    facts.system = data.get("system") if isinstance(data.get("system"), str) else None
    samples = raw.get("samples") if isinstance(raw.get("samples"), dict) else {}
    facts.prompts = [p for p in samples.get("prompts") or [] if isinstance(p, str)]
    facts.max_new_tokens = samples.get("max_new_tokens")
    return facts


# --------------------------------------------------------------------------- before any weights load
def source_config(section):
    """The source's model config, read without its weights (an adapter: its base's), so that an
    architecture the format cannot take is refused before anything loads."""
    from transformers import AutoConfig

    from llmtune.adapters import is_adapter_folder
    from llmtune.hub import resolve_model

    name = section.name_or_path
    if Path(name).expanduser().is_dir() and is_adapter_folder(name):
        base = _adapter_base(Path(name).expanduser(), section)
        try:
            resolved = resolve_model(base, hub=section.hub, weights=False, key=f"the base of {name}")
        except LlmtuneError as exc:
            raise LlmtuneError(
                f"the adapter run {name} was trained on {base}, which cannot be found: {exc.message}",
                hint="Fetch the base (llmtune fetch NAME) or put it back where the run found it.",
            ) from None
        return AutoConfig.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    resolved = resolve_model(name, hub=section.hub, gguf_file=section.gguf_file, revision=section.revision)
    try:
        return AutoConfig.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    except (OSError, ValueError) as exc:
        raise LlmtuneError(f"cannot read the config of {name}: {str(exc).splitlines()[0]}") from None


def _adapter_base(folder: Path, section) -> str:
    """The base an adapter run merges into, chosen as load_adapter_model chooses it."""
    from llmtune.adapters import read_adapter_config, run_recipe_model

    base = read_adapter_config(folder).get("base_model_name_or_path")
    trained_with = run_recipe_model(folder)
    if not (base and Path(base).exists()) and trained_with is not None and trained_with.name_or_path:
        base = trained_with.name_or_path
    if not base:
        raise LlmtuneError(f"{folder}/adapter_config.json names no base model to merge the adapter into.")
    return base


def source_tokenizer(section):
    """The source's tokenizer with its chat template (an adapter run's own, saved with the run), loaded
    without weights, for the checks that come before the model loads."""
    from llmtune.adapters import is_adapter_folder
    from llmtune.hub import ResolvedModel
    from llmtune.models import has_tokenizer_files, load_tokenizer, resolve_model_source

    name = section.name_or_path
    path = Path(name).expanduser()
    if path.is_dir() and is_adapter_folder(name):
        if has_tokenizer_files(path):
            return load_tokenizer(
                section.model_copy(update={"tokenizer": None}), ResolvedModel(path, "local", name)
            )
        from llmtune.hub import resolve_model

        base = _adapter_base(path, section)
        return load_tokenizer(
            section.model_copy(update={"name_or_path": base, "tokenizer": None}),
            resolve_model(base, hub=section.hub, weights=False),
        )
    return load_tokenizer(section, resolve_model_source(section))


# --------------------------------------------------------------------------- the model
def load_source(section) -> tuple[object, object, dict]:
    """(float32 causal LM in eval mode, tokenizer, facts for the report). An adapter run is merged in
    memory and checked against the adapter model as `llmtune merge` checks it; a failing merge is exit 1."""
    from llmtune.adapters import is_adapter_folder
    from llmtune.models import load_causal_lm, load_tokenizer, resolve_model_source

    name = section.name_or_path
    section = section.model_copy(update={"dtype": "float32"})
    if Path(name).expanduser().is_dir() and is_adapter_folder(name):
        return _merged_adapter(Path(name).expanduser(), section.hub)
    resolved = resolve_model_source(section)
    tokenizer = load_tokenizer(section, resolved)
    model = load_causal_lm(section, resolved, tokenizer).eval()
    kind = "gguf" if resolved.gguf_file else resolved.source
    return model, tokenizer, {"kind": kind, "path": str(resolved.path)}


def _merged_adapter(folder: Path, hub: str):
    """merge_and_unload in float64 per layer (merge's own), checked on the run's first training
    conversations: max |merged - adapter| logit within merge's noise-based bound."""
    import math

    import torch

    from llmtune import adapter_merge as merge
    from llmtune.adapters import load_adapter_model

    model, tokenizer, notes = load_adapter_model(folder, dtype="float32", hub=hub)
    for note in notes:
        log.info("note: %s", note)
    texts, _, where = merge.check_prompts(folder, tokenizer)
    inputs = [merge.token_ids(tokenizer, text) for text in texts]
    with torch.no_grad():
        adapter_logits = [model(ids).logits[0] for ids in inputs]
        with model.disable_adapter():
            base_logits = [model(ids).logits[0] for ids in inputs]
    effect = merge.max_diff(adapter_logits, base_logits)
    del base_logits
    try:
        noise = merge.max_diff(adapter_logits, merge.logits_in_float64(model, inputs))
    except (RuntimeError, TypeError):
        noise = math.nan
    merged = merge.merge_in_float64(model).eval()
    with torch.no_grad():
        diff = merge.max_diff([merged(ids).logits[0] for ids in inputs], adapter_logits)
    bound = merge.check_difference(diff, noise, 1e-4, effect=effect, what="in-memory merged model's")
    log.info(
        "adapter %s merged in memory: max |merged - adapter| logit %.3g (bound %.3g, on %s)",
        folder,
        diff,
        bound,
        where,
    )
    return (
        merged,
        tokenizer,
        {
            "kind": "adapter run (merged in memory)",
            "path": str(folder),
            "merge_max_abs_logit": diff,
            "merge_bound": bound,
        },
    )
