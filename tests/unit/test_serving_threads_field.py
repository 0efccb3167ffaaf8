"""InferenceService.spec.threads: the model server's intra-op threads, from the spec to the pod the operator
builds (the server reads it from its runtime config: test_serving_cli's operator-started server prints it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from moeops.api.v1alpha1 import InferenceServiceSpec
from moeops.operator.children.serving import resolve_model, serving_children
from moeops.operator.config import OperatorConfig
from moeops.operator.naming import Owner

OWNER = Owner("moeops.dev/v1alpha1", "InferenceService", "chat", "ml", "uid-3", 1)


def server_container(**spec: Any) -> dict[str, Any]:
    body = InferenceServiceSpec.model_validate({"model": {"checkpoint": {"claimName": "m", "path": "/x"}}, **spec})
    _, deployment = serving_children(OWNER, body, resolve_model(body, None), False, OperatorConfig.from_env({}))
    container: dict[str, Any] = deployment.body["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_threads_reach_the_servers_config_and_omp_num_threads() -> None:
    environ = env_of(server_container(threads=3, resources={"limits": {"cpu": "8"}}))
    assert json.loads(environ["MOEOPS_SERVING_CONFIG"])["threads"] == 3
    assert environ["OMP_NUM_THREADS"] == "3"  # the spec wins over the CPU limit


def test_without_threads_the_cpu_limit_decides() -> None:
    environ = env_of(server_container(resources={"limits": {"cpu": "2"}}))
    assert json.loads(environ["MOEOPS_SERVING_CONFIG"])["threads"] is None
    assert environ["OMP_NUM_THREADS"] == {"resourceFieldRef": {"containerName": "server", "resource": "limits.cpu",
                                                               "divisor": "1"}}  # fmt: skip
    assert "OMP_NUM_THREADS" not in env_of(server_container())  # then the server reads cpu.max itself


@pytest.mark.parametrize("threads", [0, -1, 1025])
def test_threads_out_of_range_are_refused(threads: int) -> None:
    with pytest.raises(ValidationError, match="threads"):
        server_container(threads=threads)
