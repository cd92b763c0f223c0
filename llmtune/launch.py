"""Multi-process training: re-launch under `accelerate launch`, turn a strategy into trainer arguments, and
check, once the trainer exists, that the processes really train together the way the user asked.

    llmtune sft --recipe X --nproc 2 --strategy zero3      (llmtune re-executes itself under accelerate)
    accelerate launch --num_processes 2 -m llmtune sft --recipe X --strategy ddp
    torchrun --nproc_per_node 2 -m llmtune sft --recipe X

Why the check: several wrong set-ups exit 0 without doing what was asked — DDP on CPU without
`use_cpu` trains N independent copies, `ACCELERATE_USE_CPU=1` switches DeepSpeed off, FSDP2 on CPU falls
back to DDP. After the trainer is built, every process compares world size, distributed type and
DeepSpeed/FSDP state with the request, and stops with an error naming the difference.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from llmtune.errors import LlmtuneError

log = logging.getLogger("llmtune")

STRATEGIES = ("single", "ddp", "fsdp", "zero2", "zero3", "zero3-offload")
DEEPSPEED_FILES = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3-offload": "zero3_offload.json"}
ZERO_STAGE = {"zero2": 2, "zero3": 3, "zero3-offload": 3}
EXPECT_ENV = "LLMTUNE_LAUNCH"  # what the re-launching parent asked for, for the children's check
# Command-line flags that only shape the launch; the children get the rest of the command line.
LAUNCH_FLAGS = {
    "--nproc": 1,
    "--nnodes": 1,
    "--node-rank": 1,
    "--main-process-ip": 1,
    "--main-process-port": 1,
    "--accelerate-config": 1,
}


@dataclass
class LaunchRequest:
    nproc: int = 1  # processes per node
    strategy: str = "single"
    nnodes: int = 1
    node_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500
    accelerate_config: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def configs_dir() -> Path:
    """deepspeed_configs/ beside the package (a checkout or an editable install)."""
    return Path(__file__).resolve().parents[1] / "deepspeed_configs"


def deepspeed_config(strategy: str) -> Path:
    path = configs_dir() / DEEPSPEED_FILES[strategy]
    if not path.is_file():
        raise LlmtuneError(
            f"--strategy {strategy}: {path} is missing; reinstall llmtune from its repository."
        )
    return path


def request_from(section, overrides: dict) -> LaunchRequest:
    """The recipe's `launch:` section with command-line flags on top."""
    values = section.model_dump() if section is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    request = LaunchRequest(**values)
    if request.strategy not in STRATEGIES:
        raise LlmtuneError(f"--strategy {request.strategy!r}: expected one of {', '.join(STRATEGIES)}.")
    if request.nproc < 1 or request.nnodes < 1:
        raise LlmtuneError("--nproc and --nnodes must be at least 1.")
    if not 0 <= request.node_rank < request.nnodes:
        raise LlmtuneError(f"--node-rank {request.node_rank} must be in [0, --nnodes {request.nnodes}).")
    if request.nnodes > 1 and not request.main_process_ip:
        raise LlmtuneError("--nnodes > 1 needs --main-process-ip (the address of the node with rank 0).")
    if request.world_size > 1 and request.strategy == "single":
        request.strategy = "ddp"
    if request.accelerate_config and not Path(request.accelerate_config).is_file():
        raise LlmtuneError(f"--accelerate-config {request.accelerate_config} does not exist.")
    return request


def inside_launcher() -> bool:
    """True in a process started by accelerate launch / torchrun / deepspeed (they set these)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def relaunch_command(request: LaunchRequest, argv: list[str]) -> list[str]:
    """`python -m accelerate.commands.launch ... -m llmtune <argv without the launch flags>`."""
    config = request.accelerate_config or str(configs_dir() / "accelerate" / "multi_process.yaml")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
    command += ["--num_processes", str(request.world_size), "--num_machines", str(request.nnodes)]
    command += [
        "--machine_rank",
        str(request.node_rank),
        "--main_process_port",
        str(request.main_process_port),
    ]
    if request.main_process_ip:
        command += ["--main_process_ip", request.main_process_ip]
    return [*command, "-m", "llmtune", *strip_launch_flags(argv)]


def strip_launch_flags(argv: list[str]) -> list[str]:
    out, skip = [], 0
    for item in argv:
        if skip:
            skip -= 1
            continue
        name = item.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = 0 if "=" in item else LAUNCH_FLAGS[name]
            continue
        out.append(item)
    return out


def relaunch(request: LaunchRequest, argv: list[str] | None) -> int:
    """Run the same command in `request.world_size` processes; returns their exit code. `argv` is the
    command line (None when llmtune was called from Python, which cannot be re-launched)."""
    if argv is None:
        raise LlmtuneError("a multi-process launch needs the llmtune command line (not an embedded call).")
    command = relaunch_command(request, argv)
    env = dict(os.environ)
    env[EXPECT_ENV] = json.dumps(asdict(request))
    env.pop("ACCELERATE_USE_CPU", None)  # it silently switches DeepSpeed off
    if request.strategy in ZERO_STAGE:
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    log.info("launching %d processes (%s): %s", request.world_size, request.strategy, shlex.join(command))
    return subprocess.call(command, env=env)


def expected_request(cli_request: LaunchRequest) -> LaunchRequest:
    """Inside a launched process: what the parent asked for, else the flags plus the launcher's world size."""
    if EXPECT_ENV in os.environ:
        return LaunchRequest(**json.loads(os.environ[EXPECT_ENV]))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    request = LaunchRequest(**{**asdict(cli_request), "nproc": world, "nnodes": 1})
    if world > 1 and request.strategy == "single":
        request.strategy = "ddp"
    return request


def current_request(recipe) -> LaunchRequest:
    """In this process: what is expected of it, from the parent's request or the recipe + launcher."""
    return expected_request(request_from(getattr(recipe, "launch", None), {}))


def trainer_arguments(request: LaunchRequest) -> dict:
    """TrainingArguments keys for the strategy (the recipe's own train keys win over these)."""
    if request.strategy in ZERO_STAGE:
        return {"deepspeed": str(deepspeed_config(request.strategy))}
    if request.strategy == "fsdp":
        # FULL_STATE_DICT: a save gathers the whole model on rank 0 instead of writing shards only.
        return {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {"version": 2, "state_dict_type": "FULL_STATE_DICT"},
        }
    return {}


def verify(trainer, request: LaunchRequest) -> str:
    """Stop unless the trainer's processes match `request`; returns a one-line description."""
    state = trainer.accelerator.state
    world = state.num_processes
    kind = str(state.distributed_type).rsplit(".", 1)[-1]
    problems = []
    if world != request.world_size:
        problems.append(
            f"asked for {request.world_size} processes training together but the trainer sees world size "
            f"{world}"
            + (
                " (each process is training alone on the whole data: on a machine without a GPU the trainer "
                "needs use_cpu, which llmtune sets unless train.use_cpu is false)"
                if world == 1
                else ""
            )
        )
    deepspeed = bool(getattr(trainer, "is_deepspeed_enabled", False))
    fsdp = bool(getattr(trainer, "is_fsdp_enabled", False))
    if request.strategy in ZERO_STAGE:
        stage = None
        if deepspeed:
            stage = state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage")
        if not deepspeed:
            problems.append(
                f"strategy {request.strategy} but DeepSpeed is not active (distributed type {kind}); "
                "ACCELERATE_USE_CPU=1 switches it off"
            )
        elif stage != ZERO_STAGE[request.strategy]:
            problems.append(f"strategy {request.strategy} but DeepSpeed runs ZeRO stage {stage}")
    elif request.strategy == "fsdp" and not fsdp:
        problems.append(f"strategy fsdp but FSDP is not active (distributed type {kind}; FSDP needs GPUs)")
    elif request.strategy in ("ddp", "single") and (deepspeed or fsdp):
        which = "DeepSpeed" if deepspeed else "FSDP"
        problems.append(f"strategy {request.strategy} but {which} is active (from the accelerate config?)")
    if problems:
        raise LlmtuneError(
            "the launch is not what was asked for: " + "; ".join(problems) + ".",
            hint="Launch with `llmtune <command> --nproc N --strategy S`, or pass the same --strategy to "
            "`accelerate launch -m llmtune ...` / `torchrun -m llmtune ...` so llmtune can check it.",
        )
    description = f"world size {world}, {request.strategy}"
    if deepspeed:
        description += f" (DeepSpeed ZeRO-{ZERO_STAGE.get(request.strategy)})"
    if world > 1:
        import torch.distributed as dist

        description += f", backend {dist.get_backend() if dist.is_initialized() else '?'}"
    return description


def finish() -> None:
    """Tear the process group down (a rank can abort at exit otherwise)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
