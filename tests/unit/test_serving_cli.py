"""`python -m moeops.serving` started the way the operator starts a server pod (operator/children/serving.py): the
resolved ServingRuntimeConfig as JSON in MOEOPS_SERVING_CONFIG, the checkpoint in MOEOPS_MODEL_DIR; and the
configurations that can never work exit 78 (EX_CONFIG) with a message, before serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from moeops.api import env
from moeops.api.v1alpha1.inferenceservice import BatchingSpec, EarlyExitSpec
from moeops.api.v1alpha1.runtime import ServingRuntimeConfig
from moeops.serving.serve_cli import serve
from serving_server import wait_ready, write_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As a training pod leaves its checkpoint volume: the resolved config inside the checkpoints' directory
    (trainer/corpus.py `save_run_config`), nothing above it."""
    path = tmp_path_factory.mktemp("run")
    write_run(path)
    (path / "config.json").replace(path / "checkpoints" / "config.json")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # a server process
def test_a_server_started_as_the_operator_starts_it(run_dir: Path) -> None:
    port = _free_port()
    config = ServingRuntimeConfig(
        service_name="chat",
        namespace="team-a",
        model_dir="/models",
        port=port,
        early_exit=EarlyExitSpec(enabled=True, threshold=0.0, min_layer=2),
        batching=BatchingSpec(max_batch_size=4, max_latency_ms=5),
        threads=3,
    )
    environ = {**os.environ, env.SERVING_CONFIG: config.model_dump_json(by_alias=True),
               env.MODEL_DIR: str(run_dir / "checkpoints"), env.POD_NAME: "chat-0"}  # fmt: skip
    environ.pop(env.NATS_URL, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moeops.serving", "--host", "127.0.0.1"],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url, timeout_s=180)  # a loaded CI machine imports torch slowly
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["chat"]
        body = httpx.post(f"{url}/v1/completions", json={"model": "chat", "prompt": "1+1=", "max_tokens": 3}).json()
        assert body["moeops"]["mean_exit_layer"] == 2.0  # the service's policy: exit at once from layer 2
        assert body["moeops"]["policy"] == {"enabled": True, "rule": "softmax-max", "threshold": 0.0, "min_layer": 2}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    # A graceful stop: uvicorn drains, then re-raises the SIGTERM it caught (a pod's usual end).
    assert proc.returncode in (0, -15) and "Finished server process" in out, out
    assert "chat = step 1" in out and "batch ≤ 4 within 5 ms" in out
    assert "3 intra-op thread(s) (the InferenceService's threads)" in out, out


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        ([], {}, "no checkpoint"),
        (["--checkpoint", "/nonexistent"], {}, "no such checkpoint directory"),
        ([], {env.SERVING_CONFIG: '{"serviceName": "x"}'}, "not a ServingRuntimeConfig"),
        (["--checkpoint", "{run}"], {}, "not a checkpoint"),
    ],
)
def test_configurations_that_cannot_work_exit_78(
    run_dir: Path, args: list[str], environ: dict[str, str], message: str
) -> None:
    unset: dict[str, str | None] = {env.SERVING_CONFIG: None, env.MODEL_DIR: None}
    result = CliRunner().invoke(serve, [a.format(run=run_dir) for a in args], env={**unset, **environ})
    assert result.exit_code == env.EXIT_CODE_INVALID_CONFIG, result.output
    assert message in result.output


@pytest.mark.slow  # a server process
def test_a_server_started_by_hand_binds_loopback_and_sizes_its_threads(run_dir: Path) -> None:
    """No ServingRuntimeConfig (not a pod): 127.0.0.1 unless --host says otherwise, and torch's intra-op threads
    from the cgroup's CPU limit when OMP_NUM_THREADS is not set (threads.py)."""
    from moeops.serving.threads import OMP_ENV, choose_threads

    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if k not in (env.SERVING_CONFIG, env.MODEL_DIR, OMP_ENV)}
    expected = choose_threads(None, environ=environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moeops.serving", "--checkpoint", str(run_dir / "checkpoints"), "--port", str(port)],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", timeout_s=180)  # a loaded CI machine imports torch slowly
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"running on http://127.0.0.1:{port}" in out, out
    assert f"{expected.threads} intra-op thread(s) ({expected.source})" in out, out
