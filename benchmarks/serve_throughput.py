"""Requests/s and tokens/s of `llmtune serve` at concurrency 1 and 8, measured with the official openai client.

    .venv/bin/python benchmarks/serve_throughput.py [--model smollm2-135m-instruct] [--rounds 3]
        [--requests 16] [--max-tokens 64] [--out runs/serve-throughput.json]

One server process; rounds alternate concurrency 1 and 8 (1 8 1 8 ...) so that the shared machine's noise
falls on both alike. Each round sends the same `--requests` chat requests (16 different prompts, greedy,
max_tokens fixed). Per round: requests/s, completion tokens/s (from each response's usage) and the mean
latency; the summary gives the median and spread (min-max) over rounds, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Name three primary colors.",
    "What is 12 times 12?",
    "Write a haiku about the sea.",
    "What does a CPU do?",
    "Give me a tip for learning a language.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Describe a cat in one sentence.",
    "What is machine learning?",
    "List two uses of copper.",
    "Why is the sky blue?",
    "How many days are in a leap year?",
    "What is a prime number?",
    "Suggest a name for a bakery.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default="runs/serve-throughput.json")
    args = parser.parse_args()

    import openai

    server = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "serve", "--model", args.model, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        found = re.search(r"at (http://\S+/v1)", server.stdout.readline())
        if not found:
            sys.exit("the server did not start")
        client = openai.OpenAI(base_url=found.group(1), api_key="none", max_retries=0, timeout=600)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]

        def one(prompt: str):
            started = time.perf_counter()
            reply = client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=args.max_tokens,
                temperature=0,
            )
            return reply.usage.completion_tokens, time.perf_counter() - started

        one(prompts[0])  # warm-up, not counted
        rounds: dict[int, list[dict]] = {1: [], 8: []}
        for _ in range(args.rounds):
            for concurrency in (1, 8):
                started = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    done = list(pool.map(one, prompts))
                seconds = time.perf_counter() - started
                tokens = sum(n for n, _ in done)
                rounds[concurrency].append(
                    {
                        "seconds": round(seconds, 3),
                        "requests_per_s": round(len(done) / seconds, 4),
                        "tokens_per_s": round(tokens / seconds, 2),
                        "completion_tokens": tokens,
                        "mean_latency_s": round(statistics.mean(t for _, t in done), 3),
                    }
                )
                print(f"concurrency {concurrency}: {rounds[concurrency][-1]}", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)

    def summary(rows: list[dict], key: str) -> dict:
        values = [r[key] for r in rows]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {
        "model": args.model,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "rounds": rounds,
        "summary": {
            str(c): {k: summary(rows, k) for k in ("requests_per_s", "tokens_per_s", "mean_latency_s")}
            for c, rows in rounds.items()
        },
        "ratio_8_over_1": {
            k: round(
                statistics.median(r[k] for r in rounds[8]) / statistics.median(r[k] for r in rounds[1]), 3
            )
            for k in ("requests_per_s", "tokens_per_s", "mean_latency_s")
        },
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"summary": result["summary"], "ratio_8_over_1": result["ratio_8_over_1"]}, indent=1))


if __name__ == "__main__":
    main()
