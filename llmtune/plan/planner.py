"""`estimate()`: check the launch options, read the model and the recipe, and tie the memory, throughput
and suggestions into one Plan."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llmtune.errors import LlmtuneError
from llmtune.plan.memory import (
    DISTILL_REFUSED_STRATEGIES,
    PHASE_PARTS,
    Setup,
    memory_per_device,
    phase_totals,
    plan_dtype,
    recipe_command,
    run_facts,
)
from llmtune.plan.render import assumptions, render_plan
from llmtune.plan.shape import ModelShape, counted, meta_model, model_config, model_shape, reward_shape
from llmtune.plan.suggestions import Suggestion, suggest_changes
from llmtune.plan.teacher import Teacher, hidden_pairs
from llmtune.plan.throughput import throughput_summary

STRATEGIES = ("single", "ddp", "fsdp", "zero2", "zero3", "zero3-offload")
TARGETS = ("gpu", "cpu")


@dataclass
class Plan:
    """The estimate for one recipe; `render()` prints it, `to_dict()` is the JSON form."""

    recipe: str
    command: str
    model: dict[str, Any]
    training: dict[str, Any]
    memory: dict[str, int]  # per device; the parts sum to memory["total"] (grpo/rloo: see phases)
    memory_notes: dict[str, str]  # what each part assumes, for render()
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    cpu_offload_bytes: int  # host RAM for zero3-offload (per node), else 0
    device_memory_bytes: int | None
    fits: bool | None
    throughput: dict[str, Any]
    suggestions: list[Suggestion] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    # grpo/rloo: the phases of a step that never overlap, each {"parts": [memory keys], "bytes": n};
    # memory["total"] counts the largest (peak_phase) on top of the parts in no phase. Empty otherwise.
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    peak_phase: str | None = None
    # distill: the frozen teacher (its shape and dtype) and the loss settings; empty otherwise. `model`
    # is the student.
    teacher: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def render(self) -> str:
        return render_plan(self)


def estimate(
    recipe,
    *,
    device_memory_bytes: int | None = None,
    nproc: int = 1,
    strategy: str = "single",
    gradient_checkpointing: bool | None = None,
    target: str = "gpu",
) -> Plan:
    """Plan `recipe` (a loaded pretrain, sft, dpo, reward, grpo, rloo or distill recipe) without loading
    weights. A distill recipe's student is planned as pretrain (text) or sft (chat) would plan it, plus the
    frozen teacher and the distillation loss.

    device_memory_bytes: memory of one device to check the plan against; default the first CUDA GPU's
        when `target` is gpu and one is present, else none (the plan is only reported).
    nproc: processes (devices) sharing the run; strategy: single, ddp, fsdp, zero2, zero3, zero3-offload.
    gradient_checkpointing: override the recipe (TRL's trainers default to on; pretrain off).
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

    command = recipe_command(recipe)
    if command == "distill" and strategy in DISTILL_REFUSED_STRATEGIES:
        raise LlmtuneError(
            f"strategy {strategy}: distill keeps a whole teacher on every process and refuses "
            f"{', '.join(DISTILL_REFUSED_STRATEGIES)}; plan it with single, ddp or zero2."
        )
    train = recipe.train.trainer_kwargs()
    config, name, source = model_config(recipe.model)
    model = meta_model(config, recipe.model)
    shape = model_shape(model, config, recipe.model, name, source)
    trainable, peft_params, dropout_features = counted(config, recipe.model, recipe.peft, model, command)
    if command == "reward":
        shape = reward_shape(shape)
    teacher = _teacher(recipe, target, shape) if command == "distill" else None
    run = run_facts(recipe, command, train, target, teacher)
    checkpointing = gradient_checkpointing
    if checkpointing is None:
        # TRL's trainers default to on; pretrain's and distill's stages (text or chat) to off.
        checkpointing = bool(train.get("gradient_checkpointing", command not in ("pretrain", "distill")))
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
    memory, notes, cpu_bytes = memory_per_device(shape, setup, run)
    phase_bytes = phase_totals(memory, run)
    if device_memory_bytes is None and target == "gpu":
        device_memory_bytes = _detected_gpu_memory()
    fits = None if device_memory_bytes is None else memory["total"] <= device_memory_bytes
    suggestions = []
    if fits is False:
        suggestions = suggest_changes(recipe, config, model, shape, setup, run, device_memory_bytes)

    other = dataclasses.replace(setup, gradient_checkpointing=not checkpointing)
    other_activations = memory_per_device(shape, other, run)[0]["activations"]
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
            **_generation_facts(run, setup),
        },
        memory=memory,
        memory_notes=notes,
        activations_without_checkpointing=without_ckpt,
        activations_with_checkpointing=with_ckpt,
        cpu_offload_bytes=cpu_bytes,
        device_memory_bytes=device_memory_bytes,
        fits=fits,
        throughput=throughput_summary(recipe, train, shape, setup, run),
        suggestions=suggestions,
        assumptions=assumptions(run, setup),
        phases={
            phase: {"parts": list(PHASE_PARTS[phase]), "bytes": value} for phase, value in phase_bytes.items()
        },
        peak_phase=max(phase_bytes, key=phase_bytes.get) if phase_bytes else None,
        teacher=_teacher_facts(teacher),
    )


def _teacher(recipe, target: str, student: ModelShape) -> Teacher:
    """distill: the teacher's shape, read as the student's is (config only, meta device), in the dtype the
    stage loads it with (the teacher section's own)."""
    section = recipe.teacher
    config, name, source = model_config(section)
    shape = model_shape(meta_model(config, section), config, section, name, source)
    dtype, weight_bytes = plan_dtype(section.dtype, target)
    settings = recipe.distill
    return Teacher(
        shape=shape,
        weight_dtype=dtype,
        weight_bytes=weight_bytes,
        data=settings.data,
        divergence=settings.divergence,
        temperature=settings.temperature,
        alpha=settings.alpha,
        hidden_pairs=hidden_pairs(settings.hidden_layers, student.layers),
    )


def _teacher_facts(teacher: Teacher | None) -> dict[str, Any]:
    if teacher is None:
        return {}
    return {
        **dataclasses.asdict(teacher.shape),
        "weight_dtype": teacher.weight_dtype,
        "data": teacher.data,
        "divergence": teacher.divergence,
        "temperature": teacher.temperature,
        "alpha": teacher.alpha,
        "hidden_layer_pairs": teacher.hidden_pairs,
    }


def _generation_facts(run, setup: Setup) -> dict[str, Any]:
    """grpo/rloo: the sampling settings the estimate used (TRL's defaults where the recipe is silent)."""
    gen = run.generation
    if gen is None:
        return {}
    return {
        "max_prompt_length": gen.prompt_length,
        "max_completion_length": gen.completion_length,
        "num_generations": gen.num_generations,
        "generation_sequences_per_device": gen.sequences_per_device(
            setup.micro_batch, setup.accumulation, setup.nproc
        ),
        "num_iterations": gen.num_iterations,
        "beta": gen.beta,
        "use_vllm": gen.use_vllm,
    }


def _detected_gpu_memory() -> int | None:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return None
