"""The committed CRDs are exactly what the models generate, and the generator emits structural schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from moeops.api import crdgen

REPO = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    stale = crdgen.drift(REPO / "crds")
    assert not stale, f"crds/ is out of date with the models: run `moeops crds` ({stale})"


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_schemas_are_structural() -> None:
    for resource in crdgen.RESOURCES:
        schema = crdgen.crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
            assert node.get("type") != "null", path
            if "properties" in node:
                assert node.get("type") == "object", path
            if "exclusiveMinimum" in node:
                assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_spec_field_has_a_description() -> None:
    for resource in crdgen.RESOURCES:
        spec = crdgen.crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for path, node in _walk(spec):
            if path.endswith((".properties", ".additionalProperties")):
                continue
            if "type" in node and ".x-kubernetes-validations" not in path:
                assert node.get("description"), f"{resource.kind}{path} has no description"


def test_nested_defaults_are_spelled_out_for_the_api_server() -> None:
    (crd,) = yaml.safe_load_all(crdgen.manifests()["moeops.dev_moetrainingjobs.yaml"])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["parallelism"]["default"] == {"mode": "auto"}
    assert spec["checkpoint"]["default"] == {"intervalSteps": 500, "keep": 3, "storage": {"path": "/"}}
    assert "default" not in spec["model"]  # required: no default


def test_cel_rules_are_attached_where_declared() -> None:
    (crd,) = yaml.safe_load_all(crdgen.manifests()["moeops.dev_moetrainingjobs.yaml"])
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    messages = [v["message"] for v in spec["x-kubernetes-validations"]]
    assert any("data × tensor × pipeline" in m for m in messages)
    model_rules = [v["rule"] for v in spec["properties"]["model"]["x-kubernetes-validations"]]
    assert "self == oldSelf" in model_rules  # immutability (field-level) kept beside the model's own rules
    assert any("topK <= self.experts" in r for r in model_rules)
    assert any("metadata.name" in v["rule"] for v in root["x-kubernetes-validations"])
