"""The continued-pretraining script a user would write with HF alone: tokenise the paragraphs, join them
with EOS, cut 256-token blocks, LoRA, `Trainer(...).train()`.

    python pretrain_hf.py CORPUS.txt OUT MAX_STEPS
"""

import json
import sys

import torch
from common import MODEL, lora
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

corpus, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(MODEL)
docs = [p for p in open(corpus, encoding="utf-8").read().split("\n\n") if p.strip()]
ids = []
for d in docs:
    ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
blocks = [ids[i : i + 256] for i in range(0, len(ids) - 255, 256)]
set_seed(42)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), lora())


def collate(rows):
    x = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": x, "labels": x.clone(), "attention_mask": torch.ones_like(x)}


args = TrainingArguments(
    output_dir=out,
    max_steps=steps,
    per_device_train_batch_size=4,
    learning_rate=2e-4,
    lr_scheduler_type="cosine",
    warmup_steps=0.1,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    seed=42,
    disable_tqdm=True,
    dataloader_pin_memory=False,
)
trainer = Trainer(
    model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks}), data_collator=collate
)
result = trainer.train()
print(
    json.dumps(
        {
            "tokens": result.global_step * 4 * 256,
            "seconds": result.metrics["train_runtime"],
            "train_loss": result.training_loss,
            "steps": result.global_step,
        }
    )
)
