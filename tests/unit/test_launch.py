"""The launch plumbing without starting processes: flags, the re-launch command, strategy → trainer
arguments, and the accelerate / DeepSpeed configs shipped for each strategy."""

from pathlib import Path

import pytest
import yaml

from llmtune.errors import LlmtuneError
from llmtune.launch import (
    LaunchRequest,
    configs_dir,
    relaunch_command,
    request_from,
    strip_launch_flags,
    trainer_arguments,
)


def test_launch_flags_are_stripped_for_the_children():
    argv = [
        "sft",
        "--recipe",
        "r.yaml",
        "--nproc",
        "2",
        "--strategy",
        "zero3",
        "--nnodes=1",
        "--set",
        "a.b=1",
    ]
    assert strip_launch_flags(argv) == ["sft", "--recipe", "r.yaml", "--strategy", "zero3", "--set", "a.b=1"]


def test_relaunch_command_runs_llmtune_under_accelerate():
    request = LaunchRequest(nproc=2, strategy="zero2", nnodes=2, node_rank=1, main_process_ip="10.0.0.1")
    command = relaunch_command(request, ["pretrain", "--recipe", "r.yaml", "--nproc", "2"])
    joined = " ".join(command)
    assert "-m accelerate.commands.launch" in joined and "--num_processes 4 --num_machines 2" in joined
    assert "--machine_rank 1" in joined and "--main_process_ip 10.0.0.1" in joined
    assert command[-4:] == ["llmtune", "pretrain", "--recipe", "r.yaml"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"strategy": "zero4"}, "--strategy 'zero4'"),
        ({"nnodes": 2}, "needs --main-process-ip"),
        ({"nnodes": 2, "node_rank": 2, "main_process_ip": "h"}, "--node-rank 2"),
        ({"accelerate_config": "/nope.yaml"}, "--accelerate-config /nope.yaml does not exist"),
    ],
)
def test_bad_launch_requests(overrides, message):
    with pytest.raises(LlmtuneError, match=message.replace("(", r"\(")):
        request_from(None, overrides)


def test_more_than_one_process_means_ddp_by_default():
    assert request_from(None, {"nproc": 2}).strategy == "ddp"


def test_strategies_become_trainer_arguments(tmp_path):
    from transformers import TrainingArguments

    assert trainer_arguments(LaunchRequest()) == {}
    for strategy, name in (
        ("zero2", "zero2.json"),
        ("zero3", "zero3.json"),
        ("zero3-offload", "zero3_offload.json"),
    ):
        assert Path(trainer_arguments(LaunchRequest(strategy=strategy))["deepspeed"]).name == name
    fsdp = trainer_arguments(LaunchRequest(strategy="fsdp"))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **fsdp)  # accepted as written
    assert args.fsdp_config["version"] == 2 and args.fsdp_config["state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize("path", sorted((configs_dir() / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_accepted_by_accelerate(path):
    """Each file loads as accelerate's own config class, and DeepSpeed ones name a shipped JSON."""
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert str(config.distributed_type).rsplit(".", 1)[-1] in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    if str(config.distributed_type).endswith("DEEPSPEED"):
        json_file = Path(config.deepspeed_config["deepspeed_config_file"])
        assert (configs_dir().parent / json_file).is_file()
    if str(config.distributed_type).endswith("FSDP"):
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_recipe_launch_section_and_flags(tmp_path, write_recipe, cli):
    from tests.conftest import tiny_pretrain_recipe

    path = write_recipe({**tiny_pretrain_recipe(tmp_path), "launch": {"nproc": 2, "strategy": "zero3"}})
    result = cli("pretrain", "--recipe", str(path), "--strategy", "zero2", "--print-config")
    assert result.exit_code == 0, result.stderr
    launch = yaml.safe_load(result.stdout)["launch"]
    assert launch["nproc"] == 2 and launch["strategy"] == "zero2"  # the flag wins over the recipe
    bad = cli("pretrain", "--recipe", str(path), "--strategy", "zero9")
    assert bad.exit_code == 2 and "launch.strategy" in bad.stderr
