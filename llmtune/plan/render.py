"""The plan as text: what `llmtune plan` prints, and the assumptions listed under it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtune.plan.formulas import GPU_OVERHEAD_BYTES
from llmtune.plan.memory import PHASE_PARTS, Run, Setup

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
    if run.command == "reward":
        notes.append(
            "reward: AutoModelForSequenceClassification (num_labels=1): the LM head is replaced by a score "
            "head (hidden x 1) trained in full, under an adapter too; each pair is 2 sequences (chosen + "
            "rejected) of data.max_length tokens; no vocabulary logits, no reference model"
        )
    gen = run.generation
    if gen is not None:
        notes.extend(_rl_assumptions(run, setup))
    if run.teacher is not None:
        notes.extend(_distill_assumptions(run))
    return notes


def _distill_assumptions(run: Run) -> list[str]:
    teacher = run.teacher
    student = "pretrain (text blocks)" if teacher.data == "text" else "sft (chat rows)"
    return [
        f"distill: the student is planned as {student} would plan it; gradient checkpointing is off unless "
        "train.gradient_checkpointing sets it (the distill stage's default, chat data too)",
        f"the teacher is loaded in teacher.dtype ({teacher.weight_dtype}) and kept whole on every process "
        "(neither DDP nor DeepSpeed wraps it); each micro-batch runs it forward without gradients on the "
        "student's batch: one layer's working set at a time, its logits"
        + (", and all its hidden states (distill.hidden_layers)" if teacher.hidden_pairs else ""),
        f"the {teacher.divergence} loss takes log-softmax of both models' logits in fp32 at temperature "
        f"{teacher.temperature:g}: its fp32 [B·T, V] tensors at the peak were measured on the loss's own "
        "code; the teacher's forward and the loss are counted as if at once (an upper bound by one teacher "
        "layer's working set)",
    ]


def _rl_assumptions(run: Run, setup: Setup) -> list[str]:
    gen = run.generation
    sequences = gen.sequences_per_device(setup.micro_batch, setup.accumulation, setup.nproc)
    notes = [
        f"{run.command}: the training step and generation run one after the other, so the total counts the "
        "larger of them (train step: activations + logits; generation: KV cache + one step's logits) on top "
        "of weights, gradients and optimizer",
        f"training step: {setup.micro_batch} completions of {run.seq_len} tokens (data.max_prompt_length "
        f"{gen.prompt_length} + max_completion_length {gen.completion_length}); the log-prob logits are "
        "counted as b·s·V fp32 twice, an upper bound: TRL 1.16 computes the selective log-softmax with a "
        "tiled fused LM head",
        f"generation: {sequences} completions a process at once (per_device_train_batch_size x "
        "steps_per_generation, or generation_batch_size / processes); the KV cache is "
        "2·layers·kv_heads·head_dim·bytes per token at full prompt + completion length; prefill "
        "activations are not counted",
        f"num_generations {gen.num_generations} sets how many of those completions share a prompt, not "
        "their number: memory does not change with it",
    ]
    global_batch = sequences * setup.nproc
    if global_batch % gen.num_generations:
        notes.append(
            f"TRL will refuse this run: the generation batch ({global_batch} over {setup.nproc} "
            f"process(es)) is not a multiple of num_generations {gen.num_generations}"
        )
    if gen.beta == 0:
        notes.append("beta 0: no reference model (TRL loads none)")
    elif run.reference_copy:
        notes.append(
            f"beta {gen.beta:g} with full training: a frozen copy of the model is the reference (weights, "
            "and a forward without gradients when completions are scored)"
        )
    else:
        notes.append(
            f"beta {gen.beta:g} under {setup.peft_method}: the reference is the model with the adapter off"
        )
    if gen.use_vllm:
        notes.append(
            "use_vllm: completions are sampled by vLLM, whose memory (its weights and KV cache; colocate "
            "mode takes vllm_gpu_memory_utilization of each GPU) is outside this estimate"
        )
    return notes


_PHASE_LABELS = {"train_step": "train step", "generation": "generation", "scoring": "scoring (reference)"}


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


def _teacher_lines(t: dict) -> list[str]:
    """distill: the frozen teacher under the student's lines, and the loss it feeds."""
    hidden = (
        f", hidden-state MSE on {t['hidden_layer_pairs']} layer pair(s)" if t["hidden_layer_pairs"] else ""
    )
    return [
        f"  teacher   {t['name']} ({t['source']}, {t['architecture']}): {t['parameters']:,} parameters "
        f"({_count(t['parameters'])}), frozen, {t['weight_dtype']}",
        f"            {t['layers']} layers, hidden {t['hidden_size']}, vocab {t['vocab_size']:,}; loss "
        f"{t['alpha']:g} x {t['divergence']} at T {t['temperature']:g} + {1 - t['alpha']:g} x cross-entropy"
        f"{hidden}",
    ]


def render_plan(plan: Plan) -> str:
    m, t, th = plan.model, plan.training, plan.throughput
    lines = [f"plan: {plan.recipe} ({plan.command})"]
    label = "student" if plan.teacher else "model"  # distill: the model trained is the student
    lines.append(
        f"  {label:<9} {m['name']} ({m['source']}, {m['architecture']}): {m['parameters']:,} parameters "
        f"({_count(m['parameters'])}){', tied embeddings' if m['tied_embeddings'] else ''}"
    )
    lines.append(
        f"            {m['layers']} layers, hidden {m['hidden_size']}, {m['attention_heads']} heads, "
        f"vocab {m['vocab_size']:,}, {m['attention']} attention"
    )
    if plan.teacher:
        lines.extend(_teacher_lines(plan.teacher))
    share = 100 * m["trainable_parameters"] / max(m["parameters_with_adapter"], 1)
    precision = f"{t['weight_dtype']} weights" + (", bf16/fp16 autocast" if t["mixed_precision"] else "")
    lines.append(
        f"  training  peft {t['peft']}: {m['trainable_parameters']:,} trainable ({share:.2f}%); {precision}; "
        f"{t['strategy']} x {t['nproc']} ({t['target']})"
    )
    seqs = "x 2 (chosen + rejected) " if t["sequences_per_example"] == 2 else ""
    if "num_generations" in t:
        seqs = "completions "
    lines.append(
        f"  batch     micro-batch {t['micro_batch']} {seqs}x {t['sequence_length']} tokens, accumulation "
        f"{t['gradient_accumulation_steps']}, {t['nproc']} process(es) -> {th['tokens_per_step']:,} tokens "
        f"per optimizer step, ~{th['flops_per_step'] / 1e12:,.1f} TFLOP"
    )
    if "num_generations" in t:
        lines.append(
            f"  sampling  {t['generation_sequences_per_device']} completions per process at once, "
            f"{t['num_generations']} per prompt, prompt {t['max_prompt_length']} + completion "
            f"{t['max_completion_length']} tokens; beta {t['beta']:g}" + (", vLLM" if t["use_vllm"] else "")
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
    in_phase = {k for p in plan.phases.values() for k in p["parts"]}

    def part(key: str, indent: str = "    ") -> None:
        value = plan.memory[key]
        if value or key in ("weights", "gradients", "optimizer"):
            name = key.replace("_", " ")
            lines.append(
                f"{indent}{name:<{width + 4 - len(indent)}} {_size(value):>11}  {plan.memory_notes.get(key, '')}"
            )

    for key in plan.memory:
        if key != "total" and key not in in_phase:
            part(key)
    for phase, facts in plan.phases.items():
        when = "the peak: counted in the total" if phase == plan.peak_phase else "not at the same time"
        lines.append(f"    {_PHASE_LABELS[phase]:<{width}} {_size(facts['bytes']):>11}  {when}")
        for key in PHASE_PARTS[phase]:
            if key in plan.memory:
                part(key, "      ")
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
