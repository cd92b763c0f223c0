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
    kv_cache_bytes,
    logits_bytes,
    zero_model_states,
)
from llmtune.plan.shape import ModelShape
from llmtune.plan.teacher import Teacher, teacher_notes, teacher_parts


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


# TRL 1.16's defaults of the GRPOConfig / RLOOConfig keys the plan reads (trl/trainer/grpo_config.py and
# rloo_config.py); read here as constants so that `plan` never imports trl (seconds of torch, peft and
# bitsandbytes imports). tests/unit/test_plan_rl.py checks them against the installed dataclasses.
TRL_RL_DEFAULTS = {
    "grpo": {"num_generations": 8, "max_completion_length": 512, "beta": 0.0},
    "rloo": {"num_generations": 2, "max_completion_length": 512, "beta": 0.05},
    "both": {"num_iterations": 1, "use_vllm": False, "ds3_gather_for_generation": True},
}

# The parts of the two phases of a grpo/rloo step that never hold memory at the same time: the policy's
# training step (forward + backward on a micro-batch) and generation (sampling the completions, then
# scoring them without gradients). The total counts the larger phase on top of the rest.
PHASE_PARTS = {
    "train_step": ("activations", "adapter_dropout", "logits"),
    "generation": ("generation_kv_cache", "generation_logits", "generation_gathered_weights"),
    "scoring": ("scoring_logits",),
}


@dataclass(frozen=True)
class Generation:
    """grpo/rloo: how completions are sampled (TRL's GRPOConfig/RLOOConfig names)."""

    prompt_length: int  # data.max_prompt_length
    completion_length: int  # max_completion_length
    num_generations: int  # completions per prompt
    generation_batch_size: int | None  # over all processes, when the recipe sets it
    steps_per_generation: int | None  # when the recipe sets it; neither: gradient_accumulation_steps
    num_iterations: int  # updates per generation batch (μ)
    beta: float  # KL coefficient; != 0 runs the reference model
    use_vllm: bool
    ds3_gather_for_generation: bool

    def sequences_per_device(self, micro_batch: int, accumulation: int, nproc: int) -> int:
        """Completions one process generates at once (TRL GRPOConfig.__post_init__: the generation batch
        is per_device_train_batch_size x processes x steps_per_generation, each process sampling its share)."""
        if self.generation_batch_size is not None:
            return -(-self.generation_batch_size // nproc)
        return micro_batch * (self.steps_per_generation or accumulation)


@dataclass(frozen=True)
class Run:
    """What the recipe fixes: the command, sequence shape and precision."""

    command: str  # pretrain, sft, dpo, reward, grpo, rloo, distill
    seq_len: int
    sequences_per_example: int  # 2 for preference pairs: chosen and rejected go through one forward
    reference_copy: bool  # full-parameter DPO/KTO/GRPO/RLOO holds a frozen copy of the model
    reference_forward: bool  # DPO/KTO (and GRPO/RLOO with beta != 0) run the reference every step
    weight_dtype: str  # float32, bfloat16 or float16
    weight_bytes: int
    mixed_precision: bool  # train.bf16 / train.fp16: autocast
    target: str
    double_quant: bool
    generation: Generation | None = None  # grpo/rloo
    teacher: Teacher | None = None  # distill


_DTYPE_NAMES = {2: "16-bit", 4: "fp32"}  # by bytes; bf16 or fp16 as the recipe says
COMMANDS = ("pretrain", "sft", "dpo", "reward", "grpo", "rloo", "distill")
# Strategies the distill recipe refuses (launch.strategy): each process keeps a whole teacher.
DISTILL_REFUSED_STRATEGIES = ("zero3", "zero3-offload", "fsdp")


def recipe_command(recipe) -> str:
    from llmtune.recipe import DpoRecipe, PretrainRecipe, SftRecipe
    from llmtune.recipe.alignment import GrpoRecipe, RewardRecipe, RlooRecipe
    from llmtune.recipe.compression import DistillRecipe

    kinds = (
        (PretrainRecipe, "pretrain"),
        (SftRecipe, "sft"),
        (DpoRecipe, "dpo"),
        (RewardRecipe, "reward"),
        (RlooRecipe, "rloo"),  # before grpo: an RlooRecipe is a GrpoRecipe
        (GrpoRecipe, "grpo"),
        (DistillRecipe, "distill"),  # text or chat (ChatDistillRecipe)
    )
    from llmtune.recipe.compression import OnPolicyDistillRecipe

    if isinstance(recipe, OnPolicyDistillRecipe):
        raise LlmtuneError(
            "plan covers off-policy distill (text or chat data); on-policy distillation samples answers as "
            "grpo does, which this plan does not model yet. Plan the student as a grpo recipe for its "
            "generation memory, and add the teacher's weights (parameters x 2 bytes in bf16)."
        )
    for klass, name in kinds:
        if isinstance(recipe, klass):
            return name
    raise LlmtuneError(f"cannot plan a {type(recipe).__name__}: plan covers {', '.join(COMMANDS)} recipes.")


def plan_dtype(dtype: str, target: str) -> tuple[str, int]:
    """(dtype, bytes a value) of a model section's dtype as training loads it on `target`: auto is bf16 on
    a GPU (models.resolve_dtype, assuming one that supports it) and float32 on a CPU."""
    if dtype == "auto":
        dtype = "bfloat16" if target == "gpu" else "float32"
    return dtype, 4 if dtype == "float32" else 2


def run_facts(recipe, command: str, train: dict, target: str, teacher: Teacher | None = None) -> Run:
    """The run's fixed facts; `teacher` (distill) is the frozen teacher the planner read."""
    dtype, weight_bytes = plan_dtype(recipe.model.dtype, target)
    # llmtune's default for train.bf16 is "the model is bf16" (training.training_arguments).
    mixed = bool(train.get("bf16", dtype == "bfloat16") or train.get("fp16", False))
    common = {
        "weight_dtype": dtype,
        "weight_bytes": weight_bytes,
        "mixed_precision": mixed,
        "target": target,
        "double_quant": recipe.peft.double_quant,
    }
    if command in ("grpo", "rloo"):
        generation = _generation(recipe, command, train)
        uses_reference = generation.beta != 0
        return Run(
            command=command,
            seq_len=generation.prompt_length + generation.completion_length,
            sequences_per_example=1,
            reference_copy=uses_reference and not recipe.peft.is_peft,
            reference_forward=uses_reference,
            generation=generation,
            **common,
        )
    if command == "reward":
        return Run(
            command=command,
            seq_len=recipe.data.max_length,
            sequences_per_example=2,  # chosen and rejected
            reference_copy=False,
            reference_forward=False,
            **common,
        )
    if command == "distill":  # the student trains as pretrain (text blocks) or sft (chat) would
        return Run(
            command=command,
            seq_len=recipe.data.block_size if teacher.data == "text" else recipe.data.max_length,
            sequences_per_example=1,
            reference_copy=False,
            reference_forward=False,
            teacher=teacher,
            **common,
        )
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
        **common,
    )


def _generation(recipe, command: str, train: dict) -> Generation:
    defaults = {**TRL_RL_DEFAULTS["both"], **TRL_RL_DEFAULTS[command]}

    def get(key):
        value = train.get(key)
        return defaults[key] if value is None else value

    given_batch = train.get("generation_batch_size")
    given_steps = train.get("steps_per_generation")
    return Generation(
        prompt_length=recipe.data.max_prompt_length,
        completion_length=int(get("max_completion_length")),
        num_generations=int(get("num_generations")),
        generation_batch_size=None if given_batch is None else int(given_batch),
        steps_per_generation=None if given_steps is None else int(given_steps),
        num_iterations=int(get("num_iterations")),
        beta=float(get("beta")),
        use_vllm=bool(get("use_vllm")),
        ds3_gather_for_generation=bool(get("ds3_gather_for_generation")),
    )


def memory_per_device(
    shape: ModelShape, setup: Setup, run: Run
) -> tuple[dict[str, int], dict[str, str], int]:
    """(bytes per device by part, with a "total"; a note per part; host RAM for offload).

    The parts sum to the total, except for grpo/rloo, whose training step and generation come one after
    the other: there the total counts the larger of the phases (PHASE_PARTS, `phase_totals`) on top of the
    other parts."""
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
    # A reward model's score head gives one value a token (read at the last one), not a vocabulary's.
    width = 1 if run.command == "reward" else shape.vocab_size
    logits = logits_bytes(seq_len=run.seq_len, micro_batch=sequences, vocab_size=width)
    overhead = GPU_OVERHEAD_BYTES if run.target == "gpu" else CPU_OVERHEAD_BYTES
    generation = _generation_parts(shape, setup, run)
    distill = {}
    if run.teacher is not None:
        # accelerate returns the autocast student's outputs in fp32; DeepSpeed runs it in 16 bits.
        student_logit_bytes = 4 if run.mixed_precision and not deepspeed else act_bytes
        distill = teacher_parts(
            run.teacher,
            shape,
            sequences=sequences,
            seq_len=run.seq_len,
            student_logit_bytes=student_logit_bytes,
        )

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
        **distill,
        **generation,
        "overhead": overhead,
    }
    memory = {k: int(round(v)) for k, v in parts.items()}
    phases = phase_totals(memory, run)
    shared = sum(v for k, v in memory.items() if not any(k in p for p in PHASE_PARTS.values()))
    memory["total"] = shared + max(phases.values()) if phases else sum(memory.values())
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
        "reference_model": f"frozen copy for full-parameter {run.command.upper()}"
        + (f" (beta {run.generation.beta:g})" if run.generation else ""),
        "autocast_copies": "16-bit copies of fp32 weights under autocast",
        "gathered_params": "ZeRO-3/FSDP: current + prefetched layer, 16-bit",
        "comm_buffers": {"ddp": "DDP gradient buckets", "zero2": "ZeRO-2 all-gather + reduce buckets"}.get(
            strategy, "ZeRO-3 reduce bucket"
        ),
        "activations": f"{run.seq_len} tokens x {sequences} sequences, "
        + ("checkpointed, " if setup.gradient_checkpointing else "no checkpointing, ")
        + f"{'fused' if fused else 'eager'} attention, {_DTYPE_NAMES[act_bytes]}",
        "adapter_dropout": "dropped-out inputs of LoRA layers, and masks",
        "logits": (
            "score head: 1 value a token (no vocabulary logits)"
            if run.command == "reward"
            else f"fp32, x2 for the loss, vocab {shape.vocab_size:,}"
            + (" (upper bound: TRL's fused LM head tiles them)" if run.generation else "")
        ),
        **(
            teacher_notes(run.teacher, shape, sequences=sequences, seq_len=run.seq_len)
            if run.teacher is not None
            else {}
        ),
        **_generation_notes(shape, setup, run),
        "overhead": "CUDA context, workspaces, allocator" if run.target == "gpu" else "framework, allocator",
    }
    return memory, notes, cpu


def phase_totals(memory: dict[str, int], run: Run) -> dict[str, int]:
    """grpo/rloo: the bytes of each phase of a step (PHASE_PARTS) in `memory`; {} for other commands."""
    if run.generation is None:
        return {}
    return {
        phase: sum(memory.get(k, 0) for k in keys)
        for phase, keys in PHASE_PARTS.items()
        if phase != "scoring" or run.reference_forward
    }


def _generation_parts(shape: ModelShape, setup: Setup, run: Run) -> dict[str, float]:
    """grpo/rloo: what sampling and scoring the completions hold (none for other commands).

    Generation (transformers' generate, no gradients): the KV cache of every completion a process samples
    at once, at full prompt + completion length, and the next-token logits of one decoding step (batch x
    vocab, fp32). Under ZeRO-3 TRL gathers the whole policy for generation (ds3_gather_for_generation).
    Scoring (the reference's log-probs, beta != 0): one micro-batch forward without gradients, its logits
    in fp32 once. With vLLM the sampling runs in vLLM, whose memory is not counted here."""
    gen = run.generation
    if gen is None:
        return {}
    sequences = gen.sequences_per_device(setup.micro_batch, setup.accumulation, setup.nproc)
    cache_bytes = 2 if setup.peft_method == "qlora" else run.weight_bytes  # QLoRA computes in bf16
    parts = {"generation_kv_cache": 0.0, "generation_logits": 0.0, "generation_gathered_weights": 0.0}
    if not gen.use_vllm:
        parts["generation_kv_cache"] = kv_cache_bytes(
            layers=shape.layers,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            bytes_per_value=cache_bytes,
            tokens=sequences * run.seq_len,
        )
        parts["generation_logits"] = sequences * shape.vocab_size * 4
        if setup.strategy.startswith("zero3") and gen.ds3_gather_for_generation:
            # The whole 16-bit policy on every GPU, less the shard already counted in weights.
            held = 1.0 if setup.strategy == "zero3-offload" else (setup.nproc - 1) / setup.nproc
            parts["generation_gathered_weights"] = 2 * setup.peft_params * held
    parts["scoring_logits"] = (
        setup.micro_batch * run.seq_len * shape.vocab_size * 4 if run.reference_forward else 0.0
    )
    return parts


def _generation_notes(shape: ModelShape, setup: Setup, run: Run) -> dict[str, str]:
    gen = run.generation
    if gen is None:
        return {}
    sequences = gen.sequences_per_device(setup.micro_batch, setup.accumulation, setup.nproc)
    return {
        "generation_kv_cache": f"{sequences} completions x {run.seq_len} tokens "
        f"({gen.prompt_length} prompt + {gen.completion_length} completion), {shape.layers} layers x "
        f"{shape.kv_heads} kv heads x {shape.head_dim}",
        "generation_logits": f"one decoding step: {sequences} x vocab {shape.vocab_size:,}, fp32",
        "generation_gathered_weights": "ZeRO-3 gathers the whole 16-bit policy to generate",
        "scoring_logits": f"reference log-probs, {setup.micro_batch} sequences, fp32, no gradients",
    }
