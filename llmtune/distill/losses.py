"""The distillation loss on logits, per token.

Written here, not taken from TRL: TRL's off-policy KD is GKDTrainer with lmbda=0, whose loss is the
divergence alone (no cross-entropy mixed in, no T^2 factor), on prompt/completion data only; llmtune's
distill also trains on raw text blocks and mixes in the data's cross-entropy, as Hinton et al. and
Minitron do. The generalized JSD follows TRL's `GKDTrainer.generalized_jsd_loss` term for term (the tests
check it equals TRL's on random logits), so a recipe's `beta` means what it means in TRL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """The divergence between the teacher's and the student's next-token distributions at `temperature`,
    one value per position: logits [..., vocab] -> [...]. Computed in float32.

    forward_kl: KL(teacher || student), mean-seeking (the student covers every mode of the teacher);
    reverse_kl: KL(student || teacher), mode-seeking; jsd: beta * KL(teacher || M) + (1 - beta) *
    KL(student || M) with M = beta * teacher + (1 - beta) * student (GKD, Agarwal et al. 2024, eq. 1).
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if divergence == "forward_kl":
        return (teacher.exp() * (teacher - student)).sum(-1)
    if divergence == "reverse_kl":
        return (student.exp() * (student - teacher)).sum(-1)
    if divergence == "jsd":
        mixture = torch.logsumexp(torch.stack([student + math.log1p(-beta), teacher + math.log(beta)]), dim=0)
        kl_teacher = (teacher.exp() * (teacher - mixture)).sum(-1)
        kl_student = (student.exp() * (student - mixture)).sum(-1)
        return beta * kl_teacher + (1 - beta) * kl_student
    raise ValueError(f"unknown divergence {divergence!r}")


def distillation_sums(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    divergence: str,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Sums over the trained positions of a causal LM batch (logits [B, T, V], labels [B, T] with -100 for
    positions without loss; the labels are shifted here, as the models do): `ce` (the student's cross-
    entropy on the data), `kd` (the divergence, without T^2), `teacher_ce`, and `tokens` (how many).
    The caller divides by the number of trained tokens (over gradient accumulation) and mixes:
    alpha * T^2 * kd + (1 - alpha) * ce."""
    targets = labels[:, 1:]
    mask = targets != -100
    student = student_logits[:, :-1][mask]
    teacher = teacher_logits[:, :-1][mask]
    picked = targets[mask]
    return {
        "ce": F.cross_entropy(student.float(), picked, reduction="sum"),
        "kd": token_divergence(
            student, teacher, temperature=temperature, divergence=divergence, beta=beta
        ).sum(),
        "teacher_ce": F.cross_entropy(teacher.float(), picked, reduction="sum").detach(),
        "tokens": mask.sum(),
    }


def mix(sums: dict[str, torch.Tensor], *, alpha: float, temperature: float, hidden_weight: float = 0.0):
    """alpha * T^2 * kd + (1 - alpha) * ce (+ hidden_weight * hidden), still summed over tokens. T^2 keeps
    the soft-target gradients on the same scale whatever T is (they shrink as 1/T^2; Hinton et al. 2015)."""
    total = alpha * temperature**2 * sums["kd"] + (1 - alpha) * sums["ce"]
    if "hidden" in sums:
        total = total + hidden_weight * sums["hidden"]
    return total
