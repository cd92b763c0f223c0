"""llmtune chat in a real terminal: the console script runs in a tmux pane on a tiny random model, keys are
typed with send-keys and the screen is read with capture-pane, as a person would use it. Each wait polls the
screen until what is expected appears (or times out); the tmux server is this test's own (-L), and is
killed at the end whatever happens."""

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.unit.test_chat import save_tiny_chat_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]
STARTUP = 180  # seconds for python, torch and the model to load on a slow, busy machine


class Terminal:
    """One tmux pane running a command, 160 x 50."""

    def __init__(self, name: str):
        self.socket = f"llmtune-test-{os.getpid()}-{name}"  # a tmux server of our own
        self.name = name
        self.socket_path: Path | None = None

    def start(self, command: str) -> None:
        # bash runs the command as an interactive shell would (it stays alive through a Ctrl-C that the
        # command handles) and shows its exit status; the pane is kept after the end, to be read. (tmux's own
        # pane_dead_status is not used: tmux 3.3 at times leaves the ended process unreaped, with no status.)
        shown = f'{command}; echo "[exited with status $?]"'
        self.tmux(
            "new-session", "-d", "-s", self.name, "-x", "160", "-y", "50", shlex.join(["bash", "-c", shown])
        )
        self.tmux("set-option", "-t", self.name, "remain-on-exit", "on")
        self.socket_path = Path(self.tmux("display-message", "-p", "#{socket_path}").strip())

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        self.tmux("send-keys", "-t", self.name, "Enter")

    def key(self, key: str) -> None:
        self.tmux("send-keys", "-t", self.name, key)

    def screen(self) -> str:
        """Everything shown so far (scrollback included), wrapped lines joined, trailing blanks dropped."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.name)
        return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")

    def wait_for(self, predicate, timeout: float = 60, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}; the screen:\n{screen}")
            time.sleep(0.2)

    def wait_for_text(self, text: str, timeout: float = 60) -> str:
        return self.wait_for(lambda screen: text in screen, timeout, repr(text))

    def wait_for_prompt(self, count: int, timeout: float = 60) -> str:
        """The screen once the count-th prompt waits at its last line (an answer has ended)."""
        return self.wait_for(
            lambda screen: screen.count(">>>") >= count and screen.splitlines()[-1] == ">>>",
            timeout,
            f"prompt number {count}",
        )

    def pane(self, field: str) -> str:
        return self.tmux("display-message", "-p", "-t", self.name, f"#{{{field}}}").strip()

    def exit_status(self, timeout: float = 30) -> str:
        """The command's exit status, once it has ended."""
        screen = self.wait_for(lambda s: "[exited with status " in s, timeout, "the command to end")
        return screen.rsplit("[exited with status ", 1)[1].split("]")[0]

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
        if self.socket_path:
            self.socket_path.unlink(missing_ok=True)  # tmux leaves it behind at times


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat_tmux"))


@pytest.fixture
def chat(chat_model, llmtune_home, request):
    """chat(*flags) -> a Terminal running `llmtune chat --model <tiny model> *flags`."""
    started = []

    def start(*flags: str) -> Terminal:
        env = {"HF_HUB_OFFLINE": "1", "LLMTUNE_HOME": str(llmtune_home), "TOKENIZERS_PARALLELISM": "false"}
        command = shlex.join(
            ["env", *(f"{k}={v}" for k, v in env.items()), str(REPO / ".venv" / "bin" / "llmtune")]
            + ["chat", "--model", str(chat_model), *flags]
        )
        terminal = Terminal(request.node.name.split("[")[0][-40:])
        started.append(terminal)  # closed at the end even when starting fails half-way
        terminal.start(command)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def answer_after(screen: str, message: str) -> str:
    """The text printed after the last `>>> message` line ("" before that line has ended)."""
    marker = f">>> {message}\n"
    return screen.rsplit(marker, 1)[1] if marker in screen else ""


def test_a_conversation_with_every_command(chat, tmp_path):
    term = chat("--max-new-tokens", "8", "--system", "Be brief.")
    term.wait_for_text("/exit         end the session (or Ctrl-D)", STARTUP)
    screen = term.wait_for_prompt(1)
    assert "llmtune chat: " in screen and "(model)" in screen and "an answer ends at <|im_end|>" in screen
    assert "system prompt  Be brief." in screen and "greedy (temperature 0); at most 8 new tokens" in screen

    term.type("Hello there")
    screen = term.wait_for_prompt(2)
    first = answer_after(screen, "Hello there").split("\n")[0]
    assert first and "[cut at 8 tokens" in screen

    term.type("/regen")  # greedy: the same answer again
    screen = term.wait_for_prompt(3)
    assert answer_after(screen, "/regen").split("\n")[0] == first

    term.type("/system")
    assert "[system prompt: Be brief.]" in term.wait_for_prompt(4)
    term.type("/system Answer in French.")
    assert "[system prompt set;" in term.wait_for_prompt(5)
    term.type("/frobnicate")
    screen = term.wait_for_prompt(6)
    assert "[unknown command /frobnicate; the commands are:]" in screen
    assert answer_after(screen, "/frobnicate").count("/save FILE") == 1

    saved = tmp_path / "talk.jsonl"
    term.type(f"/save {saved}")
    assert "[saved 1 turn(s) to" in term.wait_for_prompt(7)
    messages = json.loads(saved.read_text())["messages"]
    assert messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": first},
    ]
    term.type(f"/save {saved}")
    assert "llmtune never replaces a file" in term.wait_for_prompt(8)

    term.type("/reset")
    assert "[conversation cleared; the system prompt is kept]" in term.wait_for_prompt(9)
    term.type("/regen")
    assert "[nothing to regenerate yet" in term.wait_for_prompt(10)

    term.key("C-c")  # at the prompt: a hint, and the session goes on
    screen = term.wait_for_prompt(11)
    assert "[/exit or Ctrl-D to quit]" in screen and "[exited" not in screen

    term.type("/exit")
    assert term.exit_status() == "0"


def test_answers_stream_and_ctrl_c_stops_one(chat):
    # As long as the tiny model's 512-token context allows, so that a fast machine cannot finish the
    # answer before the test has seen it grow and pressed Ctrl-C.
    term = chat("--max-new-tokens", "480")
    term.wait_for_prompt(1, STARTUP)
    term.type("Tell me everything")
    # Streaming: some of the answer is shown, then more of it, while the prompt has not come back.
    early = term.wait_for(
        lambda s: len(answer_after(s, "Tell me everything").strip()) > 0, 60, "the answer to begin"
    )
    early_answer = answer_after(early, "Tell me everything")
    later = term.wait_for(
        lambda s: len(answer_after(s, "Tell me everything")) > len(early_answer), 60, "the answer to grow"
    )
    assert answer_after(later, "Tell me everything").startswith(early_answer.rstrip())
    assert early.count(">>>") == 1 and later.count(">>>") == 1

    term.key("C-c")
    screen = term.wait_for_prompt(2)
    stopped = answer_after(screen, "Tell me everything")
    assert " [stopped]\n" in stopped and "[cut at" not in stopped  # stopped, not run to its limit
    assert "[exited" not in screen  # the session goes on

    term.type("/regen")  # the session still answers (the stopped answer, again, to its end this time)
    screen = term.wait_for_prompt(3, 180)
    assert "[cut at 480 tokens" in answer_after(screen, "/regen")

    term.key("C-d")  # Ctrl-D at the prompt ends the session too
    assert term.exit_status() == "0"
