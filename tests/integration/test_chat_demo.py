"""llmtune chat on the demo model, piped stdin: its greedy answer is the one `llmtune eval --generate` writes
for the same question, and /save writes that turn."""

import json
import os
import subprocess

from tests.conftest import REPO

LLMTUNE = str(REPO / ".venv" / "bin" / "llmtune")
QUESTION = "What is the capital of France?"


def run(args, stdin=None):
    done = subprocess.run(
        [LLMTUNE, *args], input=stdin, capture_output=True, text=True, timeout=600, env=os.environ
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_chat_answers_as_eval_generate_does(tmp_path):
    saved = tmp_path / "talk.jsonl"
    transcript = run(
        ["chat", "--model", "smollm2-135m-instruct", "--max-new-tokens", "128"],
        f"{QUESTION}\n/save {saved}\n/exit\n",
    )
    assert "llmtune chat: smollm2-135m-instruct (model)" in transcript
    answer = transcript.split(f">>> {QUESTION}\n", 1)[1].split("\n>>> ", 1)[0]
    assert "Paris" in answer

    # eval's default for --generate is also 128 new tokens, greedy
    run(["eval", "--model", "smollm2-135m-instruct", "--generate", QUESTION, "--out", str(tmp_path / "eval")])
    (generations,) = (tmp_path / "eval").glob("generations-*.jsonl")
    row = json.loads(generations.read_text().splitlines()[0])
    assert row["prompt"] == QUESTION and row["output"] == answer

    saved_messages = json.loads(saved.read_text())["messages"]
    assert saved_messages == [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}]
