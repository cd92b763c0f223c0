"""Structural pruning: choose what to remove from importance scores, and build the smaller model.

Depth: whole decoder layers (ShortGPT). Width (Minitron): MLP channels and attention heads, the same number
in every layer because HF configs have one size for all layers. Each prune_* / drop_* function returns a
new model (see rebuild.py); the model passed in is left unchanged.
"""

from __future__ import annotations

import copy
import math

import torch

from llmtune.errors import LlmtuneError
from llmtune.pruning.architecture import family, layer_prefix, sizes
from llmtune.pruning.rebuild import rebuild

# Config fields holding one entry per decoder layer; a depth-pruned config keeps the kept layers' entries.
PER_LAYER_CONFIG_LISTS = ("layer_types",)


def _check_finite(scores, what: str) -> None:
    bad = [i for i, score in enumerate(scores) if not math.isfinite(float(score))]
    if bad:
        raise LlmtuneError(
            f"The {what} of layer(s) {bad} are not finite numbers, so they cannot be ranked.",
            hint="The model produces inf/NaN on the calibration text: load it in float32 or bfloat16 "
            "instead of float16, and check the calibration data.",
        )


def _split_key(key: str, prefix: str) -> tuple[int, str] | None:
    """(layer index, rest of the key) for a key under the decoder layers, else None."""
    if not key.startswith(prefix):
        return None
    index, rest = key[len(prefix) :].split(".", 1)
    return int(index), rest


# ------------------------------------------------------------------------------------------- depth
def layers_to_remove(scores: list[float], *, keep: int) -> list[int]:
    """The indices of the `len(scores) - keep` layers with the lowest scores, ascending.

    Pass one importance score per layer (block influence, or the loss increase when the layer is
    skipped) and how many layers stay. Equal scores remove the later layer first: deeper layers are the
    more redundant ones in the depth-pruning literature (ShortGPT; Gromov et al. 2024), and this keeps the
    choice deterministic."""
    n = len(scores)
    if not 1 <= keep <= n:
        raise LlmtuneError(
            f"keep_layers {keep} is outside 1..{n}: the model has {n} decoder layers.",
            hint=f"Set keep_layers to a number of layers to keep between 1 and {n}.",
        )
    _check_finite(scores, "scores")
    order = sorted(range(n), key=lambda i: (float(scores[i]), -i))
    return sorted(order[: n - keep])


def drop_layers(model, remove: list[int]):
    """A new model without the decoder layers `remove` (0-based indices); the others keep their order.

    The config's layer count and per-layer lists (layer_types, Qwen2's max_window_layers) follow."""
    config = model.config
    kind = family(config)
    n = sizes(config)["layers"]
    remove = [int(i) for i in remove]
    outside = [i for i in remove if not 0 <= i < n]
    if outside:
        raise LlmtuneError(
            f"remove_layers {remove} names layer(s) {outside} that do not exist: the model has {n} decoder "
            f"layers, numbered 0..{n - 1}.",
            hint=f"List layer indices between 0 and {n - 1}.",
        )
    if len(set(remove)) != len(remove):
        raise LlmtuneError(
            f"remove_layers {remove} names a layer more than once.", hint="List each layer once."
        )
    if len(remove) >= n:
        raise LlmtuneError(
            f"remove_layers {remove} would remove all {n} decoder layers.",
            hint="Keep at least one layer.",
        )
    if kind == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        # The attention of layer i is scaled by 1/(i+1): renumbering the kept layers would silently change
        # what they compute.
        raise LlmtuneError(
            "This GPT-2 config has scale_attn_by_inverse_layer_idx: true, which scales each layer's attention "
            "by its position, so removing layers would change what the layers after them compute.",
            hint="Use width pruning (intermediate_size) or unstructured pruning for this model.",
        )
    kept = [i for i in range(n) if i not in set(remove)]
    new_index = {old: new for new, old in enumerate(kept)}

    prefix = layer_prefix(model)
    state = {}
    for key, tensor in model.state_dict().items():
        split = _split_key(key, prefix)
        if split is None:
            state[key] = tensor
        elif split[0] in new_index:
            state[f"{prefix}{new_index[split[0]]}.{split[1]}"] = tensor

    new_config = copy.deepcopy(config)
    if kind == "gpt2":
        new_config.n_layer = len(kept)
    else:
        new_config.num_hidden_layers = len(kept)
    for name in PER_LAYER_CONFIG_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == n:
            setattr(new_config, name, [values[i] for i in kept])
    window_layers = getattr(config, "max_window_layers", None)
    if isinstance(window_layers, int):
        # Qwen2: layers numbered >= max_window_layers use sliding-window attention; count the kept ones below.
        new_config.max_window_layers = sum(1 for i in kept if i < window_layers)
    return rebuild(model, new_config, state)


# ------------------------------------------------------------------------------------------- width
def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the k largest scores (equal scores keep the lower index: stable sort)."""
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
    return order[:k].sort().values


def channels_to_keep(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Per layer, the sorted indices of the `keep` MLP channels with the largest scores.

    Pass one score tensor [intermediate_size] per layer (activation_statistics().mlp_channels)."""
    if not scores:
        raise ValueError("channels_to_keep needs one score tensor per layer, got none")
    size = len(scores[0])
    if not 1 <= keep <= size:
        raise LlmtuneError(
            f"intermediate_size {keep} is outside 1..{size}: the model's MLPs have {size} channels.",
            hint=f"Set intermediate_size to the channels to keep, between 1 and {size}.",
        )
    return [_top(layer_scores, keep) for layer_scores in scores]


def _check_layer_count(model, keep: list, what: str) -> int:
    n = sizes(model.config)["layers"]
    if len(keep) != n:
        raise ValueError(f"{what} has {len(keep)} entries for a model with {n} layers")
    return n


def _check_indices(index: torch.Tensor, size: int, what: str) -> torch.Tensor:
    index = torch.as_tensor(index, dtype=torch.long).cpu()
    if (
        index.numel() == 0
        or index.min() < 0
        or index.max() >= size
        or index.unique().numel() != index.numel()
    ):
        raise ValueError(f"{what} must be distinct indices in 0..{size - 1}, got {index.tolist()}")
    return index


def prune_mlp(model, keep: list[torch.Tensor]):
    """A new model whose MLPs keep, in layer i, the channels `keep[i]` (one index tensor per layer, all of
    the same length, which becomes the new intermediate_size; see channels_to_keep)."""
    config = model.config
    kind = family(config)
    _check_layer_count(model, keep, "keep")
    size = sizes(config)["intermediate_size"]
    keep = [_check_indices(index, size, f"keep[{i}]") for i, index in enumerate(keep)]
    new_size = len(keep[0])
    if any(len(index) != new_size for index in keep):
        raise ValueError(f"every layer must keep the same number of channels, got {[len(k) for k in keep]}")

    # (module path in the layer, dimension of the weight/bias that runs over the channels)
    if kind == "gpt2":
        # Conv1D weights are [in, out]: c_fc's output channels are columns, c_proj's input channels rows.
        sliced = {"mlp.c_fc.weight": 1, "mlp.c_fc.bias": 0, "mlp.c_proj.weight": 0}
    else:
        sliced = {
            "mlp.gate_proj.weight": 0,
            "mlp.gate_proj.bias": 0,
            "mlp.up_proj.weight": 0,
            "mlp.up_proj.bias": 0,
            "mlp.down_proj.weight": 1,
        }
    prefix = layer_prefix(model)
    state = {}
    for key, tensor in model.state_dict().items():
        split = _split_key(key, prefix)
        if split is not None and split[1] in sliced:
            tensor = tensor.index_select(sliced[split[1]], keep[split[0]].to(tensor.device))
        state[key] = tensor

    new_config = copy.deepcopy(config)
    if kind == "gpt2":
        new_config.n_inner = new_size
    else:
        new_config.intermediate_size = new_size
    return rebuild(model, new_config, state)


def _gpt2_heads_error() -> LlmtuneError:
    return LlmtuneError(
        "Attention heads cannot be pruned in a GPT-2 model: HF's GPT-2 derives the head size from "
        "n_embd / n_head and splits c_attn at n_embd, so a model with fewer heads of the same size cannot "
        "be described by its config.",
        hint="Use depth pruning (keep_layers) or MLP width pruning (intermediate_size) for GPT-2.",
    )


def heads_to_keep(
    scores: list[torch.Tensor], config, *, attention_heads: int, kv_heads: int | None = None
) -> list[torch.Tensor]:
    """Per layer, the sorted indices of the query heads kept, respecting grouped-query attention.

    Pass one score tensor [num_attention_heads] per layer (activation_statistics().heads), the model
    config, the query heads to keep and optionally the key/value heads to keep. Query head h belongs to
    key/value group h // (heads / groups). With kv_heads below the current number of groups, the groups
    with the lowest summed score go first; then every kept group keeps its attention_heads / kv_heads
    highest-scoring query heads, so that each key/value head serves equally many query heads."""
    if family(config) == "gpt2":
        raise _gpt2_heads_error()
    shape = sizes(config)
    heads, groups = shape["attention_heads"], shape["kv_heads"]
    per_group = heads // groups
    kv = groups if kv_heads is None else kv_heads
    if not 1 <= kv <= groups:
        raise LlmtuneError(
            f"kv_heads {kv_heads} is outside 1..{groups}: the model has {groups} key/value heads.",
            hint=f"Set kv_heads between 1 and {groups}, or leave it out to keep all {groups}.",
        )
    valid = [kv * n for n in range(1, per_group + 1)]
    if attention_heads not in valid:
        kept_kv = f"kv_heads {kv}" if kv_heads is not None else f"all {groups} key/value heads kept"
        raise LlmtuneError(
            f"attention_heads {attention_heads} does not fit the model's grouped-query attention: it has "
            f"{heads} query heads in {groups} key/value groups of {per_group}, and with {kept_kv} every "
            f"kept group must keep the same number of query heads (at most {per_group}).",
            hint=f"Set attention_heads to one of {valid}"
            + ("" if kv_heads is not None or groups == 1 else ", or lower kv_heads as well")
            + ".",
        )
    per_kept_group = attention_heads // kv
    kept = []
    for layer_scores in scores:
        layer_scores = layer_scores.detach().float().cpu()
        if layer_scores.numel() != heads:
            raise ValueError(f"expected {heads} head scores per layer, got {layer_scores.numel()}")
        by_group = layer_scores.view(groups, per_group)
        chosen = []
        for group in _top(by_group.sum(dim=1), kv).tolist():
            chosen.append(_top(by_group[group], per_kept_group) + group * per_group)
        kept.append(torch.cat(chosen).sort().values)
    return kept


def prune_heads(model, keep_heads: list[torch.Tensor]):
    """A new model whose attention keeps, in layer i, the query heads `keep_heads[i]` (see heads_to_keep)
    and the key/value heads of their groups. Every layer must keep the same numbers of query heads and
    of key/value groups, with the same number of query heads in each kept group."""
    config = model.config
    if family(config) == "gpt2":
        raise _gpt2_heads_error()
    _check_layer_count(model, keep_heads, "keep_heads")
    shape = sizes(config)
    heads, groups, head_dim = shape["attention_heads"], shape["kv_heads"], shape["head_dim"]
    per_group = heads // groups

    rows_q, rows_kv, counts = [], [], set()
    offsets = torch.arange(head_dim)
    for i, index in enumerate(keep_heads):
        index = _check_indices(index, heads, f"keep_heads[{i}]").sort().values
        kept_groups, per_kept = torch.unique(index // per_group, return_counts=True)
        if per_kept.unique().numel() != 1:
            raise ValueError(f"layer {i} keeps unequal numbers of query heads per key/value group: {index}")
        counts.add((len(index), len(kept_groups)))
        # Heads sorted ascending come grouped by key/value group, so new head j belongs to new group
        # j // (heads kept per group), as the pruned model will compute.
        rows_q.append((index[:, None] * head_dim + offsets).flatten())
        rows_kv.append((kept_groups[:, None] * head_dim + offsets).flatten())
    if len(counts) != 1:
        raise ValueError(f"every layer must keep the same numbers of (query heads, kv heads), got {counts}")
    (new_heads, new_groups) = counts.pop()

    # Projection weights are [out, in]: q/k/v produce the heads (rows), o_proj consumes them (columns).
    sliced = {
        "self_attn.q_proj.weight": (0, rows_q),
        "self_attn.q_proj.bias": (0, rows_q),
        "self_attn.k_proj.weight": (0, rows_kv),
        "self_attn.k_proj.bias": (0, rows_kv),
        "self_attn.v_proj.weight": (0, rows_kv),
        "self_attn.v_proj.bias": (0, rows_kv),
        "self_attn.o_proj.weight": (1, rows_q),
    }
    prefix = layer_prefix(model)
    state = {}
    for key, tensor in model.state_dict().items():
        split = _split_key(key, prefix)
        if split is not None and split[1] in sliced:
            dim, rows = sliced[split[1]]
            tensor = tensor.index_select(dim, rows[split[0]].to(tensor.device))
        state[key] = tensor

    new_config = copy.deepcopy(config)
    new_config.num_attention_heads = new_heads
    new_config.num_key_value_heads = new_groups
    # Set explicitly: without it the models derive head_dim as hidden_size / num_attention_heads.
    new_config.head_dim = head_dim
    return rebuild(model, new_config, state)
