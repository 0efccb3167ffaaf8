"""The chart's health wiring of the bus services (rebalancer, carbon aggregator, carbon agent): each binds its
/healthz and /readyz to the pod IP on its health port, the kubelet probes both, and the ports and probe timings are
values the schema checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helm_chart import AGENT_ON, CHART, container, env, helm, named, render, run_helm
from moeops.api import env as env_names

__all__ = ["helm"]  # the fixture

SERVICES = {"rebalancer": "Deployment", "carbonAggregator": "Deployment", "carbonAgent": "DaemonSet"}
SUFFIXES = {"rebalancer": "-rebalancer", "carbonAggregator": "-carbon-aggregator", "carbonAgent": "-carbon-agent"}


def service_container(objects: list[dict[str, Any]], values_key: str) -> dict[str, Any]:
    return container(named(objects, SERVICES[values_key], SUFFIXES[values_key]))


@pytest.mark.parametrize("values_key", list(SERVICES))
def test_each_bus_service_is_probed_on_its_health_port_bound_to_the_pod_ip(helm: str, values_key: str) -> None:
    objects = render(helm, AGENT_ON)
    c = service_container(objects, values_key)
    assert c["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "health"}, "initialDelaySeconds": 10,
                                  "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3}  # fmt: skip
    assert c["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 10,
                                   "timeoutSeconds": 5, "failureThreshold": 3}  # fmt: skip
    workload = named(objects, SERVICES[values_key], SUFFIXES[values_key])
    e = env(workload)
    # The service listens on loopback unless told: the kubelet probes the pod IP.
    assert e[env_names.HEALTH_ADDR] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert e[env_names.HEALTH_PORT] == "8080"


def test_ports_and_probe_timings_are_tuned_per_service(helm: str) -> None:
    objects = render(helm, {**AGENT_ON, "rebalancer.healthPort": 9101,
                            "rebalancer.livenessProbe": {"periodSeconds": 5, "failureThreshold": 6},
                            "carbonAggregator.readinessProbe": {"periodSeconds": 3, "successThreshold": 2},
                            "carbonAgent.healthPort": 9103,
                            "carbonAgent.extraEnv": [{"name": env_names.HEALTH_STALE_S, "value": "300"}]})  # fmt: skip
    rebalancer = service_container(objects, "rebalancer")
    assert rebalancer["ports"][0]["containerPort"] == 9101
    assert env(named(objects, "Deployment", "-rebalancer"))[env_names.HEALTH_PORT] == "9101"
    # Merged over the defaults, as Helm merges maps.
    assert rebalancer["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "health"}, "initialDelaySeconds": 10,
                                           "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 6}  # fmt: skip
    aggregator = service_container(objects, "carbonAggregator")
    assert aggregator["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 3,
                                            "timeoutSeconds": 5, "failureThreshold": 3,
                                            "successThreshold": 2}  # fmt: skip
    assert aggregator["ports"][0]["containerPort"] == 8080
    agent = named(objects, "DaemonSet", "-carbon-agent")
    assert container(agent)["ports"][0]["containerPort"] == 9103
    assert env(agent)[env_names.HEALTH_PORT] == "9103" and env(agent)[env_names.HEALTH_STALE_S] == "300"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rebalancer.healthPort": 0}, "healthPort"),
        ({"carbonAggregator.healthPort": "8080"}, "healthPort"),
        ({"carbonAgent.livenessProbe": {"exec": {"command": ["true"]}}}, "exec"),
        ({"rebalancer.readinessProbe": {"periodSeconds": 0}}, "periodSeconds"),
    ],
    ids=["port-zero", "port-string", "probe-handler", "period-zero"],
)
def test_the_schema_refuses_bad_health_values(helm: str, values: dict[str, Any], message: str) -> None:
    args = [f"--set-json={k}={json.dumps(v)}" for k, v in {**AGENT_ON, **values}.items()]
    result = run_helm(helm, "template", "rel", str(CHART), *args, check=False)
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr
