"""A stand-in for LLaMA-Factory's SFT stage: a plain HF Trainer (LLaMA-Factory subclasses Seq2SeqTrainer
and keeps its compute_loss) on rows tokenised once with the chat template, the prompt masked with -100,
and DataCollatorForSeq2Seq padding to a multiple of 8, as LLaMA-Factory's SFT collator does.

    python sft_lf_standin.py TRAIN.jsonl VAL.jsonl OUT MAX_LENGTH EPOCHS
"""

import json
import sys

from common import MODEL, epoch_tokens, lora, report
from datasets import Dataset
from peft import get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
    set_seed,
)

train_file, val_file, out, max_length, epochs = sys.argv[1:6]
tokenizer = AutoTokenizer.from_pretrained(MODEL)


def encode(path):
    rows = []
    for line in open(path, encoding="utf-8"):
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][: int(max_length)]
        labels = ([-100] * len(prompt_ids) + ids[len(prompt_ids) :])[: len(ids)]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return Dataset.from_list(rows)


set_seed(42)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), lora())
args = TrainingArguments(
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
    dataloader_pin_memory=False,
)
collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=encode(train_file),
    eval_dataset=encode(val_file),
    data_collator=collator,
)
result = trainer.train()
evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
report(epoch_tokens(trainer.train_dataset, float(epochs)), result, evals[-1] if evals else None)
