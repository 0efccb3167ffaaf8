"""From a validated request to what the engine runs: the prompts (checked against the model: the client's faults,
as 4xx naming the field), how many tokens, how to sample, the exit policy and the stop strings. One plan for both
/v1/completions and /v1/chat/completions (a chat is one prompt, rendered by the model's chat template)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from moeops.serving.decoding.early_exit import ExitPolicy
from moeops.serving.decoding.engine import GenerationRequest
from moeops.serving.decoding.sampling import SamplingParams
from moeops.serving.loader import ServedModel
from moeops.serving.openai.api_models import MAX_CHOICES, CompletionRequest, GenerationFields
from moeops.serving.openai.chat_models import ChatCompletionRequest
from moeops.serving.openai.errors import ClientError

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass(frozen=True)
class Plan:
    """What the engine will run for a request: `n` choices per prompt, choice i of prompt p at index p*n + i."""

    prompts: list[list[int]]
    max_tokens: list[int]
    """Per prompt."""
    n: int
    policy: ExitPolicy
    stops: list[str]
    sampling: SamplingParams
    echo: bool = False
    include_usage: bool = False

    @property
    def prompt(self) -> list[int]:
        """The first prompt (the only one of most requests)."""
        return self.prompts[0]

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    def prompt_of(self, choice: int) -> list[int]:
        return self.prompts[choice // self.n]

    def requests(self, eos: int | None) -> list[GenerationRequest]:
        """One engine request per choice; with a seed, choice i draws from seed + i (reproducible, not alike)."""
        out = []
        for index in range(self.choices):
            p, sampling = index // self.n, self.sampling
            if sampling.seed is not None:
                sampling = replace(sampling, seed=sampling.seed + index)
            out.append(GenerationRequest(self.prompts[p], self.max_tokens[p], self.policy, eos, sampling))
        return out


def plan_completion(body: CompletionRequest, served: ServedModel, policy: ExitPolicy) -> Plan:
    _check_model(body, served)
    if body.echo and body.logprobs is not None:
        raise ClientError(400, "echo with logprobs is not served (the prompt's log-probabilities)", "echo")
    ids = [_prompt_ids(p, served) for p in _prompts(body.prompt)]
    return _plan(body, served, policy, ids, DEFAULT_MAX_TOKENS, body.max_tokens, body.logprobs, bool(body.echo))


def plan_chat(body: ChatCompletionRequest, served: ServedModel, policy: ExitPolicy) -> Plan:
    _check_model(body, served)
    if body.top_logprobs and not body.logprobs:
        raise ClientError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise ClientError(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    text = served.chat_template.render([(m.role, m.text()) for m in body.messages])
    ids = _prompt_ids(text, served, "messages")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    limit = body.max_completion_tokens or body.max_tokens
    return _plan(body, served, policy, [ids], None, limit, logprobs)


def _prompts(prompt: str | list[int] | list[str] | list[list[int]]) -> list[str | list[int]]:
    """One prompt (text or ids), or a list of them."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return [p for p in prompt if isinstance(p, str | list)]
    return [prompt]  # type: ignore[list-item]  # text, or a list of ids


def _check_model(body: GenerationFields, served: ServedModel) -> None:
    if body.model != served.name:
        raise ClientError(
            404,
            f"The model {body.model!r} does not exist: this server serves {served.name!r}",
            "model",
            "model_not_found",
        )


def _plan(
    body: GenerationFields,
    served: ServedModel,
    policy: ExitPolicy,
    prompts: list[list[int]],
    default_max: int | None,
    asked_max: int | None,
    logprobs: int | None,
    echo: bool = False,
) -> Plan:
    n = body.n or 1
    if len(prompts) * n > MAX_CHOICES:
        raise ClientError(400, f"prompts × n is {len(prompts) * n}, more than {MAX_CHOICES} choices", "n")
    if body.stream_options is not None and not body.stream:
        raise ClientError(400, "stream_options is only for stream: true", "stream_options")
    context = served.context
    max_tokens = [_max_tokens(len(ids), context, default_max, asked_max) for ids in prompts]
    top_k = body.top_k if body.top_k and body.top_k > 0 else 0
    sampling = SamplingParams(body.temperature or 0.0, body.top_p or 1.0, top_k, body.seed, logprobs,
                              body.presence_penalty or 0.0, body.frequency_penalty or 0.0,
                              _logit_bias(body.logit_bias, served.arch.vocab_size))  # fmt: skip
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    stops = body.stop_strings()
    return Plan(prompts, max_tokens, n, _policy(body, policy), stops, sampling, echo, include_usage)


def _logit_bias(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        if not key.isdigit() or int(key) >= vocab:
            raise ClientError(
                400, f"logit_bias: {key!r} is not a token id of this model (0..{vocab - 1})", "logit_bias"
            )
        out.append((int(key), value))
    return tuple(out)


def _max_tokens(prompt: int, context: int, default: int | None, asked: int | None) -> int:
    room = context - prompt + 1  # the last generated token is never fed back
    max_tokens = asked or (room if default is None else min(default, room))
    if prompt + max_tokens - 1 > context:
        raise ClientError(
            400,
            f"This model's maximum context length is {context} tokens: the prompt ({prompt} tokens) and"
            f" max_tokens ({max_tokens}) need {prompt + max_tokens - 1}. Lower max_tokens to at most {room}.",
            "max_tokens",
            "context_length_exceeded",
        )
    return max_tokens


def _prompt_ids(prompt: str | list[int], served: ServedModel, field: str = "prompt") -> list[int]:
    if isinstance(prompt, str):
        try:
            ids = served.codec.encode_prompt(prompt)
        except ValueError as exc:
            raise ClientError(400, f"the {field} cannot be encoded by the model's tokenizer: {exc}", field) from exc
    else:
        vocab = served.arch.vocab_size
        bad = next((i for i in prompt if i >= vocab), None)
        if bad is not None:
            raise ClientError(400, f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})", field)
        ids = list(prompt)
    if not ids:
        raise ClientError(400, f"the {field} is empty: give at least one token", field)
    if len(ids) > served.context:
        raise ClientError(
            400, f"the {field} is {len(ids)} tokens, more than the model's context of {served.context} tokens",
            field, "context_length_exceeded",
        )  # fmt: skip
    return ids


def _policy(body: GenerationFields, policy: ExitPolicy) -> ExitPolicy:
    override = body.early_exit
    if override is None:
        return policy
    try:
        out = policy.override(threshold=override.threshold, rule=override.rule, min_layer=override.min_layer)
        return out if override.enabled is None else replace(out, enabled=override.enabled)
    except ValueError as exc:  # the schema bounds them already; kept for a policy rule added later
        raise ClientError(400, f"early_exit: {exc}", "early_exit") from exc
