"""Where TRL's fused LM head pays, and the plain head llmtune puts in its place where it does not.

TRL 1.16 patches the model so that `model(..., labels=..., fused_lm_head=True)` returns per-token
log-probabilities (and entropy, mean logit, top-1 hits) without building the (batch, length, vocabulary)
logits: the head is projected in vocabulary tiles and the backward projects every tile again. With
Triton (CUDA) it scores only the label positions and saves the memory of the logits, which matters for
large vocabularies: kept there. On a CPU it scores every position (prompt and padding included) with
torch ops and projects twice: a SmolLM2 LoRA step took 1.27-1.58x as long as with the model's own loss
(benchmarks/sft_overhead.py has the end-to-end figure). There llmtune computes the same fields from the
model's full logits, once.
"""

from __future__ import annotations

import types


def fused_head_pays(device) -> bool:
    """Whether TRL's fused LM head is the better path on `device`: where its Triton kernel runs."""
    try:
        from trl.kernels.chunked_logprob import _use_triton
    except ImportError:  # a TRL that moved it: judge by the device alone
        return device.type in ("cuda", "xpu")
    return bool(_use_triton(device))


def use_plain_head(model) -> None:
    """Make `model(..., labels=..., fused_lm_head=True)` compute its fields from the full logits.

    For a model TRL already patched with `add_fused_lm_head` (DPO's policy and reference). The fields
    are TRL's FusedCausalLMOutput: `log_probs` (with gradient), and `entropy`, `mean_logits`, `is_top1`
    without gradient (DPO logs them detached), each zero where the label is -100; `loss` is the mean
    negative log-likelihood over the label positions (or over `num_items_in_batch`). Calls this path does
    not cover (pre-shifted labels, MoE router logits) go to TRL's head unchanged.
    """
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    fused = model.forward  # TRL's patched forward
    own_forward = type(model).forward  # the model's own: full logits, softcapping and logit scaling applied

    def forward(
        self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs
    ):
        if not fused_lm_head or shift_labels is not None or kwargs.get("output_router_logits"):
            return fused(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        logits = own_forward(self, *args, **kwargs).logits[:, :-1].float()
        labels = labels[:, 1:].to(logits.device)
        mask = labels != -100
        log_softmax = torch.log_softmax(logits, dim=-1)
        log_probs = (
            log_softmax.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
        )
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1).masked_fill(~mask, 0.0)
            mean_logits = logits.mean(-1).masked_fill(~mask, 0.0)
            is_top1 = (logits.argmax(-1) == labels) & mask
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)


def plain_head_for_dpo(trainer) -> bool:
    """Give a TRL DPOTrainer's policy (and reference model) the plain head where the fused one does not
    pay. Returns whether it did. Trainers other than DPOTrainer, and DPO's `use_weighting` (which reads a
    field this path does not compute), keep TRL's head."""
    from trl import DPOTrainer

    if type(trainer) is not DPOTrainer or getattr(trainer, "use_weighting", False):
        return False
    if fused_head_pays(trainer.args.device):
        return False
    model = trainer.model
    use_plain_head(model.get_base_model() if hasattr(model, "get_base_model") else model)
    if trainer.ref_model is not None:
        use_plain_head(trainer.ref_model)
    return True
