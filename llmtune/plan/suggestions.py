"""Changes that make a run fit the device: a setting, the adapter, more GPUs or offload, each with its
new estimate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmtune.plan.memory import Run, Setup, memory_per_device
from llmtune.plan.shape import counted


@dataclass
class Suggestion:
    """One change that lowers memory, with the plan's estimate after it."""

    change: str
    settings: list[str]  # --set overrides or launch options that make the change
    total_bytes: int
    fits: bool


def suggest_changes(recipe, config, model, shape, setup: Setup, run: Run, budget: int) -> list[Suggestion]:
    """Changes that lower memory, each with its estimate. Those that fit come first, least disruptive
    first (a setting, then the method, then more GPUs); then the others, smallest first. When none fits
    alone, the first combination of them (in that order) that does is added. `model` is the meta model of
    `config`, which stays unchanged."""

    def total(s: Setup) -> int:
        return memory_per_device(shape, s, run)[0]["total"]

    def with_peft(method: str) -> Setup:
        section = recipe.peft.model_copy(update={"method": method})
        trainable, params, dropout = counted(config, recipe.model, section, model, run.command)
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
    distill = run.teacher is not None
    pretrained = recipe.model.from_config is None
    if pretrained and setup.peft_method in ("none", "freeze"):
        change = f"LoRA (r {recipe.peft.r}) instead of full training"
        candidates.append(("peft", change, ["--set peft.method=lora"], with_peft("lora")))
    qlora_ok = pretrained and not recipe.model.gguf_file and setup.peft_method != "qlora"
    if qlora_ok and run.target == "gpu":
        change = "QLoRA (LoRA on a 4-bit nf4 base)"
        candidates.append(("peft", change, ["--set peft.method=qlora"], with_peft("qlora")))
    if run.target == "gpu" and setup.strategy not in ("zero3", "zero3-offload"):
        # distill refuses ZeRO-3 and its offload (each process keeps a whole teacher): ZeRO-2 only.
        for stage in ("zero2",) if distill else ("zero2", "zero3"):
            if setup.strategy == stage:
                continue
            # The fewest GPUs that fit (at least 2: ZeRO shards nothing on one).
            counts = sorted({max(setup.nproc, 2), *(k for k in (4, 8, 16, 32, 64) if k > setup.nproc)})
            trials = [dataclasses.replace(setup, strategy=stage, nproc=n) for n in counts]
            # Where none fits, the most GPUs tried: "still too big over 64" says sharding is not the cure.
            trial = next((t for t in trials if total(t) <= budget), trials[-1])
            change = f"DeepSpeed ZeRO-{stage[-1]} over {trial.nproc} GPUs"
            candidates.append(("strategy", change, [f"--strategy {stage}", f"--nproc {trial.nproc}"], trial))
    if run.target == "gpu" and setup.strategy != "zero3-offload" and not distill:
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
