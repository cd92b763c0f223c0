"""llmtune chat without a terminal: a session on a tiny random Llama with a ChatML template is fed lines
and its output captured. Streaming, greedy answers equal to eval --generate, the commands, /save read back
by sft's own reader, the context guard, a real SIGINT during an answer, and the flag and model errors."""

import dataclasses
import json
import os
import random
import signal
import threading
import time

import pytest

from tests.conftest import GPT2_TOKENIZER, TINY_LLAMA

CONTEXT = 512


def save_tiny_chat_model(folder, context: int = CONTEXT):
    """A tiny random Llama with ChatML and <|im_end|> as its end of turn, and room for a few turns."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmtune.data.templates import apply_template
    from llmtune.models import load_tokenizer
    from llmtune.recipe import ModelSection

    tokenizer = load_tokenizer(
        ModelSection(from_config={"architecture": "gpt2"}, tokenizer=str(GPT2_TOKENIZER)), None
    )
    apply_template(tokenizer, "chatml")
    tokenizer.eos_token = "<|im_end|>"
    torch.manual_seed(0)
    sizes = {k: v for k, v in TINY_LLAMA.items() if k != "architecture"}
    sizes["max_position_embeddings"] = context
    config = LlamaConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **sizes)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))


@pytest.fixture(scope="module")
def engine(chat_folder):
    from llmtune.serving.engine import load_engine

    return load_engine(str(chat_folder))


class Recording:
    """A text stream that keeps each write apart (to see the deltas), calling `on_write` after each."""

    def __init__(self, on_write=None):
        self.writes: list[str] = []
        self.on_write = on_write

    def write(self, text: str) -> int:
        self.writes.append(text)
        if self.on_write:
            self.on_write(self)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "".join(self.writes)


def session_on(engine, out=None, system=None, **settings):
    from llmtune.serving.chat_session import ChatSession, ChatSettings

    return ChatSession(engine, ChatSettings(**settings), system=system, out=out or Recording())


@pytest.fixture
def generations(engine, monkeypatch):
    """Each generation's (prompt ids, Sampling), recorded as the engine is asked."""
    asked = []
    stream = engine.stream

    def recorded(prompt_ids, sampling, cancel=None, **kwargs):
        asked.append((list(prompt_ids), sampling))
        return stream(prompt_ids, sampling, cancel, **kwargs)

    monkeypatch.setattr(engine, "stream", recorded)
    return asked


# ------------------------------------------------------------------------------------------ answers
def test_streamed_deltas_are_the_answer_and_greedy_equals_eval_generate(engine):
    from llmtune.evaluation.generation import generate
    from llmtune.recipe.eval import GenerateTaskSection

    out = Recording()
    session = session_on(engine, out, system="You are terse.", max_new_tokens=16)
    session.handle("What is LoRA?")
    answer = session.turns[-1].answer
    deltas = out.writes[: out.writes.index("\n")]
    assert answer and len(deltas) > 1  # streamed token by token, not printed at the end
    assert "".join(deltas) == answer

    section = GenerateTaskSection(prompts=["What is LoRA?"], system="You are terse.", max_new_tokens=16)
    assert generate(engine.model, engine.tokenizer, ["What is LoRA?"], section)[0]["output"] == answer


def test_system_reset_and_greedy_regen(engine, generations):
    out = Recording()
    session = session_on(engine, out, max_new_tokens=8)
    session.handle("/system")
    assert "[no system prompt]" in out.text()
    session.handle("/system Answer like a pirate.")
    session.handle("/system")
    assert "[system prompt: Answer like a pirate.]" in out.text()
    session.handle("  ")  # ignored: nothing generated, nothing printed
    assert generations == []
    session.handle("Hello")
    first = session.turns[0].answer
    assert "Answer like a pirate." in engine.tokenizer.decode(generations[-1][0])
    session.handle("/regen")
    assert len(session.turns) == 1 and session.turns[0].answer == first  # greedy: the same answer again
    session.handle("/reset")
    assert session.turns == [] and session.system == "Answer like a pirate."
    assert "[conversation cleared; the system prompt is kept]" in out.text()
    session.handle("/regen")
    assert "[nothing to regenerate yet" in out.text() and len(generations) == 2
    session.handle("/nonsense")
    assert "[unknown command /nonsense" in out.text() and "/save FILE" in out.text()
    assert session.handle("/exit") is False


def test_seeded_sampling_regen_differs_and_a_session_replays(engine, generations):
    def play():
        session = session_on(engine, temperature=1.0, top_k=0, max_new_tokens=12, seed=7)
        session.handle("Tell me a story.")
        first = session.turns[-1].answer
        session.handle("/regen")
        session.handle("And then?")
        return [first] + [turn.answer for turn in session.turns]

    one = play()
    assert one[0] != one[1]  # /regen draws a new sample
    assert [sampling.seed for _, sampling in generations] == [7, 8, 9]
    assert play() == one  # the same seed replays the whole session


def test_top_k_zero_samples_from_the_whole_vocabulary(engine, generations, monkeypatch):
    # transformers turns a missing top_k into its default of 50; "0: off" must not become top-k 50.
    from transformers.generation import logits_process

    used = []
    call = logits_process.TopKLogitsWarper.__call__

    def record(self, input_ids, scores):
        used.append(self.top_k)
        return call(self, input_ids, scores)

    monkeypatch.setattr(logits_process.TopKLogitsWarper, "__call__", record)
    session_on(engine, temperature=1.0, top_k=0, max_new_tokens=2, seed=0).handle("Hi")
    assert generations[-1][1].top_k == 0 and used == []  # no top-k filter at all
    session_on(engine, temperature=1.0, top_k=5, max_new_tokens=2, seed=0).handle("Hi")
    assert used == [5, 5]  # the same path does filter when asked


# ------------------------------------------------------------------------------------------ /save
def test_save_writes_what_sft_reads(engine, tmp_path):
    from llmtune.data.chat_dataset import load_examples
    from llmtune.recipe.data import ChatDataSection

    out = Recording()
    session = session_on(engine, out, system="Be kind.", max_new_tokens=6)
    session.handle("First question")
    session.handle("Second question")
    path = tmp_path / "talk.jsonl"
    session.handle(f"/save {path}")
    assert f"[saved 2 turn(s) to {path}" in out.text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.jsonl"]  # no temporary file left
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"messages": session.saved_messages()}

    examples, report = load_examples(ChatDataSection(train_files=[str(path)]), preference=False)
    assert report.formats == {str(path): "messages"}
    assert examples["train"][0].messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": session.turns[0].answer},
        {"role": "user", "content": "Second question"},
        {"role": "assistant", "content": session.turns[1].answer},
    ]


def test_save_leaves_out_an_empty_answer(engine, tmp_path):
    # An answer stopped before its first token, or an end of turn at once: sft would refuse the whole row.
    from llmtune.serving.chat_session import Turn

    out = Recording()
    session = session_on(engine, out)
    session.turns = [Turn("Hello", "Hi."), Turn("Go on", "")]
    session.handle(f"/save {tmp_path / 'talk.jsonl'}")
    assert "[saved 1 turn(s)" in out.text() and "left out 1 turn(s) with an empty answer" in out.text()
    saved = json.loads((tmp_path / "talk.jsonl").read_text())["messages"]
    assert saved == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}]


def test_save_never_replaces_a_file(engine, tmp_path):
    from llmtune.serving.chat_session import write_new_file

    out = Recording()
    session = session_on(engine, out, max_new_tokens=4)
    session.handle(f"/save {tmp_path / 'early.jsonl'}")
    assert "[nothing to save yet" in out.text() and not (tmp_path / "early.jsonl").exists()
    session.handle("Hello")
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes(b"my own data\n\x00\xff")
    session.handle(f"/save {mine}")
    assert f"[not saved: {mine} exists, and llmtune never replaces a file" in out.text()
    assert mine.read_bytes() == b"my own data\n\x00\xff"
    session.handle(f"/save {tmp_path / 'no' / 'such' / 'folder.jsonl'}")
    assert "does not exist]" in out.text()
    # A file that appears after the check (another program) is not replaced either: the link refuses it.
    with pytest.raises(FileExistsError):
        write_new_file(mine, "replacement\n")
    assert mine.read_bytes() == b"my own data\n\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.jsonl"]


# ------------------------------------------------------------------------------------------ context
def test_a_long_history_is_truncated_to_fit_the_context(engine, generations, tmp_path):
    out = Recording()
    session = session_on(engine, out, system="Short system.", max_new_tokens=100)
    session.handle("apple " * 150)
    session.handle("banana " * 150)  # 150 + 100 (answer) + 150 + 100 new tokens > 512
    assert (
        f"[history truncated: dropped the 1 oldest turn(s) to fit the model's context of {CONTEXT} tokens]"
        in (out.text())
    )
    prompt = engine.tokenizer.decode(generations[-1][0])
    assert "banana" in prompt and "apple" not in prompt and "Short system." in prompt
    assert len(generations[-1][0]) + generations[-1][1].max_new_tokens <= CONTEXT
    session.handle(f"/save {tmp_path / 'all.jsonl'}")  # /save keeps what the model no longer sees
    saved = json.loads((tmp_path / "all.jsonl").read_text())["messages"]
    assert [m["content"].split()[0] for m in saved if m["role"] == "user"] == ["apple", "banana"]


def test_a_message_near_the_context_gets_a_shorter_answer(engine, generations):
    out = Recording()
    session = session_on(engine, out, max_new_tokens=100)
    session.handle("cherry " * 440)
    prompt_ids, sampling = generations[-1]
    room = CONTEXT - len(prompt_ids)
    assert 0 < room < 100 and sampling.max_new_tokens == room
    assert f"[the answer can be at most {room} tokens" in out.text()
    assert f"[cut at {room} tokens: the context's room]" in out.text()


def test_a_message_that_leaves_no_room_is_refused(engine, generations):
    out = Recording()
    session = session_on(engine, out, max_new_tokens=16)
    session.handle("Hello")
    message = "plum " * 600
    session.handle(message)
    tokens = len(engine.tokenizer(message.strip())["input_ids"])
    assert f"[not sent: your message is {tokens} tokens" in out.text()
    assert f"the model's context is {CONTEXT} tokens, which leaves no room for an answer" in out.text()
    assert len(generations) == 1 and len(session.turns) == 1  # not generated, not kept
    session.handle("Still there?")
    assert len(session.turns) == 2 and session.first_seen == 0


# ------------------------------------------------------------------------------------------ Ctrl-C
@pytest.mark.parametrize("where", ["while printing", "while waiting for a token"])
def test_ctrl_c_stops_the_answer_and_the_session_goes_on(engine, where):
    """A real SIGINT, as a terminal sends it, during a 400-token answer."""
    first_delta = threading.Event()

    def on_write(stream):
        if len(stream.writes) == 3 and where == "while printing":
            os.kill(os.getpid(), signal.SIGINT)
        first_delta.set()

    def interrupt_soon():
        first_delta.wait(30)
        os.kill(os.getpid(), signal.SIGINT)

    if where == "while waiting for a token":
        threading.Thread(target=interrupt_soon, daemon=True).start()
    out = Recording(on_write)
    session = session_on(engine, out, max_new_tokens=400)
    session.handle("Go on and on")
    text = out.text()
    assert text.endswith(" [stopped]\n")
    answer = session.turns[-1].answer
    assert text == answer + " [stopped]\n"  # the partial answer kept is the text shown
    assert len(engine.tokenizer(answer)["input_ids"]) < 300
    assert not engine.lock.locked()
    assert not [t for t in threading.enumerate() if t.name == "llmtune-chat-answer"]
    assert engine._worker.jobs.empty()  # the engine's one generation thread is idle again
    out.on_write = None
    session.settings = dataclasses.replace(session.settings, max_new_tokens=5)
    session.handle("/regen" if where == "while printing" else "Next")
    assert "[cut at" in out.text().split(" [stopped]\n")[1]  # the next answer runs to its end


ROUNDS = 12


def test_a_burst_of_ctrl_c_at_random_moments_always_stops_cleanly(engine):
    """Ctrl-C pressed repeatedly at random moments of several answers: each ends " [stopped]" and the
    session goes on. (A KeyboardInterrupt landing inside the queue's lock once ended a session with exit 1.)"""
    rng = random.Random(0)
    out = Recording()
    session = session_on(engine, out, max_new_tokens=400)
    answering = threading.Event()
    strays = []  # presses that land after an answer has ended: recorded here instead of raising in the test

    def like_python(signum, frame):  # Python's own handler while an answer runs, a no-op outside one
        if answering.is_set():
            raise KeyboardInterrupt
        strays.append(signum)

    outside = signal.signal(signal.SIGINT, like_python)
    try:
        for round_ in range(ROUNDS):
            started = threading.Event()
            out.on_write = lambda stream, started=started: started.set()
            presses = rng.randint(1, 40)
            delays = [rng.choice([0, 0.0005, 0.002, 0.01]) for _ in range(presses)]

            def burst(started=started, delays=delays):
                started.wait(30)
                for delay in delays:
                    time.sleep(delay)
                    os.kill(os.getpid(), signal.SIGINT)

            presser = threading.Thread(target=burst, daemon=True)
            presser.start()
            answering.set()
            session.handle(f"Go on, round {round_}")
            answering.clear()
            presser.join(30)
            assert out.text().endswith(" [stopped]\n"), out.text()[-200:]
            assert not engine.lock.locked() and engine._worker.jobs.empty()
            assert signal.getsignal(signal.SIGINT) is like_python  # the handler it found is back
    finally:
        signal.signal(signal.SIGINT, outside)
    assert len(session.turns) == ROUNDS and len(strays) < ROUNDS * 40


# ------------------------------------------------------------------------------------------ the command
def chat_command(args, stdin):
    from typer.testing import CliRunner

    from llmtune.cli import app

    return CliRunner().invoke(app, ["chat", *args], input=stdin, catch_exceptions=False)


def test_a_piped_session_end_to_end(chat_folder, tmp_path):
    result = chat_command(
        ["--model", str(chat_folder), "--max-new-tokens", "5", "--system", "Be brief."],
        "Hello\n\n/bogus\n/exit\nnot read\n",
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"llmtune chat: {chat_folder} (model)\n")
    assert "an answer ends at <|im_end|>" in out and f"context        {CONTEXT} tokens" in out
    assert "greedy (temperature 0); at most 5 new tokens" in out and "system prompt  Be brief." in out
    assert "\n>>> Hello\n" in out and "[unknown command /bogus" in out and "not read" not in out
    # Ctrl-D (the end of input) ends the session as /exit does
    assert chat_command(["--model", str(chat_folder), "--max-new-tokens", "3"], "Hi\n").exit_code == 0


def test_a_model_without_a_template_is_said_so(tiny_pretrained):
    result = chat_command(["--model", str(tiny_pretrained), "--max-new-tokens", "3"], "One\nTwo\n")
    assert result.exit_code == 0, result.stderr
    assert "none: messages are given as plain text" in result.stdout and result.stdout.count("[cut at 3") == 2
    assert "no chat template" in result.stderr


def test_without_a_template_no_history_is_dropped(tiny_pretrained, monkeypatch):
    # Without a template the prompt is the new message alone: dropping history would not make room.
    from llmtune.serving.engine import load_engine

    engine = load_engine(str(tiny_pretrained))
    monkeypatch.setattr(engine, "context", 20)  # a short context, for short answers
    out = Recording()
    session = session_on(engine, out, max_new_tokens=18)
    session.handle("One")  # 1 + 18 tokens fit in 20
    session.handle("Two three four")  # 3 + 18 do not: a shorter answer, nothing dropped
    assert "[the answer can be at most 17 tokens" in out.text() and "history truncated" not in out.text()
    assert session.first_seen == 0 and len(session.turns) == 2


def test_ctrl_c_at_the_prompt_gives_a_hint_and_a_new_prompt(engine, monkeypatch, capsys):
    from llmtune.stages.chat import converse

    lines = iter([KeyboardInterrupt, "Hello", "/exit"])

    def typed(prompt):
        line = next(lines)
        if line is KeyboardInterrupt:
            raise KeyboardInterrupt
        return line

    monkeypatch.setattr("builtins.input", typed)
    session = session_on(engine, max_new_tokens=3)
    converse(session)
    assert "[/exit or Ctrl-D to quit]" in capsys.readouterr().out
    assert len(session.turns) == 1


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--temperature", "-1", "--temperature must be 0 (greedy) or more, not -1"),
        ("--temperature", "nan", "--temperature must be 0 (greedy) or more"),
        ("--top-p", "0", "--top-p must be above 0 and at most 1, not 0"),
        ("--top-p", "1.5", "--top-p must be above 0 and at most 1, not 1.5"),
        ("--top-k", "-3", "--top-k must be 0 (off) or more, not -3"),
        ("--max-new-tokens", "0", "--max-new-tokens must be at least 1, not 0"),
        ("--dtype", "float8", "--dtype must be one of auto, float32, bfloat16, float16, not 'float8'"),
        ("--hub", "github", "--hub must be one of auto, hf, modelscope, not 'github'"),
    ],
)
def test_bad_flags_exit_2_before_the_model_loads(cli, monkeypatch, chat_folder, flag, value, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr("llmtune.serving.engine.load_engine", no_loading)
    result = cli("chat", "--model", str(chat_folder), flag, value)
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""


def test_a_missing_model_exits_2_with_one_paragraph(cli, tmp_path):
    result = cli("chat", "--model", str(tmp_path / "no-such-run"))
    assert result.exit_code == 2
    assert result.stdout == ""  # no banner
    error = result.stderr.strip()
    assert error.startswith("llmtune: error:") and "no-such-run" in error
    assert "\n\n" not in error and "Traceback" not in error
