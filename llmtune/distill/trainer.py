"""The Trainer of `llmtune distill`: HF's loop, with the teacher run on every batch and the loss mixed from
the distillation terms.

A subclass, where llmtune otherwise composes: HF's only loss hook, `compute_loss_func(outputs, labels,
num_items_in_batch)`, sees neither the batch nor a second model, and the learned projections of the
intermediate-layer term need the optimizer (create_optimizer) and the checkpoints (_save_checkpoint,
_load_from_checkpoint), which have no hooks either. TRL's GKDTrainer is a Trainer subclass for the same
reasons.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback

from llmtune.distill.hidden import PROJECTIONS_FILE, HiddenStateLoss
from llmtune.distill.losses import distillation_sums, mix


class DistillTrainer(Trainer):
    def __init__(
        self,
        *args,
        teacher,
        alpha: float,
        temperature: float,
        divergence: str,
        beta: float,
        vocab_size: int,
        hidden_loss: HiddenStateLoss | None = None,
        hidden_weight: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.teacher.requires_grad_(False)
        self.alpha, self.temperature, self.divergence, self.beta = alpha, temperature, divergence, beta
        # Logits are compared over the tokenizer's ids only: one model may pad its embedding (to a multiple
        # of 64, say) with rows no token ever uses.
        self.vocab_size = vocab_size
        self.hidden_loss = hidden_loss.to(self.args.device) if hidden_loss is not None else None
        if self.hidden_loss is not None:
            # HF zeroes the gradients of the model only (model.zero_grad()); the projections' would add up
            # over every step (measured: a resumed run drifted from the uninterrupted one by that much).
            self.add_callback(_ZeroGradients(self.hidden_loss))
        self.hidden_weight = hidden_weight
        # The loss below is a sum over trained tokens divided by the batch's count across gradient-
        # accumulation steps (num_items_in_batch), as HF's own causal-LM loss is: make the Trainer count
        # it for every batch, and not divide by the accumulation steps a second time.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self._terms: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}

    # ------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = self.hidden_loss is not None
        outputs = model(**forward, output_hidden_states=hidden, use_cache=False)
        with torch.no_grad():
            teacher = self.teacher(**forward, output_hidden_states=hidden, use_cache=False)
        vocab = self.vocab_size
        sums = distillation_sums(
            outputs.logits[..., :vocab],
            teacher.logits[..., :vocab],
            labels,
            temperature=self.temperature,
            divergence=self.divergence,
            beta=self.beta,
        )
        if hidden:
            mask = torch.zeros_like(labels, dtype=torch.bool)
            mask[:, :-1] = labels[:, 1:] != -100  # the positions whose next token is trained
            sums["hidden"] = self.hidden_loss(outputs.hidden_states, teacher.hidden_states, mask)
        total = mix(sums, alpha=self.alpha, temperature=self.temperature, hidden_weight=self.hidden_weight)
        if num_items_in_batch is not None:
            denominator = num_items_in_batch
            if self.args.average_tokens_across_devices:  # HF's own rule (Trainer.compute_loss)
                total = total * self.accelerator.num_processes
        else:
            denominator = sums["tokens"].clamp_min(1)
        loss = total / denominator
        self._record("train" if model.training else "eval", sums)
        return (loss, outputs) if return_outputs else loss

    def _record(self, split: str, sums: dict) -> None:
        # Summed as tensors on the device: read back once per log, not once per micro-batch (a GPU sync).
        terms = self._terms[split]
        for name, value in sums.items():
            terms[name] = terms[name] + value.detach().double()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the loss terms, per trained token since the last log: ce_loss (the data's cross-entropy),
        kd_loss (the divergence before alpha and T^2), hidden_loss, and for evaluations teacher_loss."""
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        if split == "eval" or "loss" in logs:
            terms = {name: float(value) for name, value in self._terms[split].items()}
            tokens = terms.get("tokens", 0)
            if tokens:
                prefix = "eval_" if split == "eval" else ""
                logs[f"{prefix}ce_loss"] = terms["ce"] / tokens
                logs[f"{prefix}kd_loss"] = terms["kd"] / tokens
                if "hidden" in terms:
                    logs[f"{prefix}hidden_loss"] = terms["hidden"] / tokens
                if split == "eval":
                    logs["eval_teacher_loss"] = terms["teacher_ce"] / tokens
            self._terms[split] = defaultdict(float)
        super().log(logs, start_time)

    # ------------------------------------------------------------- the projections' optimizer and state
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.hidden_loss is not None:
            params = [p for p in self.hidden_loss.parameters() if p.requires_grad]
            if params and not any(
                params[0] is q for group in optimizer.param_groups for q in group["params"]
            ):
                optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.hidden_loss is None or not len(self.hidden_loss.projections) or not self.args.should_save:
            return
        import transformers.trainer as trainer_module
        from safetensors.torch import save_file

        # The folder just written (llmtune's atomic save renames the prefix while this runs).
        folder = os.path.join(
            self._get_output_dir(trial=trial),
            f"{trainer_module.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}",
        )
        state = {k: v.detach().cpu().contiguous() for k, v in self.hidden_loss.state_dict().items()}
        save_file(state, os.path.join(folder, PROJECTIONS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_FILE)
        if self.hidden_loss is not None and os.path.isfile(path):
            from safetensors.torch import load_file

            self.hidden_loss.load_state_dict(load_file(path, device=str(self.args.device)))


class _ZeroGradients(TrainerCallback):
    def __init__(self, module):
        self.module = module

    def on_step_end(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)
