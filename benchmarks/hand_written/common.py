"""What every hand-written script shares: the demo model's folder, LoRA r16 on all linear layers, the count
of real (non-padding) tokens trained on, and the JSON line the benchmark reads."""

import json

from llmtune.hub import resolve_model

MODEL = str(resolve_model("smollm2-135m-instruct").path)


def lora():
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"
    )


def epoch_tokens(dataset, epochs: float) -> int:
    """Real tokens trained on in whole epochs: every example's own length (before padding), once per epoch."""
    return int(round(epochs * sum(len(ids) for ids in dataset["input_ids"])))


def report(tokens: int, result, eval_loss: float | None = None) -> None:
    print(
        json.dumps(
            {
                "tokens": tokens,
                "seconds": result.metrics["train_runtime"],
                "train_loss": result.training_loss,
                "eval_loss": eval_loss,
                "steps": result.global_step,
            }
        )
    )
