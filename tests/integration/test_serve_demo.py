"""Integration: `llmtune serve` on the demo SmolLM2-135M-Instruct, started as a user starts it, queried with
the official `openai` client: greedy answers equal `llmtune eval --generate`, the trained end-of-turn token
(<|im_end|>) ends them, and streaming gives the same text."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

openai = pytest.importorskip("openai")

DEMO = "smollm2-135m-instruct"
PROMPTS = ["What is the capital of France?", "Name three primary colors.", "What is 2 + 2?"]


def test_served_demo_answers_equal_eval_generate(tmp_path, cli):
    process = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "serve", "--model", DEMO, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert found, line + (process.stderr.read() if process.poll() is not None else "")
        client = openai.OpenAI(base_url=found.group(1), api_key="none", max_retries=0, timeout=300)

        args = [
            "eval",
            "--model",
            DEMO,
            "--out",
            str(tmp_path / "eval"),
            "--set",
            "generate.max_new_tokens=48",
        ]
        for prompt in PROMPTS:
            args += ["--generate", prompt]
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        rows = [
            json.loads(x)
            for x in next((tmp_path / "eval").glob("generations-*.jsonl")).read_text().splitlines()
        ]

        for prompt, row in zip(PROMPTS, rows, strict=True):
            messages = [{"role": "user", "content": prompt}]
            reply = client.chat.completions.create(
                model=DEMO, messages=messages, max_tokens=48, temperature=0
            )
            choice = reply.choices[0]
            assert choice.message.content == row["output"]
            assert reply.usage.completion_tokens == row["new_tokens"]
            assert choice.finish_reason == ("stop" if row["stopped"] == "end" else "length")
            assert "<|im_end|>" not in choice.message.content
            streamed = client.chat.completions.create(
                model=DEMO, messages=messages, max_tokens=48, temperature=0, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == row["output"]
        assert "Paris" in rows[0]["output"] and rows[0]["stopped"] == "end"  # ended by <|im_end|>
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
