"""Helpers of the model server's tests: a tiny checkpoint in the layout `moeops train --job` writes, and the app
served by a real uvicorn on a loopback port in a thread."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI

from moeops.api.v1alpha1.presets import Architecture
from moeops.model import Transformer
from moeops.trainer import checkpoint
from moeops.trainer.distributed import World

TINY = Architecture(layers=3, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=16, vocab_size=64, seq_len=32)


def write_run(run_dir: Path, arch: Architecture = TINY, seed: int = 0, job: str = "tiny") -> Transformer:
    """<run>/config.json (its architecture) and <run>/checkpoints/step-00000001 saved by the trainer's own
    checkpoint.save; returns the model saved, in eval mode."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"architecture": arch.model_dump(by_alias=True)}))
    torch.manual_seed(seed)
    model = Transformer(arch)
    with torch.no_grad():  # distinct logits: exactness is about the server, not about argmax ties
        model.head.weight.mul_(40.0)
    optimizer = torch.optim.AdamW(model.parameters())
    world = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with warnings.catch_warnings():  # DCP: "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        checkpoint.save(run_dir / "checkpoints", 1, model, optimizer, world, {"loss": 1.0, "job": job}, keep=2)
    return model.eval()


def wait_ready(proc: subprocess.Popen[str], url: str, timeout_s: float) -> None:
    """Until the server process at `url` answers /readyz with 200; fails with its output if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        exited = proc.poll() is not None
        if exited or time.monotonic() >= deadline:
            proc.kill()  # reading the output of a live server would block until it exits
            output = proc.communicate(timeout=30)[0]
            pytest.fail(f"the server {'exited' if exited else f'was not ready in {timeout_s:g} s'}: {output}")
        time.sleep(0.1)


@contextlib.contextmanager
def live_server(app: FastAPI, *, ready: bool = True, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL. `ready`: wait for
    /readyz to answer 200 first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    path = "/readyz" if ready else "/healthz"
    try:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + path, timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the server did not answer {path} in {timeout_s} s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
