"""The memory model: the run's fixed facts from the recipe, the knobs a suggestion turns, and the bytes per
device that follow, part by part (weights, gradients, optimizer, activations, logits, buffers)."""

from __future__ import annotations

from dataclasses import dataclass

from llmtune.errors import LlmtuneError
from llmtune.plan.formulas import (
    CPU_OVERHEAD_BYTES,
    GPU_OVERHEAD_BYTES,
    NF4_BITS,
    ZERO2_ALLGATHER_BUCKET,
    activation_bytes,
    logits_bytes,
    zero_model_states,
)
from llmtune.plan.shape import ModelShape


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


_DTYPE_NAMES = {2: "16-bit", 4: "fp32"}  # by bytes; bf16 or fp16 as the recipe says


def recipe_command(recipe) -> str:
    from llmtune.recipe import DpoRecipe, PretrainRecipe, SftRecipe

    for klass, name in ((PretrainRecipe, "pretrain"), (SftRecipe, "sft"), (DpoRecipe, "dpo")):
        if isinstance(recipe, klass):
            return name
    raise LlmtuneError(f"cannot plan a {type(recipe).__name__}: plan covers pretrain, sft and dpo recipes.")


def run_facts(recipe, command: str, train: dict, target: str) -> Run:
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


def memory_per_device(
    shape: ModelShape, setup: Setup, run: Run
) -> tuple[dict[str, int], dict[str, str], int]:
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
