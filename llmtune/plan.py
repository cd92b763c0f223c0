"""Plan a training run before starting it: parameters, memory per device, tokens per step.

What `llmtune plan --recipe FILE` prints:

    from llmtune.plan import estimate, parse_memory
    plan = estimate(recipe, device_memory_bytes=parse_memory("24GiB"), strategy="zero3", nproc=4)
    print(plan.render())

No weights are loaded. The model's config is read (a local config.json, the recipe's `from_config`, a
demo model's GGUF metadata, or config.json + tokenizer files from the hub) and the model is built on
PyTorch's meta device, where parameters have shapes but no storage: a 70B model is counted in a second,
exactly, with tied weights once, and the recipe's adapter applied with PEFT as training would apply it.

Memory per device = model states + activations + logits + a fixed overhead:

- Model states under DeepSpeed ZeRO and FSDP follow the ZeRO paper (Rajbhandari et al. 2019, "ZeRO:
  Memory Optimizations Toward Training Trillion Parameter Models", §3 and Figure 1): mixed-precision
  AdamW keeps 16-bit weights (2Ψ) and gradients (2Ψ) and K=12 bytes of optimizer state per parameter
  (fp32 master weights, two fp32 moments); stage 1 shards the optimizer state over N devices, stage 2
  the gradients too, stage 3 everything. FSDP full-shard is ZeRO-3 (accelerate upcasts the sharded
  parameters to fp32, as DeepSpeed keeps its fp32 partition).
- Single-device and DDP runs go through HF Trainer and torch AdamW, which keep no master copy: the
  moments take the dtype of the parameters. A bf16 model therefore trains in pure bf16 at 8 bytes per
  trainable parameter; an fp32 model with `train.bf16` (autocast) at 16 — the paper's DDP baseline.
- Adapter parameters (LoRA and friends) are fp32 (PEFT upcasts them), except QLoRA's under TRL's
  trainers, which cast them to bf16. Frozen weights cost their storage only; QLoRA stores linear
  weights in 4-bit nf4 (4.127 bits a parameter with double quantisation: 4 + 8/64 + 32/(64·256)) and
  `peft.prepare_model_for_kbit_training` casts the rest (embeddings, lm_head, norms) to fp32.
- Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
  Models", §4.1): s·b·h·(34 + 5·a·s/h) bytes per layer for 16-bit activations; the 5·a·s/h attention
  score term is dropped for fused attention (SDPA, flash), and everything doubles for fp32. With
  gradient checkpointing each layer keeps its 16-bit input (2·s·b·h) and one layer is recomputed at a
  time. The logits add b·s·V fp32 values twice (the upcast for the loss and its softmax).
- Smaller parts, each measured or read from the code that allocates it: LoRA dropout's copies of each
  adapted layer's input, autocast's 16-bit copies of fp32 weights, DDP's gradient buckets (a second
  copy of the gradients), ZeRO-3/FSDP's gathered layers, ZeRO's communication buckets.

benchmarks/plan_vs_measured.py checks the CPU estimate against the peak RSS of real runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

STRATEGIES = ("single", "ddp", "fsdp", "zero2", "zero3", "zero3-offload")
TARGETS = ("gpu", "cpu")

# What a process holds beside its tensors. GPU: the CUDA context (~0.5 GiB on recent drivers), cuBLAS and
# NCCL workspaces and caching-allocator slack. CPU: the growth in resident memory during training that
# is not tensors (autograd bookkeeping, the DataLoader, allocator slack).
GPU_OVERHEAD_BYTES = 1 << 30
CPU_OVERHEAD_BYTES = 256 << 20

# nf4 bits per weight: 4 + one absmax per block of 64 (fp32, or 8-bit with a second fp32 level per 256).
NF4_BITS = {True: 4 + 8 / 64 + 32 / (64 * 256), False: 4 + 32 / 64}

# deepspeed_configs/zero2.json: allgather_bucket_size 2e8 elements, 16-bit.
ZERO2_ALLGATHER_BUCKET = 200_000_000

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


# ------------------------------------------------------------------------------------------ formulas
def parse_memory(text: str) -> int:
    """Bytes in a size such as `24GiB`, `80GB`, `512MB`, `1.5T` or `1000000`.

    KB/MB/GB/TB are decimal (10^9), KiB/MiB/GiB/TiB and the bare K/M/G/T binary (2^30), as `docker -m`
    reads them. A card sold as "24 GB" holds 24 GiB: write 24GiB for it.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise LlmtuneError(
            f"memory size {text!r}: expected a number and a unit, e.g. 24GiB, 80GB, 512MB (GB = 10^9 bytes, "
            "GiB = 2^30 bytes)."
        )
    return int(float(match.group(1)) * _UNITS[unit])


def zero_model_states(
    psi: float,
    n: int,
    stage: int,
    *,
    weight_bytes: float = 2,
    grad_bytes: float = 2,
    optimizer_bytes: float = 12,
) -> dict[str, float]:
    """Per-device bytes of weights, gradients and optimizer states for `psi` trainable parameters on `n`
    devices under ZeRO `stage` 0 (plain data parallel) to 3. The defaults are the paper's mixed-precision
    Adam: stage 0 = 16Ψ, 1 = 4Ψ + 12Ψ/N, 2 = 2Ψ + 14Ψ/N, 3 = 16Ψ/N."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage {stage}: expected 0, 1, 2 or 3")
    return {
        "weights": weight_bytes * psi / (n if stage >= 3 else 1),
        "gradients": grad_bytes * psi / (n if stage >= 2 else 1),
        "optimizer": optimizer_bytes * psi / (n if stage >= 1 else 1),
    }


def activation_bytes(
    *,
    seq_len: int,
    micro_batch: int,
    hidden: int,
    heads: int,
    layers: int,
    bytes_per_value: int = 2,
    fused_attention: bool = True,
    checkpointing: bool = False,
) -> int:
    """Activations saved for the backward pass of `layers` transformer blocks (Korthikanti et al. 2022)."""
    s, b, h, a = seq_len, micro_batch, hidden, heads
    scale = bytes_per_value / 2  # the paper counts 16-bit values
    scores = 0 if fused_attention else 5 * a * s / h
    per_layer = s * b * h * (34 + scores) * scale
    if checkpointing:
        return int(layers * 2 * s * b * h * scale + per_layer)
    return int(layers * per_layer)


def logits_bytes(*, seq_len: int, micro_batch: int, vocab_size: int) -> int:
    """fp32 logits held twice: the upcast for the loss and the saved log-softmax."""
    return 2 * micro_batch * seq_len * vocab_size * 4


# ---------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about the model, read from its config and meta-device build."""

    name: str
    source: str  # local, demo, huggingface, modelscope, from_config
    architecture: str
    parameters: int
    layers: int
    hidden_size: int
    attention_heads: int
    vocab_size: int
    tied_embeddings: bool
    attention: str  # the kernel training will use
    linear_params: int  # every nn.Linear (lm_head included even when tied): the matmul FLOPs per token
    quantizable_params: int  # nn.Linear weights that bitsandbytes quantises (all but the output layer)
    lm_head_params: int
    largest_unit_params: int  # one block or the embedding, whichever is larger (what ZeRO-3 gathers)


@dataclass(frozen=True)
class Setup:
    """The knobs a suggestion turns; everything else about the run stays fixed."""

    strategy: str
    nproc: int
    micro_batch: int
    accumulation: int
    gradient_checkpointing: bool
    peft_method: str
    trainable_params: int
    peft_params: int  # the model's parameters after the adapter is added (adapters, modules_to_save copies)
    dropout_features: int  # input features of every LoRA layer with dropout (each keeps a dropped-out copy)


@dataclass(frozen=True)
class Run:
    """What the recipe fixes: the command, sequence shape and precision."""

    command: str  # pretrain, sft, dpo
    seq_len: int
    sequences_per_example: int  # 2 for preference pairs: chosen and rejected go through one forward
    reference_copy: bool  # full-parameter DPO/KTO holds a frozen copy of the model
    reference_forward: bool  # DPO/KTO run the reference (or the adapter-disabled model) every step
    weight_dtype: str  # float32, bfloat16 or float16
    weight_bytes: int
    mixed_precision: bool  # train.bf16 / train.fp16: autocast
    target: str
    double_quant: bool


@dataclass
class Suggestion:
    """One change that lowers memory, with the plan's estimate after it."""

    change: str
    settings: list[str]  # --set overrides or launch options that make the change
    total_bytes: int
    fits: bool


@dataclass
class Plan:
    """The estimate for one recipe; `render()` prints it, `to_dict()` is the JSON form."""

    recipe: str
    command: str
    model: dict[str, Any]
    training: dict[str, Any]
    memory: dict[str, int]  # per device; the parts sum to memory["total"]
    memory_notes: dict[str, str]  # what each part assumes, for render()
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    cpu_offload_bytes: int  # host RAM for zero3-offload (per node), else 0
    device_memory_bytes: int | None
    fits: bool | None
    throughput: dict[str, Any]
    suggestions: list[Suggestion] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def render(self) -> str:
        return _render(self)


def estimate(
    recipe,
    *,
    device_memory_bytes: int | None = None,
    nproc: int = 1,
    strategy: str = "single",
    gradient_checkpointing: bool | None = None,
    target: str = "gpu",
) -> Plan:
    """Plan `recipe` (a loaded PretrainRecipe, SftRecipe or DpoRecipe) without loading weights.

    device_memory_bytes: memory of one device to check the plan against; default the first CUDA GPU's
        when `target` is gpu and one is present, else none (the plan is only reported).
    nproc: processes (devices) sharing the run; strategy: single, ddp, fsdp, zero2, zero3, zero3-offload.
    gradient_checkpointing: override the recipe (sft and dpo default to on, as TRL does; pretrain off).
    target: gpu (dtype auto = bfloat16) or cpu (dtype auto = float32, single or ddp only).
    """
    if strategy not in STRATEGIES:
        raise LlmtuneError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}.")
    if target not in TARGETS:
        raise LlmtuneError(f"target {target!r}: expected gpu or cpu.")
    if nproc < 1:
        raise LlmtuneError(f"nproc {nproc}: expected at least 1 process.")
    if strategy == "single" and nproc != 1:
        raise LlmtuneError(f"strategy single runs one process, but nproc is {nproc}; use ddp, fsdp or zero*.")
    if target == "cpu" and strategy not in ("single", "ddp"):
        raise LlmtuneError(f"strategy {strategy} shards over GPUs; a cpu plan supports single and ddp.")

    command = _command(recipe)
    train = recipe.train.trainer_kwargs()
    config, name, source = model_config(recipe.model)
    shape = _model_shape(config, recipe.model, name, source)
    trainable, peft_params, dropout_features = _adapted(config, recipe.model, recipe.peft)
    run = _run_facts(recipe, command, train, target)
    checkpointing = gradient_checkpointing
    if checkpointing is None:
        checkpointing = bool(train.get("gradient_checkpointing", command != "pretrain"))
    setup = Setup(
        strategy=strategy,
        nproc=nproc,
        micro_batch=int(train.get("per_device_train_batch_size", 8)),
        accumulation=int(train.get("gradient_accumulation_steps", 1)),
        gradient_checkpointing=checkpointing,
        peft_method=recipe.peft.method,
        trainable_params=trainable,
        peft_params=peft_params,
        dropout_features=dropout_features,
    )
    memory, notes, cpu_bytes = _memory(shape, setup, run)
    if device_memory_bytes is None and target == "gpu":
        device_memory_bytes = _detected_gpu_memory()
    fits = None if device_memory_bytes is None else memory["total"] <= device_memory_bytes
    suggestions = []
    if fits is False:
        suggestions = _suggestions(recipe, config, shape, setup, run, device_memory_bytes)

    other = dataclasses.replace(setup, gradient_checkpointing=not checkpointing)
    other_activations = _memory(shape, other, run)[0]["activations"]
    with_ckpt, without_ckpt = (
        (memory["activations"], other_activations)
        if checkpointing
        else (other_activations, memory["activations"])
    )
    return Plan(
        recipe=str(recipe.source),
        command=command,
        model={
            **dataclasses.asdict(shape),
            "trainable_parameters": trainable,
            "parameters_with_adapter": peft_params,
        },
        training={
            "peft": recipe.peft.method,
            "strategy": strategy,
            "nproc": nproc,
            "target": target,
            "weight_dtype": run.weight_dtype,
            "mixed_precision": run.mixed_precision,
            "micro_batch": setup.micro_batch,
            "sequences_per_example": run.sequences_per_example,
            "sequence_length": run.seq_len,
            "gradient_accumulation_steps": setup.accumulation,
            "gradient_checkpointing": checkpointing,
            "reference_copy": run.reference_copy,
        },
        memory=memory,
        memory_notes=notes,
        activations_without_checkpointing=without_ckpt,
        activations_with_checkpointing=with_ckpt,
        cpu_offload_bytes=cpu_bytes,
        device_memory_bytes=device_memory_bytes,
        fits=fits,
        throughput=_throughput(recipe, train, shape, setup, run),
        suggestions=suggestions,
        assumptions=_assumptions(run, setup),
    )


_DTYPE_NAMES = {2: "16-bit", 4: "fp32"}  # by bytes; bf16 or fp16 as the recipe says


def _command(recipe) -> str:
    from llmtune.recipe import DpoRecipe, PretrainRecipe, SftRecipe

    for klass, name in ((PretrainRecipe, "pretrain"), (SftRecipe, "sft"), (DpoRecipe, "dpo")):
        if isinstance(recipe, klass):
            return name
    raise LlmtuneError(f"cannot plan a {type(recipe).__name__}: plan covers pretrain, sft and dpo recipes.")


def _run_facts(recipe, command: str, train: dict, target: str) -> Run:
    dtype = recipe.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if target == "gpu" else "float32"
    weight_bytes = 4 if dtype == "float32" else 2
    # llmtune's default for train.bf16 is "the model is bf16" (training.training_arguments).
    mixed = bool(train.get("bf16", dtype == "bfloat16") or train.get("fp16", False))
    preference = command == "dpo"
    algorithm = recipe.dpo.algorithm if preference else None
    uses_reference = algorithm in ("dpo", "kto")
    precomputed = preference and recipe.dpo.precompute_ref_log_probs
    return Run(
        command=command,
        seq_len=recipe.data.block_size if command == "pretrain" else recipe.data.max_length,
        # KTO trains on single completions (its KL term runs without gradients).
        sequences_per_example=2 if preference and algorithm != "kto" else 1,
        reference_copy=uses_reference and not recipe.peft.is_peft and not precomputed,
        reference_forward=uses_reference and not precomputed,
        weight_dtype=dtype,
        weight_bytes=weight_bytes,
        mixed_precision=mixed,
        target=target,
        double_quant=recipe.peft.double_quant,
    )


def _detected_gpu_memory() -> int | None:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return None


# ------------------------------------------------------------------------------------- model config
def model_config(section):
    """(transformers config, name, source) of the recipe's model, reading no weights."""
    from transformers import AutoConfig

    from llmtune.hub import DEMO_MODELS, resolve_demo_model, resolve_model

    if section.from_config is not None:
        return (
            _config_from_sizes(section),
            f"{section.from_config['architecture']} from config",
            "from_config",
        )
    name = section.name_or_path
    if name in DEMO_MODELS and not Path(name).exists():
        try:
            resolved = resolve_demo_model(name, convert=False)
        except LlmtuneError as exc:
            if "not converted" not in exc.message:
                raise
            return _demo_gguf_config(name), name, "demo"
    else:
        resolved = resolve_model(
            name,
            hub=section.hub,
            revision=section.revision,
            gguf_file=section.gguf_file,
            trust_remote_code=section.trust_remote_code,
            weights=False,
        )
    folder = Path(resolved.path)
    if (folder / "adapter_config.json").is_file():
        # An earlier llmtune run: training loads its base with the adapter merged in.
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise LlmtuneError(f"{folder}/adapter_config.json names no base_model_name_or_path.")
        config, _, _ = model_config(section.model_copy(update={"name_or_path": base, "gguf_file": None}))
        return config, name, resolved.source
    kwargs = {"trust_remote_code": section.trust_remote_code}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    try:
        return AutoConfig.from_pretrained(folder, **kwargs), name, resolved.source
    except (OSError, ValueError) as exc:
        raise LlmtuneError(f"cannot read the config of {name}: {str(exc).splitlines()[0]}") from None


def _demo_gguf_config(alias: str):
    """A demo model not yet converted: its config straight from the GGUF metadata."""
    from transformers import AutoConfig

    from llmtune.hub import DEMO_MODELS, _wheel_path  # hub names the wheel file only privately

    gguf = _wheel_path(DEMO_MODELS[alias], alias)
    return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _config_from_sizes(section):
    """The config `model.from_config` builds, exactly as training builds it (models.config_from_section)."""
    from llmtune.models import config_from_section, load_tokenizer

    return config_from_section(section, load_tokenizer(section, None))


def _meta_model(config, section):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=section.trust_remote_code)
    except ValueError as exc:
        raise LlmtuneError(
            f"cannot build {type(config).__name__} as a causal LM: {str(exc).splitlines()[0]}"
        ) from None


def count_trainable(config, model_section, peft_section) -> tuple[int, int]:
    """(trainable, total) parameters once the recipe's adapter is applied, counted on the meta device."""
    return _adapted(config, model_section, peft_section)[:2]


def _adapted(config, model_section, peft_section) -> tuple[int, int, int]:
    """(trainable, total, LoRA dropout input features) with the adapter applied on the meta device."""
    import torch

    from llmtune.adapters import apply_peft
    from llmtune.models import count_parameters

    model = _meta_model(config, model_section)
    if peft_section.method == "none":
        total = count_parameters(model)[1]
        return total, total, 0
    # QLoRA adapts the same layers as LoRA (bitsandbytes' Linear4bit is an nn.Linear); a prompt-tuning
    # text init only chooses starting values.
    changes: dict[str, Any] = {"prompt_tuning_init_text": None}
    if peft_section.method == "qlora":
        changes["method"] = "lora"
    with torch.device("meta"):
        model = apply_peft(model, peft_section.model_copy(update=changes))
    dropout_features = sum(
        module.in_features
        for module in model.modules()
        if hasattr(module, "lora_dropout")
        and any(isinstance(d, torch.nn.Dropout) for d in module.lora_dropout.values())
    )
    return (*count_parameters(model), dropout_features)


def _model_shape(config, section, name: str, source: str) -> ModelShape:
    import torch

    from llmtune.models import count_parameters

    model = _meta_model(config, section)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(text.num_hidden_layers)
    output = model.get_output_embeddings()
    output_weight = output.weight if output is not None else None
    embedding = model.get_input_embeddings().weight
    linear = quantizable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            numel = sum(p.numel() for p in module.parameters(recurse=False))
            linear += numel
            if module is not output:
                quantizable += module.weight.numel()
    blocks = next(
        (m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers), None
    )
    block = sum(p.numel() for p in blocks[0].parameters()) if blocks is not None else 0
    lm_head = output_weight.numel() if output_weight is not None else 0
    attention = section.attn_implementation or getattr(model.config, "_attn_implementation", None) or "eager"
    return ModelShape(
        name=name,
        source=source,
        architecture=type(model).__name__,
        parameters=count_parameters(model)[1],
        layers=layers,
        hidden_size=int(text.hidden_size),
        attention_heads=int(text.num_attention_heads),
        vocab_size=int(embedding.shape[0]),
        tied_embeddings=output_weight is not None and output_weight is embedding,
        attention=attention,
        linear_params=linear,
        quantizable_params=quantizable,
        lm_head_params=lm_head,
        largest_unit_params=max(block, embedding.numel(), lm_head),
    )


# ------------------------------------------------------------------------------------------- memory
def _memory(shape: ModelShape, setup: Setup, run: Run) -> tuple[dict[str, int], dict[str, str], int]:
    """(bytes per device by part, with a "total"; a note per part; host RAM for offload)."""
    n, strategy = setup.nproc, setup.strategy
    trainable = setup.trainable_params
    frozen = setup.peft_params - trainable
    adapter = setup.peft_method not in ("none", "freeze")
    qlora = setup.peft_method == "qlora"
    w = run.weight_bytes
    deepspeed = strategy.startswith("zero")

    # ---- frozen weights: storage only
    if qlora:
        quantized = min(shape.quantizable_params, frozen)
        frozen_bytes = quantized * NF4_BITS[run.double_quant] / 8 + (frozen - quantized) * 4
        frozen_note = f"{quantized / 1e9:.2f} B params nf4 + {(frozen - quantized) / 1e6:.0f} M fp32"
    elif deepspeed:  # DeepSpeed casts the module to 16 bits when bf16/fp16 is on
        frozen_bytes = frozen * (2 if run.mixed_precision else 4)
        frozen_note = f"frozen {_DTYPE_NAMES[2 if run.mixed_precision else 4]}"
    else:
        frozen_bytes = frozen * w
        frozen_note = f"frozen {_DTYPE_NAMES[w]}"

    # ---- trainable parameters: weights, gradients, AdamW states
    if adapter:
        trainable_dtype = 2 if qlora and (run.command == "dpo" or run.mixed_precision) else 4
    else:
        trainable_dtype = w
    if deepspeed:
        stage = 2 if strategy == "zero2" else 3
        per = (2, 2, 12) if run.mixed_precision else (4, 4, 8)
        states = zero_model_states(
            trainable, n, stage, weight_bytes=per[0], grad_bytes=per[1], optimizer_bytes=per[2]
        )
        optimizer_note = "fp32 master + 2 fp32 moments" if run.mixed_precision else "2 fp32 moments"
        optimizer_note += f", ZeRO-{stage} over {n}"
    elif strategy == "fsdp":
        # accelerate upcasts the sharded trainable parameters to fp32 under mixed precision.
        d = 4 if run.mixed_precision else trainable_dtype
        states = zero_model_states(trainable, n, 3, weight_bytes=d, grad_bytes=d, optimizer_bytes=2 * d)
        optimizer_note = f"2 {_DTYPE_NAMES[d]} moments, sharded over {n}"
    else:
        d = trainable_dtype
        states = zero_model_states(trainable, 1, 0, weight_bytes=d, grad_bytes=d, optimizer_bytes=2 * d)
        optimizer_note = f"AdamW, 2 {_DTYPE_NAMES[d]} moments (no master copy)"
    shards_frozen = strategy in ("zero3", "fsdp")
    weights = states["weights"] + frozen_bytes / (n if shards_frozen else 1)

    reference = 0.0
    if run.reference_copy:
        ref_dtype = 2 if deepspeed and run.mixed_precision else w
        reference = shape.parameters * ref_dtype / (n if shards_frozen else 1)

    cpu = 0
    gathered = comm = 0.0
    if strategy in ("zero3", "fsdp", "zero3-offload"):
        # The layer being computed and the next one, gathered in 16 bits; DeepSpeed's own estimator
        # (estimate_zero3_model_states_mem_needs) counts 4 bytes x the largest layer.
        gathered = 4 * shape.largest_unit_params
    if strategy == "zero3-offload":
        # Parameters and optimizer live in host RAM. Per node, as DeepSpeed's estimator (zero_init off:
        # llmtune builds the model before DeepSpeed starts, so each process first loads a whole copy).
        host_states = 18 * trainable + 2 * frozen + (2 * shape.parameters if run.reference_copy else 0)
        cpu = int(1.5 * max(n * shape.parameters * w, host_states))
        weights, states, reference = 0.0, {"gradients": 0.0, "optimizer": 0.0}, 0.0
    if strategy == "ddp" and n > 1:
        comm = trainable * trainable_dtype  # DDP's reducer buckets copy every gradient
    elif strategy == "zero2":
        comm = 2 * (ZERO2_ALLGATHER_BUCKET + shape.hidden_size**2)
    elif strategy == "zero3":
        comm = 2 * shape.hidden_size**2  # reduce bucket ("auto" = hidden²)

    # ---- autocast's 16-bit copies of fp32 matmul weights (single/ddp only: DeepSpeed and FSDP run the
    # module in 16 bits). Copies of trainable leaves are cached for the whole forward; copies of frozen
    # weights are saved for the backward unless the block is recomputed.
    autocast = 0.0
    if run.mixed_precision and strategy in ("single", "ddp"):
        if adapter:
            cached = trainable if trainable_dtype == 4 else 0
            frozen_fp32_linear = shape.lm_head_params if qlora else (shape.linear_params if w == 4 else 0)
        else:
            cached = min(trainable, shape.linear_params) if w == 4 else 0
            frozen_fp32_linear = shape.linear_params - cached if w == 4 else 0
        autocast = 2 * cached + (0 if setup.gradient_checkpointing else 2 * frozen_fp32_linear)

    act_bytes = 2 if (run.mixed_precision or w == 2) else 4
    fused = shape.attention != "eager"
    sequences = setup.micro_batch * run.sequences_per_example
    activations = activation_bytes(
        seq_len=run.seq_len,
        micro_batch=sequences,
        hidden=shape.hidden_size,
        heads=shape.attention_heads,
        layers=shape.layers,
        bytes_per_value=act_bytes,
        fused_attention=fused,
        checkpointing=setup.gradient_checkpointing,
    )
    # LoRA's dropout hands lora_A a new tensor, which autograd keeps with its mask (1 byte a value); a
    # recomputed block keeps none. Measured on SmolLM2-135M (benchmarks/plan_vs_measured.py): +0.85 GiB.
    dropout_layers = 1 if setup.gradient_checkpointing else shape.layers
    adapter_dropout = (
        run.seq_len * sequences * setup.dropout_features / shape.layers * dropout_layers * (act_bytes + 1)
    )
    logits = logits_bytes(seq_len=run.seq_len, micro_batch=sequences, vocab_size=shape.vocab_size)
    overhead = GPU_OVERHEAD_BYTES if run.target == "gpu" else CPU_OVERHEAD_BYTES

    parts = {
        "weights": weights,
        "gradients": states["gradients"],
        "optimizer": states["optimizer"],
        "reference_model": reference,
        "autocast_copies": autocast,
        "gathered_params": gathered,
        "comm_buffers": comm,
        "activations": activations,
        "adapter_dropout": adapter_dropout,
        "logits": logits,
        "overhead": overhead,
    }
    memory = {k: int(round(v)) for k, v in parts.items()}
    memory["total"] = sum(memory.values())
    if strategy in ("single", "ddp"):
        trainable_note = f"{_DTYPE_NAMES[trainable_dtype]} trainable"
    elif strategy == "fsdp":
        trainable_note = f"{_DTYPE_NAMES[4 if run.mixed_precision else trainable_dtype]} trainable"
    else:
        trainable_note = f"{_DTYPE_NAMES[2 if run.mixed_precision else 4]} trainable"
    if shards_frozen:
        trainable_note += f", sharded over {n}"
    elif strategy == "zero2":
        trainable_note += ", replicated"
    notes = {
        "weights": ", ".join(x for x in (frozen_note if frozen else "", trainable_note) if x)
        + (" (on CPU)" if strategy == "zero3-offload" else ""),
        "gradients": "of trainable parameters" + (" (on CPU)" if strategy == "zero3-offload" else ""),
        "optimizer": optimizer_note + (" (on CPU)" if strategy == "zero3-offload" else ""),
        "reference_model": "frozen copy for full-parameter DPO",
        "autocast_copies": "16-bit copies of fp32 weights under autocast",
        "gathered_params": "ZeRO-3/FSDP: current + prefetched layer, 16-bit",
        "comm_buffers": {"ddp": "DDP gradient buckets", "zero2": "ZeRO-2 all-gather + reduce buckets"}.get(
            strategy, "ZeRO-3 reduce bucket"
        ),
        "activations": f"{run.seq_len} tokens x {sequences} sequences, "
        + ("checkpointed, " if setup.gradient_checkpointing else "no checkpointing, ")
        + f"{'fused' if fused else 'eager'} attention, {_DTYPE_NAMES[act_bytes]}",
        "adapter_dropout": "dropped-out inputs of LoRA layers, and masks",
        "logits": f"fp32, x2 for the loss, vocab {shape.vocab_size:,}",
        "overhead": "CUDA context, workspaces, allocator" if run.target == "gpu" else "framework, allocator",
    }
    return memory, notes, cpu


# ------------------------------------------------------------------------------------- suggestions
def _suggestions(recipe, config, shape, setup: Setup, run: Run, budget: int) -> list[Suggestion]:
    """Changes that lower memory, each with its estimate. Those that fit come first, least disruptive
    first (a setting, then the method, then more GPUs); then the others, smallest first. When none fits
    alone, the first combination of them (in that order) that does is added."""

    def total(s: Setup) -> int:
        return _memory(shape, s, run)[0]["total"]

    def with_peft(method: str) -> Setup:
        section = recipe.peft.model_copy(update={"method": method})
        trainable, params, dropout = _adapted(config, recipe.model, section)
        return dataclasses.replace(
            setup,
            peft_method=method,
            trainable_params=trainable,
            peft_params=params,
            dropout_features=dropout,
        )

    # (kind, change, settings, setup after it); a later candidate of the same kind replaces an earlier
    # one when they are combined.
    candidates: list[tuple[str, str, list[str], Setup]] = []
    if not setup.gradient_checkpointing:
        on = dataclasses.replace(setup, gradient_checkpointing=True)
        candidates.append(
            ("ckpt", "gradient checkpointing on", ["--set train.gradient_checkpointing=true"], on)
        )
    if setup.micro_batch > 1:
        micro = setup.micro_batch // 2
        while micro > 1 and total(dataclasses.replace(setup, micro_batch=micro)) > budget:
            micro //= 2
        accumulation = setup.accumulation * setup.micro_batch // micro
        change = (
            f"micro-batch {setup.micro_batch} -> {micro}, accumulation {setup.accumulation} -> {accumulation}"
        )
        settings = [
            f"--set train.per_device_train_batch_size={micro}",
            f"--set train.gradient_accumulation_steps={accumulation}",
        ]
        smaller = dataclasses.replace(setup, micro_batch=micro, accumulation=accumulation)
        candidates.append(("batch", change, settings, smaller))
    pretrained = recipe.model.from_config is None
    if pretrained and setup.peft_method in ("none", "freeze"):
        change = f"LoRA (r {recipe.peft.r}) instead of full training"
        candidates.append(("peft", change, ["--set peft.method=lora"], with_peft("lora")))
    if pretrained and run.target == "gpu" and not recipe.model.gguf_file and setup.peft_method != "qlora":
        change = "QLoRA (LoRA on a 4-bit nf4 base)"
        candidates.append(("peft", change, ["--set peft.method=qlora"], with_peft("qlora")))
    if run.target == "gpu" and setup.strategy not in ("zero3", "zero3-offload"):
        for stage in ("zero2", "zero3"):
            if setup.strategy == stage:
                continue
            # The fewest GPUs that fit (at least 2: ZeRO shards nothing on one).
            counts = sorted({max(setup.nproc, 2), *(k for k in (4, 8, 16, 32, 64) if k > setup.nproc)})
            trials = [dataclasses.replace(setup, strategy=stage, nproc=n) for n in counts]
            # Where none fits, the most GPUs tried: "still too big over 64" says sharding is not the cure.
            trial = next((t for t in trials if total(t) <= budget), trials[-1])
            change = f"DeepSpeed ZeRO-{stage[-1]} over {trial.nproc} GPUs"
            candidates.append(("strategy", change, [f"--strategy {stage}", f"--nproc {trial.nproc}"], trial))
    if run.target == "gpu" and setup.strategy != "zero3-offload":
        offload = dataclasses.replace(setup, strategy="zero3-offload")
        change = "ZeRO-3 with parameters and optimizer states offloaded to CPU RAM"
        candidates.append(
            ("strategy", change, ["--strategy zero3-offload", f"--nproc {setup.nproc}"], offload)
        )

    current = total(setup)
    candidates = [c for c in candidates if total(c[3]) < current]  # e.g. ZeRO-2 on a small model
    scored = [(c, st, total(s)) for _, c, st, s in candidates]
    fitting = [Suggestion(c, st, t, True) for c, st, t in scored if t <= budget]
    others = [Suggestion(c, st, t, False) for c, st, t in scored if t > budget]
    others.sort(key=lambda s: s.total_bytes)
    if candidates and not fitting:
        combined, chosen = setup, {}
        for kind, change, settings, changed in candidates:
            delta = {
                f.name: getattr(changed, f.name)
                for f in dataclasses.fields(Setup)
                if getattr(changed, f.name) != getattr(setup, f.name)
            }
            trial = dataclasses.replace(combined, **delta)
            if total(trial) >= total(combined):
                continue
            combined, chosen[kind] = trial, (change, settings)
            if total(combined) <= budget:
                change = " + ".join(c for c, _ in chosen.values())
                settings = [s for _, st in chosen.values() for s in st]
                fitting.append(Suggestion(change, settings, total(combined), True))
                break
    return fitting + others


# ----------------------------------------------------------------------------------------- throughput
def _throughput(recipe, train: dict, shape: ModelShape, setup: Setup, run: Run) -> dict[str, Any]:
    examples_per_step = setup.micro_batch * setup.accumulation * setup.nproc
    tokens = examples_per_step * run.sequences_per_example * run.seq_len
    # Training FLOPs per token (Kaplan et al. 2020): forward 2N + attention 2·L·s·h, backward twice that;
    # frozen weights skip their weight-gradient matmul, a recomputed block runs its forward twice.
    n, attention = shape.linear_params, 2 * shape.layers * run.seq_len * shape.hidden_size
    per_token = 4 * n + 2 * min(setup.trainable_params, n) + 3 * attention
    if setup.gradient_checkpointing:
        per_token += 2 * n + attention
    if run.reference_forward:
        per_token += 2 * n + attention
    rows, why = _train_rows(recipe, run)
    steps = None
    if rows is not None:
        batches = math.ceil(rows / (setup.micro_batch * setup.nproc))
        steps = max(1, math.ceil(batches / setup.accumulation))
    max_steps = int(train.get("max_steps", -1))
    epochs = float(train.get("num_train_epochs", 3.0))
    total_steps = max_steps if max_steps > 0 else (math.ceil(steps * epochs) if steps else None)
    return {
        "examples_per_step": examples_per_step,
        "tokens_per_step": tokens,
        "train_rows": rows,
        "steps_per_epoch": steps,
        "total_steps": total_steps,
        "epochs": epochs if max_steps <= 0 else None,
        "flops_per_step": float(per_token * tokens),
        "note": why,
    }


def _train_rows(recipe, run: Run) -> tuple[int | None, str]:
    """Training rows from a cheap read of chat files (no tokenising), or None and why not."""
    if run.command == "pretrain":
        return None, "steps per epoch need the tokenised text (blocks of data.block_size tokens)"
    data = recipe.data
    if getattr(data, "packing", False):
        return None, "steps per epoch with packing depend on token lengths"
    from llmtune.data.sources import BadRows, expand_sources, iter_json_rows

    try:
        files = expand_sources(data.train_files, "data.train_files", (".jsonl", ".json"))
    except LlmtuneError as exc:
        return None, exc.message
    if sum(f.stat().st_size for f in files) > 256 << 20:
        return None, "train files over 256 MB are not counted"
    rows = 0.0
    for index, path in enumerate(files):
        try:
            count = sum(1 for _ in iter_json_rows(path, "skip", BadRows()))
        except LlmtuneError as exc:
            return None, exc.message
        if data.max_samples is not None:
            count = min(count, data.max_samples)
        rows += count * (data.weights[index] if data.weights and index < len(data.weights) else 1.0)
    if not data.validation_files and data.validation_split > 0:
        rows -= max(1, round(rows * data.validation_split))
    if run.command == "dpo" and recipe.dpo.algorithm == "kto":
        rows *= 2  # each pair becomes a good and a bad example
    return int(rows), "rows counted in the files (rows the chat format rejects are not known yet)"


# --------------------------------------------------------------------------------------------- render
def _assumptions(run: Run, setup: Setup) -> list[str]:
    notes = [
        "activations: Korthikanti et al. 2022 per-layer count for a GPT block (34·s·b·h bytes at 16 bits); "
        "the embedding, final norm and dataloader are not counted",
        "sequences are counted at full length; a padded batch is as long as its longest row",
    ]
    if setup.strategy in ("single", "ddp"):
        notes.append("HF Trainer + torch AdamW: optimizer moments in the trainable parameters' dtype")
    else:
        notes.append("model states per the ZeRO paper (K=12 bytes of Adam state per parameter)")
    if run.target == "gpu":
        notes.append(
            f"fixed overhead {GPU_OVERHEAD_BYTES / 2**30:.1f} GiB per GPU (CUDA context, workspaces)"
        )
    return notes


def _size(value: float) -> str:
    if value >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    return f"{value / 2**10:.0f} KiB" if value else "0"


def _count(value: int) -> str:
    for limit, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= limit:
            return f"{value / limit:.2f} {unit}"
    return str(value)


def _render(plan: Plan) -> str:
    m, t, th = plan.model, plan.training, plan.throughput
    lines = [f"plan: {plan.recipe} ({plan.command})"]
    lines.append(
        f"  model     {m['name']} ({m['source']}, {m['architecture']}): {m['parameters']:,} parameters "
        f"({_count(m['parameters'])}){', tied embeddings' if m['tied_embeddings'] else ''}"
    )
    lines.append(
        f"            {m['layers']} layers, hidden {m['hidden_size']}, {m['attention_heads']} heads, "
        f"vocab {m['vocab_size']:,}, {m['attention']} attention"
    )
    share = 100 * m["trainable_parameters"] / max(m["parameters_with_adapter"], 1)
    precision = f"{t['weight_dtype']} weights" + (", bf16/fp16 autocast" if t["mixed_precision"] else "")
    lines.append(
        f"  training  peft {t['peft']}: {m['trainable_parameters']:,} trainable ({share:.2f}%); {precision}; "
        f"{t['strategy']} x {t['nproc']} ({t['target']})"
    )
    seqs = "x 2 (chosen + rejected) " if t["sequences_per_example"] == 2 else ""
    lines.append(
        f"  batch     micro-batch {t['micro_batch']} {seqs}x {t['sequence_length']} tokens, accumulation "
        f"{t['gradient_accumulation_steps']}, {t['nproc']} process(es) -> {th['tokens_per_step']:,} tokens "
        f"per optimizer step, ~{th['flops_per_step'] / 1e12:,.1f} TFLOP"
    )
    if th["steps_per_epoch"] is not None:
        epochs = f"{th['epochs']:g} epoch(s)" if th["epochs"] else "train.max_steps"
        lines.append(
            f"  data      ~{th['train_rows']:,} rows -> {th['steps_per_epoch']:,} steps per epoch, "
            f"{th['total_steps']:,} steps ({epochs})"
        )
    else:
        lines.append(f"  data      steps per epoch not estimated: {th['note']}")
    lines.append("")
    lines.append(f"  memory per {'GPU' if t['target'] == 'gpu' else 'process (CPU RAM)'}")
    width = max(len(k) for k in plan.memory)
    for key, value in plan.memory.items():
        if key == "total" or (value == 0 and key not in ("weights", "gradients", "optimizer")):
            continue
        lines.append(
            f"    {key.replace('_', ' '):<{width}} {_size(value):>11}  {plan.memory_notes.get(key, '')}"
        )
    lines.append(f"    {'total':<{width}} {_size(plan.memory['total']):>11}")
    other = (
        plan.activations_without_checkpointing
        if t["gradient_checkpointing"]
        else plan.activations_with_checkpointing
    )
    lines.append(
        f"    (activations {'without' if t['gradient_checkpointing'] else 'with'} gradient checkpointing: "
        f"{_size(other)})"
    )
    if plan.cpu_offload_bytes:
        lines.append(f"    host RAM for offloaded states (per node): {_size(plan.cpu_offload_bytes)}")
    lines.append("")
    if plan.device_memory_bytes is None:
        lines.append("  device memory: not given (no GPU detected); pass one to check the fit")
    else:
        used = 100 * plan.memory["total"] / plan.device_memory_bytes
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"  device memory {_size(plan.device_memory_bytes)}: {verdict} ({used:.0f}% of it)")
    if plan.suggestions:
        lines.append("  to fit, in order:")
        for i, s in enumerate(plan.suggestions, 1):
            mark = "fits" if s.fits else "still too big"
            lines.append(f"    {i}. {s.change}: {_size(s.total_bytes)} ({mark})  {' '.join(s.settings)}")
    lines.append("")
    lines.append("  assumptions:")
    lines.extend(f"    - {a}" for a in plan.assumptions)
    return "\n".join(lines)
