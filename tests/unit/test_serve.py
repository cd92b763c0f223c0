"""`llmtune serve` checked with a client nobody here wrote: the official `openai` package (and raw httpx for
what that client refuses to send), against a real uvicorn server on 127.0.0.1 serving a tiny random model
with a chat template."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx2")  # the HTTP client the openai package itself uses

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
KEY = "test-key-123"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, gpt2_tokenizer):
    """A tiny random Llama with a chat template (end of turn = GPT-2's EOS) and room for long answers."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.conftest import TINY_LLAMA

    folder = tmp_path_factory.mktemp("tiny_chat")
    torch.manual_seed(0)
    sizes = {k: v for k, v in TINY_LLAMA.items() if k != "architecture"} | {"max_position_embeddings": 1024}
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.chat_template = TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **sizes)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Server:
    """uvicorn in a thread, on a free port, serving build_app(engine)."""

    def __init__(self, engine, **limits):
        import uvicorn

        from llmtune.serving.openai_api import Limits, build_app
        from llmtune.stages.serve import bind

        self.engine = engine
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = build_app(engine, served_name="tiny", api_key=KEY, limits=Limits(**limits))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.05)

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def post(self, path, body=None, *, content=None, key=KEY, headers=None):
        headers = {"Authorization": f"Bearer {key}", **(headers or {})}
        if body is not None:
            content = json.dumps(body)
            headers["Content-Type"] = "application/json"
        return httpx.post(self.url + path, content=content, headers=headers, timeout=120)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def engine(chat_model):
    from llmtune.serving.engine import load_engine

    return load_engine(str(chat_model))


@pytest.fixture(scope="module")
def server(engine):
    running = Server(engine, max_tokens=1000, max_body_bytes=20_000, max_queue=64)
    yield running
    running.stop()


def ask(client, prompt, **kw):
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": prompt}], temperature=0, **kw
    )


def test_models_lists_the_served_model(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert server.client().models.retrieve("tiny").id == "tiny"


def test_greedy_answer_equals_eval_generate(server, engine):
    """What `llmtune eval --generate` answers (evaluation.generation.generate) is what the server answers."""
    from llmtune.evaluation.generation import generate
    from llmtune.recipe.eval import GenerateTaskSection

    prompts = ["Tell me about the sea.", "What is two plus two?"]
    section = GenerateTaskSection(prompts=prompts, max_new_tokens=24, batch_size=1, system="Be brief.")
    expected = generate(engine.model, engine.tokenizer, prompts, section)
    for prompt, row in zip(prompts, expected, strict=True):
        reply = server.client().chat.completions.create(
            model="tiny",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
            max_tokens=24,
            temperature=0,
        )
        assert reply.choices[0].message.content == row["output"]
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == row["new_tokens"] == 24
        rendered = engine.tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
        )
        prompt_tokens = len(engine.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert reply.usage.prompt_tokens == prompt_tokens
        assert reply.usage.total_tokens == prompt_tokens + 24


def test_streamed_chunks_concatenate_to_the_answer(server):
    client = server.client()
    whole = ask(client, "Write a long story.", max_tokens=60)
    stream = ask(
        client, "Write a long story.", max_tokens=60, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 5  # really streamed, not one block
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 60


def test_text_completions_keep_the_leading_space_and_stream_the_same(server, engine):
    client = server.client()
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0)
    ids = engine.tokenizer("Once upon a time")["input_ids"]
    out = engine.model.generate(
        input_ids=__import__("torch").tensor([ids]), max_new_tokens=20, do_sample=False
    )[0, len(ids) :]
    assert whole.choices[0].text == engine.tokenizer.decode(out, skip_special_tokens=True)
    streamed = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_stop_strings_cut_the_answer_before_them(server):
    client = server.client()
    full = ask(client, "Count for me.", max_tokens=40).choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]
    expected = full[: full.index(stop)].strip()
    reply = ask(client, "Count for me.", max_tokens=40, stop=[stop])
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens < 40
    streamed = ask(client, "Count for me.", max_tokens=40, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_the_end_of_turn_token_ends_the_answer(chat_model):
    """Make a token the model emits greedily the end-of-turn stop id: the answer ends before it, with
    finish_reason stop, and the token's text never shows."""
    from llmtune.serving.engine import Engine, Sampling, load_engine

    engine = load_engine(str(chat_model))
    ids = engine.encode_chat([{"role": "user", "content": "Go on."}])
    free = engine.complete(ids, Sampling(max_new_tokens=12, temperature=0))
    stop_id = free.token_ids[5]
    first = free.token_ids.index(stop_id)
    engine.model.generation_config.eos_token_id = [engine.tokenizer.eos_token_id, stop_id]
    stopped = Engine(engine.model, engine.tokenizer, name="tiny")
    running = Server(stopped)
    try:
        reply = ask(running.client(), "Go on.", max_tokens=12)
    finally:
        running.stop()
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == first
    assert reply.choices[0].message.content == engine.tokenizer.decode(free.token_ids[:first]).strip()


def test_twenty_concurrent_requests_get_their_own_answers(server):
    """Each of 20 simultaneous requests (different prompts and lengths, greedy and seeded sampling) gets the
    answer it gets alone."""
    client = server.client()
    jobs = [
        {"prompt": f"Question number {i}: why?", "max_tokens": 8 + i, "temperature": 0.9 if i % 3 == 0 else 0}
        | ({"seed": 100 + i} if i % 3 == 0 else {})
        for i in range(20)
    ]

    def one(job):
        reply = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": job["prompt"]}],
            **{k: v for k, v in job.items() if k != "prompt"},
        )
        return reply.choices[0].message.content, reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        together = list(pool.map(one, jobs))
    alone = [one(job) for job in jobs]
    assert together == alone
    assert len({text for text, _ in together}) == 20
    assert [n for _, n in together] == [8 + i for i in range(20)]


BAD = [
    ({"messages": "hi"}, "messages"),
    ({"model": "tiny"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x " * 900}], "max_tokens": 200}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x " * 1100}]}, "messages"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_requests_get_400_with_a_json_error_and_the_server_stays_up(server, body, param):
    reply = server.post("/v1/chat/completions", body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"] and "Traceback" not in reply.text
    assert ask(server.client(), "still there?", max_tokens=3).usage.completion_tokens == 3


def test_invalid_json_unknown_model_key_and_size(server):
    as_json = {"Content-Type": "application/json"}
    reply = server.post("/v1/chat/completions", content="{not json", headers=as_json)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"]
    assert server.post("/v1/completions", content="[1, 2", headers=as_json).status_code == 400
    assert server.post("/v1/chat/completions", content="{not json").status_code == 400  # no content type
    with pytest.raises(openai.NotFoundError, match="not served here"):
        server.client().chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        ask(server.client(key="wrong"), "x", max_tokens=2)
    assert server.post("/v1/chat/completions", {"messages": []}, key="Bearer").status_code == 401
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # a probe needs no key
    big = {"messages": [{"role": "user", "content": "y" * 30_000}]}
    assert server.post("/v1/chat/completions", big).status_code == 413

    def chunked():  # no content-length: the limit is counted as the body arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"z" * 1000
        yield b'"}]}'

    reply = httpx.post(
        server.url + "/v1/chat/completions",
        content=chunked(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert reply.status_code == 413 and "--max-body-bytes" in reply.json()["error"]["message"]
    assert ask(server.client(), "alive?", max_tokens=2).usage.completion_tokens == 2


def test_a_client_that_hangs_up_frees_the_model(server, engine):
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "ramble"}], "max_tokens": 900, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
        next(lines)
    started = time.time()
    assert ask(server.client(), "next", max_tokens=4).usage.completion_tokens == 4
    # 900 tokens take the tiny model many seconds here; the next request did not wait for them.
    assert time.time() - started < 20
    deadline = time.time() + 10
    while engine.lock.locked() and time.time() < deadline:
        time.sleep(0.05)
    assert not engine.lock.locked()


def test_a_full_queue_answers_503_and_recovers(engine):
    running = Server(engine, max_queue=1)
    try:
        body = {"messages": [{"role": "user", "content": "long"}], "max_tokens": 400, "temperature": 0}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = sorted(
                pool.map(lambda _: running.post("/v1/chat/completions", body).status_code, range(4))
            )
        assert 200 in codes and 503 in codes, codes
        assert running.post("/v1/chat/completions", body | {"max_tokens": 2}).status_code == 200
    finally:
        running.stop()


@pytest.mark.slow
def test_serve_command_binds_loopback_prints_its_url_and_stops_on_ctrl_c(chat_model, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "LLMTUNE_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "serve", "--model", str(chat_model), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        assert found, line + process.stderr.read() if process.poll() is not None else line
        client = openai.OpenAI(base_url=found.group(1) + "/v1", api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(
            model=str(chat_model), messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage.completion_tokens == 3
        with pytest.raises(openai.AuthenticationError):  # the key came from $LLMTUNE_API_KEY
            openai.OpenAI(base_url=found.group(1) + "/v1", api_key="nope", max_retries=0).models.list()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stdout.read()
    finally:
        process.kill()


def test_serve_input_errors_exit_2_before_the_model_loads(cli, tmp_path):
    from llmtune.stages.serve import bind

    held = bind("127.0.0.1", 0)
    try:
        port = str(held.getsockname()[1])
        result = cli("serve", "--model", str(tmp_path / "missing"), "--port", port)
        assert result.exit_code == 2 and "cannot listen on 127.0.0.1:" + port in result.stderr
    finally:
        held.close()
    result = cli("serve", "--model", str(tmp_path / "missing"), "--port", "0")
    assert result.exit_code == 2 and "missing" in result.stderr and "Traceback" not in result.stderr
    for flags, text in (
        (["--port", "70000"], "--port 70000"),
        (["--max-tokens-limit", "0"], "--max-tokens-limit 0"),
        (["--api-key", " "], "--api-key is empty"),
        (["--dtype", "int3"], "--dtype"),
    ):
        result = cli("serve", "--model", "x", *flags)
        assert result.exit_code == 2 and text in result.stderr, result.stderr


def _eval_answers(cli, model: str, prompts: list[str], out, max_new_tokens: int) -> list[str]:
    args = ["eval", "--model", model, "--out", str(out), "--set", f"generate.max_new_tokens={max_new_tokens}"]
    for prompt in prompts:
        args += ["--generate", prompt]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in next(out.glob("generations-*.jsonl")).read_text().splitlines()]
    return [row["output"] for row in rows]


@pytest.mark.slow  # trains an adapter
def test_an_adapter_run_is_served_as_eval_answers_it(tmp_path, tiny_pretrained, cli):
    """The run's own chat template and stop tokens, on the base with the adapter applied (not merged)."""
    from llmtune.serving.engine import load_engine
    from tests.unit.test_merge import _train

    run = _train(tmp_path, tiny_pretrained, {"method": "lora", "r": 4})
    prompts = ["What is llmtune?", "How do I train?"]
    expected = _eval_answers(cli, str(run), prompts, tmp_path / "eval", 6)
    engine = load_engine(str(run))
    assert engine.kind == "adapter" and engine.has_template
    running = Server(engine)
    try:
        got = [ask(running.client(), p, max_tokens=6).choices[0].message.content for p in prompts]
    finally:
        running.stop()
    assert got == expected


@pytest.mark.slow  # writes a GGUF
def test_an_export_folder_is_served_and_evaluated_from_its_gguf(tmp_path, chat_model, cli):
    from llmtune.serving.engine import Sampling, load_engine

    out = tmp_path / "export"
    result = cli(
        "export", "--model", str(chat_model), "--format", "gguf", "--quant", "f32", "--out", str(out)
    )
    assert result.exit_code == 0, result.stderr
    assert not (out / "config.json").exists() and len(list(out.glob("*.gguf"))) == 1
    engine = load_engine(str(out))
    assert engine.kind == "gguf" and engine.tokenizer.chat_template == TEMPLATE
    answer = engine.complete(engine.encode_chat([{"role": "user", "content": "Hi there"}]), Sampling(5, 0))
    assert [answer.text] == _eval_answers(cli, str(out), ["Hi there"], tmp_path / "eval", 5)
