"""llmtune's plain LM head for DPO on a CPU (llmtune/lm_head.py) against TRL's fused head: the same DPO
loss, gradients and logged metrics, with a LoRA policy (reference = adapter off) and with a separate
reference model."""

import copy

import pytest
import torch

from llmtune.lm_head import fused_head_pays, plain_head_for_dpo


def _trainers(tmp_path, tiny_pretrained, gpt2_tokenizer, peft: bool):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    rows = [
        {
            "prompt": " ".join(words[i : i + 3 + i % 3]),
            "chosen": " " + " ".join(words[: 2 + i]),
            "rejected": " " + " ".join(reversed(words[: 1 + i])),
        }
        for i in range(4)
    ]
    built = []
    for plain in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_pretrained)
        ref = None
        if peft:
            torch.manual_seed(1)
            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear"))
        else:
            ref = copy.deepcopy(model).eval()
            torch.manual_seed(2)  # the same perturbation on both sides
            with torch.no_grad():  # a policy that already differs from its reference
                for param in model.parameters():
                    param.add_(0.01 * torch.randn_like(param))
        args = DPOConfig(
            output_dir=str(tmp_path / f"plain-{plain}"),
            use_cpu=True,
            bf16=False,
            report_to="none",
            gradient_checkpointing=False,
            per_device_train_batch_size=4,
            max_length=64,
            beta=0.1,
            dataset_num_proc=None,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=ref,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=gpt2_tokenizer,
        )
        if plain:
            assert plain_head_for_dpo(trainer)
        built.append(trainer)
    batch = built[0].data_collator([built[0].train_dataset[i] for i in range(4)])
    return built, batch


@pytest.mark.parametrize("peft", [True, False])
def test_plain_head_gives_trl_dpo_loss_gradients_and_metrics(tmp_path, tiny_pretrained, gpt2_tokenizer, peft):
    trainers, batch = _trainers(tmp_path, tiny_pretrained, gpt2_tokenizer, peft)
    assert not fused_head_pays(trainers[1].args.device)
    results = []
    for trainer in trainers:
        trainer.model.train()
        inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        results.append((loss.item(), grads, metrics))
    (trl_loss, trl_grads, trl_metrics), (loss, grads, metrics) = results
    assert loss == pytest.approx(trl_loss, rel=1e-5, abs=1e-7)
    assert grads.keys() == trl_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert metrics.keys() == trl_metrics.keys()
    assert any("entropy" in k for k in metrics) and any("logps" in k for k in metrics)
    for key, value in trl_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_a_trainer_with_weighting_keeps_trl_head(tmp_path, tiny_pretrained, gpt2_tokenizer):
    (trl_trainer, _), _ = _trainers(tmp_path, tiny_pretrained, gpt2_tokenizer, peft=True)
    trl_trainer.use_weighting = True
    assert not plain_head_for_dpo(trl_trainer)
