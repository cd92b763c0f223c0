"""distill: what the frozen teacher and the distillation loss add to the student's memory (the student is
planned as pretrain or sft would plan it).

The distill stage (llmtune/stages/distill.py, llmtune/distill/trainer.py) loads the teacher in its own
model section's dtype and moves it whole to every process: DDP and DeepSpeed wrap only the student, so the
teacher is never sharded, never cast, and runs outside the student's autocast. Each micro-batch it runs a
forward without gradients on the student's batch; then the loss compares both models' logits in fp32."""

from __future__ import annotations

from dataclasses import dataclass

from llmtune.plan.formulas import activation_bytes
from llmtune.plan.shape import ModelShape

# fp32 [B·T, V] tensors the loss holds at its peak (llmtune/distill/losses.py), measured as the peak RSS of
# distillation_sums + backward over the inputs on CPU, where freed blocks go back at once. forward_kl:
# the data's cross-entropy keeps its log-softmax (1), then both models' log-softmax at T (2), the
# teacher's exp (1), the difference and the product being summed (2) = 6; reverse_kl keeps the student's
# exp and the difference instead: 6 too. jsd adds the stacked pair, the log-sum-exp mixture and a second
# KL: 12 (the backward's peak). On top of these, the masked copies of both models' logits in their own
# dtypes. Two of the fp32 tensors are already in the student's "logits" part (the cross-entropy's upcast
# and log-softmax, as for pretrain), so the loss adds the rest.
LOSS_FP32_TENSORS = {"forward_kl": 6, "reverse_kl": 6, "jsd": 12}
STUDENT_LOGIT_TENSORS = 2  # what logits_bytes already counts for the student

ADAMW_FP32_BYTES = 16  # fp32 weight, gradient and two moments: the hidden-state projections


@dataclass(frozen=True)
class Teacher:
    """The frozen teacher of a distill run and the loss settings that size its memory."""

    shape: ModelShape
    weight_dtype: str  # float32, bfloat16 or float16: the teacher section's dtype as the stage loads it
    weight_bytes: int
    data: str  # text (blocks of data.block_size, pretrain's pipeline) or chat (sft's)
    divergence: str  # forward_kl, reverse_kl or jsd
    temperature: float
    alpha: float
    hidden_pairs: int  # (student, teacher) layer pairs of the hidden-state loss; 0 without it


def hidden_pairs(setting, student_layers: int) -> int:
    """Pairs of distill.hidden_layers (llmtune.distill.hidden.layer_mapping): uniform maps every student
    layer, a mapping its entries, null none."""
    if setting is None:
        return 0
    return student_layers if setting == "uniform" else len(setting)


def teacher_parts(
    teacher: Teacher, student: ModelShape, *, sequences: int, seq_len: int, student_logit_bytes: int
) -> dict[str, float]:
    """Bytes per device the teacher and the loss add: its weights, one forward without gradients, and the
    loss's logit tensors (the teacher's forward and the loss run one after the other; counting them as if
    at once overstates by one teacher layer's working set, small beside the logits)."""
    t, tokens = teacher.shape, sequences * seq_len
    b = teacher.weight_bytes
    # Under no_grad nothing is saved for a backward: one layer's tensors are alive at a time, at most what
    # that layer would save for one (Korthikanti's per-layer count, in the teacher's dtype).
    layer = activation_bytes(
        seq_len=seq_len,
        micro_batch=sequences,
        hidden=t.hidden_size,
        heads=t.attention_heads,
        layers=1,
        bytes_per_value=b,
        fused_attention=t.attention != "eager",
    )
    # output_hidden_states keeps the embeddings' output and every layer's (HF's L + 1 hidden states).
    # The student's are the inputs its backward keeps anyway (or its checkpoints): nothing extra.
    states = (t.layers + 1) * tokens * t.hidden_size * b if teacher.hidden_pairs else 0
    # The loss slices both models' logits to the tokenizer's ids, which both embeddings hold.
    vocab = min(student.vocab_size, t.vocab_size)
    extra = LOSS_FP32_TENSORS[teacher.divergence] - STUDENT_LOGIT_TENSORS
    loss = extra * tokens * vocab * 4 + tokens * vocab * (student_logit_bytes + b)
    parts = {
        "teacher_weights": t.parameters * b,
        "teacher_activations": layer + states,
        "teacher_logits": tokens * t.vocab_size * b,
        "distillation_logits": loss,
    }
    if teacher.hidden_pairs:
        parts["hidden_state_loss"] = _hidden_loss_bytes(teacher, student, tokens)
    return parts


def _hidden_loss_bytes(teacher: Teacher, student: ModelShape, tokens: int) -> float:
    """The intermediate-layer MSE (llmtune/distill/hidden.py): per pair a Linear(student width -> teacher
    width) trained in fp32 with AdamW when the widths differ, and what autograd keeps for the backward:
    the difference squared (fp32, teacher width) and the projection's fp32 input."""
    sw, tw = student.hidden_size, teacher.shape.hidden_size
    projected = sw != tw
    per_pair = tokens * (tw + (sw if projected else 0)) * 4
    if projected:
        per_pair += sw * tw * ADAMW_FP32_BYTES
    return teacher.hidden_pairs * per_pair


def teacher_notes(teacher: Teacher, student: ModelShape, *, sequences: int, seq_len: int) -> dict[str, str]:
    t = teacher.shape
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[teacher.weight_dtype]
    vocab = min(student.vocab_size, t.vocab_size)
    states = f" + its {t.layers + 1} hidden states" if teacher.hidden_pairs else ""
    tensors = LOSS_FP32_TENSORS[teacher.divergence]
    projected = student.hidden_size != t.hidden_size
    return {
        "teacher_weights": f"frozen {t.parameters / 1e6:,.1f} M params, {dtype}, whole on every process",
        "teacher_activations": f"no gradients: one layer at a time{states}, {dtype}",
        "teacher_logits": f"{sequences} x {seq_len} tokens x vocab {t.vocab_size:,}, {dtype}",
        "distillation_logits": f"{teacher.divergence}: {tensors} fp32 [B·T, V={vocab:,}] at the peak "
        f"({STUDENT_LOGIT_TENSORS} counted in logits) + both models' masked logits",
        "hidden_state_loss": f"{teacher.hidden_pairs} layer pair(s)"
        + (f", Linear({student.hidden_size} -> {t.hidden_size}) each + AdamW" if projected else "")
        + ", fp32 differences kept for the backward",
    }
