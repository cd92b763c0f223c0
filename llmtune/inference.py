"""Load any model that `eval` accepts, ready to answer: a demo alias, a hub id, a folder, a merged run, an
adapter run (applied on its base, not merged, so answers are the trained model's exactly), a GGUF file, or
an `llmtune export` folder (its one .gguf; a bitsandbytes export is a plain folder). Used by eval, chat and
serve, so the three load one model the same way, with the run's own chat template and stop tokens."""

from __future__ import annotations

import logging
from pathlib import Path

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")


def export_gguf(folder: Path) -> str | None:
    """The GGUF file of an export folder (no config.json, one .gguf file), else None."""
    if not folder.is_dir() or (folder / "config.json").exists():
        return None
    found = sorted(p.name for p in folder.glob("*.gguf"))
    if len(found) > 1:
        raise LlmtuneError(
            f"{folder} holds {len(found)} GGUF files ({', '.join(found)}); name the one to load "
            f"(--model {folder}/{found[0]})."
        )
    return found[0] if found else None


def model_flag_problems(dtype: str, hub: str) -> list[str]:
    """What is wrong with --dtype / --hub (chat, serve), checked against ModelSection's own choices."""
    import typing

    from llmtune.recipe import ModelSection

    problems = []
    for flag, value, field in (("--dtype", dtype, "dtype"), ("--hub", hub, "hub")):
        choices = typing.get_args(ModelSection.model_fields[field].annotation)
        if value not in choices:
            problems.append(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    return problems


def load_lm(section, name: str):
    """(model in eval mode, tokenizer, kind) for `name` with the settings of ModelSection `section`;
    kind is "adapter", "gguf" or "model"."""
    from llmtune.adapters import is_adapter_folder, load_adapter_model
    from llmtune.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_source

    section = section.model_copy(update={"name_or_path": name})
    dtype = str(resolve_dtype(section.dtype)).removeprefix("torch.")
    if Path(name).is_dir() and is_adapter_folder(name):
        model, tokenizer, notes = load_adapter_model(name, dtype=dtype, hub=section.hub)
        for note in notes:
            log.info("note: %s", note)
        return model.eval(), tokenizer, "adapter"
    gguf = export_gguf(Path(name)) if not section.gguf_file else None
    if gguf:
        section = section.model_copy(update={"gguf_file": gguf})
    resolved = resolve_model_source(section)
    tokenizer = load_tokenizer(section, resolved)
    model = load_causal_lm(section, resolved, tokenizer).eval()
    return model, tokenizer, "gguf" if resolved.gguf_file else "model"


def stop_token_ids(model) -> list[int]:
    """The ids generation stops at (EOS and the template's end of turn, set by set_stop_tokens)."""
    ids = model.generation_config.eos_token_id
    return list(ids) if isinstance(ids, list) else ([] if ids is None else [ids])
