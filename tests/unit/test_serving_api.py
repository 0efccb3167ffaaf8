"""The model server over real HTTP (uvicorn on loopback, httpx): completions in JSON and as server-sent events,
usage, the per-request early-exit override, /v1/models, /healthz, /readyz, every bad-request class as a 4xx with a
message, and concurrent requests batched by the engine yet each exactly what generate() gives."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moeops.api import env
from moeops.data.synthetic import CharTokenizer
from moeops.model import Transformer
from moeops.serving.decoding.codec import CharCodec
from moeops.serving.decoding.decode import generate
from moeops.serving.decoding.early_exit import NEVER_EXIT, ExitPolicy
from moeops.serving.decoding.engine import Engine
from moeops.serving.loader import CheckpointRef, ServedModel, load_served
from moeops.serving.openai.api_models import Completion
from moeops.serving.openai.app import ServerSettings, create_app
from serving_server import TINY, live_server, write_run

CODEC = CharCodec(CharTokenizer())
PROMPTS = [[1, 10, 11, 12, 3], [1, 20, 3], [1, 30, 31, 32, 33, 34, 35, 3], [1, 5, 6, 7, 8, 3], [1, 40, 41, 3]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Transformer]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, write_run(run_dir)


@pytest.fixture(scope="module")
def server(run: tuple[Path, Transformer]) -> Iterator[tuple[str, ServedModel, Engine]]:
    """The app on the tiny checkpoint: no early exit by default, batches of ≤ 8 gathered for 50 ms."""
    ref = CheckpointRef.resolve(run[0] / "checkpoints")
    settings = ServerSettings(policy=NEVER_EXIT, max_batch_size=8, max_latency_ms=50, max_body_bytes=16 << 10)
    app = create_app(lambda: load_served(ref, "tiny"), settings)
    with live_server(app) as url:
        state = app.state.server
        assert state.served is not None and state.engine is not None
        yield url, state.served, state.engine


def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30.0, **kwargs)


def expected(model: Transformer, prompt: list[int], max_tokens: int, policy: ExitPolicy = NEVER_EXIT) -> list[int]:
    return [t.token for t in generate(model, prompt, max_tokens, policy, eos=CODEC.eos)]


def sse_chunks(text: str) -> list[dict[str, Any] | str]:
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def test_models_health_and_readiness(server: tuple[str, ServedModel, Engine]) -> None:
    url, _, _ = server
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["context_length"], m["checkpoint_step"]) for m in models["data"]] == [("tiny", 32, 1)]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "model": "tiny", "step": 1}
    assert "moeops_server_tokens_generated_total" in httpx.get(f"{url}/metrics").text


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_completion_is_what_generate_gives(server: tuple[str, ServedModel, Engine], prompt: list[int]) -> None:
    url, served, _ = server
    tokens = expected(served.model, prompt, 12)
    r = post(url, {"model": "tiny", "prompt": prompt, "max_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    (choice,) = body["choices"]
    assert choice["text"] == CODEC.decode(tokens)
    assert choice["finish_reason"] == ("stop" if tokens[-1] == CODEC.eos else "length")
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(tokens),
                             "total_tokens": len(prompt) + len(tokens)}  # fmt: skip
    assert body["moeops"]["mean_exit_layer"] == TINY.layers and body["moeops"]["early_exits"] == 0


def test_text_prompt_is_bos_prompt_sep(server: tuple[str, ServedModel, Engine]) -> None:
    url, served, _ = server
    ids = [CharTokenizer.BOS, *CharTokenizer().encode("copy:abc|"), CharTokenizer.SEP]
    body = post(url, {"model": "tiny", "prompt": "copy:abc|", "max_tokens": 5}).json()
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["choices"][0]["text"] == CODEC.decode(expected(served.model, ids, 5))


def test_streaming_sends_the_same_text_as_chunks_then_done(server: tuple[str, ServedModel, Engine]) -> None:
    url, _, _ = server
    request = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 10}
    whole = post(url, request).json()
    with httpx.stream("POST", f"{url}/v1/completions", json={**request, "stream": True}, timeout=30.0) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_chunks(r.read().decode())
    assert chunks[-1] == "[DONE]"
    parts = [c for c in chunks[:-1] if isinstance(c, dict)]
    assert all(Completion.model_validate(c).id == parts[0]["id"] for c in parts)
    assert "".join(c["choices"][0]["text"] for c in parts) == whole["choices"][0]["text"]
    assert all(c["choices"][0]["finish_reason"] is None and "usage" not in c for c in parts[:-1])
    last = parts[-1]
    assert last["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert last["usage"] == whole["usage"] and last["moeops"]["mean_exit_layer"] == TINY.layers


def test_early_exit_override_per_request(server: tuple[str, ServedModel, Engine]) -> None:
    url, served, _ = server
    prompt = PROMPTS[2]
    full = post(url, {"model": "tiny", "prompt": prompt, "max_tokens": 10}).json()
    never = {"enabled": True, "threshold": 1.0, "rule": "top2-margin"}
    same = post(url, {"model": "tiny", "prompt": prompt, "max_tokens": 10, "early_exit": never}).json()
    assert same["choices"] == full["choices"] and same["moeops"]["mean_exit_layer"] == TINY.layers
    assert same["moeops"]["policy"] == {"enabled": True, "rule": "top2-margin", "threshold": 1.0, "min_layer": 1}
    eager = {"enabled": True, "threshold": 0.0, "min_layer": 2}
    early = post(url, {"model": "tiny", "prompt": prompt, "max_tokens": 10, "early_exit": eager}).json()
    tokens = expected(served.model, prompt, 10, ExitPolicy(threshold=0.0, min_layer=2))
    assert early["choices"][0]["text"] == CODEC.decode(tokens)
    assert early["moeops"]["mean_exit_layer"] == 2.0 and early["moeops"]["early_exits"] == len(tokens)


def test_stop_string_cuts_the_text(server: tuple[str, ServedModel, Engine]) -> None:
    url, _, _ = server
    for prompt in PROMPTS:
        text = post(url, {"model": "tiny", "prompt": prompt, "max_tokens": 12}).json()["choices"][0]["text"]
        if len(text) >= 3:
            break
    else:
        pytest.skip("the tiny model writes no text long enough")
    stop = text[1:3]
    request = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "stop": [stop, "}}}}"]}
    body = post(url, request).json()
    cut = text[: text.find(stop)]
    assert body["choices"][0] == {"index": 0, "text": cut, "logprobs": None, "finish_reason": "stop"}
    with httpx.stream("POST", f"{url}/v1/completions", json={**request, "stream": True}, timeout=30.0) as r:
        chunks = [c for c in sse_chunks(r.read().decode()) if isinstance(c, dict)]
    assert "".join(c["choices"][0]["text"] for c in chunks) == cut


BAD: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", b'{"model": "tiny", "prompt": [1,', 400, "malformed JSON"),
    ("not an object", b"[1, 2, 3]", 400, "valid dictionary"),
    ("no prompt", {"model": "tiny"}, 400, "prompt"),
    ("unknown field", {"model": "tiny", "prompt": "a", "best_of": 3}, 400, "best_of"),
    ("unknown model", {"model": "gpt-4", "prompt": "a"}, 404, "does not exist"),
    ("prompt too long", {"model": "tiny", "prompt": [1] * 33}, 400, "more than the model's context of 32"),
    ("too many tokens", {"model": "tiny", "prompt": [1] * 20, "max_tokens": 20}, 400, "at most 13"),
    ("max_tokens 0", {"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("n too large", {"model": "tiny", "prompt": "a", "n": 17}, 400, "n:"),
    ("prompts × n too many", {"model": "tiny", "prompt": ["a"] * 5, "n": 4}, 400, "more than 16 choices"),
    ("five stop strings", {"model": "tiny", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop: "),
    (
        "a long stop string",
        {"model": "tiny", "prompt": "a", "stop": "x" * 257},
        400,
        "stop: String should have at most",
    ),
    ("a long one in a list", {"model": "tiny", "prompt": "a", "stop": ["x" * 300]}, 400, "stop.0: String should"),
    ("logit_bias not a token", {"model": "tiny", "prompt": "a", "logit_bias": {"64": 1}}, 400, "not a token id"),
    ("logit_bias too large", {"model": "tiny", "prompt": "a", "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("penalty", {"model": "tiny", "prompt": "a", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("tools", {"model": "tiny", "prompt": "a", "suffix": "x"}, 400, "suffix"),
    ("echo with logprobs", {"model": "tiny", "prompt": "a", "echo": True, "logprobs": 1}, 400, "echo with logprobs"),
    (
        "stream_options alone",
        {"model": "tiny", "prompt": "a", "stream_options": {"include_usage": True}},
        400,
        "stream_options",
    ),
    ("logprobs > 5", {"model": "tiny", "prompt": "a", "logprobs": 6}, 400, "logprobs"),
    ("outside the alphabet", {"model": "tiny", "prompt": "Hello"}, 400, "not in the vocabulary"),
    ("token id too large", {"model": "tiny", "prompt": [1, 64]}, 400, "outside the model's vocabulary"),
    ("negative token id", {"model": "tiny", "prompt": [1, -1]}, 400, "prompt"),
    ("empty prompt", {"model": "tiny", "prompt": []}, 400, "empty"),
    ("bad threshold", {"model": "tiny", "prompt": "a", "early_exit": {"threshold": 2}}, 400, "threshold"),
    ("bad rule", {"model": "tiny", "prompt": "a", "early_exit": {"rule": "entropy"}}, 400, "rule"),
    ("body too large", {"model": "tiny", "prompt": "a" * (20 << 10)}, 413, "larger than 16384 bytes"),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_4xx_with_a_message(
    server: tuple[str, ServedModel, Engine], case: str, body: Any, status: int, message: str
) -> None:
    url, _, _ = server
    if isinstance(body, bytes):
        r = httpx.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json"})
    else:
        r = post(url, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error", error


def test_chunked_body_over_the_limit_is_413_and_unknown_paths_404(server: tuple[str, ServedModel, Engine]) -> None:
    url, _, _ = server

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"a" * 1024
        yield b'"}'

    r = httpx.post(f"{url}/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/engines").status_code == 404
    assert httpx.get(f"{url}/v1/completions").status_code == 405


def test_concurrent_requests_are_batched_and_exact(server: tuple[str, ServedModel, Engine]) -> None:
    url, served, engine = server
    before = engine.stats()

    async def all_at_once() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            bodies = [{"model": "tiny", "prompt": p, "max_tokens": 16} for p in PROMPTS]
            bodies += [{**b, "stream": True} for b in bodies[:2]]
            responses = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        out: list[dict[str, Any]] = []
        for r in responses:
            assert r.status_code == 200, r.text
            if r.headers["content-type"].startswith("text/event-stream"):
                parts = [c for c in sse_chunks(r.text) if isinstance(c, dict)]
                out.append({"text": "".join(c["choices"][0]["text"] for c in parts), "usage": parts[-1]["usage"]})
            else:
                out.append({"text": r.json()["choices"][0]["text"], "usage": r.json()["usage"]})
        return out

    results = asyncio.run(all_at_once())
    for result, prompt in zip(results, PROMPTS + PROMPTS[:2], strict=True):
        tokens = expected(served.model, prompt, 16)
        assert result["text"] == CODEC.decode(tokens) and result["usage"]["completion_tokens"] == len(tokens)
    after = engine.stats()
    assert after.max_round_size > 1 and after.batched_rounds > before.batched_rounds
    assert after.requests_completed - before.requests_completed == len(results)
    assert after.in_flight == 0 and after.queued == 0 and after.mean_exit_layer is not None


def test_readiness_follows_the_model_load(run: tuple[Path, Transformer]) -> None:
    ref = CheckpointRef.resolve(run[0] / "checkpoints")
    release = threading.Event()

    def slow_load() -> ServedModel:
        release.wait(30)
        return load_served(ref, "tiny")

    app = create_app(slow_load, ServerSettings(policy=NEVER_EXIT))
    with live_server(app, ready=False) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        r = post(url, {"model": "tiny", "prompt": "a"})
        assert r.status_code == 503 and "not loaded yet" in r.json()["error"]["message"]
        assert httpx.get(f"{url}/v1/models").json()["data"] == []
        release.set()
        for _ in range(500):
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
        assert post(url, {"model": "tiny", "prompt": "a", "max_tokens": 2}).status_code == 200


def test_a_failed_load_is_not_ready_and_says_why(tmp_path: Path) -> None:
    def broken() -> ServedModel:
        raise ValueError("no weights here")

    with live_server(create_app(broken, ServerSettings(policy=NEVER_EXIT)), ready=False) as url:
        for _ in range(100):
            r = httpx.get(f"{url}/readyz")
            if r.json()["status"] != "loading":
                break
            threading.Event().wait(0.02)
        assert r.status_code == 503 and r.json() == {"status": "failed", "error": "ValueError: no weights here"}
        assert post(url, {"model": "tiny", "prompt": "a"}).status_code == 503


def test_with_an_unreachable_bus_the_load_reporter_never_gets_in_the_way(
    run: tuple[Path, Transformer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env.NATS_URL, f"nats://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv(env.POD_NAME, "tiny-0")
    ref = CheckpointRef.resolve(run[0] / "checkpoints")
    settings = ServerSettings(policy=NEVER_EXIT, service="tiny", namespace="team-a")
    started = time.monotonic()
    app = create_app(lambda: load_served(ref, "tiny"), settings)
    with live_server(app) as url:
        assert post(url, {"model": "tiny", "prompt": "a", "max_tokens": 2}).status_code == 200
        assert app.state.server.reporter is not None  # started, and retrying in the background
    assert time.monotonic() - started < 20


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_client_that_goes_away_mid_stream_frees_its_place(server: tuple[str, ServedModel, Engine]) -> None:
    url, _, engine = server
    before = engine.stats().tokens_generated
    body = {"model": "tiny", "prompt": [1] * 2, "max_tokens": 31, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30.0) as r:
        assert next(r.iter_raw()).startswith(b"data: ")
    for _ in range(250):  # the engine drops it at its next round
        if engine.stats().in_flight == 0:
            break
        time.sleep(0.02)
    stats = engine.stats()
    assert stats.in_flight == 0 and stats.queued == 0
    assert post(url, {"model": "tiny", "prompt": "a", "max_tokens": 2}).status_code == 200
    assert stats.tokens_generated - before <= 31
