"""Request and response bodies of the model server's OpenAI-compatible API (/v1/completions, /v1/models; the chat
bodies are in chat_models.py).

The request model is the one schema for both validation and the OpenAPI document. OpenAI's fields that this server
cannot honour are refused, so a client never gets silently different semantics: unknown fields (best_of, suffix,
tools...) with a 400 naming them. moeops' own extension is `early_exit`, a per-request
override of the service's policy, and the response's `moeops` object (where the tokens left the network).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from moeops.serving.decoding.early_exit import Rule

MAX_STOP_SEQUENCES = 4  # OpenAI's bound
MAX_STOP_CHARS = 256
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for /v1/completions
MAX_LOGIT_BIAS = 1024


class EarlyExitOverride(BaseModel):
    """Per-request early exit: anything left out keeps the service's setting (InferenceService spec.earlyExit)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: StrictBool | None = Field(default=None, description="Turn early exit on or off for this request.")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="Exit when confidence ≥ this.")
    rule: Rule | None = Field(default=None, description="softmax-max or top2-margin.")
    min_layer: StrictInt | None = Field(default=None, ge=1, le=512, description="First layer a token may exit at.")


TokenId = Annotated[StrictInt, Field(ge=0)]
StopText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_STOP_CHARS)]
MAX_CHOICES = 16
"""Most completions one request may ask for: prompts × n (each is a sequence in the engine)."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool | None = Field(
        default=None, description="A last chunk with the usage of the whole request and no choices."
    )


class GenerationFields(BaseModel):
    """What /v1/completions and /v1/chat/completions share: the model, how much to generate, how to sample,
    when to stop, and how to answer."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: StrictStr = Field(description="The served model's id (GET /v1/models).")
    max_tokens: StrictInt | None = Field(
        default=None, ge=1, description="Most tokens to generate per choice (default: see each endpoint)."
    )
    stream: StrictBool = Field(default=False, description="Server-sent events, one per piece of text, then [DONE].")
    stream_options: StreamOptions | None = Field(default=None, description="Only with stream: include_usage.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 (or left out): greedy.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling (with temperature > 0).")
    top_k: StrictInt | None = Field(default=None, ge=-1, description="Sample among the k most likely (-1 or 0: all).")
    n: StrictInt | None = Field(default=None, ge=1, le=MAX_CHOICES, description="Completions per prompt.")
    stop: StopText | list[StopText] | None = Field(
        default=None, description=f"Up to {MAX_STOP_SEQUENCES} stop strings of up to {MAX_STOP_CHARS} characters."
    )
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="Penalise what appeared.")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="Penalise by how often.")
    logit_bias: dict[StrictStr, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS, description="Token id (as text) → bias added to its logit."
    )
    seed: StrictInt | None = Field(default=None, description="The same seed, the same sampled tokens.")
    user: StrictStr | None = Field(default=None, max_length=256, description="Ignored.")
    early_exit: EarlyExitOverride | None = Field(default=None, description="moeops: override the exit policy.")

    @field_validator("stop", mode="before")
    @classmethod
    def _bounded_stop(cls, value: Any) -> Any:
        # Before the items are validated: a list of thousands is refused without looking at them.
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(value)}")
        return value

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(GenerationFields):
    prompt: StrictStr | list[TokenId] | list[StrictStr] | list[list[TokenId]] = Field(
        description="Text (encoded with the model's tokenizer), token ids, or a list of either (one per prompt)."
    )
    max_tokens: StrictInt | None = Field(
        default=None, ge=1, description="Most tokens to generate; default 16, fewer when the context is shorter."
    )
    echo: StrictBool | None = Field(default=None, description="Prepend the prompt's text to each choice's text.")
    logprobs: StrictInt | None = Field(
        default=None, ge=0, le=MAX_COMPLETION_LOGPROBS, description="Log-probabilities of the chosen and top tokens."
    )


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


class CompletionLogprobs(BaseModel):
    """/v1/completions' log-probabilities: per token its text, log-probability, most likely alternatives (text →
    log-probability) and offset in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class Choice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


ChoiceT = TypeVar("ChoiceT", bound=BaseModel)


class Answer(BaseModel, Generic[ChoiceT]):
    """The body of a completion or a chat completion (their choices differ)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChoiceT]
    usage: Usage | None = None
    moeops: ExitSummary | None = None


class Completion(Answer[Choice]):
    object: Literal["text_completion"] = "text_completion"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "moeops"
    context_length: int
    checkpoint_step: int
    max_model_len: int | None = None
    """vLLM's name for the context length (clients that size prompts read it)."""


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
