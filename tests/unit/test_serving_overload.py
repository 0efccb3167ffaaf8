"""The model server under abuse and overload, over real HTTP: a client that leaves a non-streaming request frees its
place in the batch (it used to keep generating), a full queue answers 429 with Retry-After, a request past the
server's deadline is cancelled (504, or an error event in a stream), and a request with thousands of stop strings
is refused at once while /healthz keeps answering.

The model is tiny but its context long (4,096 positions): a request for 4,000 tokens runs for seconds on a CPU,
long enough to leave it, queue behind it or outlive a deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from moeops.api.v1alpha1.presets import Architecture
from moeops.serving.decoding.early_exit import NEVER_EXIT
from moeops.serving.decoding.engine import Engine
from moeops.serving.decoding.sampling import Sampler
from moeops.serving.loader import CheckpointRef, load_served
from moeops.serving.openai.app import ServerSettings, create_app
from serving_server import live_server, write_run

LONG = Architecture(layers=2, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=16, vocab_size=64, seq_len=4096)
LONG_REQUEST = {"model": "long", "prompt": [1, 5, 3], "max_tokens": 4000}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("long")
    write_run(run_dir, LONG, job="long")
    return run_dir / "checkpoints"


@contextmanager
def serving(checkpoints: Path, **settings: object) -> Iterator[tuple[str, Engine]]:
    ref = CheckpointRef.resolve(checkpoints)
    app = create_app(lambda: load_served(ref, "long"), ServerSettings(policy=NEVER_EXIT, **settings))  # type: ignore[arg-type]
    with live_server(app) as url:
        yield url, app.state.server.engine


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def abandon(url: str, body: dict[str, object], after_s: float) -> threading.Thread:
    """POST `body` from a thread and give up reading after `after_s`: the client closes its connection."""

    def go() -> None:
        with suppress(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(10.0, read=after_s))

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_a_client_that_leaves_a_non_streaming_request_frees_its_place(checkpoints: Path) -> None:
    with serving(checkpoints, max_batch_size=1) as (url, engine):
        abandon(url, LONG_REQUEST, after_s=0.5).join()
        assert wait_until(lambda: engine.stats().in_flight == 0, 2.0), engine.stats()
        generated = engine.stats().tokens_generated
        assert generated < 2000, f"{generated} tokens for a client that left after 0.5 s"
        started = time.monotonic()
        r = httpx.post(f"{url}/v1/completions", json={**LONG_REQUEST, "max_tokens": 2}, timeout=10.0)
        assert r.status_code == 200 and time.monotonic() - started < 2.0
        assert engine.stats().tokens_generated - generated <= 2 + 1  # nothing but the new request ran since


def test_a_full_queue_answers_429_with_retry_after(checkpoints: Path) -> None:
    with serving(checkpoints, max_batch_size=1, max_queued=1) as (url, engine):
        running = abandon(url, LONG_REQUEST, after_s=3.0)
        assert wait_until(lambda: engine.stats().in_flight == 1, 2.0)
        queued = abandon(url, LONG_REQUEST, after_s=3.0)
        assert wait_until(lambda: engine.stats().queued == 1, 2.0)
        r = httpx.post(f"{url}/v1/completions", json=LONG_REQUEST, timeout=10.0)
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.json()["error"]["code"] == "queue_full" and "already queued" in r.json()["error"]["message"]
        running.join()
        queued.join()
        assert wait_until(lambda: engine.stats().in_flight == 0 and engine.stats().queued == 0, 2.0)


def test_a_request_past_the_deadline_is_cancelled(checkpoints: Path) -> None:
    with serving(checkpoints, request_timeout_s=0.5) as (url, engine):
        started = time.monotonic()
        r = httpx.post(f"{url}/v1/completions", json=LONG_REQUEST, timeout=10.0)
        assert r.status_code == 504 and "0.5 s" in r.json()["error"]["message"], r.text
        assert time.monotonic() - started < 3.0
        with httpx.stream("POST", f"{url}/v1/completions", json={**LONG_REQUEST, "stream": True}, timeout=10) as s:
            text = s.read().decode()
        assert s.status_code == 200 and '"error"' in text and text.endswith("data: [DONE]\n\n")
        assert wait_until(lambda: engine.stats().in_flight == 0, 2.0), engine.stats()


def test_thousands_of_stop_strings_are_refused_at_once(checkpoints: Path) -> None:
    with serving(checkpoints) as (url, _):
        body = {**LONG_REQUEST, "max_tokens": 200, "stop": [f"{i:04d}" for i in range(3900)]}
        started = time.monotonic()
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=10.0)
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop", r.text
        assert "at most 4 stop sequences, got 3900" in r.json()["error"]["message"]
        assert time.monotonic() - started < 1.0
        chat = {"model": "long", "messages": [{"role": "user", "content": "a"}], "stop": ["x" * 300]}
        r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=10.0)
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("stop"), r.text


def test_a_body_that_trickles_in_gets_408(checkpoints: Path) -> None:
    with serving(checkpoints, body_timeout_s=0.5) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5.0) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n" + b'{"model": ')  # fmt: skip
            started = time.monotonic()
            answer = sock.recv(4096).decode()
            waited = time.monotonic() - started
            while "}}" not in answer and (more := sock.recv(4096)):  # the body may come in a second segment
                answer += more.decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "did not arrive within 0.5 s" in answer and 0.4 < waited < 3.0
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_sampling_fault_fails_its_request_not_the_worker_injected(
    checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Sampler, logits: object, argmax: int) -> object:
        raise RuntimeError("injected: invalid multinomial distribution")

    with serving(checkpoints) as (url, _):
        body = {**LONG_REQUEST, "max_tokens": 4}
        tiny = httpx.post(f"{url}/v1/completions", json={**body, "temperature": 1e-300}, timeout=10.0)
        assert tiny.status_code == 200, tiny.text  # nearly 0: the argmax, not a NaN softmax
        monkeypatch.setattr(Sampler, "choose", broken)
        r = httpx.post(f"{url}/v1/completions", json={**body, "temperature": 1.0}, timeout=10.0)
        assert r.status_code == 503 and "sampling failed: injected" in r.json()["error"]["message"], r.text
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=10.0).status_code == 200  # greedy: no sampler
