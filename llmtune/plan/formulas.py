"""The published formulas the planner rests on, as functions of plain numbers, and the constants they use.

Sources are in the package docstring (llmtune/plan/__init__.py); tests/unit/test_plan.py checks each
against numbers from its paper.
"""

from __future__ import annotations

import re

from llmtune.errors import LlmtuneError

# What a process holds beside its tensors. GPU: the CUDA context (~0.5 GiB on recent drivers), cuBLAS and
# NCCL workspaces and caching-allocator slack. CPU: the growth in resident memory during training that
# is not tensors (autograd bookkeeping, the DataLoader, allocator slack).
GPU_OVERHEAD_BYTES = 1 << 30
CPU_OVERHEAD_BYTES = 256 << 20

# nf4 bits per weight: 4 + one absmax per block of 64 (fp32, or 8-bit with a second fp32 level per 256).
NF4_BITS = {True: 4 + 8 / 64 + 32 / (64 * 256), False: 4 + 32 / 64}

# deepspeed_configs/zero2.json: allgather_bucket_size 2e8 elements, 16-bit.
ZERO2_ALLGATHER_BUCKET = 200_000_000

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(text: str, what: str = "memory size") -> int:
    """Bytes in a size such as `24GiB`, `80GB`, `512MB`, `1.5T` or `1000000`; `what` names the value in
    messages (the flag it came from, e.g. --device-memory).

    KB/MB/GB/TB are decimal (10^9), KiB/MiB/GiB/TiB and the bare K/M/G/T binary (2^30), as `docker -m`
    reads them. A card sold as "24 GB" holds 24 GiB: write 24GiB for it.
    """
    given = str(text)
    shown = repr(given) if len(given) <= 40 else repr(given[:30]) + f"... ({len(given):,} chars)"
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", given)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise LlmtuneError(
            f"{what} {shown}: expected a number and a unit, e.g. 24GiB, 80GB, 512MB (GB = 10^9 bytes, "
            "GiB = 2^30 bytes)."
        )
    size = float(match.group(1)) * _UNITS[unit]
    # No device holds a zettabyte; a number that large is a typo (and float('1e400') is inf).
    if not size < _MAX_MEMORY:
        raise LlmtuneError(f"{what} {shown}: too large; give the memory of one device, e.g. 80GB.")
    if int(size) <= 0:
        raise LlmtuneError(f"{what} {shown}: must be more than 0 bytes, e.g. 24GiB.")
    return int(size)


_MAX_MEMORY = 2.0**70


def zero_model_states(
    psi: float,
    n: int,
    stage: int,
    *,
    weight_bytes: float = 2,
    grad_bytes: float = 2,
    optimizer_bytes: float = 12,
) -> dict[str, float]:
    """Per-device bytes of weights, gradients and optimizer states for `psi` trainable parameters on `n`
    devices under ZeRO `stage` 0 (plain data parallel) to 3. The defaults are the paper's mixed-precision
    Adam: stage 0 = 16Ψ, 1 = 4Ψ + 12Ψ/N, 2 = 2Ψ + 14Ψ/N, 3 = 16Ψ/N."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage {stage}: expected 0, 1, 2 or 3")
    return {
        "weights": weight_bytes * psi / (n if stage >= 3 else 1),
        "gradients": grad_bytes * psi / (n if stage >= 2 else 1),
        "optimizer": optimizer_bytes * psi / (n if stage >= 1 else 1),
    }


def activation_bytes(
    *,
    seq_len: int,
    micro_batch: int,
    hidden: int,
    heads: int,
    layers: int,
    bytes_per_value: int = 2,
    fused_attention: bool = True,
    checkpointing: bool = False,
) -> int:
    """Activations saved for the backward pass of `layers` transformer blocks (Korthikanti et al. 2022)."""
    s, b, h, a = seq_len, micro_batch, hidden, heads
    scale = bytes_per_value / 2  # the paper counts 16-bit values
    scores = 0 if fused_attention else 5 * a * s / h
    per_layer = s * b * h * (34 + scores) * scale
    if checkpointing:
        return int(layers * 2 * s * b * h * scale + per_layer)
    return int(layers * per_layer)


def logits_bytes(*, seq_len: int, micro_batch: int, vocab_size: int) -> int:
    """fp32 logits held twice: the upcast for the loss and the saved log-softmax."""
    return 2 * micro_batch * seq_len * vocab_size * 4


def kv_cache_bytes(*, layers: int, kv_heads: int, head_dim: int, bytes_per_value: int, tokens: int) -> int:
    """The KV cache of generation: a key and a value vector of kv_heads·head_dim values per layer for each
    of `tokens` tokens (summed over the batch), 2·L·kv_heads·d·bytes a token (grouped-query attention
    caches kv_heads, not attention_heads; Ainslie et al. 2023)."""
    return 2 * layers * kv_heads * head_dim * bytes_per_value * tokens
