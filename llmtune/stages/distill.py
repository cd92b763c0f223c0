"""`llmtune distill`: train a student on a frozen teacher's predictions (and hidden states), off-policy, on
raw text or conversations.

    llmtune distill --recipe recipes/distill/smollm2-135m-to-20-layers-text.yaml
    llmtune distill --recipe recipes/distill/smollm2-quickstart-to-20-layers-chat.yaml

Read top to bottom: run folder checked → both tokenizers (they must be one) → data (the pretrain pipeline
in blocks, or the sft pipeline with the loss on assistant tokens) → (run folder opened) student (+ adapter)
and teacher (frozen, eval mode) → DistillTrainer → results: the held-out cross-entropy of student and
teacher, before and after.

The loss per trained token: alpha * T^2 * D(teacher, student at T) + (1 - alpha) * CE(student, data)
[+ hidden_weight * MSE(projected student hidden states, teacher's)], D being forward KL, reverse KL or
GKD's generalized JSD. Each term is logged on its own (ce_loss, kd_loss, hidden_loss; eval_* and
eval_teacher_loss for the held-out data).

On-policy (`distill.on_policy: true`, prompt data as grpo reads it): the student answers the prompts and
learns the teacher's distribution on its own answers (GKD), with TRL's own `DistillationTrainer`: the loss
is the generalized JSD over the sampled tokens (forward_kl = TRL's beta 0, reverse_kl = beta 1), no
cross-entropy (there are no reference answers) and no hidden states. See `_run_on_policy`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from llmtune.adapters import apply_peft, describe_trainable, quantization_config
from llmtune.errors import LlmtuneError
from llmtune.home import llmtune_home
from llmtune.manifest import model_entry
from llmtune.models import load_causal_lm, load_tokenizer, max_positions, resolve_dtype, resolve_model_source
from llmtune.outputs import metrics_from_log_history
from llmtune.recipe import ChatDistillRecipe, DistillRecipe, OnPolicyDistillRecipe
from llmtune.run_folder import RunFolder
from llmtune.training import (
    TRAINING_PHASES,
    TokenCounter,
    final_evaluation,
    quiet_datasets,
    run_training,
    save_trained,
    standard_callbacks,
    training_arguments,
    write_training_metrics,
)

log = logging.getLogger("llmtune")


def run(recipe: DistillRecipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Distil as the recipe says and write the run folder; returns the results summary."""
    if isinstance(recipe, OnPolicyDistillRecipe):
        return _run_on_policy(recipe, overwrite=overwrite, resume=resume)
    import torch
    from transformers import DataCollatorForSeq2Seq, set_seed

    from llmtune.distill.hidden import HiddenStateLoss, layer_mapping
    from llmtune.distill.tokenizers import check_same_tokenizer
    from llmtune.distill.trainer import DistillTrainer

    folder = RunFolder.for_training(recipe, "distill", overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()
    chat = isinstance(recipe, ChatDistillRecipe)
    settings = recipe.distill

    # ---- inputs: both tokenizers, then the data (before the run folder is touched)
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    teacher_resolved = resolve_model_source(recipe.teacher)
    teacher_tokenizer = load_tokenizer(recipe.teacher, teacher_resolved)
    student_name = resolved.name if resolved else f"{recipe.model.from_config['architecture']} from config"
    if chat:
        from llmtune.data.chat_dataset import load_chat_data, tokenize_examples

        examples, report = load_chat_data(
            tokenizer, recipe.data, preference=False, describe=recipe.describe_path
        )
        datasets = tokenize_examples(tokenizer, examples, recipe.data, report)
        data = {"files": report.files, "formats": report.formats, "examples": report.examples}
    else:
        from llmtune.data.text import build_text_datasets

        datasets, report = build_text_datasets(
            recipe.data, tokenizer, llmtune_home() / "cache", describe=recipe.describe_path
        )
        data = {"files": report.files, "cache_key": report.cache_key, "tokens": report.tokens}
    if chat and recipe.data.template is not None:
        # Both models read the rows as the student's template renders them; tokens the template adds
        # to the student's tokenizer are added to the teacher's too (same ids), untrained in both.
        from llmtune.data.templates import apply_template

        _, added = apply_template(teacher_tokenizer, recipe.data.template)
        if added:
            log.warning(
                "note: data.template adds %s to the teacher's tokenizer too; the teacher never trained on "
                "them, so its predictions after them are weak. A teacher fine-tuned with this template "
                "(an sft run) is the better teacher.",
                ", ".join(added),
            )
    sample = tokenizer.decode(datasets["train"][0]["input_ids"][:512])
    check_same_tokenizer(
        tokenizer,
        teacher_tokenizer,
        student_name=student_name,
        teacher_name=teacher_resolved.name,
        text=sample,
    )
    for line in report.lines():
        log.info(line)

    teacher_entry = {"teacher": {"name": teacher_resolved.name, "path": str(teacher_resolved.path)}}
    with folder.open(
        recipe,
        data_report=report.to_dict(),
        data=data,
        inputs=teacher_entry,
        log_lines=report.lines(),
        phases=TRAINING_PHASES,
    ) as run:
        run.phase("model")
        # ---- student (+ adapter) and teacher
        set_seed(train_kwargs.get("seed", 42))
        dtype = resolve_dtype(recipe.model.dtype)
        model = load_causal_lm(
            recipe.model, resolved, tokenizer, quantization=quantization_config(recipe.peft, dtype)
        )
        teacher = load_causal_lm(recipe.teacher, teacher_resolved, teacher_tokenizer).eval()
        if not chat:
            _check_block_size(recipe, model, teacher)
        mapping = None
        if settings.hidden_layers is not None:
            mapping = layer_mapping(
                settings.hidden_layers,
                model.config.get_text_config().num_hidden_layers,
                teacher.config.get_text_config().num_hidden_layers,
            )
        gradient_checkpointing = bool(train_kwargs.get("gradient_checkpointing"))
        if gradient_checkpointing:
            model.config.use_cache = False
        model = apply_peft(model, recipe.peft, gradient_checkpointing=gradient_checkpointing)
        hidden_loss = None
        if mapping:
            hidden_loss = HiddenStateLoss(
                mapping,
                model.config.get_text_config().hidden_size,
                teacher.config.get_text_config().hidden_size,
            )
        log.info(
            "student: %s (%s), %s; teacher: %s (frozen, %s parameters)",
            student_name,
            str(dtype).removeprefix("torch."),
            describe_trainable(model),
            teacher_resolved.name,
            f"{sum(p.numel() for p in teacher.parameters()):,}",
        )
        log.info(
            "loss: %s x T^2 (T=%s) x %s%s + %s x cross-entropy%s",
            settings.alpha,
            settings.temperature,
            settings.divergence,
            f"(beta={settings.beta})" if settings.divergence == "jsd" else "",
            round(1 - settings.alpha, 6),
            f" + {settings.hidden_weight} x hidden MSE on {mapping}" if mapping else "",
        )
        run.set_model(
            model_entry(
                model,
                name=student_name,
                source=resolved.source if resolved else "from_config",
                path=str(resolved.path) if resolved else None,
                peft=recipe.peft.method,
            )
        )

        # ---- trainer
        has_eval = "validation" in datasets
        args, use_tensorboard = training_arguments(
            recipe,
            run.dir,
            has_eval=has_eval,
            bf16_model=dtype == torch.bfloat16,
            stage_defaults={
                "eval_on_start": has_eval
            },  # student and teacher on held-out data before training
        )
        recorder, callbacks = standard_callbacks(
            run.dir, use_tensorboard=use_tensorboard, early_stopping=recipe.early_stopping
        )
        if chat:  # rows of different lengths: padded on the right, labels with -100
            collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        else:
            from llmtune.data.text import collate_blocks as collator
        with quiet_datasets():
            trainer = DistillTrainer(
                model=model,
                args=args,
                train_dataset=datasets["train"],
                eval_dataset=datasets["validation"] if has_eval else None,
                data_collator=collator,
                processing_class=tokenizer,
                callbacks=callbacks,
                teacher=teacher,
                alpha=settings.alpha,
                temperature=settings.temperature,
                divergence=settings.divergence,
                beta=settings.beta,
                vocab_size=len(tokenizer),
                hidden_loss=hidden_loss,
                hidden_weight=settings.hidden_weight,
            )
        counter = TokenCounter(trainer.data_collator).attach(trainer) if chat else None
        train_output = run_training(trainer, recipe, run)
        save_trained(trainer, run)  # the trained weights first: what follows can be interrupted

        # ---- results
        run.phase("final_eval")
        runtime = train_output.metrics.get("train_runtime") or 0
        results = {
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": runtime,
        }
        if chat:  # real tokens (the rows' own lengths, no padding) over this session's training batches
            results["train_tokens"] = counter.real
            results["train_tokens_per_second"] = counter.real / max(runtime, 1e-9)
            results["padding_share"] = counter.padding_share
        else:  # blocks have no padding: the Trainer's count is exact
            results["train_tokens"] = trainer.state.num_input_tokens_seen
            results["train_tokens_per_second"] = recorder.tokens_per_second
        train_logs = [e for e in trainer.state.log_history if "ce_loss" in e]
        if train_logs:
            results["first_logged_ce_loss"] = train_logs[0]["ce_loss"]
            results["last_logged_ce_loss"] = train_logs[-1]["ce_loss"]
            results["last_logged_kd_loss"] = train_logs[-1]["kd_loss"]
        if has_eval:
            evals = [
                e for e in metrics_from_log_history(trainer.state.log_history)["eval"] if "eval_ce_loss" in e
            ]
            final = final_evaluation(trainer)
            if "eval_ce_loss" not in final:  # the logged final evaluation lacks the terms: evaluate again
                final = trainer.evaluate()
            for key in ("eval_loss", "eval_ce_loss", "eval_kd_loss", "eval_hidden_loss", "eval_teacher_loss"):
                if key in final:
                    results[key] = final[key]
            results["eval_perplexity"] = math.exp(final["eval_ce_loss"])
            results["teacher_eval_perplexity"] = math.exp(final["eval_teacher_loss"])
            if evals:
                results["eval_ce_loss_first"] = evals[0]["eval_ce_loss"]
                results["eval_perplexity_first"] = math.exp(evals[0]["eval_ce_loss"])
        write_training_metrics(trainer, run, title=f"distill: {Path(recipe.source).name}")
        return run.finish(results)


def _check_block_size(recipe: DistillRecipe, model, teacher) -> None:
    for who, m in (("student", model), ("teacher", teacher)):
        positions = max_positions(m)
        if positions is not None and recipe.data.block_size > positions:
            raise LlmtuneError(
                f"data.block_size ({recipe.data.block_size}) is longer than the {who}'s {positions} positions; "
                f"lower data.block_size to at most {positions}."
            )


def _run_on_policy(recipe: OnPolicyDistillRecipe, *, overwrite: bool, resume: bool) -> dict:
    """On-policy distillation with TRL's DistillationTrainer: llmtune loads both models (anything eval
    accepts, the teacher frozen), reads and checks the prompts, and runs the loop through the run lifecycle."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import DistillationConfig, DistillationTrainer

    from llmtune.data.prompts import load_prompts
    from llmtune.data.templates import apply_template, end_of_turn_token
    from llmtune.distill.tokenizers import check_same_tokenizer
    from llmtune.generation import set_stop_tokens

    folder = RunFolder.for_training(recipe, "distill", overwrite=overwrite, resume=resume)
    train_kwargs = recipe.train.trainer_kwargs()
    settings = recipe.distill
    resolved = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(recipe.model, resolved)
    teacher_resolved = resolve_model_source(recipe.teacher)
    teacher_tokenizer = load_tokenizer(recipe.teacher, teacher_resolved)
    rows, report = load_prompts(tokenizer, recipe.data, describe=recipe.describe_path)
    if recipe.data.template is not None:
        apply_template(teacher_tokenizer, recipe.data.template)
    student_name = resolved.name if resolved else f"{recipe.model.from_config['architecture']} from config"
    check_same_tokenizer(
        tokenizer,
        teacher_tokenizer,
        student_name=student_name,
        teacher_name=teacher_resolved.name,
        text=tokenizer.apply_chat_template(rows["train"][0]["prompt"], tokenize=False),
    )
    for line in report.lines():
        log.info(line)
    # TRL's beta chooses the divergence: 0 = forward KL, 1 = reverse KL, between = generalized JSD.
    beta = {"forward_kl": 0.0, "reverse_kl": 1.0}.get(settings.divergence, settings.beta)

    data = {"files": report.files, "formats": report.formats, "examples": report.examples}
    teacher_entry = {"teacher": {"name": teacher_resolved.name, "path": str(teacher_resolved.path)}}
    with folder.open(
        recipe,
        data_report=report.to_dict(),
        data=data,
        inputs=teacher_entry,
        log_lines=report.lines(),
        phases=TRAINING_PHASES,
    ) as run:
        run.phase("model")
        set_seed(train_kwargs.get("seed", 42))
        dtype = resolve_dtype(recipe.model.dtype)
        model = load_causal_lm(
            recipe.model, resolved, tokenizer, quantization=quantization_config(recipe.peft, dtype)
        )
        teacher = (
            load_causal_lm(recipe.teacher, teacher_resolved, teacher_tokenizer).eval().requires_grad_(False)
        )
        set_stop_tokens(model, tokenizer, end_of_turn_token(tokenizer, recipe.data.template))
        gradient_checkpointing = bool(train_kwargs.get("gradient_checkpointing", True))  # TRL's default
        model = apply_peft(model, recipe.peft, gradient_checkpointing=gradient_checkpointing)
        log.info(
            "student: %s (%s), %s; teacher: %s (frozen); on-policy, TRL DistillationTrainer, beta %s (%s), T=%s",
            student_name,
            str(dtype).removeprefix("torch."),
            describe_trainable(model),
            teacher_resolved.name,
            beta,
            settings.divergence,
            settings.temperature,
        )
        run.set_model(
            model_entry(
                model,
                name=student_name,
                source=resolved.source if resolved else "from_config",
                path=str(resolved.path) if resolved else None,
                peft=recipe.peft.method,
            )
        )
        args, use_tensorboard = training_arguments(
            recipe,
            run.dir,
            has_eval=False,
            bf16_model=dtype == torch.bfloat16,
            arguments_class=DistillationConfig,
            stage_defaults={
                "beta": beta,
                "temperature": settings.temperature,
                "include_num_input_tokens_seen": "no",  # TRL logs its own token counts
            },
        )
        _, callbacks = standard_callbacks(run.dir, use_tensorboard=use_tensorboard)
        with quiet_datasets():
            trainer = DistillationTrainer(
                model=model,
                teacher_model=teacher,
                args=args,
                train_dataset=Dataset.from_list(rows["train"]),
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        train_output = run_training(trainer, recipe, run)
        save_trained(trainer, run)

        run.phase("final_eval")
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        results = {
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            "first_logged_loss": losses[0] if losses else None,
            "last_logged_loss": losses[-1] if losses else None,
        }
        write_training_metrics(trainer, run, title=f"distill (on-policy): {Path(recipe.source).name}")
        return run.finish({k: v for k, v in results.items() if v is not None})
