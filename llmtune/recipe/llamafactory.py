"""LLaMA-Factory training YAMLs → llmtune recipes (`llmtune import-recipe`).

A LLaMA-Factory recipe is one flat mapping (`stage`, `model_name_or_path`, `lora_rank`, `dataset`,
`cutoff_len`, TrainingArguments keys ...) whose datasets are names looked up in a `dataset_info.json`.
`convert` turns it into llmtune's sections: `stage` picks the command, model/method/dataset keys go to
`model:`, `peft:`, `data:` (and `dpo:`), TrainingArguments keys stay under their HF names in `train:`,
and every key without an llmtune equivalent is written as a comment saying why. Values LLaMA-Factory
defaults differently from llmtune (lora_alpha = 2 x rank, lora_dropout 0, cutoff_len 2048, gradient
checkpointing on) are written out, so that the imported recipe trains what the original did.

No model, tokenizer or data file is read here: the functions take the parsed YAML and the parsed
dataset_info.json and return the recipe's text (they only ask the file system whether a file exists).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.recipe.hub_dataset import BadReference, make_reference
from llmtune.recipe.legacy import RENAMED_TRAIN_KEYS

# `stage` → the llmtune command (orpo and simpo are LLaMA-Factory pref_loss values; accepted as stages too).
STAGES = {
    "pt": "pretrain",
    "sft": "sft",
    "rm": "reward",
    "dpo": "dpo",
    "orpo": "dpo",
    "simpo": "dpo",
    "kto": "dpo",
}
# Keys only a LLaMA-Factory recipe has at its top level (llmtune's top level holds sections).
MARKER_KEYS = (
    "stage",
    "model_name_or_path",
    "finetuning_type",
    "lora_target",
    "lora_rank",
    "cutoff_len",
    "dataset_dir",
)
# LLaMA-Factory template names that mean one of llmtune's built-in templates.
TEMPLATES = {"llama3": "llama3", "qwen": "qwen", "chatml": "chatml", "alpaca": "alpaca"}
# LLaMA-Factory's DeepSpeed example files → llmtune's launch strategies (deepspeed_configs/).
DEEPSPEED_STRATEGIES = {
    "ds_z0_config.json": "ddp",
    "ds_z2_config.json": "zero2",
    "ds_z2_offload_config.json": "zero2",
    "ds_z3_config.json": "zero3",
    "ds_z3_offload_config.json": "zero3-offload",
}
ATTENTION = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager"}
# Speaker names llmtune's sharegpt reader knows (data/chat_formats.py SHAREGPT_ROLES).
SHAREGPT_SPEAKERS = {"human", "user", "gpt", "assistant", "system", "function_call", "observation", "tool"}
SECRET_KEYS = ("hf_hub_token", "ms_hub_token", "om_hub_token")
DATA_SUFFIXES = (".json", ".jsonl")

# Keys that have no llmtune equivalent, with why (the key's value is shown beside it).
WHY_NOT: dict[str, str] = {
    "do_train": "llmtune <command> always trains",
    "do_eval": "llmtune evaluates on data.validation_files / validation_split during training; `llmtune eval` after",
    "do_predict": "use `llmtune eval --generate` or `llmtune chat` on the trained run",
    "plot_loss": "llmtune always writes loss.png in the run folder",
    "overwrite_cache": "llmtune's tokenised cache is keyed by content, so it is never stale",
    "overwrite_output_dir": "llmtune never replaces a run folder silently; pass --overwrite on the command line",
    "preprocessing_batch_size": "llmtune tokenises chat data itself",
    "tokenized_path": "llmtune keeps its tokenised cache in $LLMTUNE_HOME/cache",
    "streaming": "llmtune streams pretraining text only (pretrain's data.streaming); chat data is read whole",
    "buffer_size": "only used with streaming",
    "ignore_pad_token_for_loss": "llmtune never computes loss on padding",
    "mask_history": "llmtune trains on every assistant turn (data.train_on_prompt trains on everything)",
    "tool_format": "tools are rendered by the model's chat template",
    "enable_thinking": "the model's chat template decides how thinking is rendered",
    "eval_on_each_dataset": "llmtune reports one validation loss",
    "data_shared_file_system": "only for LLaMA-Factory's multi-node preprocessing",
    "cache_dir": "models go to the Hugging Face cache ($HF_HOME); llmtune's own cache is $LLMTUNE_HOME",
    "use_fast_tokenizer": "llmtune loads the fast tokenizer",
    "split_special_tokens": "special tokens are never split",
    "new_special_tokens": "a built-in data.template adds the special tokens it needs",
    "resize_vocab": "llmtune resizes the embedding when a template adds tokens",
    "low_cpu_mem_usage": "transformers loads weights lazily",
    "rope_scaling": "set it in the model's config.json",
    "shift_attn": "no S^2-Attn in llmtune",
    "mixture_of_depths": "no mixture-of-depths in llmtune",
    "use_unsloth": "no Unsloth kernels in llmtune",
    "use_unsloth_gc": "no Unsloth kernels in llmtune",
    "upcast_layernorm": "no layer-norm upcasting option",
    "upcast_lmhead_output": "no lm_head upcasting option",
    "infer_backend": "inference option; see `llmtune chat` / `llmtune serve`",
    "infer_dtype": "inference option",
    "print_param_status": "llmtune logs the trainable parameter count",
    "compute_accuracy": "no token accuracy metric",
    "disable_shuffling": "the trainer shuffles (train.seed / data_seed make it repeatable)",
    "include_effective_tokens_per_second": "llmtune counts real (non-padding) tokens itself",
    "use_llama_pro": "no LLaMA Pro block expansion",
    "use_adam_mini": "no Adam-mini; choose train.optim",
    "use_galore": "GaLore: set train.optim (galore_adamw ...) and train.optim_target_modules yourself",
    "use_apollo": "no APOLLO optimizer",
    "use_badam": "no BAdam optimizer",
    "use_muon": "no Muon optimizer",
    "loraplus_lr_ratio": "no LoRA+ learning-rate ratio",
    "loraplus_lr_embedding": "no LoRA+ learning-rate ratio",
    "pissa_init": "no PiSSA initialisation",
    "pissa_iter": "no PiSSA initialisation",
    "pissa_convert": "no PiSSA initialisation",
    "create_new_adapter": "an adapter run in model.name_or_path is merged in and a new adapter trains on top",
    "adapter_folder": "give the adapter folder as model.name_or_path",
    "ref_model": "the reference model is the starting model (or the adapter disabled)",
    "ref_model_adapters": "the reference model is the starting model (or the adapter disabled)",
    "ref_model_quantization_bit": "the reference model is the starting model (or the adapter disabled)",
    "ld_alpha": "no LD-DPO length weighting",
    "kto_chosen_weight": "llmtune's kto weighs desirable and undesirable answers equally",
    "kto_rejected_weight": "llmtune's kto weighs desirable and undesirable answers equally",
    "quantization_device_map": "llmtune places the model itself",
    "freeze_vision_tower": "llmtune trains text models",
    "freeze_multi_modal_projector": "llmtune trains text models",
    "train_mm_proj_only": "llmtune trains text models",
    "image_max_pixels": "llmtune trains text models",
    "image_min_pixels": "llmtune trains text models",
    "video_max_pixels": "llmtune trains text models",
    "video_min_pixels": "llmtune trains text models",
    "video_fps": "llmtune trains text models",
    "video_maxlen": "llmtune trains text models",
    "media_dir": "llmtune trains text models",
    "mix_strategy": "several train_files are concatenated; data.weights sets copies of each file",
    "use_swanlab": "set train.report_to",
    "use_ray": "launch with --nproc / --nnodes instead",
    "ray_run_name": "launch with --nproc / --nnodes instead",
    "ray_num_workers": "launch with --nproc / --nnodes instead",
    "max_new_tokens": "a generation setting (LLaMA-Factory's predict/ppo); llmtune's samples: section has its own",
    "top_p": "a generation setting (LLaMA-Factory's predict/ppo)",
    "top_k": "a generation setting (LLaMA-Factory's predict/ppo)",
    "temperature": "a generation setting (LLaMA-Factory's predict/ppo)",
    "do_sample": "a generation setting (LLaMA-Factory's predict/ppo)",
    "num_beams": "a generation setting (LLaMA-Factory's predict/ppo)",
    "repetition_penalty": "a generation setting (LLaMA-Factory's predict/ppo)",
    "predict_with_generate": "use `llmtune eval --generate`",
    "export_dir": "use `llmtune merge` / `llmtune export` after training",
    "export_size": "use `llmtune merge --max-shard-size`",
    "export_quantization_bit": "use `llmtune export --format bnb-4bit` / gguf",
    "export_legacy_format": "llmtune always saves safetensors",
    "export_hub_model_id": "push the run folder with huggingface-cli upload",
}
# Typed LLaMA-Factory keys (value checked before it is mapped): the type a value must have.
_INT_KEYS = ("lora_rank", "cutoff_len", "max_samples", "quantization_bit", "freeze_trainable_layers")
_NUMBER_KEYS = (
    "lora_alpha",
    "lora_dropout",
    "val_size",
    "pref_beta",
    "pref_ftx",
    "dpo_label_smoothing",
    "simpo_gamma",
)
_BOOL_KEYS = (
    "trust_remote_code",
    "packing",
    "neat_packing",
    "use_rslora",
    "use_dora",
    "train_on_prompt",
    "double_quantization",
    "disable_gradient_checkpointing",
    "pure_bf16",
    "enable_liger_kernel",
)
_STR_KEYS = (
    "stage",
    "model_name_or_path",
    "finetuning_type",
    "template",
    "dataset_dir",
    "default_system",
    "flash_attn",
    "quantization_method",
    "quantization_type",
    "model_revision",
    "pref_loss",
    "deepspeed",
    "output_dir",
)
# Keys that may be a comma-separated string or a list of strings.
_LIST_KEYS = (
    "dataset",
    "eval_dataset",
    "lora_target",
    "additional_target",
    "adapter_name_or_path",
    "freeze_trainable_modules",
    "freeze_extra_modules",
    "interleave_probs",
)


# ------------------------------------------------------------------------------------------ reading
def looks_like_llamafactory(raw: Any) -> bool:
    """Whether a recipe's top level is a flat LLaMA-Factory recipe rather than llmtune's sections."""
    return isinstance(raw, dict) and any(key in raw for key in MARKER_KEYS)


def check_types(raw: dict[str, Any], where: Callable[[str], str]) -> None:
    """A LLaMA-Factory key of the wrong type is an error naming it (`where(key)` names the file and line)."""

    def bad(key: str, expected: str) -> LlmtuneError:
        return LlmtuneError(f"{where(key)}: {key}: expected {expected}, got {raw[key]!r}.")

    for key in _INT_KEYS:
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad(key, "a whole number")
    for key in _NUMBER_KEYS:
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise bad(key, "a number")
    for key in _BOOL_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            raise bad(key, "true or false")
    for key in _STR_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise bad(key, "a string")
    for key in _LIST_KEYS:
        value = raw.get(key)
        if value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool):
            continue
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise bad(key, "a comma-separated string or a list of strings")


def split_list(value: Any) -> list[str]:
    """LLaMA-Factory's `a,b` (or a YAML list) as a list of stripped, non-empty strings."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def command_for(raw: dict[str, Any], where: Callable[[str], str]) -> str:
    """The llmtune command a LLaMA-Factory recipe's `stage` maps to; an error for ppo or an unknown stage."""
    if "stage" not in raw:
        raise LlmtuneError(
            f"{where('')}: no `stage` key; LLaMA-Factory recipes name their stage "
            f"({', '.join(STAGES)}, ppo), e.g. `stage: sft`."
        )
    stage = raw["stage"]
    if stage == "ppo":
        raise LlmtuneError(
            f"{where('stage')}: stage: ppo has no llmtune equivalent (llmtune has no PPO trainer). "
            "Online RL in llmtune is `llmtune grpo` / `llmtune rloo`: prompts, answers scored by reward "
            "functions, one of which can be a reward model trained with `llmtune reward` "
            "(rewards: [{type: reward_model, model: RUN}]); see recipes/grpo/ for a recipe to start from."
        )
    if stage not in STAGES:
        raise LlmtuneError(f"{where('stage')}: stage {stage!r} is not one of {', '.join(STAGES)} (or ppo).")
    return STAGES[stage]


# ------------------------------------------------------------------------------------------ the output
@dataclass
class Entry:
    """One key of an output section, with an optional comment written after it."""

    key: str
    value: Any
    comment: str | None = None


@dataclass
class Conversion:
    """The imported recipe, section by section, and what could not be carried over."""

    command: str
    sections: dict[str, list[Entry]] = field(default_factory=dict)
    not_carried: list[str] = field(default_factory=list)  # "key: value — why", written as comments
    warnings: list[str] = field(default_factory=list)  # also printed on stderr
    data_todo: list[str] = field(default_factory=list)  # loud comments above the data section

    def put(self, section: str, key: str, value: Any, comment: str | None = None) -> None:
        self.sections.setdefault(section, []).append(Entry(key, value, comment))

    def skip(self, key: str, value: Any, why: str) -> None:
        shown = "<hidden>" if key in SECRET_KEYS else _flow(value)
        self.not_carried.append(f"{key}: {shown} — {why}")

    def render(self, header: list[str]) -> str:
        """The recipe as YAML text: header comments, the sections, then the keys not carried over."""
        lines = [f"# {line}" if line else "#" for line in header]
        for section in ("model", "data", "peft", "dpo", "train", "launch"):
            entries = self.sections.get(section)
            if not entries:
                continue
            if section == "data" and self.data_todo:
                lines += [f"# !!! {todo}" for todo in self.data_todo]
            lines.append(f"{section}:")
            for entry in entries:
                text = f"  {entry.key}: {_flow(entry.value)}"
                lines.append(f"{text}  # {entry.comment}" if entry.comment else text)
        if self.not_carried:
            lines.append("")
            lines.append("# From the LLaMA-Factory recipe, not carried over:")
            lines += [f"#   {item}" for item in self.not_carried]
        return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    """A value as one line of YAML that llmtune's YAML 1.2 reader reads back as the same value."""
    import yaml

    from llmtune.recipe.yaml12 import RecipeYamlDumper

    text = yaml.dump(
        value, Dumper=RecipeYamlDumper, default_flow_style=True, width=1 << 30, allow_unicode=True
    )
    text = text.strip()
    return text.removesuffix("...").strip() if text.endswith("...") else text


# ------------------------------------------------------------------------------------------ datasets
@dataclass
class DatasetCatalog:
    """A parsed dataset_info.json and the folder it is in (where `file_name`s are relative to)."""

    info: dict[str, Any]
    folder: Path
    online: bool = False  # dataset_dir: ONLINE: every name is a hub id


@dataclass
class DataSource:
    """Where one LLaMA-Factory dataset is for llmtune, and how its rows are shaped."""

    entry: str
    format: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    text_field: str | None = None  # pretrain
    found: bool = True


def dataset_source(
    name: str,
    catalog: DatasetCatalog | None,
    command: str,
    conversion: Conversion,
    place: Callable[[Path], str],
    use_modelscope: bool = False,
) -> DataSource:
    """The llmtune train_files entry, format and columns of the dataset `name`; a placeholder entry (and a
    loud comment) when it cannot be found."""

    def missing(why: str) -> DataSource:
        conversion.data_todo.append(f"dataset {name!r}: {why}")
        conversion.warnings.append(f"dataset {name!r}: {why}")
        return DataSource(entry=f"TODO-dataset-{name}", found=False)

    if catalog is None:
        return missing("no dataset_info.json found; replace the TODO entry in data.train_files with the file")
    if catalog.online:
        hub = "modelscope" if use_modelscope else "hf"
        return DataSource(entry=_hub_entry(name, hub, {}, conversion) or f"TODO-dataset-{name}")
    spec = catalog.info.get(name)
    if not isinstance(spec, dict):
        where = catalog.folder / "dataset_info.json"
        return missing(f"not defined in {where}; replace the TODO entry in data.train_files with its file")

    source = DataSource(entry="")
    hf_url, ms_url = spec.get("hf_hub_url"), spec.get("ms_hub_url")
    if hf_url or ms_url:
        hub, url = ("modelscope", ms_url) if (use_modelscope and ms_url) or not hf_url else ("hf", hf_url)
        entry = _hub_entry(url, hub, spec, conversion)
        if entry is None:
            return missing(f"hub id {url!r} cannot be written as an llmtune hub entry")
        source.entry = entry
        if spec.get("folder"):
            conversion.warnings.append(
                f"dataset {name!r}: folder {spec['folder']!r} inside the hub repository has no llmtune "
                "equivalent; the whole repository's split is read"
            )
    elif spec.get("file_name"):
        path = (catalog.folder / str(spec["file_name"])).resolve()
        if not path.exists():
            return missing(f"file {path} does not exist (dataset_info.json names it); fix the path")
        if path.is_file() and path.suffix not in DATA_SUFFIXES + ((".txt",) if command == "pretrain" else ()):
            conversion.warnings.append(
                f"dataset {name!r}: {path.name}: llmtune reads .json / .jsonl"
                + (" / .txt" if command == "pretrain" else "")
                + " files; convert it (e.g. with `datasets`: Dataset.from_...(...).to_json(...))"
            )
        source.entry = place(path)
        if spec.get("num_samples"):
            conversion.warnings.append(
                f"dataset {name!r}: num_samples {spec['num_samples']} applies to one dataset in LLaMA-Factory; "
                "llmtune's data.max_samples applies to every file"
            )
    else:
        kind = next(
            (k for k in ("script_url", "om_hub_url", "cloud_file_name") if spec.get(k)), "no file_name"
        )
        return missing(
            f"{kind}: llmtune reads local .json/.jsonl files and Hugging Face / ModelScope data sets"
        )

    _shape(name, spec, command, source, conversion)
    return source


def _hub_entry(url: str, hub: str, spec: dict, conversion: Conversion) -> str | None:
    try:
        reference = make_reference(
            url,
            hub=hub,
            name=str(url),
            subset=spec.get("subset"),
            split=spec.get("split"),
            revision=spec.get("revision"),
            limit=spec.get("num_samples"),
        )
    except BadReference as exc:
        conversion.warnings.append(str(exc))
        return None
    return reference.canonical()


def _shape(name: str, spec: dict, command: str, source: DataSource, conversion: Conversion) -> None:
    """format / columns (or text_field, for pretraining) of a dataset_info.json entry."""
    columns = spec.get("columns") if isinstance(spec.get("columns"), dict) else None
    formatting = spec.get("formatting", "alpaca")
    ranking = bool(spec.get("ranking", False))

    def column(key: str, default: str | None) -> str | None:
        # LLaMA-Factory: with a `columns` mapping, a column it does not name is None (parser.py set_attr).
        return columns.get(key) if columns is not None else default

    for media in ("images", "videos", "audios"):
        if column(media, None):
            conversion.warnings.append(
                f"dataset {name!r}: column {media} is ignored; llmtune trains text-only models"
            )
    if column("kto_tag", None):
        conversion.data_todo.append(
            f"dataset {name!r} holds unpaired KTO rows (a good/bad label per answer): pair them before training"
        )
        conversion.warnings.append(
            f"dataset {name!r} is KTO data (one answer per row with a good/bad label in column "
            f"{column('kto_tag', None)!r}); llmtune's kto reads chosen/rejected pairs (and unpairs them), so "
            "rows must be paired first: a prompt with one liked and one disliked answer"
        )

    if command == "pretrain":
        source.text_field = column("prompt", "instruction") if formatting == "alpaca" else None
        if formatting != "alpaca":
            conversion.warnings.append(f"dataset {name!r}: sharegpt rows cannot be pretraining text")
        return

    mapping: dict[str, str | None]
    if formatting == "sharegpt":
        tags = spec.get("tags") if isinstance(spec.get("tags"), dict) else None

        def tag(key: str, default: str) -> str | None:
            return tags.get(key) if tags is not None else default

        messages_column = column("messages", "conversations")
        openai_like = (tag("role_tag", "from"), tag("content_tag", "value")) == ("role", "content") and (
            tag("user_tag", "human"),
            tag("assistant_tag", "gpt"),
        ) == ("user", "assistant")
        unknown = [
            speaker
            for speaker in (tag(k, d) for k, d in _SHAREGPT_TAG_DEFAULTS.items())
            if speaker is not None and speaker not in SHAREGPT_SPEAKERS
        ]
        if tag("role_tag", "from") not in ("from", "role") or tag("content_tag", "value") not in (
            "value",
            "content",
        ):
            unknown.append(f"keys {tag('role_tag', 'from')}/{tag('content_tag', 'value')}")
        if unknown:
            conversion.warnings.append(
                f"dataset {name!r}: llmtune's sharegpt reader knows the speakers {', '.join(sorted(SHAREGPT_SPEAKERS))} "
                f"in from/value or role/content keys; rename {', '.join(unknown)} in the data"
            )
        if ranking:
            source.format = "sharegpt_preference"
            mapping = {"conversations": messages_column, "chosen": column("chosen", None)}
            mapping["rejected"] = column("rejected", None)
        elif openai_like:
            source.format = "messages"
            mapping = {"messages": messages_column}
        else:
            source.format = "sharegpt"
            mapping = {"conversations": messages_column}
        mapping.update(system=column("system", None), tools=column("tools", None))
    else:
        mapping = {"instruction": column("prompt", "instruction"), "input": column("query", "input")}
        if ranking:
            source.format = "alpaca_preference"
            mapping.update(chosen=column("chosen", None), rejected=column("rejected", None))
        else:
            source.format = "alpaca"
            mapping["output"] = column("response", "output")
        mapping.update(
            system=column("system", None), history=column("history", None), tools=column("tools", None)
        )
    source.columns = {ours: theirs for ours, theirs in mapping.items() if theirs and theirs != ours}


_SHAREGPT_TAG_DEFAULTS = {
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


# ------------------------------------------------------------------------------------------ converting
def convert(
    raw: dict[str, Any],
    *,
    command: str,
    catalog: DatasetCatalog | None,
    train_fields: Collection[str],
    place: Callable[[Path], str],
    find_path: Callable[[str], Path | None],
    use_modelscope: bool = False,
    where: Callable[[str], str] = lambda key: "LLaMA-Factory recipe",
) -> Conversion:
    """The llmtune recipe for the LLaMA-Factory recipe `raw` (types already checked, `command` from
    `command_for`). `train_fields` are the argument names of the command's trainer config; `place` writes
    a local path for the output file; `find_path` finds a relative path LLaMA-Factory would open from its
    working folder (None when it is not there); `where(key)` names the file and line in errors."""
    conversion = Conversion(command=command)
    todo = dict(raw)  # every key is taken from here once: what is left is train keys or not carried over
    take = todo.pop
    stage = take("stage")

    _model(conversion, todo, find_path, place, where)
    _data(conversion, todo, command, catalog, place, use_modelscope)
    _peft(conversion, todo, where)
    if command == "dpo":
        _dpo(conversion, todo, stage)
    _train(conversion, todo, command, train_fields, find_path, place, raw)
    return conversion


def _model(conversion: Conversion, todo: dict, find_path, place, where) -> None:
    take = todo.pop
    name = take("model_name_or_path", None)
    adapters = split_list(take("adapter_name_or_path", None))
    if adapters:
        adapter = adapters[-1]
        local = find_path(adapter)
        conversion.put(
            "model",
            "name_or_path",
            place(local) if local else adapter,
            f"LLaMA-Factory: adapter {adapter} on {name}; llmtune loads the adapter's base with it merged in",
        )
        if len(adapters) > 1:
            conversion.warnings.append(
                f"adapter_name_or_path lists {len(adapters)} adapters; llmtune starts from one adapter run "
                f"({adapter}): merge the others into the base first (`llmtune merge`)"
            )
    elif name is None:
        raise LlmtuneError(f"{where('')}: model_name_or_path: missing; it names the model to train.")
    else:
        local = find_path(name)
        conversion.put("model", "name_or_path", place(local) if local else name)
    revision = take("model_revision", None)
    if revision and revision != "main":
        conversion.put("model", "revision", revision)
    if take("trust_remote_code", None):
        conversion.put("model", "trust_remote_code", True)
    if take("pure_bf16", None):
        conversion.put("model", "dtype", "bfloat16", "LLaMA-Factory pure_bf16: the model trains in bf16")
    attention = take("flash_attn", None)
    if attention in ATTENTION:
        conversion.put(
            "model", "attn_implementation", ATTENTION[attention], f"LLaMA-Factory flash_attn: {attention}"
        )
    elif attention not in (None, "auto"):
        conversion.skip("flash_attn", attention, "not one of auto, disabled, sdpa, fa2")
    for secret in SECRET_KEYS:
        if secret in todo:
            conversion.skip(
                secret, take(secret), "keep tokens out of recipes; set HF_TOKEN / MODELSCOPE_API_TOKEN"
            )


def _data(conversion: Conversion, todo: dict, command: str, catalog, place, use_modelscope: bool) -> None:
    take = todo.pop
    names = split_list(take("dataset", None))
    eval_names = split_list(take("eval_dataset", None))
    take("dataset_dir", None)
    if not names:
        conversion.data_todo.append("no `dataset` in the LLaMA-Factory recipe: give data.train_files")
        conversion.warnings.append("the LLaMA-Factory recipe names no dataset")
        names_sources = [DataSource(entry="TODO-train-file", found=False)]
    else:
        names_sources = [
            dataset_source(n, catalog, command, conversion, place, use_modelscope) for n in names
        ]
    eval_sources = [
        dataset_source(n, catalog, command, conversion, place, use_modelscope) for n in eval_names
    ]
    sources = names_sources + eval_sources

    put = conversion.put
    put("data", "train_files", [s.entry for s in names_sources])
    if eval_sources:
        put("data", "validation_files", [s.entry for s in eval_sources], "LLaMA-Factory eval_dataset")
    val_size = take("val_size", None)
    streaming = command == "pretrain" and todo.get("streaming") is True
    if streaming:
        take("streaming")
        put(
            "data",
            "streaming",
            True,
            "LLaMA-Factory streaming: read and packed while training (needs max_steps)",
        )
        buffer = take("buffer_size", None)
        if buffer is not None:
            conversion.skip("buffer_size", buffer, "llmtune's stream keeps file order (no shuffle buffer)")
    if val_size and streaming and not eval_sources:
        # With streaming, LLaMA-Factory's val_size is a number of examples taken from the stream's head.
        if isinstance(val_size, int) and not isinstance(val_size, bool) and val_size >= 1:
            put("data", "validation_documents", val_size, "LLaMA-Factory val_size with streaming")
        else:
            conversion.skip("val_size", val_size, "with streaming, a whole number of documents held out")
    elif val_size:
        if eval_sources:
            conversion.skip("val_size", val_size, "eval_dataset is given (llmtune takes one or the other)")
        elif 0 < val_size < 1:
            put("data", "validation_split", val_size)
        else:
            conversion.skip(
                "val_size", val_size, "a number of rows; llmtune's data.validation_split is a share in (0, 1)"
            )
    probs = take("interleave_probs", None)
    if probs:
        conversion.skip(
            "interleave_probs",
            probs,
            "llmtune mixes files by data.weights, copies of each file's rows (2 = twice, 0.5 = a random half), "
            "not sampling probabilities: weight_i = p_i x total / rows_i",
        )

    cutoff = take("cutoff_len", None)
    default_cutoff = cutoff is None
    cutoff = 2048 if default_cutoff else cutoff
    max_samples = take("max_samples", None)
    workers = take("preprocessing_num_workers", None)
    packing = take("packing", None)
    neat = take("neat_packing", None)
    template = take("template", None)
    train_on_prompt = take("train_on_prompt", None)
    system = take("default_system", None)
    why_default = "LLaMA-Factory's default cutoff_len" if default_cutoff else None

    if command == "pretrain":
        fields = {s.text_field for s in sources if s.found and s.text_field}
        if len(fields) == 1 and fields != {"text"}:
            put("data", "text_field", fields.pop())
        elif len(fields) > 1:
            conversion.warnings.append(
                f"the datasets keep their text in different columns ({', '.join(sorted(fields))}); llmtune's "
                "data.text_field is one name for every file"
            )
        put("data", "block_size", cutoff, why_default or "LLaMA-Factory cutoff_len")
        if max_samples is not None:
            conversion.skip("max_samples", max_samples, "llmtune pretrain reads every document of its files")
        if isinstance(workers, int) and not isinstance(workers, bool) and workers > 0:
            put("data", "num_proc", workers, "LLaMA-Factory preprocessing_num_workers")
        elif workers is not None:
            conversion.skip("preprocessing_num_workers", workers, "expected a positive whole number")
        if packing is False:
            conversion.skip("packing", packing, "llmtune pretrain always trains on packed blocks")
        if template is not None:
            conversion.skip("template", template, "pretraining text is not rendered with a chat template")
        for key, value in (
            ("train_on_prompt", train_on_prompt),
            ("default_system", system),
            ("neat_packing", neat),
        ):
            if value is not None:
                conversion.skip(key, value, "a chat-data option; pretraining reads plain text")
        return

    formats = {s.format for s in sources if s.found and s.format}
    if len(formats) == 1:
        put("data", "format", formats.pop())
    elif len(formats) > 1:
        put(
            "data",
            "format",
            "auto",
            f"the datasets have different shapes ({', '.join(sorted(formats))}): detected per file",
        )
    columns: dict[str, str] = {}
    for source in sources:
        for ours, theirs in source.columns.items():
            if columns.get(ours, theirs) != theirs:
                conversion.warnings.append(
                    f"data.columns.{ours}: the datasets name it differently ({columns[ours]!r}, {theirs!r}); "
                    "llmtune maps one name for every file: rename the column in one of them"
                )
            columns.setdefault(ours, theirs)
    if columns:
        put("data", "columns", columns)
    if system:
        put("data", "system", system, "LLaMA-Factory default_system")
    if template in TEMPLATES:
        put("data", "template", TEMPLATES[template])
    elif template is not None:
        conversion.skip(
            "template",
            template,
            "no built-in llmtune template of that name: llmtune uses the model's own chat template; for a model "
            "without one, set data.template (chatml, llama3, qwen, alpaca or a Jinja string)",
        )
    put("data", "max_length", cutoff, why_default)
    if max_samples is not None:
        put("data", "max_samples", max_samples)
    if workers is not None:
        conversion.skip("preprocessing_num_workers", workers, "llmtune tokenises chat data itself")
    if command == "sft" and (packing or neat):
        put(
            "data",
            "packing",
            True,
            "LLaMA-Factory "
            + ("neat_packing" if neat else "packing")
            + "; llmtune's packing never attends across examples",
        )
    else:
        for key, value in (("packing", packing), ("neat_packing", neat)):
            if value:
                conversion.skip(key, value, "an sft option; preference pairs are never packed")
    if train_on_prompt:
        if command == "sft":
            put("data", "train_on_prompt", True)
        else:
            conversion.skip("train_on_prompt", train_on_prompt, "an sft option")


def _peft(conversion: Conversion, todo: dict, where) -> None:
    take = todo.pop
    method = take("finetuning_type", None) or "lora"  # LLaMA-Factory's default
    quant_bit = take("quantization_bit", None)
    quant_method = take("quantization_method", None)
    quant_type = take("quantization_type", None)
    double_quant = take("double_quantization", None)
    rank = take("lora_rank", None)
    alpha = take("lora_alpha", None)
    dropout = take("lora_dropout", None)
    targets = split_list(take("lora_target", None))
    extra = split_list(take("additional_target", None))
    use_rslora = take("use_rslora", None)
    use_dora = take("use_dora", None)
    layers = take("freeze_trainable_layers", None)
    modules = split_list(take("freeze_trainable_modules", None))
    freeze_extra = split_list(take("freeze_extra_modules", None))
    put = conversion.put

    if method not in ("lora", "full", "freeze"):
        raise LlmtuneError(
            f"{where('finetuning_type')}: finetuning_type: {method!r} has no llmtune equivalent; "
            "llmtune imports lora, full and freeze."
        )
    quantised = quant_bit is not None
    if quantised and (
        method != "lora" or quant_bit != 4 or quant_method not in (None, "bitsandbytes", "bnb")
    ):
        what = f"quantization_bit {quant_bit}" + (f" ({quant_method})" if quant_method else "")
        conversion.skip(
            "quantization_bit",
            quant_bit,
            f"{what}: llmtune quantises only for LoRA, to 4 bits with bitsandbytes (peft.method qlora); "
            "the model trains unquantised",
        )
        conversion.warnings.append(f"{what} is not imported; the model trains unquantised (more memory)")
        quantised = False
    if method == "full":
        put("peft", "method", "none", "LLaMA-Factory finetuning_type: full")
    elif method == "freeze":
        put("peft", "method", "freeze")
        layers = 2 if layers is None else layers  # LLaMA-Factory's default
        if layers > 0:
            put("peft", "trainable_last_layers", layers)
        trainable = [f"layers.{i}." for i in range(-layers)] if layers < 0 else []
        if modules and modules != ["all"]:
            conversion.skip(
                "freeze_trainable_modules",
                ",".join(modules),
                "llmtune trains whole blocks (trainable_last_layers) or parameters named in peft.trainable",
            )
        if trainable or freeze_extra:
            put(
                "peft",
                "trainable",
                trainable + freeze_extra,
                f"LLaMA-Factory freeze_trainable_layers: {layers} (the first blocks)" if trainable else None,
            )
    else:
        lora = "qlora" if quantised else ("dora" if use_dora else "lora")
        put("peft", "method", lora, "LLaMA-Factory quantization_bit: 4" if quantised else None)
        if quantised and use_dora:
            conversion.skip(
                "use_dora", use_dora, "llmtune's qlora is LoRA; DoRA on a 4-bit base is not supported"
            )
        rank = 8 if rank is None else rank
        put("peft", "r", rank)
        put(
            "peft",
            "lora_alpha",
            rank * 2 if alpha is None else alpha,
            "LLaMA-Factory's default: 2 x rank" if alpha is None else None,
        )
        put(
            "peft",
            "lora_dropout",
            0.0 if dropout is None else dropout,
            "LLaMA-Factory's default" if dropout is None else None,
        )
        if not targets or targets == ["all"]:
            put("peft", "target_modules", "all-linear", "LLaMA-Factory lora_target: all")
        else:
            put("peft", "target_modules", targets)
        if extra:
            put("peft", "modules_to_save", extra, "LLaMA-Factory additional_target")
        if use_rslora:
            put("peft", "use_rslora", True)
        if quantised:
            if quant_type:
                put("peft", "quant_type", quant_type)
            if double_quant is not None:
                put("peft", "double_quant", double_quant)
    if method != "lora":
        for key, value in (
            ("lora_rank", rank),
            ("lora_alpha", alpha),
            ("lora_dropout", dropout),
            ("use_dora", use_dora),
        ):
            if value is not None:
                conversion.skip(key, value, f"finetuning_type is {method}")
        if targets:
            conversion.skip("lora_target", ",".join(targets), f"finetuning_type is {method}")
    if method != "freeze":
        for key, value in (("freeze_trainable_layers", layers), ("freeze_extra_modules", freeze_extra)):
            if value:
                conversion.skip(key, value, f"finetuning_type is {method}")
    if not quantised:
        for key, value in (
            ("quantization_type", quant_type),
            ("double_quantization", double_quant),
            ("quantization_method", quant_method),
        ):
            if value is not None:
                conversion.skip(key, value, "the model is not quantised in llmtune")


def _dpo(conversion: Conversion, todo: dict, stage: str) -> None:
    take = todo.pop
    loss = take("pref_loss", None) or "sigmoid"
    algorithm = {"orpo": "orpo", "simpo": "simpo", "kto": "kto"}.get(stage, "dpo")
    if stage == "dpo" and loss in ("orpo", "simpo"):
        algorithm = loss
    if stage == "dpo" and loss == "kto_pair":
        algorithm = "kto"
        conversion.warnings.append("pref_loss kto_pair: imported as llmtune's kto, which unpairs the pairs")
    conversion.put(
        "dpo",
        "algorithm",
        algorithm,
        f"LLaMA-Factory stage: {stage}" + (f", pref_loss: {loss}" if stage == "dpo" else ""),
    )
    beta = take("pref_beta", None)
    conversion.put(
        "dpo",
        "beta",
        0.1 if beta is None else beta,
        "LLaMA-Factory pref_beta" if beta is not None else "LLaMA-Factory's default pref_beta",
    )
    ftx = take("pref_ftx", None)
    if algorithm == "dpo":
        loss_type = loss if loss in ("sigmoid", "hinge", "ipo") else "sigmoid"
        if loss not in ("sigmoid", "hinge", "ipo", "kto_pair"):
            conversion.skip("pref_loss", loss, "not a DPO loss llmtune knows by that name; sigmoid used")
        if ftx:
            conversion.put(
                "dpo",
                "loss_type",
                [loss_type, "sft"],
                f"LLaMA-Factory pref_ftx: {ftx} (an SFT loss on the chosen answer)",
            )
            conversion.put("dpo", "loss_weights", [1.0, float(ftx)])
        else:
            conversion.put("dpo", "loss_type", loss_type)
    elif ftx:
        conversion.skip("pref_ftx", ftx, f"llmtune's {algorithm} has no added SFT loss")
    smoothing = take("dpo_label_smoothing", None)
    if smoothing:
        if algorithm == "dpo":
            conversion.put("dpo", "label_smoothing", smoothing)
        else:
            conversion.skip("dpo_label_smoothing", smoothing, f"a dpo setting; the algorithm is {algorithm}")
    gamma = take("simpo_gamma", None)
    if gamma is not None:
        if algorithm == "simpo":
            conversion.put("dpo", "simpo_gamma", gamma)
        else:
            conversion.skip("simpo_gamma", gamma, f"a simpo setting; the algorithm is {algorithm}")


def _train(
    conversion: Conversion, todo: dict, command: str, train_fields, find_path, place, raw: dict
) -> None:
    take = todo.pop
    put = conversion.put
    output_dir = take("output_dir", None)
    if output_dir:
        put("train", "output_dir", output_dir)
    else:
        put("train", "output_dir", "runs/imported", "the LLaMA-Factory recipe gives no output_dir")
    no_checkpointing = take("disable_gradient_checkpointing", None)
    if "gradient_checkpointing" not in todo:
        put(
            "train",
            "gradient_checkpointing",
            not no_checkpointing,
            "LLaMA-Factory turns it on unless disable_gradient_checkpointing",
        )
    liger = take("enable_liger_kernel", None)
    if liger is not None:
        if "use_liger_kernel" in train_fields:
            put("train", "use_liger_kernel", liger, "LLaMA-Factory enable_liger_kernel (needs liger-kernel)")
        else:
            conversion.skip("enable_liger_kernel", liger, "not a trainer argument in this transformers")
    deepspeed = take("deepspeed", None)
    if deepspeed:
        strategy = DEEPSPEED_STRATEGIES.get(Path(deepspeed).name)
        if strategy:
            put(
                "launch",
                "strategy",
                strategy,
                f"LLaMA-Factory deepspeed: {deepspeed} (llmtune's own config); give the processes with --nproc N",
            )
            if strategy == "zero2" and "offload" in deepspeed:
                conversion.warnings.append(
                    "ds_z2_offload_config.json: llmtune has zero3-offload, not zero2 offload; zero2 used"
                )
        else:
            local = find_path(deepspeed)
            put("train", "deepspeed", str(local) if local else deepspeed, "launch with --nproc N")
            if local is None:
                conversion.warnings.append(
                    f"deepspeed: {deepspeed} was not found; give train.deepspeed a path that exists"
                )

    for key in list(todo):
        value = take(key)
        if key in WHY_NOT:
            conversion.skip(key, value, WHY_NOT[key])
        elif key.startswith(("ppo_", "reward_model", "vllm_", "sglang_", "export_", "swanlab_", "ray_")):
            conversion.skip(key, value, "a LLaMA-Factory option with no llmtune equivalent")
        elif key in RENAMED_TRAIN_KEYS and key not in train_fields:
            new = RENAMED_TRAIN_KEYS[key]
            if new in raw:
                conversion.skip(key, value, f"{new} is given too")
            else:
                extra = " (below 1: a ratio of the total steps)" if key == "warmup_ratio" else ""
                put("train", new, value, f"{key} in LLaMA-Factory, renamed in transformers 5{extra}")
        elif key in train_fields:
            if value is None:
                continue  # `resume_from_checkpoint: null` and the like: the trainer's default
            put("train", key, value)
        else:
            conversion.skip(key, value, "not a LLaMA-Factory key llmtune knows, nor a trainer argument")


def relative_or_absolute(out_dir: Path | None) -> Callable[[Path], str]:
    """How a local path is written in the recipe: relative to the output file's folder when it is inside
    that folder (llmtune reads relative paths against the recipe's folder), else absolute."""

    def place(path: Path) -> str:
        path = Path(os.path.abspath(path))
        if out_dir is None:
            return str(path)
        try:
            return str(path.relative_to(out_dir))
        except ValueError:
            return str(path)

    return place
