"""Unstructured pruning: set single weights of the decoder layers' linear maps to zero, in place.

The checkpoint keeps its dense shapes; only the values change. Embeddings, the LM head, norms and biases
are left alone (the usual choice of magnitude pruning and Wanda: they are few and sensitive).
"""

from __future__ import annotations

import torch

from llmtune.errors import LlmtuneError
from llmtune.pruning.architecture import is_conv1d, layer_linears

METHODS = ("magnitude", "wanda")


def _zero_lowest(weight: torch.Tensor, score: torch.Tensor, fraction: float, *, per_row: bool) -> None:
    """Zero the entries of `weight` with the lowest `score` (same shape): the `fraction` of all entries,
    or of each row when per_row."""
    if per_row:
        k = round(fraction * score.shape[1])
        index = torch.topk(score, k, dim=1, largest=False).indices
        mask = torch.zeros_like(score, dtype=torch.bool).scatter_(1, index, True)
    else:
        k = round(fraction * score.numel())
        index = torch.topk(score.flatten(), k, largest=False).indices
        mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
        mask[index] = True
        mask = mask.view_as(score)
    weight.masked_fill_(mask, 0)


@torch.no_grad()
def sparsify(
    model, sparsity: float, *, method: str = "wanda", input_norms: dict[str, torch.Tensor] | None = None
) -> dict[str, float]:
    """Zero the `sparsity` fraction of every weight matrix inside the decoder layers, in place.

    magnitude: the smallest |W| of each matrix. wanda (Sun et al. 2023): the smallest |W_ij| * ||X_j|| of
    each output row, where ||X_j|| is the L2 norm of input feature j over the calibration tokens; pass
    those as `input_norms` (activation_statistics(..., input_norms=True).input_norms).
    Returns the measured fraction of exact zeros per module name, and over all of them under "total"."""
    if method not in METHODS:
        raise LlmtuneError(
            f"Unstructured pruning method '{method}' is unknown.",
            hint=f"Set method to one of {', '.join(METHODS)}.",
        )
    if not 0 < sparsity < 1:
        raise LlmtuneError(
            f"sparsity {sparsity} is outside (0, 1): it is the fraction of each matrix's weights set to zero.",
            hint="Set sparsity to a fraction such as 0.5 (half the weights).",
        )
    modules = layer_linears(model)
    if method == "wanda":
        missing = sorted(set(modules) - set(input_norms or {}))
        if missing:
            raise ValueError(f"wanda needs the input norms of every linear map; missing {missing[:3]}...")

    measured: dict[str, float] = {}
    zeros, total = 0, 0
    for name, module in modules.items():
        weight = module.weight
        # Rows are output features: nn.Linear stores [out, in], GPT-2's Conv1D [in, out].
        rows = weight.t() if is_conv1d(module) else weight
        if method == "magnitude":
            _zero_lowest(rows, rows.abs().float(), sparsity, per_row=False)
        else:
            norms = input_norms[name].to(device=weight.device, dtype=torch.float32)
            _zero_lowest(rows, rows.abs().float() * norms[None, :], sparsity, per_row=True)
        count = int((weight == 0).sum())
        measured[name] = count / weight.numel()
        zeros += count
        total += weight.numel()
    measured["total"] = zeros / total if total else 0.0
    return measured
