"""The plan as text: what `llmtune plan` prints, and the assumptions listed under it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtune.plan.formulas import GPU_OVERHEAD_BYTES
from llmtune.plan.memory import Run, Setup

if TYPE_CHECKING:  # planner.py imports this module to build a Plan
    from llmtune.plan.planner import Plan


def assumptions(run: Run, setup: Setup) -> list[str]:
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


def render_plan(plan: Plan) -> str:
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
