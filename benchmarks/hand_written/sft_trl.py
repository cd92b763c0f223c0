"""The SFT script a user would write with TRL alone: conversational prompt-completion rows (TRL applies
the chat template and masks the prompt), SFTTrainer, the same arguments as the llmtune recipe.

    python sft_trl.py TRAIN.jsonl VAL.jsonl OUT MAX_LENGTH EPOCHS
"""

import json
import sys

from common import MODEL, epoch_tokens, lora, report
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

train_file, val_file, out, max_length, epochs = sys.argv[1:6]
tokenizer = AutoTokenizer.from_pretrained(MODEL)


def load(path):
    rows = [json.loads(line)["messages"] for line in open(path, encoding="utf-8")]
    return Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])


set_seed(42)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), lora())
args = SFTConfig(
    output_dir=out,
    seed=42,
    num_train_epochs=float(epochs),
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    warmup_steps=0.1,
    logging_steps=5,
    eval_strategy="epoch",
    save_strategy="no",
    report_to="none",
    disable_tqdm=True,
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    max_length=int(max_length),
    dataloader_pin_memory=False,
)
trainer = SFTTrainer(
    model=model,
    args=args,
    train_dataset=load(train_file),
    eval_dataset=load(val_file),
    processing_class=tokenizer,
)
result = trainer.train()
evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
report(epoch_tokens(trainer.train_dataset, float(epochs)), result, evals[-1] if evals else None)
