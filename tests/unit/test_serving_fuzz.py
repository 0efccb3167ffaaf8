"""Property-based fuzzing of /v1/completions and /v1/chat/completions over real HTTP: whatever the body — near the
schema, any JSON at all, or raw bytes — the answer is never a 5xx, and every 4xx carries an OpenAI-shaped error
message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from moeops.data.synthetic import ALPHABET
from moeops.serving.decoding.early_exit import NEVER_EXIT
from moeops.serving.loader import CheckpointRef, load_served
from moeops.serving.openai.app import ServerSettings, create_app
from serving_server import live_server, write_run

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    run_dir: Path = tmp_path_factory.mktemp("run")
    write_run(run_dir)
    ref = CheckpointRef.resolve(run_dir / "checkpoints")
    settings_ = ServerSettings(policy=NEVER_EXIT, max_batch_size=4, max_latency_ms=1, max_body_bytes=4096)
    app = create_app(lambda: load_served(ref, "tiny"), settings_)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30.0) as http:
        yield http


def check(r: httpx.Response) -> None:
    event(f"HTTP {r.status_code}")  # pytest --hypothesis-show-statistics: how many bodies got through
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n"), r.text
    else:
        assert r.json()["object"] in ("text_completion", "chat.completion")


def post_json(client: httpx.Client, body: Any) -> httpx.Response:
    """Python's JSON, NaN and Infinity included (the server's parser takes them; the schema must refuse them)."""
    return client.post("/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
small_numbers = st.integers(-3, 40) | st.floats(-1.0, 3.0, allow_nan=False) | json_values
early_exit = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.booleans() | json_values,
        "threshold": small_numbers,
        "rule": st.sampled_from(["softmax-max", "top2-margin", "entropy"]) | json_values,
        "min_layer": small_numbers,
    },
)
near_schema = st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny", "other"]) | json_values},
    optional={
        "prompt": st.text(max_size=40) | st.lists(st.integers(-2, 70), max_size=40) | json_values,
        "max_tokens": small_numbers,
        "stream": st.booleans() | json_values,
        "temperature": st.sampled_from([0, 0.0, 1.0]) | small_numbers,
        "top_p": small_numbers,
        "n": small_numbers,
        "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=6) | json_values,
        "echo": st.booleans() | json_values,
        "logprobs": small_numbers,
        "early_exit": early_exit | json_values,
        "user": json_values,
        "top_k": small_numbers,
        "seed": small_numbers,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values})
        | json_values,
        "logit_bias": st.dictionaries(st.sampled_from(["0", "5", "63", "64", "-1", "x"]), small_numbers, max_size=3)
        | json_values,
        "presence_penalty": small_numbers,
        "frequency_penalty": small_numbers,
    },
)


stop_text = st.text(ALPHABET, min_size=1, max_size=3)
valid_bodies = st.fixed_dictionaries(
    {"model": st.just("tiny"), "prompt": st.text(ALPHABET, max_size=34) | st.lists(st.integers(0, 63), max_size=34)},
    optional={
        "max_tokens": st.integers(1, 34),
        "stream": st.booleans(),
        "temperature": st.sampled_from([0, 0.0, None, 0.7, 2.0, 1e-300, 5e-324]) | st.floats(0.0, 2.0),
        "top_p": st.floats(0.05, 1.0),
        "top_k": st.integers(-1, 70),
        "seed": st.integers(-(2**63), 2**64),
        "n": st.integers(1, 3),
        "logprobs": st.integers(0, 5),
        "echo": st.booleans(),
        "logit_bias": st.dictionaries(st.integers(0, 63).map(str), st.floats(-100, 100), max_size=3),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "stop": st.text(ALPHABET, min_size=1, max_size=3)
        | st.lists(st.text(ALPHABET, min_size=1, max_size=3), max_size=4),
        "early_exit": st.fixed_dictionaries(
            {},
            optional={
                "enabled": st.booleans(),
                "threshold": st.floats(0.0, 1.0),
                "rule": st.sampled_from(["softmax-max", "top2-margin"]),
                "min_layer": st.integers(1, 5),
            },
        ),
    },
)


@pytest.mark.slow
@settings(FUZZ, max_examples=60)  # each may generate up to 34 tokens
@given(body=valid_bodies)
def test_valid_bodies_and_context_edges_never_get_a_5xx(client: httpx.Client, body: dict[str, Any]) -> None:
    check(post_json(client, body))


@pytest.mark.slow  # the longest runs: the valid-body and raw-byte fuzzing stay in the fast tier
@FUZZ
@given(body=near_schema)
def test_bodies_near_the_schema_never_get_a_5xx(client: httpx.Client, body: dict[str, Any]) -> None:
    check(post_json(client, body))


@pytest.mark.slow
@settings(FUZZ, max_examples=100)
@given(body=json_values)
def test_any_json_never_gets_a_5xx(client: httpx.Client, body: Any) -> None:
    check(post_json(client, body))


@settings(FUZZ, max_examples=60)
@given(raw=st.binary(max_size=300) | st.binary(min_size=4090, max_size=4200), content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
))  # fmt: skip
def test_raw_bytes_never_get_a_5xx(client: httpx.Client, raw: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    check(client.post("/v1/completions", content=raw, headers=headers))


chat_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
         "content": st.text(ALPHABET, max_size=10) | st.lists(st.fixed_dictionaries(
             {"type": st.just("text"), "text": st.text(ALPHABET, max_size=5)}), max_size=2)},
    ),
    min_size=1, max_size=3,
)  # fmt: skip
chat_bodies = st.fixed_dictionaries(
    {"model": st.just("tiny"), "messages": chat_messages | json_values},
    optional={
        "max_tokens": st.integers(1, 34) | small_numbers,
        "max_completion_tokens": st.integers(1, 34),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "temperature": st.sampled_from([0, 1.0]) | small_numbers,
        "n": st.integers(1, 3),
        "seed": st.integers(0, 100),
        "logprobs": st.booleans() | json_values,
        "top_logprobs": st.integers(0, 21),
        "stop": st.text(ALPHABET, min_size=1, max_size=3),
        "tools": json_values,
    },
)


@pytest.mark.slow
@settings(FUZZ, max_examples=60)
@given(body=chat_bodies)
def test_chat_bodies_never_get_a_5xx(client: httpx.Client, body: dict[str, Any]) -> None:
    check(client.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"}))
