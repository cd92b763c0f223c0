"""The DPO script a user would write with TRL alone: conversational preference rows (the instruction and
input as the user turn), DPOTrainer with a LoRA model (the reference is the model with its adapter off),
the same arguments as the llmtune recipe.

    python dpo_trl.py DATA.json OUT ROWS MAX_STEPS
"""

import json
import sys

from common import MODEL, lora
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer

data_file, out, rows, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(MODEL)
pairs = []
for r in json.load(open(data_file, encoding="utf-8"))[:rows]:
    if r["chosen"] == r["rejected"]:
        continue  # llmtune drops these too (counted in its data report)
    user = f"{r['instruction']}\n\n{r['input']}" if r.get("input", "").strip() else r["instruction"]
    pairs.append(
        {
            "prompt": [{"role": "user", "content": user}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
    )
set_seed(42)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), lora())
args = DPOConfig(
    output_dir=out,
    seed=42,
    max_steps=steps,
    per_device_train_batch_size=4,
    learning_rate=5e-5,
    lr_scheduler_type="cosine",
    warmup_steps=0.1,
    logging_steps=5,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    disable_tqdm=True,
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    max_length=256,
    beta=0.1,
    loss_type="sigmoid",
    dataloader_pin_memory=False,
)
trainer = DPOTrainer(
    model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer
)
result = trainer.train()
print(
    json.dumps(
        {
            "pairs": result.global_step * 4,
            "seconds": result.metrics["train_runtime"],
            "train_loss": result.training_loss,
            "steps": result.global_step,
        }
    )
)
