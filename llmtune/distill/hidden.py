"""The intermediate-layer term: MSE between chosen student hidden states and the teacher's, through a learned
linear projection where their widths differ (FitNets, Romero et al. 2015; Minitron's intermediate-state
loss). The projections are trained with the student, saved in every checkpoint (exact resume) and left out
of the saved student."""

from __future__ import annotations

import torch
from torch import nn

from llmtune.errors import LlmtuneError

PROJECTIONS_FILE = "distill_projections.safetensors"


def layer_mapping(setting, student_layers: int, teacher_layers: int) -> dict[int, int]:
    """{student hidden-state index: teacher hidden-state index} from the recipe's distill.hidden_layers
    (HF's hidden_states count: 0 = embeddings, i = after layer i)."""
    if setting == "uniform":
        return {i: round(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)}
    mapping = {int(k): int(v) for k, v in dict(setting).items()}
    for student, teacher in mapping.items():
        if student > student_layers or teacher > teacher_layers:
            raise LlmtuneError(
                f"distill.hidden_layers maps student layer {student} to teacher layer {teacher}, but the "
                f"student has {student_layers} layers and the teacher {teacher_layers} (indices count HF's "
                "hidden_states: 0 = embeddings, i = after layer i).",
                hint=f"Use indices up to {student_layers} (student) and {teacher_layers} (teacher), or "
                "distill.hidden_layers: uniform.",
            )
    return mapping


class HiddenStateLoss(nn.Module):
    """Sum over trained positions of the mean squared error per mapped layer pair, averaged over pairs.

    One bias-free linear map per pair projects the student's width to the teacher's, initialised to the
    identity where the widths agree on the shared dimensions (a pruned student starts where its teacher's
    kept layers were), and left out when the widths are equal."""

    def __init__(self, mapping: dict[int, int], student_width: int, teacher_width: int):
        super().__init__()
        self.mapping = dict(sorted(mapping.items()))
        self.projections = nn.ModuleDict()
        if student_width != teacher_width:
            for student, teacher in self.mapping.items():
                projection = nn.Linear(student_width, teacher_width, bias=False)
                with torch.no_grad():
                    projection.weight.zero_()
                    shared = min(student_width, teacher_width)
                    projection.weight[:shared, :shared] = torch.eye(shared)
                self.projections[f"{student}_to_{teacher}"] = projection

    def forward(self, student_states, teacher_states, mask: torch.Tensor) -> torch.Tensor:
        """`*_states`: HF's hidden_states tuples ([B, T, width] each); `mask` [B, T] the positions that count."""
        total = student_states[0].new_zeros((), dtype=torch.float32)
        for student, teacher in self.mapping.items():
            source = student_states[student][mask]
            key = f"{student}_to_{teacher}"
            if key in self.projections:
                projection = self.projections[key]
                source = projection(source.to(projection.weight.dtype))
            target = teacher_states[teacher][mask]
            total = total + (source.float() - target.float()).pow(2).mean(-1).sum()
        return total / len(self.mapping)
