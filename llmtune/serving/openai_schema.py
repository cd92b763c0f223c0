"""The OpenAI request bodies llmtune serve accepts, as pydantic models, and the fields it refuses.

Validation is strict (a string is not a number, 0 is not a boolean), as OpenAI's own API is. Fields that
change what an answer means and that the engine cannot honour (n > 1, logprobs, tools, penalties, a JSON
response format) are refused with a 400 naming the field, rather than ignored: an app that asked for five
choices and got one, or tool calls and got prose, would fail later and less clearly. Fields that only
describe the caller (`user`, `metadata`, `store`) are accepted and ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 4  # OpenAI's own limit on `stop`


class Refused(ValueError):
    """A request field the server does not implement, with the field's name (the error's `param`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class Common(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's, but vLLM's and llama.cpp's
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP:
            raise Refused("stop", f"stop: at most {MAX_STOP} sequences, got {len(stop)}.")
        return tuple(s for s in stop if s)

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise Refused("n", f"n: only 1 choice per request is served, got {self.n}.")
        if self.logprobs not in (None, False, 0):
            raise Refused("logprobs", "logprobs: not served by llmtune serve.")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise Refused(name, f"{name}: not served by llmtune serve (only 0 is accepted).")
        if self.logit_bias:
            raise Refused("logit_bias", "logit_bias: not served by llmtune serve.")


class ChatRequest(Common):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None
    top_logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.tools or self.tool_choice not in (None, "none"):
            raise Refused("tools", "tools: tool calling is not served by llmtune serve.")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise Refused("response_format", "response_format: only {'type': 'text'} is served.")
        if self.top_logprobs:
            raise Refused("top_logprobs", "top_logprobs: not served by llmtune serve.")

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plain_messages(self) -> list[dict]:
        """Messages as the chat template takes them: text content, `developer` as `system`."""
        out = []
        for index, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                if any(part.type != "text" or part.text is None for part in content):
                    raise Refused(f"messages[{index}].content", "only text content parts are served.")
                content = "".join(part.text for part in content)
            out.append(
                {"role": "system" if message.role == "developer" else message.role, "content": content}
            )
        return out


class CompletionRequest(Common):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise Refused("echo", "echo: not served by llmtune serve.")
        if self.suffix:
            raise Refused("suffix", "suffix (insertion): not served by llmtune serve.")
        if self.best_of not in (None, 1):
            raise Refused("best_of", "best_of: only 1 is served.")

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise Refused("prompt", f"prompt: one prompt per request is served, got {len(self.prompt)}.")
        return self.prompt[0]
