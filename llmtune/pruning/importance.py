"""How much each layer, MLP channel, attention head and input feature matters, measured on calibration text.

Every function takes `batches`: a list of dicts with `input_ids` (LongTensor [B, T]) and optionally
`attention_mask` ([B, T], 1 = real token). Tokens where the mask is 0 are left out of every average. The
model runs in eval mode without gradients (its training flag is restored afterwards).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmtune.errors import LlmtuneError
from llmtune.pruning.architecture import attention_out, decoder_layers, layer_linears, mlp_down, sizes


# ------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _evaluating(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _hooks():
    """A list to put hook handles in; all are removed on the way out, also after an error."""
    handles: list = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def _check_batches(batches) -> None:
    if not batches:
        raise LlmtuneError(
            "There is no calibration text to measure importance on (0 batches).",
            hint="Give the pruning stage calibration data with at least one block of tokens.",
        )


def _run(model, batch: dict, current: dict):
    """Forward one batch; `current["mask"]` holds its attention mask (bool [B, T] or None) meanwhile, for
    the hooks to select the real tokens."""
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask")
    mask = mask.to(device) if mask is not None else None
    current["mask"] = mask.bool() if mask is not None else None
    try:
        return model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    finally:
        current["mask"] = None


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of x ([B, T, F] or [B, T]) for the real tokens, flattened to [N, F] (or [N])."""
    flat = x.reshape(-1, x.shape[-1]) if x.dim() == 3 else x.reshape(-1)
    if mask is not None and mask.numel() == flat.shape[0]:
        flat = flat[mask.reshape(-1)]
    return flat


def _hidden_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hidden_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _loss_sums(model, batches, current: dict) -> tuple[float, int]:
    """(summed next-token cross-entropy, number of predicted tokens) over all batches."""
    total, count = 0.0, 0
    for batch in batches:
        logits = _run(model, batch, current).logits
        input_ids = batch["input_ids"].to(logits.device)
        mask = batch.get("attention_mask")
        valid = (
            mask.to(logits.device)[:, 1:].bool()
            if mask is not None
            else torch.ones_like(input_ids[:, 1:]).bool()
        )
        # One sequence at a time: float32 logits of a whole batch over a 150k vocabulary take gigabytes.
        for row in range(logits.shape[0]):
            losses = F.cross_entropy(logits[row, :-1].float(), input_ids[row, 1:], reduction="none")
            total += losses[valid[row]].double().sum().item()
            count += int(valid[row].sum())
    if count == 0:
        raise LlmtuneError(
            "The calibration batches have no token to predict (every sequence is shorter than 2 real tokens).",
            hint="Give the pruning stage calibration blocks of at least 2 tokens.",
        )
    return total, count


# ------------------------------------------------------------------------------------------- layers
@torch.no_grad()
def mean_loss(model, batches) -> float:
    """The token-mean next-token cross-entropy of the model on the batches (labels = input_ids)."""
    _check_batches(batches)
    with _evaluating(model):
        total, count = _loss_sums(model, batches, {})
    return total / count


@torch.no_grad()
def block_influence(model, batches) -> list[float]:
    """Per decoder layer, ShortGPT's block influence: 1 - the token mean of cos(layer input, layer output).

    Near 0: the layer barely changes the residual stream, so removing it costs little. Hooks on the
    layers capture their exact inputs and outputs (HF's hidden_states[-1] has the final norm applied)."""
    _check_batches(batches)
    layers = decoder_layers(model)
    current: dict = {"mask": None}
    inputs: dict[int, torch.Tensor] = {}
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)

    def before(i):
        def hook(module, args, kwargs):
            inputs[i] = _hidden_input(args, kwargs)

        return hook

    def after(i):
        def hook(module, args, kwargs, output):
            h_in, h_out = inputs.pop(i), _hidden_output(output)
            cosine = _tokens(F.cosine_similarity(h_in.float(), h_out.float(), dim=-1), current["mask"])
            sums[i] += cosine.double().sum().item()
            counts[i] += cosine.numel()

        return hook

    with _evaluating(model), _hooks() as handles:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(before(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(after(i), with_kwargs=True))
        for batch in batches:
            _run(model, batch, current)
    return [1.0 - s / max(c, 1) for s, c in zip(sums, counts, strict=True)]


@contextlib.contextmanager
def _skipped(layer, returns_tuple: bool):
    """Make `layer` an identity (its output is its hidden-states input, in the same form as the layer's
    own output) until the block exits."""
    own = layer.__dict__.get("forward")  # an instance-level forward (e.g. set by accelerate) to restore

    def identity(*args, **kwargs):
        hidden = _hidden_input(args, kwargs)
        return (hidden,) if returns_tuple else hidden

    layer.forward = identity
    try:
        yield
    finally:
        if own is None:
            del layer.forward
        else:
            layer.forward = own


@torch.no_grad()
def perplexity_increase(model, batches) -> tuple[float, list[float]]:
    """(the base mean loss, per decoder layer the increase of the mean loss when that layer alone is
    skipped). Costs one pass over the batches per layer, plus one."""
    _check_batches(batches)
    layers = decoder_layers(model)
    # transformers 5 decoder layers return a tensor, older ones a tuple: record which, so that a skipped
    # layer answers in the same form.
    returns_tuple = [False] * len(layers)

    def record(i):
        def hook(module, args, output):
            returns_tuple[i] = isinstance(output, tuple)

        return hook

    with _evaluating(model):
        with _hooks() as handles:
            handles.extend(layer.register_forward_hook(record(i)) for i, layer in enumerate(layers))
            total, count = _loss_sums(model, batches, {})
        base = total / count
        increases = []
        for i, layer in enumerate(layers):
            with _skipped(layer, returns_tuple[i]):
                total, count = _loss_sums(model, batches, {})
            increases.append(total / count - base)
    return base, increases


# ----------------------------------------------------------------------------------------- activations
@dataclass
class ActivationStats:
    """What activation_statistics measured (empty where it was not asked for).

    mlp_channels: per layer [intermediate_size], the token mean of |activation| entering the MLP's down
    projection. heads: per layer [num_attention_heads], the token mean of each head's output L2 norm
    (the input of the attention output projection). input_norms: per linear map inside the decoder layers
    (keyed by module name), the L2 norm over all calibration tokens of each input feature [in_features]."""

    mlp_channels: list[torch.Tensor] = field(default_factory=list)
    heads: list[torch.Tensor] = field(default_factory=list)
    input_norms: dict[str, torch.Tensor] = field(default_factory=dict)


class _Accumulator:
    """A float64 running sum over tokens and its token count."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        summed = rows.double().sum(dim=0)
        self.total = summed if self.total is None else self.total + summed
        self.count += rows.shape[0]


@torch.no_grad()
def activation_statistics(
    model, batches, *, mlp: bool = True, heads: bool = True, input_norms: bool = False
) -> ActivationStats:
    """Activation statistics for width pruning (mlp, heads: Minitron) and Wanda (input_norms).

    Minitron scores a channel by its activation aggregated as the mean over the batch of the L2 norm over
    the sequence; we take the plain mean of |a| over all real tokens instead, which ranks the same way in
    spirit, does not depend on how the calibration text is cut into sequences, and is unaffected by padding."""
    _check_batches(batches)
    layers = decoder_layers(model)
    shape = sizes(model.config)
    current: dict = {"mask": None}
    channel_sums = [_Accumulator() for _ in layers]
    head_sums = [_Accumulator() for _ in layers]
    square_sums: dict[str, _Accumulator] = {}

    def channel_hook(i):
        def hook(module, args):
            channel_sums[i].add(_tokens(args[0], current["mask"]).abs())

        return hook

    def head_hook(i):
        def hook(module, args):
            x = args[0]
            per_head = x.reshape(*x.shape[:-1], shape["attention_heads"], -1).float().norm(dim=-1)
            head_sums[i].add(_tokens(per_head, current["mask"]))

        return hook

    def square_hook(name):
        def hook(module, args):
            square_sums[name].add(_tokens(args[0], current["mask"]).double().pow(2))

        return hook

    with _evaluating(model), _hooks() as handles:
        for i, layer in enumerate(layers):
            if mlp:
                handles.append(mlp_down(layer).register_forward_pre_hook(channel_hook(i)))
            if heads:
                handles.append(attention_out(layer).register_forward_pre_hook(head_hook(i)))
        if input_norms:
            for name, module in layer_linears(model).items():
                square_sums[name] = _Accumulator()
                handles.append(module.register_forward_pre_hook(square_hook(name)))
        for batch in batches:
            _run(model, batch, current)

    def measured(acc: _Accumulator) -> torch.Tensor:
        if acc.total is None or acc.count == 0:
            raise LlmtuneError(
                "The calibration batches have no real tokens (every attention_mask entry is 0).",
                hint="Give the pruning stage calibration text.",
            )
        return acc.total

    def mean(acc: _Accumulator) -> torch.Tensor:
        return (measured(acc) / acc.count).float().cpu()

    return ActivationStats(
        mlp_channels=[mean(acc) for acc in channel_sums] if mlp else [],
        heads=[mean(acc) for acc in head_sums] if heads else [],
        input_norms={name: measured(acc).sqrt().float().cpu() for name, acc in square_sums.items()},
    )
