"""Request and response bodies of the model server's OpenAI-compatible API (/v1/completions, /v1/models).

The request model is the one schema for both validation and the OpenAPI document. OpenAI's fields that this server
cannot honour are accepted only at their neutral value (n=1, temperature 0, no logprobs...), so a client never gets
silently different semantics; unknown fields are refused. moeops' own extension is `early_exit`, a per-request
override of the service's policy, and the response's `moeops` object (where the tokens left the network).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from .early_exit import Rule

MAX_STOP_SEQUENCES = 4  # OpenAI's bound
MAX_STOP_CHARS = 256


class EarlyExitOverride(BaseModel):
    """Per-request early exit: anything left out keeps the service's setting (InferenceService spec.earlyExit)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: StrictBool | None = Field(default=None, description="Turn early exit on or off for this request.")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="Exit when confidence ≥ this.")
    rule: Rule | None = Field(default=None, description="softmax-max or top2-margin.")
    min_layer: StrictInt | None = Field(default=None, ge=1, le=512, description="First layer a token may exit at.")


TokenId = Annotated[StrictInt, Field(ge=0)]
StopText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: StrictStr = Field(description="The served model's id (GET /v1/models).")
    prompt: StrictStr | list[TokenId] = Field(description="Text (encoded with the model's tokenizer) or token ids.")
    max_tokens: StrictInt | None = Field(
        default=None, ge=1, description="Most tokens to generate; default 16, fewer when the context is shorter."
    )
    stream: StrictBool = Field(default=False, description="Server-sent events, one per token, then [DONE].")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Only 0 (greedy) is served.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Only 1 (greedy) is served.")
    n: StrictInt | None = Field(default=None, ge=1, le=1, description="One completion per request.")
    stop: StopText | list[StopText] | None = Field(default=None, description="Up to 4 stop strings.")
    echo: StrictBool | None = Field(default=None, description="Only false.")
    logprobs: StrictInt | None = Field(default=None, ge=0, le=0, description="Not served: null.")
    presence_penalty: float | None = Field(default=None, ge=0.0, le=0.0, description="Only 0.")
    frequency_penalty: float | None = Field(default=None, ge=0.0, le=0.0, description="Only 0.")
    seed: StrictInt | None = Field(default=None, description="Ignored: greedy decoding is deterministic.")
    user: StrictStr | None = Field(default=None, max_length=256, description="Ignored.")
    early_exit: EarlyExitOverride | None = Field(default=None, description="moeops: override the exit policy.")

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ExitSummary(BaseModel):
    """moeops' extension: where this completion's tokens left the network."""

    mean_exit_layer: float | None
    """Mean 1-based exit layer over the generated tokens (the model's depth: no early exit); null before any."""
    layers: int
    early_exits: int
    policy: dict[str, Any]


class Choice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    moeops: ExitSummary | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "moeops"
    context_length: int
    checkpoint_step: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorDetail
