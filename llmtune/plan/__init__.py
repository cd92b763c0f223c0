"""Plan a training run before starting it: parameters, memory per device, tokens per step.

What `llmtune plan --recipe FILE` prints:

    from llmtune.plan import estimate, parse_memory
    plan = estimate(recipe, device_memory_bytes=parse_memory("24GiB"), strategy="zero3", nproc=4)
    print(plan.render())

No weights are loaded. The model's config is read (a local config.json, the recipe's `from_config`, a
demo model's GGUF metadata, or config.json + tokenizer files from the hub) and the model is built on
PyTorch's meta device, where parameters have shapes but no storage: a 70B model is counted in a second,
exactly, with tied weights once, and the recipe's adapter counted as PEFT creates it in training (LoRA and
DoRA by PEFT's rules without importing PEFT, which takes seconds; the other adapters applied by PEFT).

Memory per device = model states + activations + logits + a fixed overhead:

- Model states under DeepSpeed ZeRO and FSDP follow the ZeRO paper (Rajbhandari et al. 2019, "ZeRO:
  Memory Optimizations Toward Training Trillion Parameter Models", §3 and Figure 1): mixed-precision
  AdamW keeps 16-bit weights (2Ψ) and gradients (2Ψ) and K=12 bytes of optimizer state per parameter
  (fp32 master weights, two fp32 moments); stage 1 shards the optimizer state over N devices, stage 2
  the gradients too, stage 3 everything. FSDP full-shard is ZeRO-3 (accelerate upcasts the sharded
  parameters to fp32, as DeepSpeed keeps its fp32 partition).
- Single-device and DDP runs go through HF Trainer and torch AdamW, which keep no master copy: the
  moments take the dtype of the parameters. A bf16 model therefore trains in pure bf16 at 8 bytes per
  trainable parameter; an fp32 model with `train.bf16` (autocast) at 16 — the paper's DDP baseline.
- Adapter parameters (LoRA and friends) are fp32 (PEFT upcasts them), except QLoRA's under TRL's
  trainers, which cast them to bf16. Frozen weights cost their storage only; QLoRA stores linear
  weights in 4-bit nf4 (4.127 bits a parameter with double quantisation: 4 + 8/64 + 32/(64·256)) and
  `peft.prepare_model_for_kbit_training` casts the rest (embeddings, lm_head, norms) to fp32.
- Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
  Models", §4.1): s·b·h·(34 + 5·a·s/h) bytes per layer for 16-bit activations; the 5·a·s/h attention
  score term is dropped for fused attention (SDPA, flash), and everything doubles for fp32. With
  gradient checkpointing each layer keeps its 16-bit input (2·s·b·h) and one layer is recomputed at a
  time. The logits add b·s·V fp32 values twice (the upcast for the loss and its softmax).
- Smaller parts, each measured or read from the code that allocates it: LoRA dropout's copies of each
  adapted layer's input, autocast's 16-bit copies of fp32 weights, DDP's gradient buckets (a second
  copy of the gradients), ZeRO-3/FSDP's gathered layers, ZeRO's communication buckets.

The commands after sft change the model or add a phase:

- reward builds AutoModelForSequenceClassification (num_labels=1): the LM head (vocab x hidden) gives way
  to a score head Linear(hidden, 1), trained in full under an adapter too (PEFT modules_to_save); a pair
  is 2 sequences (chosen + rejected) and the logits are b·s·1. No reference model.
- grpo and rloo (TRL 1.16 GRPOTrainer / RLOOTrainer) alternate two phases that never hold memory at once,
  and the total counts the larger on top of weights, gradients and optimizer: the training step on
  per_device_train_batch_size completions of max_prompt_length + max_completion_length tokens (logits
  b·s·V, an upper bound: TRL scores log-probs with a tiled fused LM head), and generation, whose KV cache
  holds 2·layers·kv_heads·head_dim·bytes per token (Ainslie et al. 2023 for the grouped kv heads) for
  every completion a process samples at once (TRL's GRPOConfig.__post_init__: per_device_train_batch_size
  x steps_per_generation, steps_per_generation defaulting to gradient_accumulation_steps), plus one
  decoding step's fp32 logits. With beta != 0 a full-parameter run holds a frozen reference copy (under
  PEFT the adapter is switched off instead) and scores each micro-batch with it, without gradients.
  vLLM's memory (use_vllm) is outside the estimate.
- distill plans its student as pretrain (text: data.block_size) or sft (chat: data.max_length) would, with
  gradient checkpointing off by default as its stage has it, and adds the frozen teacher, read from its own
  config on the meta device: its weights in teacher.dtype, whole on every process (DDP and DeepSpeed wrap
  only the student; the recipe refuses ZeRO-3 and FSDP), one forward without gradients per micro-batch (one
  layer's working set, its logits b·s·V, and its L + 1 hidden states when distill.hidden_layers is set),
  and the loss's fp32 [b·s, V] tensors (log-softmax of both models, the divergence's terms: 6 at the peak
  for forward/reverse KL, 12 for JSD, measured on llmtune/distill/losses.py; 2 already in the logits).

benchmarks/plan_vs_measured.py checks the CPU estimate against the peak RSS of real runs.

The modules: formulas.py (the papers' formulas and the constants),
shape.py (the config and the meta-device model), lora_count.py (LoRA's parameters without PEFT),
memory.py (the bytes per device, part by part), teacher.py (what distill's teacher and loss add),
suggestions.py (changes that make a run fit), throughput.py (tokens, FLOPs, steps), render.py (the text
`llmtune plan` prints) and planner.py (`estimate` and the Plan it returns).
"""

from llmtune.plan.formulas import (
    activation_bytes,
    kv_cache_bytes,
    logits_bytes,
    parse_memory,
    zero_model_states,
)
from llmtune.plan.planner import STRATEGIES, TARGETS, Plan, estimate
from llmtune.plan.shape import model_config
from llmtune.plan.suggestions import Suggestion

__all__ = [
    "STRATEGIES",
    "TARGETS",
    "Plan",
    "Suggestion",
    "activation_bytes",
    "estimate",
    "kv_cache_bytes",
    "logits_bytes",
    "model_config",
    "parse_memory",
    "zero_model_states",
]
