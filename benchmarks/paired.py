"""The paired benchmark protocol: every speed ratio the README reports comes from here.

This machine is shared and noisy (2 cores, other jobs come and go), so one run of each side proves
nothing. The protocol:
- warm up every side once (file cache, compiled kernels, the dequantised demo model), not measured;
- then interleave the sides A B A B ... for `pairs` rounds in one invocation, each run a fresh process
  with the same data order and seeds;
- the figure is the median of the per-pair ratios (B over A, of a rate such as real tokens/s), with the
  min-max of those ratios: noise that hits one pair moves one ratio, not the median.

A side is a function that runs one measured job and returns a dict with at least the numbers its rate
needs. `compare` runs two or more sides (the first is the reference A) and returns the report;
`run_json` runs a command that prints a JSON line last.

    from paired import Side, compare
    report = compare([Side("hand-written", run_a), Side("llmtune", run_b)], rate=tokens_per_second, pairs=3)
    print(report.text())
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Side:
    name: str
    run: Callable[[int], dict]  # called with the round number (0 = warm-up); returns the measured numbers


@dataclass
class Report:
    rate_name: str
    sides: list[str]
    runs: dict[str, list[dict]] = field(default_factory=dict)  # measured rounds only, in order
    rates: dict[str, list[float]] = field(default_factory=dict)

    def ratios(self, name: str, over: str | None = None) -> list[float]:
        """Per-pair ratios of side `name` over side `over` (default: the reference, the first side)."""
        reference = self.rates[over or self.sides[0]]
        return [b / a for a, b in zip(reference, self.rates[name], strict=True)]

    def summary(self, name: str, over: str | None = None) -> dict:
        ratios = self.ratios(name, over)
        return {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "pairs": len(ratios),
        }

    def ratio_text(self, name: str, over: str | None = None) -> str:
        s = self.summary(name, over)
        return (
            f"  {name} / {over or self.sides[0]}: median {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}; "
            f"{s['pairs']} interleaved pairs after a warm-up of each side)"
        )

    def text(self) -> str:
        lines = []
        for name in self.sides:
            values = ", ".join(f"{r:.1f}" for r in self.rates[name])
            lines.append(
                f"  {name:<34} {self.rate_name}: median {statistics.median(self.rates[name]):8.1f} ({values})"
            )
        lines += [self.ratio_text(name) for name in self.sides[1:]]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "rate": self.rate_name,
            "sides": self.sides,
            "runs": self.runs,
            "rates": self.rates,
            "ratios": {name: self.summary(name) for name in self.sides[1:]},
        }


def compare(
    sides: list[Side],
    *,
    rate: Callable[[dict], float],
    rate_name: str = "rate",
    pairs: int = 3,
    warm_up: bool = True,
    log=print,
) -> Report:
    """Warm up each side, then run the sides in turn `pairs` times (A B A B ..., or A B C A B C ...)."""
    if pairs < 3:
        raise SystemExit("the protocol needs at least 3 pairs: a single pair proves nothing here")
    report = Report(
        rate_name, [s.name for s in sides], {s.name: [] for s in sides}, {s.name: [] for s in sides}
    )
    if warm_up:
        for side in sides:
            started = time.perf_counter()
            side.run(0)
            log(f"warm-up {side.name}: {time.perf_counter() - started:.0f} s")
    for round_ in range(1, pairs + 1):
        for side in sides:
            result = side.run(round_)
            report.runs[side.name].append(result)
            report.rates[side.name].append(rate(result))
            log(f"round {round_} {side.name}: {rate_name} {rate(result):.2f}  {json.dumps(result)}")
    return report


def tokens_per_second(result: dict) -> float:
    return result["tokens"] / result["seconds"]


def run_json(command: list[str], *, cwd: Path = REPO, env: dict | None = None) -> dict:
    """Run a command (a fresh process) and return the JSON object printed on its last stdout line."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise SystemExit(f"benchmark side failed (exit {done.returncode}): {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_llmtune(command: str, recipe: Path, out: Path, overrides: list[str] = ()) -> dict:
    """Run `llmtune <command>` on a recipe into a fresh folder; returns its manifest's results."""
    args = [
        sys.executable,
        "-m",
        "llmtune",
        command,
        "--recipe",
        str(recipe),
        "--set",
        f"train.output_dir={out}",
    ]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"llmtune {command} failed (exit {done.returncode})")
    return json.loads((out / "manifest.json").read_text())["results"]


def write_report(path: Path | None, reports: dict[str, Report]) -> None:
    if path is not None:
        path.write_text(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=2) + "\n")
