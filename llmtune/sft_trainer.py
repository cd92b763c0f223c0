"""TRL's SFTTrainer with the model's own loss where TRL's fused LM head is slower (llmtune/lm_head.py).

On those devices (every CPU) the loss is `Trainer.compute_loss`: the model's own ForCausalLMLoss over full
logits, with `num_items_in_batch`: the same value and gradients as TRL's within float rounding (tested in
tests/unit/test_sft_loss_path.py), computed once. Where the fused head pays (CUDA with Triton) and for
anything beyond the plain token NLL, TRL's own compute_loss runs.

Kept from TRL's metrics: `mean_token_accuracy` (an argmax over the logits) and `num_tokens`. Dropped on
this path: the per-token `entropy` metric (a second softmax over the whole vocabulary at every step, for a
logged number only).
"""

from __future__ import annotations

from llmtune.lm_head import fused_head_pays


def sft_trainer_class():
    """The SFTTrainer subclass (built on first use, so importing llmtune does not import TRL)."""
    from transformers import Trainer
    from trl import SFTTrainer

    class LlmtuneSFTTrainer(SFTTrainer):
        def _plain_loss_applies(self) -> bool:
            # Anything beyond the plain token-level NLL (label smoothing, a custom loss, DFT, MoE auxiliary
            # loss, sequence parallelism) stays on TRL's own path, which knows it.
            args = self.args
            parallelism = getattr(self.accelerator, "parallelism_config", None)
            return (
                not fused_head_pays(args.device)
                and getattr(args, "loss_type", "nll") == "nll"
                and self.label_smoother is None
                and self.compute_loss_func is None
                and not getattr(self, "aux_loss_enabled", False)
                and not (parallelism is not None and getattr(parallelism, "sp_enabled", False))
            )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._plain_loss_applies():
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            import torch

            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            loss, outputs = Trainer.compute_loss(
                self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            with torch.no_grad():
                labels = inputs["labels"][:, 1:]
                valid = labels != -100
                hits = (outputs.logits[:, :-1].argmax(dim=-1) == labels) & valid
                gather = self.accelerator.gather_for_metrics
                num_valid = gather(valid.sum()).sum()
                num_correct = gather(hits.sum()).sum()
            self._metrics[mode]["mean_token_accuracy"].append(
                (num_correct / num_valid).item() if num_valid > 0 else 0.0
            )
            if mode == "train":
                # as TRL counts them: attention-mask ones, or the flattened length of a padding-free batch
                if "attention_mask" in inputs:
                    tokens = gather(inputs["attention_mask"].sum()).sum().item()
                else:
                    local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                    tokens = gather(local).sum().item()
                self._total_train_tokens += tokens // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return LlmtuneSFTTrainer
