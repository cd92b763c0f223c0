"""One training step (forward + backward) with TRL's fused LM head against the model's own loss, in process.

    .venv/bin/python benchmarks/lm_head_step.py [--pairs 4] [--batch 8] [--length 160]

SmolLM2-135M-Instruct (49,152-entry vocabulary) with LoRA r16 on all linear layers, a random batch whose
first half of every row is masked (-100), as a prompt is in SFT. Side A: `model(..., labels=...)` (HF's
ForCausalLMLoss over full logits: what llmtune's sft runs on a CPU). Side B: the same model patched by
TRL's `add_fused_lm_head` with the outputs SFTTrainer asks for (log_probs, entropy, is_top1), called
with `fused_lm_head=True`. One warm-up step each, then A B A B; printed: the step times and the B/A ratios.
"""

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from llmtune.hub import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=160)
    options = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct").path)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = get_peft_model(
        model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear")
    )
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (options.batch, options.length))
    labels = ids.clone()
    labels[:, : options.length // 2] = -100

    def step(fused: bool) -> float:
        start = time.perf_counter()
        extra = {"fused_lm_head": True} if fused else {}
        model(input_ids=ids, labels=labels, use_cache=False, **extra).loss.backward()
        model.zero_grad()
        return time.perf_counter() - start

    step(False), step(True)  # warm-up
    plain, fused = [], []
    for _ in range(options.pairs):
        plain.append(step(False))
        fused.append(step(True))
    ratios = [b / a for a, b in zip(plain, fused, strict=True)]
    print(
        f"model's own loss: {', '.join(f'{t:.2f}' for t in plain)} s; fused head: {', '.join(f'{t:.2f}' for t in fused)} s"
    )
    print(
        f"fused / own step time: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}; "
        f"{options.pairs} interleaved pairs)"
    )


if __name__ == "__main__":
    main()
