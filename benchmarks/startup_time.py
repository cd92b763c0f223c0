"""Wall time of the commands that should answer at once (`--help`, `--print-config`, `plan`, `data check`),
this checkout against another, as a ratio from interleaved pairs.

    .venv/bin/python benchmarks/startup_time.py --baseline /path/to/other/checkout [--pairs 5]

The other checkout is run with this checkout's .venv (its own llmtune package first on sys.path), so that
only llmtune's code differs. Each pair runs A (the baseline) then B (this checkout) once per command, A B A
B ..., after one warm-up of each (file cache, and the $LLMTUNE_HOME argument table of this checkout); the
report is the median of the per-pair ratios B/A and their spread, and the median times. (The recipes read
../shared/data beside the checkout: give the baseline a ../shared too.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--help": ["--help"],
    "sft --print-config": ["sft", "--recipe", "recipes/quickstart.yaml", "--print-config"],
    "plan (quickstart: LoRA)": ["plan", "--recipe", "recipes/quickstart.yaml", "--target", "cpu"],
    "plan (GPT-2: full)": [
        "plan",
        "--recipe",
        "recipes/pretrain/gpt2-124m-the-verdict.yaml",
        "--target",
        "cpu",
    ],
    "data check (quickstart)": ["data", "check", "--recipe", "recipes/quickstart.yaml"],
}


def wall(checkout: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "llmtune", *args],
        cwd=checkout,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of llmtune")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=list(COMMANDS), help="these commands only")
    options = parser.parse_args()
    for name, args in COMMANDS.items():
        if options.only and name not in options.only:
            continue
        wall(options.baseline, args), wall(HERE, args)  # warm-up
        a, b = [], []
        for _ in range(options.pairs):
            a.append(wall(options.baseline, args))
            b.append(wall(HERE, args))
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(
            f"{name:<24} A {statistics.median(a):6.2f} s  B {statistics.median(b):6.2f} s  "
            f"B/A median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, "
            f"{options.pairs} interleaved pairs)",
            flush=True,
        )


if __name__ == "__main__":
    main()
