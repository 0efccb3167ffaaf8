"""The official `openai` client against the model server on loopback (uvicorn in a thread, the tiny checkpoint):
models list and retrieve, completions (prompt lists, n, echo, logprobs, streams with usage), chat completions
(plain and streamed, with usage and logprobs), sampling that a seed reproduces, and what is still refused as a
400 naming the field. Greedy answers are compared with generate() on the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from moeops.data.synthetic import CharTokenizer
from moeops.model import Transformer
from moeops.serving.decoding.codec import CharCodec
from moeops.serving.decoding.decode import generate
from moeops.serving.decoding.early_exit import NEVER_EXIT
from moeops.serving.loader import CheckpointRef, load_served
from moeops.serving.openai.app import ServerSettings, create_app
from serving_server import live_server, write_run

CODEC = CharCodec(CharTokenizer())


@pytest.fixture(scope="module")
def model_and_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Transformer, openai.OpenAI]]:
    run_dir: Path = tmp_path_factory.mktemp("run")
    model = write_run(run_dir)
    ref = CheckpointRef.resolve(run_dir / "checkpoints")
    settings = ServerSettings(policy=NEVER_EXIT, max_batch_size=8, max_latency_ms=5)
    with live_server(create_app(lambda: load_served(ref, "tiny"), settings)) as url:
        yield model, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30.0)


@pytest.fixture
def client(model_and_client: tuple[Transformer, openai.OpenAI]) -> openai.OpenAI:
    return model_and_client[1]


def greedy_text(model: Transformer, prompt: str, max_tokens: int) -> str:
    ids = CODEC.encode_prompt(prompt)
    return CODEC.decode([t.token for t in generate(model, ids, max_tokens, eos=CODEC.eos)])


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    card = client.models.retrieve("tiny")
    assert card.id == "tiny" and card.owned_by == "moeops"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completions_of_a_prompt_list_with_n_and_echo(model_and_client: tuple[Transformer, openai.OpenAI]) -> None:
    model, client = model_and_client
    prompts = ["copy:abc|", "1+1="]
    out = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, echo=True)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for choice in out.choices:
        prompt = prompts[choice.index // 2]
        assert choice.text == prompt + greedy_text(model, prompt, 6)
    assert out.usage is not None
    assert out.usage.prompt_tokens == sum(len(CODEC.encode_prompt(p)) for p in prompts)


def test_streamed_completion_with_usage(model_and_client: tuple[Transformer, openai.OpenAI]) -> None:
    model, client = model_and_client
    chunks = list(client.completions.create(model="tiny", prompt="copy:abc|", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == greedy_text(model, "copy:abc|", 8)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens + chunks[-1].usage.prompt_tokens == chunks[-1].usage.total_tokens


def test_completion_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(model="tiny", prompt="copy:abc|", max_tokens=5, logprobs=3)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert "".join(lp.tokens) == out.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) <= 3 and logprob <= 0
        assert max(top.values()) == pytest.approx(logprob)  # greedy: the chosen token is the most likely
        assert top.get(token, logprob) == pytest.approx(logprob)


def test_chat_plain_and_streamed(model_and_client: tuple[Transformer, openai.OpenAI]) -> None:
    model, client = model_and_client
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "copy:abc|"}]
    expected = greedy_text(model, "copy:abc|", 8)  # the built-in tokenizer's template: the messages' text
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected and out.usage is not None
    stream = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=8, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == out.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == out.usage


def test_chat_logprobs(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "1+1="}], max_tokens=4,
                                         logprobs=True, top_logprobs=2)  # fmt: skip
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and "".join(t.token for t in content) == out.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)


def test_sampling_is_reproducible_with_a_seed(client: openai.OpenAI) -> None:
    def sample(seed: int) -> list[str]:
        out = client.completions.create(model="tiny", prompt="copy:abc|", max_tokens=12, n=4, temperature=1.0,
                                        top_p=0.95, seed=seed, extra_body={"top_k": 20})  # fmt: skip
        return [c.text for c in out.choices]

    first = sample(7)
    assert sample(7) == first
    assert len(set(first)) > 1  # each choice draws from its own stream (seed + index)
    assert sample(8) != first
    chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": "copy:abc|"}]
    a, b = (client.chat.completions.create(model="tiny", messages=chat, max_tokens=10, temperature=1.0, seed=3)
            for _ in range(2))  # fmt: skip
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"logit_bias": {"999": 1}}, "logit_bias"), ({"presence_penalty": 3.0}, "presence_penalty"),
     ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"best_of": 2}, "best_of")],
)  # fmt: skip
def test_what_is_refused_names_its_field(client: openai.OpenAI, kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="1+1=", max_tokens=2, **kwargs)  # type: ignore[call-overload]
    assert caught.value.param == param, caught.value.body


def test_latency_histograms_on_metrics(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "1+1="}], max_tokens=4)
    text = httpx.get(str(client.base_url).removesuffix("/v1/") + "/metrics").text
    for name in ("time_to_first_token", "time_per_output_token", "request_duration"):
        metric = f'gen_ai_server_{name}_seconds_count{{gen_ai_operation_name="chat",gen_ai_request_model="tiny"}}'
        (line,) = [x for x in text.splitlines() if x.startswith(metric)]
        assert int(line.split()[-1]) >= 1, line


def test_logit_bias_and_penalties(model_and_client: tuple[Transformer, openai.OpenAI]) -> None:
    model, client = model_and_client
    greedy = greedy_text(model, "1+1=", 6)
    banned = str(CODEC.encode_prompt(greedy[0])[1])  # the first greedy character's id, made impossible
    out = client.completions.create(model="tiny", prompt="1+1=", max_tokens=6, logit_bias={banned: -100})
    assert out.choices[0].text[:1] != greedy[0]
    forced = str(CODEC.encode_prompt("7")[1])
    out = client.completions.create(model="tiny", prompt="1+1=", max_tokens=6, logit_bias={forced: 100})
    assert out.choices[0].text == "777777"
    out = client.completions.create(model="tiny", prompt="1+1=", max_tokens=6, logit_bias={forced: 100},
                                    frequency_penalty=2.0, presence_penalty=2.0)  # fmt: skip
    assert out.choices[0].text == "777777"  # a bias of 100 outweighs penalties of at most 2 + 2 × 5


def test_streams_of_several_choices(model_and_client: tuple[Transformer, openai.OpenAI]) -> None:
    model, client = model_and_client
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "copy:abc|"}]
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, n=3, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            reasons[choice.index] = choice.finish_reason or reasons.get(choice.index)
    greedy = greedy_text(model, "copy:abc|", 6)
    assert texts == {0: greedy, 1: greedy, 2: greedy} and all(reasons.values())
    usage, ids = chunks[-1].usage, CODEC.encode_prompt("copy:abc|")
    generated = len(list(generate(model, ids, 6, eos=CODEC.eos)))
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (len(ids), 3 * generated)
    completions = list(client.completions.create(model="tiny", prompt=["1+1=", "copy:ab|"], max_tokens=5,
                                                 stream=True))  # fmt: skip
    by_index: dict[int, str] = {}
    for piece in completions:
        for c in piece.choices:
            by_index[c.index] = by_index.get(c.index, "") + c.text
    assert by_index == {0: greedy_text(model, "1+1=", 5), 1: greedy_text(model, "copy:ab|", 5)}
