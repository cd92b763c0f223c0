"""llmtune's SFT loss path on a CPU (the model's own loss over full logits) against TRL's fused LM head:
the same loss, the same gradients and the same token accuracy, padded and padding-free, with and
without gradient-accumulation normalisation (`num_items_in_batch`)."""

import pytest
import torch

from llmtune.lm_head import fused_head_pays
from llmtune.sft_trainer import sft_trainer_class


def _trainers(tmp_path, tiny_pretrained, gpt2_tokenizer, padding_free: bool):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    rows = []
    for length in (9, 17, 30, 5):
        ids = torch.randint(0, len(gpt2_tokenizer), (length,)).tolist()
        labels = [-100] * (length // 2) + ids[length // 2 :]  # loss on the second half, like a reply
        rows.append({"input_ids": ids, "labels": labels})
    data = Dataset.from_list(rows)
    built = []
    for cls in (SFTTrainer, sft_trainer_class()):
        model = AutoModelForCausalLM.from_pretrained(tiny_pretrained)
        torch.manual_seed(1)  # the same LoRA initialisation on both sides
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear"))
        args = SFTConfig(
            output_dir=str(tmp_path / cls.__name__),
            use_cpu=True,
            bf16=False,
            report_to="none",
            gradient_checkpointing=False,
            padding_free=padding_free,
            packing=padding_free,  # TRL: padding-free batches come from packing
            per_device_train_batch_size=4,
            max_length=64,
            dataset_num_proc=None,
        )
        built.append(cls(model=model, args=args, train_dataset=data, processing_class=gpt2_tokenizer))
    batch = built[0].data_collator([data[i] for i in range(4)])
    return built, batch


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("num_items", [None, 40])
def test_plain_loss_equals_trl_fused_loss(tmp_path, tiny_pretrained, gpt2_tokenizer, padding_free, num_items):
    (trl_trainer, ours), batch = _trainers(tmp_path, tiny_pretrained, gpt2_tokenizer, padding_free)
    assert not fused_head_pays(ours.args.device) and ours._plain_loss_applies()
    assert ("position_ids" in batch) == padding_free
    results = []
    for trainer in (trl_trainer, ours):
        trainer.model.train()
        inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        loss = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=num_items)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        metrics = trainer._metrics["train"]
        results.append((loss.item(), grads, metrics["mean_token_accuracy"][-1], metrics["num_tokens"][-1]))
    (trl_loss, trl_grads, trl_acc, trl_tokens), (loss, grads, acc, tokens) = results
    assert loss == pytest.approx(trl_loss, rel=1e-5)
    assert grads.keys() == trl_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert acc == trl_acc and tokens == trl_tokens
    assert "entropy" not in ours._metrics["train"]  # the metric this path does not compute


def test_eval_uses_the_same_path(tmp_path, tiny_pretrained, gpt2_tokenizer):
    (trl_trainer, ours), batch = _trainers(tmp_path, tiny_pretrained, gpt2_tokenizer, padding_free=False)
    losses = []
    for trainer in (trl_trainer, ours):
        trainer.model.eval()
        loss, _, _ = trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=True)
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert ours._metrics["eval"]["mean_token_accuracy"]  # metrics come from our path too


def test_other_losses_stay_on_trl_path(tmp_path, tiny_pretrained, gpt2_tokenizer):
    (_, ours), _ = _trainers(tmp_path, tiny_pretrained, gpt2_tokenizer, padding_free=False)
    ours.args.loss_type = "dft"
    assert not ours._plain_loss_applies()
