"""Names users bring from other tools and older transformers, in one place.

Section keys from LLaMA-Factory, MedicalGPT and axolotl recipes are never accepted as synonyms (one name per
setting); they only turn "unknown key" into "did you mean" the right one. TrainingArguments keys that
transformers 5 renamed are mapped with a note; removed ones are dropped with a note that says what
replaces them.
"""

PEFT_KEY_ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_rank": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lora_target": "target_modules",
    "target": "target_modules",
    "finetuning_type": "method",
    "type": "method",
    "freeze_trainable_modules": "trainable",
    "freeze_trainable_layers": "trainable_last_layers",
    "pre_seq_len": "num_virtual_tokens",
}

CHAT_DATA_KEY_ALIASES = {
    "dataset": "train_files",
    "train_file_dir": "train_files",
    "cutoff_len": "max_length",
    "model_max_length": "max_length",
    "max_seq_length": "max_length",
    "val_size": "validation_split",
    "interleave_probs": "weights",
    "mix_strategy": "weights",
    "max_train_samples": "max_samples",
}

RENAMED_TRAIN_KEYS = {
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
}
DROPPED_TRAIN_KEYS = {
    "logging_dir": "TensorBoard logs always go to <output_dir>/tensorboard",
    "save_safetensors": "weights are always saved as safetensors",
    "overwrite_output_dir": "llmtune never overwrites a run folder silently; pass --overwrite on the command line",
}
