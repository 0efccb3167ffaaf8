"""Request and response bodies of /v1/chat/completions (OpenAI's chat API, the fields this server honours).

The conversation becomes one prompt through the model's chat template (chat_template.py); everything else is the
same as /v1/completions (api_models.GenerationFields). Message content is text, or a list of text parts (what
clients that also send images send; anything but text is refused with a 400 naming the field).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from moeops.serving.decoding.sampling import MAX_TOP_LOGPROBS
from moeops.serving.openai.api_models import Answer, GenerationFields

Role = Literal["system", "developer", "user", "assistant"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = Field(default=None, max_length=256, description="Ignored.")

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_tokens: StrictInt | None = Field(
        default=None, ge=1, description="Most tokens to generate; default: what the context leaves."
    )
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, description="OpenAI's newer max_tokens.")
    logprobs: StrictBool | None = Field(default=None, description="Log-probabilities of the chosen tokens.")
    top_logprobs: StrictInt | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS, description="Also the most likely tokens' (needs logprobs)."
    )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(Answer[ChatChoice]):
    object: Literal["chat.completion"] = "chat.completion"
