"""What every command shows and loads beside its own work: the library messages a user cannot act on are
dropped (and no other), and `plan` of a LoRA recipe imports neither PEFT nor bitsandbytes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings

import pytest

from llmtune.console import BNB_CPU_KERNEL, silence_library_noise
from tests.conftest import REPO


def _warn_from(module: str, message: str, category=FutureWarning) -> list[str]:
    """The messages shown when code whose __name__ is `module` warns `message`, with llmtune's filters."""
    code = compile("warnings.warn(message, category)", f"/fake/{module.replace('.', '/')}.py", "exec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        exec(code, {"__name__": module, "warnings": warnings, "message": message, "category": category})
    return [str(w.message) for w in caught]


def test_the_gradient_checkpointing_alias_warning_is_dropped_and_no_other():
    deprecated = (
        "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` "
        "instead."
    )
    assert _warn_from("transformers.modeling_utils", deprecated) == []
    other = "`some_other_method` is deprecated and will be removed in v6."
    assert _warn_from("transformers.modeling_utils", other) == [other]  # same module, another message
    # another category; the same text from elsewhere
    assert _warn_from("transformers.modeling_utils", deprecated, UserWarning) == [deprecated]
    assert _warn_from("mypackage.models", deprecated) == [deprecated]


def test_the_bitsandbytes_cpu_kernel_message_is_dropped_and_no_other(caplog):
    name, _ = BNB_CPU_KERNEL
    silence_library_noise()
    silence_library_noise()  # once per command: the filter is not added twice
    logger = logging.getLogger(name)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=name):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
            "`pip install kernels` and the kernels >= 0.11.1",
            OSError("offline"),
        )
        logger.warning("Failed to load the CPU library: %s", "libbitsandbytes_cpu.so")
        logging.getLogger("bitsandbytes.cextension").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: elsewhere"
        )
    assert [r.getMessage() for r in caplog.records] == [
        "Failed to load the CPU library: libbitsandbytes_cpu.so",
        "Failed to load CPU gemm_4bit_forward from kernels-community: elsewhere",
    ]


@pytest.mark.slow  # a subprocess that builds the quickstart's model on the meta device
def test_plan_of_a_lora_recipe_imports_no_peft_and_counts_as_before():
    code = (
        "import sys\nfrom llmtune.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(sorted(m for m in ('peft', 'bitsandbytes', 'trl') if m in sys.modules), file=sys.stderr)"
    )
    args = ["plan", "--recipe", "recipes/quickstart.yaml", "--target", "cpu", "--json"]

    def plan():
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=REPO
        )

    plan()  # the first run in a fresh $LLMTUNE_HOME writes HF's argument table, importing TRL for it
    out = plan()
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "[]"
    assert "is_gradient_checkpointing" not in out.stderr
    model = json.loads(out.stdout)["model"]
    # PEFT's own count (before the planner counted LoRA itself): r=16 on every linear layer but lm_head.
    assert (model["trainable_parameters"], model["parameters_with_adapter"]) == (4_884_480, 139_399_488)
