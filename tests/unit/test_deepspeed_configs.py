"""The shipped DeepSpeed configs parse, and TrainingArguments' HfTrainerDeepSpeedConfig fills their "auto"s."""

import json
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).parents[2] / "deepspeed_configs").glob("*.json"))
EXPECTED_STAGE = {"zero2.json": 2, "zero3.json": 3, "zero3_offload.json": 3}


def test_every_expected_config_ships():
    assert {path.name for path in CONFIGS} == set(EXPECTED_STAGE)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_autos_fill_from_training_arguments(path, tmp_path):
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = json.loads(path.read_text())
    zero = config["zero_optimization"]
    assert zero["stage"] == EXPECTED_STAGE[path.name]
    if zero["stage"] == 3:
        # Without it a ZeRO-3 save writes only shards and an empty-looking model file.
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    if "offload" in path.name:
        assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=2, use_cpu=True
    )
    ds_config = HfTrainerDeepSpeedConfig(str(path))
    ds_config.trainer_config_process(args)
    assert ds_config.config["train_micro_batch_size_per_gpu"] == 3
    assert ds_config.config["gradient_accumulation_steps"] == 2
    assert ds_config.config["gradient_clipping"] == args.max_grad_norm
